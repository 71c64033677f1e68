"""The linear component."""

from components.linear.component import linear

__all__ = ["linear"]
