"""The linear_eval component."""

from components.linear_eval.component import linear_eval

__all__ = ["linear_eval"]
