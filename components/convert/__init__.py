"""The convert component."""

from components.convert.component import convert

__all__ = ["convert"]
