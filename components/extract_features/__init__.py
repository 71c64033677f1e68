"""The extract_features component."""

from components.extract_features.component import extract_features

__all__ = ["extract_features"]
