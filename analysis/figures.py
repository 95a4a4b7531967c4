"""The paper-style figures, one function each (matplotlib, Agg; saved and closed, never shown):

- ``plot_load_sweep``: latency (mean / P90 TTFT, mean TPOT) and throughput against load;
- ``plot_layout_timeline``: which group each engine is in over time, with the arrival rate;
- ``plot_priority_tradeoff``: a request class's latency against throughput;
- ``plot_max_context``: the longest servable context per policy and per group width;
- ``plot_fidelity``: simulator against real system, per metric and policy.

Inputs are the tables of ``analysis.runs``, ``analysis.timeline``, ``analysis.capacity`` and
``analysis.fidelity``; every function returns the path it wrote.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.plots import _save, plt, throughput_series
from analysis.timeline import engine_segments, group_counts, switch_spans


def _latency_scale(values) -> tuple[str, float]:
    """('ms', 1e3) when every finite value is below 1 s, else ('s', 1.0)."""
    v = np.abs(pd.to_numeric(pd.Series(list(values)), errors="coerce").dropna().to_numpy(float))
    v = v[np.isfinite(v)]
    return ("s", 1.0) if v.size and v.max() >= 1.0 else ("ms", 1e3)


def _log_if_wide(ax, values, axis: str = "y") -> None:
    """Log scale when the positive values span more than two decades (queues blowing up at
    saturation would otherwise flatten every other point)."""
    v = pd.to_numeric(pd.Series(list(values)), errors="coerce").to_numpy(float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size and v.max() > 100 * v.min():
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _policies(df: pd.DataFrame, policy_col: str) -> list[str]:
    return list(dict.fromkeys(df[policy_col].astype(str)))


_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_DASHES = ("-", "--", "-.", ":")


def _style(i: int) -> dict[str, Any]:
    """Line style of the i-th policy: a marker and dash pattern of its own, so two policies
    with equal results (e.g. two that never switch) stay visible on top of each other."""
    return {"marker": _MARKERS[i % len(_MARKERS)], "ls": _DASHES[i % len(_DASHES)],
            "markersize": 7 - 1.2 * (i % 3), "lw": 1.5}


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")
    if len(df) == 0:
        raise ValueError(f"{what}: no rows")


def _tokens(n: float) -> str:
    """371264 -> '371K', 1485056 -> '1.49M'."""
    if not np.isfinite(n):
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}K" if n >= 1e3 else f"{n:.0f}"


# ---------------------------------------------------------------- (a) load sweep

LOAD_PANELS = (("ttft_mean_s", "mean TTFT"), ("ttft_p90_s", "P90 TTFT"),
               ("tpot_mean_s", "mean TPOT"), ("output_tokens_per_s", "throughput"))


def plot_load_sweep(metrics: pd.DataFrame, path, load_col: str = "offered_rps",
                    policy_col: str = "policy", load_label: str = "offered load [req/s]") -> Path:
    """Four panels against ``load_col``: mean and P90 TTFT, mean TPOT, output throughput;
    one line per policy (a ``run_metrics`` table, one row per run)."""
    _require(metrics, [load_col, policy_col] + [c for c, _ in LOAD_PANELS], "plot_load_sweep")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (col, label) in zip(axes.ravel(), LOAD_PANELS):
        latency = col.endswith("_s") and not col.endswith("_per_s")
        unit, scale = _latency_scale(metrics[col]) if latency else ("tokens/s", 1.0)
        for i, policy in enumerate(_policies(metrics, policy_col)):
            df = metrics[metrics[policy_col].astype(str) == policy].sort_values(load_col)
            ax.plot(df[load_col], df[col] * scale, label=policy, **_style(i))
        if latency:
            _log_if_wide(ax, metrics[col])
        ax.set_title(label)
        ax.set_xlabel(load_label)
        ax.set_ylabel(f"{label} [{unit}]")
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Latency and throughput against load")
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------- (b) layout timeline


def _width_colors(widths) -> dict[int, Any]:
    cmap = plt.get_cmap("viridis")
    widths = sorted({int(w) for w in widths})
    top = max(1, len(widths) - 1)
    return {w: cmap(i / top) for i, w in enumerate(widths)}


def plot_layout_timeline(runs: Sequence[tuple[str, dict]], path, bin_s: float | None = None) -> Path:
    """The layout over time for each ``(label, run)`` (``run`` as ``analysis.load.load_run``
    returns it): arrivals per second (and output throughput) of the first run on top, then
    per run an engine map (a bar per engine, coloured by the TP width of its group; switches
    shaded), and last the number of groups per run. ``bin_s``: the arrival-rate bin (default:
    about 60 bins over the run)."""
    from analysis.timeline import arrival_rate
    if not runs:
        raise ValueError("plot_layout_timeline: no run given")
    n = len(runs)
    fig, axes = plt.subplots(n + 2, 1, figsize=(11, 2.2 * (n + 2) + 0.6), sharex=True,
                             gridspec_kw={"height_ratios": [1.2] + [1.0] * n + [0.8]})
    first = runs[0][1]
    end_s = max(float(r["requests"]["arrival_s"].max()) for _, r in runs)
    bin_s = bin_s or max(end_s / 60.0, 1e-3)
    rate = arrival_rate(first["requests"], bin_s)
    axes[0].step(rate["start_s"], rate["arrivals_per_s"], where="post", color="tab:gray",
                 label="arrivals")
    axes[0].set_ylabel("arrivals [req/s]")
    thr = throughput_series(first["samples"], smooth_periods=max(1, round(bin_s)))
    out = axes[0].twinx()
    out.plot(thr["time_s"], thr["output_tokens_per_s"], color="tab:blue", lw=1.0,
             label=f"output ({runs[0][0]})")
    out.set_ylabel("output [tokens/s]")
    axes[0].legend(handles=axes[0].get_lines() + out.get_lines(), fontsize=8, loc="upper left")
    axes[0].set_title("Arrival rate and output throughput")

    segments = [engine_segments(r["samples"]) for _, r in runs]
    colors = _width_colors(pd.concat(segments)["tp_gpus"] if any(len(s) for s in segments) else [1])
    for ax, (label, run), seg in zip(axes[1:-1], runs, segments):
        # one box per group and span, across its engines, so a TP group reads as one block
        for (_, start, end, width), df in seg.groupby(["group", "start_s", "end_s", "tp_gpus"]):
            low, high = df["engine"].min(), df["engine"].max()
            ax.broken_barh([(start, end - start)], (low - 0.42, high - low + 0.84),
                           color=colors[int(width)])
        spans = switch_spans(run["layouts"])
        for start, done in spans:
            ax.axvspan(start, done, color="tab:red", alpha=0.12)
        ax.set_ylabel("engine")
        ax.invert_yaxis()
        ax.set_title(f"{label}: groups per engine ({len(spans)} switches shaded)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    axes[1].legend(handles, [f"TP{w}" for w in colors], fontsize=8, loc="lower right",
                   bbox_to_anchor=(1.0, 1.0), ncol=len(colors), frameon=False)

    for label, run in runs:
        counts = group_counts(run["samples"])
        axes[-1].step(counts["time_s"], counts["num_groups"], where="pre", label=label)
    axes[-1].set_ylabel("groups")
    axes[-1].set_xlabel("time [s]")
    axes[-1].legend(fontsize=8, loc="upper right")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------- (c) priority tradeoff


def plot_priority_tradeoff(metrics: pd.DataFrame, path, request_class: str = "priority",
                           policy_col: str = "policy",
                           throughput_col: str = "output_tokens_per_s") -> Path:
    """``request_class``'s P90 TTFT and P90 TPOT (two panels) against overall output
    throughput, one line per policy through its runs (e.g. several loads)."""
    cols = [f"{request_class}_ttft_p90_s", f"{request_class}_tpot_p90_s"]
    _require(metrics, [policy_col, throughput_col], "plot_priority_tradeoff")
    if cols[0] not in metrics:
        raise ValueError(f"plot_priority_tradeoff: no {request_class!r} requests in these runs "
                         f"(no column {cols[0]}); mark some, e.g. trace.classes.priority_fraction=0.1")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, col, name in zip(axes, cols, ("P90 TTFT", "P90 TPOT")):
        unit, scale = _latency_scale(metrics[col])
        for i, policy in enumerate(_policies(metrics, policy_col)):
            df = metrics[metrics[policy_col].astype(str) == policy].sort_values(throughput_col)
            ax.plot(df[throughput_col], df[col] * scale, label=policy, **_style(i))
        _log_if_wide(ax, metrics[col])
        ax.set_xlabel("output throughput, all requests [tokens/s]")
        ax.set_ylabel(f"{request_class} {name} [{unit}]")
        ax.set_title(f"{request_class} {name} against throughput")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------- (d) max context


def plot_max_context(capacity: pd.DataFrame, path, served: pd.DataFrame | None = None,
                     widths: pd.DataFrame | None = None) -> Path:
    """Left: the longest servable context per policy (``analysis.capacity.capacity_table``),
    labelled with its factor over one engine, the model's max_model_len as a line; with
    ``served`` (``served_context``), the longest context each policy's run finished and how
    many it rejected as too long. Right, with ``widths`` (``width_capacity``): KV tokens per
    group width with weights resident per engine against sharded over the group."""
    _require(capacity, ["policy", "max_context_tokens", "vs_one_engine", "max_model_len"],
             "plot_max_context")
    ncols = 2 if widths is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.6), squeeze=False)
    ax = axes[0, 0]
    x = np.arange(len(capacity))
    ax.bar(x, capacity["max_context_tokens"], color="tab:blue", alpha=0.75,
           label="servable (KV of the widest group, capped by max_model_len)")
    for i, r in enumerate(capacity.itertuples(index=False)):
        ax.annotate(f"{_tokens(r.max_context_tokens)}\n{r.vs_one_engine:.2f}x one engine",
                    (i, r.max_context_tokens), ha="center", va="bottom", fontsize=7)
    ax.axhline(float(capacity["max_model_len"].max()), color="gray", ls=":", label="max_model_len")
    if served is not None and len(served):
        served_by = served.groupby("policy").agg(served_max_tokens=("served_max_tokens", "max"),
                                                 rejected=("rejected_too_long", "sum"))
        for i, policy in enumerate(capacity["policy"]):
            if policy in served_by.index:
                s = served_by.loc[policy]
                ax.plot(i, s["served_max_tokens"], marker="D", color="tab:orange",
                        label="longest finished in the run" if i == 0 else None)
                if s["rejected"]:
                    ax.annotate(f"{int(s['rejected'])} rejected", (i, s["served_max_tokens"]),
                                xytext=(8, 0), textcoords="offset points", ha="left",
                                va="center", fontsize=7, color="tab:red")
    ax.set_yscale("log")
    top = float(np.nanmax([capacity["max_context_tokens"].max(), capacity["max_model_len"].max()]))
    ax.set_ylim(top=top * 3)  # room for the labels above the bars
    ax.set_xticks(x, capacity["policy"], rotation=20)
    ax.set_ylabel("context [tokens]")
    ax.set_title("Maximum servable context per policy")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    if widths is not None:
        ax = axes[0, 1]
        ax.plot(widths["group_gpus"], widths["resident_tokens"], marker="o",
                label="weights resident per engine (switching)")
        ax.plot(widths["group_gpus"], widths["sharded_tokens"], marker="s",
                label="weights sharded over the group (static TP)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths["group_gpus"], [f"TP{g}" for g in widths["group_gpus"]])
        ax.set_xlabel("group width")
        ax.set_ylabel("KV capacity [tokens]")
        ax.set_title("KV capacity of one group")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------- (e) fidelity


def _metric_unit(metric: str) -> tuple[str, float]:
    """Latencies (``*_s``) in ms; rates (``*_per_s``) and counts as they are."""
    if metric.endswith("_s") and not metric.endswith("_per_s"):
        return "ms", 1e3
    return "", 1.0


def plot_fidelity(table: pd.DataFrame, path, tolerance_pct: float = 10.0) -> Path:
    """One panel per metric of a fidelity table (``FIDELITY_COLUMNS``): simulator and real
    value side by side per policy, the simulator's error written above; a last panel with
    every error against the ``±tolerance_pct`` band."""
    from analysis.fidelity import FIDELITY_COLUMNS
    _require(table, FIDELITY_COLUMNS, "plot_fidelity")
    metrics = list(dict.fromkeys(table["metric"]))
    policies = list(dict.fromkeys(table["policy"]))
    n = len(metrics) + 1
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows), squeeze=False)
    flat = axes.ravel()
    x = np.arange(len(policies))
    for ax, metric in zip(flat, metrics):
        df = table[table["metric"] == metric].set_index("policy").reindex(policies)
        unit, scale = _metric_unit(metric)
        ax.bar(x - 0.2, df["sim"] * scale, 0.4, label="sim", color="tab:blue")
        ax.bar(x + 0.2, df["real"] * scale, 0.4, label="real", color="tab:orange")
        for i, err in enumerate(df["error_pct"]):
            top = np.nanmax([df["sim"].iloc[i], df["real"].iloc[i], 0.0]) * scale
            text = "-" if not np.isfinite(err) else f"{err:+.1f}%"
            ax.annotate(text, (i, top), ha="center", va="bottom", fontsize=8,
                        color="tab:red" if np.isfinite(err) and abs(err) > tolerance_pct else "black")
        ax.set_xticks(x, policies, rotation=20, fontsize=8)
        ax.set_title(metric + (f" [{unit}]" if unit else ""))
        ax.grid(True, axis="y", alpha=0.3)
        ax.margins(y=0.15)
    flat[0].legend(fontsize=8)
    ax = flat[len(metrics)]
    width = 0.8 / max(1, len(policies))
    xm = np.arange(len(metrics))
    for j, policy in enumerate(policies):
        df = table[table["policy"] == policy].set_index("metric").reindex(metrics)
        ax.bar(xm + (j - (len(policies) - 1) / 2) * width, df["error_pct"], width, label=policy)
    ax.axhspan(-tolerance_pct, tolerance_pct, color="tab:green", alpha=0.12,
               label=f"±{tolerance_pct:g}%")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(xm, metrics, rotation=30, fontsize=7, ha="right")
    ax.set_ylabel("sim error vs real [%]")
    ax.set_title("simulator error")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    for extra in flat[n:]:
        extra.set_visible(False)
    fig.suptitle("Fidelity: simulator against the real system")
    fig.tight_layout()
    return _save(fig, path)
