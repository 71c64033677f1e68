"""The data_copy component."""

from components.data_copy.component import data_copy

__all__ = ["data_copy"]
