"""The knn component."""

from components.knn.component import knn

__all__ = ["knn"]
