"""The retrieval component."""

from components.retrieval.component import retrieval

__all__ = ["retrieval"]
