"""Reports: tidy result tables and figures, and `write_report` (the paper's tables, figures and statistics as one page)."""

from .analysis import analyze_run, pairwise_cosines, prototype_usage
from .build import ReportConfig, write_report
from .figures import grouped_bar_chart, ranked_bar_chart, sweep_plot
from .results import READERS, Reader, ResultsInput, read_results
from .tables import PaperTable, collect_runs, markdown_table, paper_table

__all__ = ["READERS", "PaperTable", "Reader", "ReportConfig", "ResultsInput", "analyze_run", "collect_runs", "grouped_bar_chart",
           "markdown_table", "pairwise_cosines", "paper_table", "prototype_usage", "ranked_bar_chart", "read_results", "sweep_plot",
           "write_report"]
