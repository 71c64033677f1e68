"""The low_shot component."""

from components.low_shot.component import low_shot

__all__ = ["low_shot"]
