"""One row per run: the metrics the figures plot against each other (load, latency,
throughput, per-class latency, switch count), from the frame ``analysis.load.load_runs`` gives."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.load import ID_COLUMNS, count_switches
from analysis.metrics import ALL_SCOPE, SUMMARY_COLUMNS, summarize

# Run metadata worth carrying into the per-run table when a run has it (the rest of the
# summary's keys are per-backend details).
META_COLUMNS = ("trace", "model", "cluster", "layout", "seed", "rate_scale", "experiment")


def offered_rps(arrival_s: pd.Series | np.ndarray) -> float:
    """Offered load in requests per second: arrivals over the arrival span (first to last
    arrival), as (n - 1) / span, the unbiased rate of a Poisson stream. NaN with < 2 arrivals
    or a zero span (every request at once)."""
    t = np.sort(pd.to_numeric(pd.Series(arrival_s), errors="coerce").dropna().to_numpy(float))
    if t.size < 2 or t[-1] <= t[0]:
        return math.nan
    return (t.size - 1) / float(t[-1] - t[0])


def run_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per ``run`` of a ``load_runs`` frame, in the frame's order.

    Columns: ``ID_COLUMNS``, the ``META_COLUMNS`` present, ``offered_rps``, ``switches``
    (rows of the run's switches.parquet; NaN without one, e.g. a replay), the ``all`` scope's ``SUMMARY_COLUMNS`` as they are,
    and the same per request class as ``<class>_<column>`` (e.g. ``priority_ttft_p90_s``).
    Each run's throughput uses its own window (``analysis.metrics.summarize``'s default).
    """
    if "run" not in runs:
        raise ValueError("run_metrics needs a frame from analysis.load.load_runs (no 'run' column)")
    if len(runs) == 0:
        raise ValueError("run_metrics: the frame has no requests")
    rows = []
    for run, df in runs.groupby("run", sort=False):
        first = df.iloc[0]
        row = {c: first[c] for c in ID_COLUMNS if c in df}
        row.update({c: first[c] for c in META_COLUMNS if c in df})
        row["offered_rps"] = offered_rps(df["arrival_s"])
        switches = count_switches(first["run_dir"]) if "run_dir" in df else None
        row["switches"] = math.nan if switches is None else switches
        summary = summarize(df)
        for scope, metrics in summary.iterrows():
            prefix = "" if scope == ALL_SCOPE else f"{scope}_"
            row.update({f"{prefix}{c}": metrics[c] for c in SUMMARY_COLUMNS})
        rows.append(row)
    return pd.DataFrame(rows)
