"""The detection component."""

from components.detection.component import detection

__all__ = ["detection"]
