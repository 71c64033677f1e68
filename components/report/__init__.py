"""The report component."""

from components.report.component import report

__all__ = ["report"]
