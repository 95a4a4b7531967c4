"""The layout over time, from a run's samples and layout events: which group each engine
belonged to and at what TP width, the number of groups, and the arrival rate beside it."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

_GROUP_LABEL = re.compile(r"^e(\d+)(?:-(\d+))?$")
_LAYOUT_PART = re.compile(r"^(?:(\d+)x)?TP(\d+)$")
SEGMENT_COLUMNS = ["engine", "start_s", "end_s", "group", "tp_gpus"]


def group_engines(label: str) -> range:
    """Engines of a group label as ``policies.layout.Group.label`` writes it: 'e3' -> 3,
    'e0-3' -> 0..3."""
    m = _GROUP_LABEL.match(str(label))
    if not m:
        raise ValueError(f"not a group label: {label!r} (expected 'eN' or 'eN-M')")
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else first
    return range(first, last + 1)


def layout_widths(layout: str) -> list[int]:
    """TP widths (GPUs) of the groups of a layout as ``Layout.describe`` writes it:
    '8xTP1' -> [1]*8, 'TP4+2xTP2' -> [4, 2, 2], '1xTP8' -> [8]."""
    widths: list[int] = []
    for part in str(layout).split("+"):
        m = _LAYOUT_PART.match(part.strip())
        if not m:
            raise ValueError(f"not a layout: {layout!r} (expected e.g. '8xTP1' or 'TP4+2xTP2')")
        widths += [int(m.group(2))] * int(m.group(1) or 1)
    return widths


def sample_period_s(samples: pd.DataFrame) -> float:
    """The sampling period: the smallest gap between distinct sample times (NaN if < 2)."""
    t = np.unique(samples["time_s"].to_numpy(float)) if len(samples) else np.array([])
    return float(np.diff(t).min()) if t.size > 1 else math.nan


def engine_segments(samples: pd.DataFrame) -> pd.DataFrame:
    """Per engine, the spans of time it spent in one group: ``SEGMENT_COLUMNS``.

    A sample at time t stands for (t - period, t]: the group that was sampled then. While a
    switch runs, two groups can hold one engine (a retiring one and the one forming); the
    wider is shown, since it is the one the switch is building. Consecutive samples in the
    same group merge into one span.
    """
    if len(samples) == 0:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in SEGMENT_COLUMNS})
    period = sample_period_s(samples)
    period = period if np.isfinite(period) else 1.0
    rows = [(e, t, g, w) for t, g, w in samples[["time_s", "group", "tp_gpus"]].itertuples(
        index=False) for e in group_engines(g)]
    per_engine = (pd.DataFrame(rows, columns=["engine", "time_s", "group", "tp_gpus"])
                  .sort_values(["engine", "time_s", "tp_gpus"])
                  .drop_duplicates(["engine", "time_s"], keep="last"))
    out = []
    for engine, df in per_engine.groupby("engine", sort=True):
        t = df["time_s"].to_numpy(float)
        group = df["group"].astype(str).to_numpy()
        # a new span where the group changes or a sample is missing (the engine sat idle)
        new = np.r_[True, (group[1:] != group[:-1]) | (np.diff(t) > 1.5 * period)]
        starts = np.flatnonzero(new)
        ends = np.r_[starts[1:], len(t)] - 1
        for s, e in zip(starts, ends):
            out.append((int(engine), t[s] - period, t[e], group[s], int(df["tp_gpus"].iloc[s])))
    return pd.DataFrame(out, columns=SEGMENT_COLUMNS)


def group_counts(samples: pd.DataFrame) -> pd.DataFrame:
    """Per sample time: ``num_groups`` and ``widest_tp_gpus`` (columns ``time_s``, both)."""
    if len(samples) == 0:
        return pd.DataFrame({"time_s": [], "num_groups": [], "widest_tp_gpus": []})
    g = samples.groupby("time_s", sort=True)
    return pd.DataFrame({"num_groups": g["group"].nunique(),
                         "widest_tp_gpus": g["tp_gpus"].max()}).reset_index()


def arrival_rate(requests: pd.DataFrame, bin_s: float) -> pd.DataFrame:
    """Arrivals per second in bins of ``bin_s`` from the first bin at 0: columns
    ``start_s`` and ``arrivals_per_s``."""
    if bin_s <= 0:
        raise ValueError("bin_s must be positive")
    t = pd.to_numeric(requests["arrival_s"], errors="coerce").dropna().to_numpy(float)
    if t.size == 0:
        return pd.DataFrame({"start_s": [], "arrivals_per_s": []})
    edges = np.arange(0.0, t.max() + bin_s, bin_s)
    counts, edges = np.histogram(t, bins=edges if edges.size > 1 else [0.0, bin_s])
    return pd.DataFrame({"start_s": edges[:-1], "arrivals_per_s": counts / bin_s})


def switch_spans(layouts: pd.DataFrame) -> list[tuple[float, float]]:
    """(requested, done) times of each switch from the layout events: a 'switch_requested'
    event to the next 'done' (its duration_s is the whole switch)."""
    if layouts is None or len(layouts) == 0 or "event" not in layouts:
        return []
    spans, start = [], None
    for t, event in layouts.sort_values("time_s")[["time_s", "event"]].itertuples(index=False):
        if event == "switch_requested" and start is None:
            start = float(t)
        elif event == "done" and start is not None:
            spans.append((start, float(t)))
            start = None
    return spans
