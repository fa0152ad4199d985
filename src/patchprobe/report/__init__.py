"""Reports: tidy result tables and figures."""

from .figures import grouped_bar_chart, ranked_bar_chart
from .tables import collect_runs, markdown_table

__all__ = ["collect_runs", "grouped_bar_chart", "markdown_table", "ranked_bar_chart"]
