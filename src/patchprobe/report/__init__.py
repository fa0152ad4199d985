"""Reports: tidy result tables and figures."""

from .analysis import analyze_run, pairwise_cosines, prototype_usage
from .figures import grouped_bar_chart, ranked_bar_chart, sweep_plot
from .tables import collect_runs, markdown_table

__all__ = ["analyze_run", "collect_runs", "pairwise_cosines", "prototype_usage", "grouped_bar_chart", "markdown_table", "ranked_bar_chart", "sweep_plot"]
