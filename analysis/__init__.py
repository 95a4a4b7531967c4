"""Load run outputs into pandas, metrics and plots (plots live in ``analysis.plots``)."""
from analysis.load import find_run_dirs, load_requests, load_run
from analysis.metrics import (
    build_summary,
    compare_runs,
    format_comparison,
    format_summary,
    summarize,
    summary_dict,
    write_summary,
)

__all__ = [
    "build_summary", "compare_runs", "find_run_dirs", "format_comparison", "format_summary",
    "load_requests", "load_run", "summarize", "summary_dict", "write_summary",
]
