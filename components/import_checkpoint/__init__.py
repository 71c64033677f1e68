"""The import_checkpoint component."""

from components.import_checkpoint.component import import_checkpoint

__all__ = ["import_checkpoint"]
