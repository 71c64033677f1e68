"""sslcore: report. The run's results as a terminal table and as one self-contained HTML page."""

from sslcore.report.html_page import write_html_report
from sslcore.report.table import format_headline_table, format_metrics_table

__all__ = ["format_headline_table", "format_metrics_table", "write_html_report"]
