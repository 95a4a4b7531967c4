"""Per-run metrics from the per-request records (DESIGN.md section 6).

Input is a DataFrame with the columns of ``policies.records.RECORD_COLUMNS``; ttft_s,
tpot_s, e2e_s, queueing_s and slo_met are already computed by the backend and are used
as they are.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

LATENCY_METRICS: tuple[str, ...] = ("ttft", "tpot", "e2e", "queueing")
STATS: tuple[str, ...] = ("mean", "p50", "p90", "p99")
_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0}
COUNT_COLUMNS: tuple[str, ...] = ("requests", "finished", "rejected", "unfinished")
RATE_COLUMNS: tuple[str, ...] = ("output_tokens_per_s", "requests_per_s", "slo_attainment")
SUMMARY_COLUMNS: tuple[str, ...] = (
    COUNT_COLUMNS
    + tuple(f"{m}_{s}_s" for m in LATENCY_METRICS for s in STATS)
    + RATE_COLUMNS
)
CLASS_ORDER: tuple[str, ...] = ("normal", "priority", "long_context")
ALL_SCOPE = "all"


def class_order(classes: Iterable[str]) -> list[str]:
    """Request classes present, in the canonical order (normal, priority, long_context), then others."""
    present = {str(c) for c in classes if pd.notna(c)}
    known = [c for c in CLASS_ORDER if c in present]
    return known + sorted(present - set(known))


def _stats(values: np.ndarray) -> list[float]:
    """mean, p50, p90, p99 (linear interpolation) of the non-NaN values; NaN if none."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return [math.nan] * len(STATS)
    pct = np.percentile(values, [_PERCENTILES[s] for s in STATS[1:]])
    return [float(values.mean()), *(float(p) for p in pct)]


def default_window_s(requests: pd.DataFrame) -> tuple[float, float]:
    """First arrival to last finish over all requests (NaN, NaN when nothing finished)."""
    if len(requests) == 0:
        return (math.nan, math.nan)
    start = float(requests["arrival_s"].min())
    finish = requests["finish_s"][requests["status"] == "finished"]
    end = float(finish.max()) if finish.notna().any() else math.nan
    return (start, end)


def _slo_masks(requests: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(has_slo, met) boolean arrays. met only for finished requests whose slo_met is True."""
    n = len(requests)
    has_slo = np.zeros(n, dtype=bool)
    for col in ("ttft_slo_s", "tpot_slo_s"):
        if col in requests:
            has_slo |= pd.to_numeric(requests[col], errors="coerce").notna().to_numpy()
    slo_met = requests["slo_met"] if "slo_met" in requests else pd.Series([None] * n)
    slo_met = slo_met.astype("boolean")  # True / False / <NA>, from object, bool or float
    has_slo |= slo_met.notna().to_numpy()
    finished = (requests["status"] == "finished").to_numpy()
    met = has_slo & finished & slo_met.fillna(False).to_numpy(dtype=bool)
    return has_slo, met


def summarize(
    requests: pd.DataFrame, window_s: tuple[float, float] | None = None
) -> pd.DataFrame:
    """Summary metrics, one row per scope: ``all`` then each request class present.

    Index ``scope``; columns ``SUMMARY_COLUMNS``:

    - ``requests, finished, rejected, unfinished``: counts by status.
    - ``<m>_{mean,p50,p90,p99}_s`` for m in ttft, tpot, e2e, queueing: over finished
      requests (percentiles with linear interpolation); tpot only over finished requests
      with ``generated_tokens > 1``. NaN when there is no such request.
    - ``output_tokens_per_s``: generated tokens of the finished requests that finish inside
      the window, divided by the window length. ``requests_per_s``: the number of those
      requests divided by the window length. The window is ``window_s`` when given, else
      the default **first arrival to last finish over all requests of the run** (the
      same window for every scope, so the per-class rates add up to ``all``).
    - ``slo_attainment``: among the requests of the scope that have an SLO (ttft_slo_s or
      tpot_slo_s set, or slo_met not None), the share that finished with slo_met True;
      rejected and unfinished requests count as misses. NaN when none has an SLO.
    """
    if window_s is None:
        window_s = default_window_s(requests)
    t0, t1 = (float(window_s[0]), float(window_s[1]))
    length_s = t1 - t0 if (np.isfinite(t0) and np.isfinite(t1) and t1 > t0) else math.nan

    status = requests["status"].astype(str).to_numpy()
    finished = status == "finished"
    finish_s = pd.to_numeric(requests["finish_s"], errors="coerce").to_numpy(dtype=float)
    generated = pd.to_numeric(requests["generated_tokens"], errors="coerce").fillna(0)
    generated = generated.to_numpy(dtype=float)
    in_window = finished & (finish_s >= t0) & (finish_s <= t1)
    has_slo, met = _slo_masks(requests)
    latency = {
        m: pd.to_numeric(requests[f"{m}_s"], errors="coerce").to_numpy(dtype=float)
        for m in LATENCY_METRICS
    }
    tpot_ok = finished & (generated > 1)

    classes = requests["request_class"].astype(str).to_numpy()
    scopes = [(ALL_SCOPE, np.ones(len(requests), dtype=bool))]
    scopes += [(c, classes == c) for c in class_order(requests["request_class"].unique())]

    rows = []
    for _, sel in scopes:
        row: list[float] = [
            int(sel.sum()),
            int((sel & finished).sum()),
            int((sel & (status == "rejected")).sum()),
            int((sel & (status == "unfinished")).sum()),
        ]
        for m in LATENCY_METRICS:
            mask = sel & (tpot_ok if m == "tpot" else finished)
            row += _stats(latency[m][mask])
        win = sel & in_window
        row.append(float(generated[win].sum()) / length_s)
        row.append(float(win.sum()) / length_s)
        n_slo = int((sel & has_slo).sum())
        row.append(float((sel & met).sum()) / n_slo if n_slo else math.nan)
        rows.append(row)

    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS),
                       index=pd.Index([s for s, _ in scopes], name="scope"))
    return out.astype({c: "int64" for c in COUNT_COLUMNS})


# ---------------------------------------------------------------- JSON + summary.json


def _json_value(v: Any) -> Any:
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_json_value(x) for x in v]
    return v if isinstance(v, str) else str(v)


def summary_dict(summary_df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``{scope: {column: value}}`` with plain Python types; NaN / inf -> None."""
    columns = {str(c): summary_df[c].tolist() for c in summary_df.columns}  # keeps int columns int
    return {
        str(scope): {c: _json_value(vals[i]) for c, vals in columns.items()}
        for i, scope in enumerate(summary_df.index)
    }


def build_summary(
    requests: pd.DataFrame, run: dict[str, Any], window_s: tuple[float, float] | None = None
) -> dict[str, Any]:
    """The summary.json content: ``{"run": run metadata, "metrics": summary_dict(...)}``."""
    return {"run": _json_value(dict(run)), "metrics": summary_dict(summarize(requests, window_s))}


def write_summary(path, requests: pd.DataFrame, run: dict[str, Any],
                  window_s: tuple[float, float] | None = None) -> dict[str, Any]:
    """Write ``build_summary(...)`` as JSON to ``path`` (a file) and return it."""
    summary = build_summary(requests, run, window_s)
    with open(path, "w") as f:
        json.dump(summary, f, indent=2, allow_nan=False)
    return summary


def summary_metrics(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``{scope: metrics}`` part of a summary.json dict.

    Accepts ``{"run":..., "metrics": {...}}`` (what build_summary writes), a
    ``"summary"`` key instead of ``"metrics"``, or scopes at the top level next to ``run``.
    """
    for key in ("metrics", "summary"):
        if isinstance(summary.get(key), dict):
            return summary[key]
    return {k: v for k, v in summary.items() if k != "run" and isinstance(v, dict)}


# ---------------------------------------------------------------- terminal tables


_LATENCY_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E", "queueing": "queueing"}


def _unit(values: Iterable[float]) -> tuple[str, float]:
    """('ms', 1e3) when every finite value is below 1 s, else ('s', 1)."""
    finite = [abs(v) for v in values if v is not None and np.isfinite(v)]
    return ("s", 1.0) if finite and max(finite) >= 1.0 else ("ms", 1e3)


def _fmt(v: Any, scale: float = 1.0, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        x = float(v) * scale
        return f"{x:.{digits}f}" if abs(x) < 1e6 else f"{x:.3g}"
    return str(v)


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Plain text table; the first ``left`` columns left-aligned, the rest right-aligned.
    A header cell may hold "\\n" for a two-line header."""
    head = [h.split("\n") for h in header]
    n_head = max(len(h) for h in head)
    head = [[""] * (n_head - len(h)) + h for h in head]
    widths = [max(len(x) for x in [*head[i], *(r[i] for r in rows)]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()

    header_lines = [line([h[k] for h in head]) for k in range(n_head)]
    return "\n".join([*header_lines, "  ".join("-" * w for w in widths), *map(line, rows)])


def format_summary(summary_df: pd.DataFrame) -> str:
    """Two blocks for a terminal: latency (rows scope x metric, with the unit per row) and
    counts / throughput / SLO attainment (rows per scope)."""
    lat_rows = []
    for scope, row in summary_df.iterrows():
        for i, m in enumerate(LATENCY_METRICS):
            vals = [row[f"{m}_{s}_s"] for s in STATS]
            unit, scale = _unit(vals)
            lat_rows.append([str(scope) if i == 0 else "", _LATENCY_NAMES[m], unit,
                             *(_fmt(v, scale, 1 if unit == "ms" else 3) for v in vals)])
    latency = _table(["scope", "metric", "unit", "mean", "p50", "p90", "p99"], lat_rows, left=3)

    thr_rows = []
    for scope, row in summary_df.iterrows():
        slo = row["slo_attainment"]
        thr_rows.append([str(scope), *(_fmt(row[c], 1, 0) for c in COUNT_COLUMNS),
                         _fmt(row["output_tokens_per_s"], 1, 1), _fmt(row["requests_per_s"], 1, 3),
                         _fmt(slo, 100.0, 1)])
    throughput = _table(["scope", "requests", "finished", "rejected", "unfinished",
                         "out tok/s", "req/s", "SLO met %"], thr_rows)
    return f"Latency (finished requests)\n{latency}\n\nThroughput and SLO\n{throughput}"


# ---------------------------------------------------------------- comparing runs


def compare_runs(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run from several summary.json dicts.

    Columns: the run metadata (keys of each ``run`` dict; non-scalar values as JSON
    strings), the ``all`` scope metrics (``SUMMARY_COLUMNS``), then per request class
    ``<class>_ttft_p90_s`` and ``<class>_slo_attainment``.
    """
    records = []
    classes: list[str] = []
    for summary in rows:
        run = summary.get("run") or {}
        rec: dict[str, Any] = {
            k: (v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v))
            for k, v in run.items()
        }
        metrics = summary_metrics(summary)
        for col in SUMMARY_COLUMNS:
            rec[col] = (metrics.get(ALL_SCOPE) or {}).get(col)
        for scope, m in metrics.items():
            if scope == ALL_SCOPE:
                continue
            classes.append(scope)
            rec[f"{scope}_ttft_p90_s"] = m.get("ttft_p90_s")
            rec[f"{scope}_slo_attainment"] = m.get("slo_attainment")
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    meta = [c for c in df.columns if c not in SUMMARY_COLUMNS and not c.endswith(
        ("_ttft_p90_s", "_slo_attainment"))]
    per_class = [f"{c}_{x}" for c in class_order(classes) for x in ("ttft_p90_s", "slo_attainment")]
    metric_cols = [c for c in SUMMARY_COLUMNS if c in df.columns]
    df = df.reindex(columns=meta + metric_cols + per_class)
    numeric = metric_cols + per_class
    if len(df):
        df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")
    return df


_COMPARE_META = ("name", "trace", "policy", "cluster", "model", "predictor", "seed", "backend")


def format_comparison(df: pd.DataFrame) -> str:
    """Terminal table of ``compare_runs`` output: run metadata that tells the runs apart
    (the usual names when all agree), then a latency block, a throughput / SLO block and
    a per-class block (TTFT p90, SLO attainment)."""
    if len(df) == 0:
        return "(no runs)"
    meta = [c for c in df.columns if c not in SUMMARY_COLUMNS
            and not c.endswith(("_ttft_p90_s", "_slo_attainment"))]
    varying = [c for c in meta if df[c].astype(str).nunique() > 1]
    keys = [c for c in _COMPARE_META if c in varying] + [
        c for c in varying if c not in _COMPARE_META and c != "wall_s"]
    if not keys:
        keys = [c for c in _COMPARE_META if c in meta and df[c].notna().any()][:2]
    keys = keys[:4] or ["#"]
    left = len(keys)
    labels = [[_fmt(r[k]) if k in df else str(i) for k in keys] for i, (_, r) in enumerate(df.iterrows())]

    lat_cols = [("ttft", "p50"), ("ttft", "p90"), ("ttft", "p99"), ("tpot", "p50"), ("tpot", "p90"),
                ("e2e", "p90"), ("queueing", "p90")]
    units = {c: _unit(df[f"{c[0]}_{c[1]}_s"].tolist()) for c in lat_cols}
    lat_header = keys + [f"{_LATENCY_NAMES[m]}\n{s} [{units[(m, s)][0]}]" for m, s in lat_cols]
    lat_rows = [lab + [_fmt(r[f"{m}_{s}_s"], units[(m, s)][1], 1 if units[(m, s)][0] == "ms" else 3)
                       for m, s in lat_cols]
                for lab, (_, r) in zip(labels, df.iterrows())]

    thr_header = keys + ["finished", "rejected", "out\ntok/s", "\nreq/s", "SLO\nmet %"]
    thr_rows = [lab + [_fmt(r["finished"], 1, 0), _fmt(r["rejected"], 1, 0),
                       _fmt(r["output_tokens_per_s"]), _fmt(r["requests_per_s"], 1, 3),
                       _fmt(r["slo_attainment"], 100.0)]
                for lab, (_, r) in zip(labels, df.iterrows())]
    text = (f"Latency\n{_table(lat_header, lat_rows, left)}\n\n"
            f"Throughput and SLO\n{_table(thr_header, thr_rows, left)}")

    classes = [c[: -len("_slo_attainment")] for c in df.columns if c.endswith("_slo_attainment")]
    if classes:
        unit, scale = _unit(df[[f"{c}_ttft_p90_s" for c in classes]].to_numpy().ravel().tolist())
        cls_header = keys + [h for c in classes
                             for h in (f"{c}\nTTFT90 [{unit}]", f"{c}\nSLO %")]
        cls_rows = [lab + [v for c in classes for v in (
                        _fmt(r[f"{c}_ttft_p90_s"], scale, 1 if unit == "ms" else 3),
                        _fmt(r[f"{c}_slo_attainment"], 100.0))]
                    for lab, (_, r) in zip(labels, df.iterrows())]
        text += f"\n\nPer class (TTFT90 = TTFT p90; SLO % = SLO met %)\n{_table(cls_header, cls_rows, left)}"
    return text
