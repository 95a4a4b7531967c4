"""Load run outputs into pandas, metrics and plots (plots live in ``analysis.plots``; the
paper-style figures in ``analysis.figures``, driven by the notebooks in ``notebooks/``)."""
from analysis.load import find_run_dirs, load_requests, load_run, load_runs
from analysis.metrics import (
    build_summary,
    compare_runs,
    format_comparison,
    format_summary,
    summarize,
    summary_dict,
    write_summary,
)
from analysis.runs import run_metrics

__all__ = [
    "build_summary", "compare_runs", "find_run_dirs", "format_comparison", "format_summary",
    "load_requests", "load_run", "load_runs", "run_metrics", "summarize", "summary_dict",
    "write_summary",
]
