"""The svm component."""

from components.svm.component import svm

__all__ = ["svm"]
