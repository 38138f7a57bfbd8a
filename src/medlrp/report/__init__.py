"""The self-contained HTML report and its building blocks."""

from medlrp.report.html import ReportSection, build_report, write_report
from medlrp.report.markdown import markdown_to_html, table_html
from medlrp.report.views import bytes_data_uri, case_view, png_data_uri

__all__ = [
    "ReportSection",
    "build_report",
    "bytes_data_uri",
    "case_view",
    "markdown_to_html",
    "png_data_uri",
    "table_html",
    "write_report",
]
