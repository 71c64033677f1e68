"""The clusterfit component."""

from components.clusterfit.component import clusterfit

__all__ = ["clusterfit"]
