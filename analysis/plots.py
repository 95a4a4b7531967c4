"""Plots of one run (matplotlib, Agg backend; figures are saved and closed, never shown)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.metrics import ALL_SCOPE, class_order  # noqa: E402

_CDF_PANELS = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "E2E"))


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_latency_cdfs(requests: pd.DataFrame, path) -> Path:
    """TTFT, TPOT and E2E CDFs of the finished requests (TPOT: generated_tokens > 1), one
    panel each, one line per request class (plus ``all`` when there are several classes).
    Log x when the values span more than a decade. Returns ``path``."""
    finished = requests[requests["status"] == "finished"]
    classes = class_order(finished["request_class"].unique())
    scopes = ([(ALL_SCOPE, finished)] if len(classes) != 1 else []) + [
        (c, finished[finished["request_class"].astype(str) == c]) for c in classes]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (col, label) in zip(axes, _CDF_PANELS):
        positive_min, vmax = np.inf, 0.0
        for scope, df in scopes:
            if col == "tpot_s":
                df = df[df["generated_tokens"] > 1]
            v = np.sort(pd.to_numeric(df[col], errors="coerce").dropna().to_numpy(dtype=float))
            if v.size == 0:
                continue
            y = np.arange(1, v.size + 1) / v.size
            style = dict(color="black", lw=2.0) if scope == ALL_SCOPE else dict(lw=1.4)
            ax.step(v, y, where="post", label=f"{scope} (n={v.size})", **style)
            if (v > 0).any():
                positive_min = min(positive_min, float(v[v > 0].min()))
            vmax = max(vmax, float(v.max()))
        if np.isfinite(positive_min) and vmax > 10 * positive_min:
            ax.set_xscale("log")
        if ax.lines:
            ax.legend(fontsize=8, loc="lower right")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{label} CDF")
        ax.set_xlabel(f"{label} [s]")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Latency CDFs (finished requests)")
    fig.tight_layout()
    return _save(fig, path)


def throughput_series(samples: pd.DataFrame, smooth_periods: int = 1) -> pd.DataFrame:
    """Output throughput over time from the cumulative ``output_tokens_total`` per group.

    Per group, tokens produced between consecutive samples (negative diffs clipped to 0; a
    group that first appears after the first sample time counts its first value, a group
    present at the first sample time counts nothing there), summed over groups per sample
    time and divided by the time since the previous sample time. ``smooth_periods`` > 1
    gives a rolling rate over that many sample periods. Columns ``time_s, tokens,
    output_tokens_per_s`` (rate NaN at the first sample time).
    """
    if len(samples) == 0:
        return pd.DataFrame({"time_s": [], "tokens": [], "output_tokens_per_s": []})
    s = samples[["time_s", "group", "output_tokens_total"]].sort_values(["group", "time_s"])
    first_time = s["time_s"].min()
    delta = s.groupby("group", sort=False)["output_tokens_total"].diff()
    first_of_group = delta.isna()
    delta = delta.where(~first_of_group, np.where(s["time_s"] > first_time,
                                                  s["output_tokens_total"], 0.0))
    s = s.assign(tokens=delta.clip(lower=0).astype(float))
    per_time = s.groupby("time_s", sort=True)["tokens"].sum().reset_index()
    dt = per_time["time_s"].diff()
    k = max(1, int(smooth_periods))
    tokens = per_time["tokens"].where(dt.notna())
    rate = tokens.rolling(k, min_periods=1).sum() / dt.rolling(k, min_periods=1).sum()
    per_time["output_tokens_per_s"] = rate.where(dt.notna())
    return per_time


def _layout_events(axes, layouts: pd.DataFrame | None) -> None:
    """Vertical lines at layout events (and shaded switch durations) when there are >1."""
    if layouts is None or len(layouts) <= 1:
        return
    first = True
    label_events = len(layouts) <= 20
    previous = None
    for _, ev in layouts.sort_values("time_s").iterrows():
        t = float(ev["time_s"])
        dur = float(ev["duration_s"]) if pd.notna(ev.get("duration_s")) else 0.0
        for ax in axes:
            ax.axvline(t, color="tab:red", ls="--", lw=0.9, alpha=0.8,
                       label="layout event" if (first and ax is axes[0]) else None)
            if dur > 0:
                ax.axvspan(t, t + dur, color="tab:red", alpha=0.08)
        if label_events and ev.get("layout") != previous:  # name the layout where it changes
            axes[0].annotate(str(ev.get("layout", "")), (t, 1.0), xycoords=("data", "axes fraction"),
                             fontsize=7, rotation=90, va="top", ha="right", color="tab:red")
        first = False
        previous = ev.get("layout")


def plot_timeseries(samples: pd.DataFrame, path, layouts: pd.DataFrame | None = None,
                    smooth_periods: int = 1) -> Path:
    """Three stacked panels over time: output throughput (tokens/s, summed over groups, per
    sample period or a rolling ``smooth_periods`` window), queued requests, running requests
    with KV usage % (used / total blocks over all groups). Layout events as vertical lines
    when ``layouts`` has more than one row. Returns ``path``."""
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    thr = throughput_series(samples, smooth_periods)
    axes[0].plot(thr["time_s"], thr["output_tokens_per_s"], color="tab:blue", lw=1.2)
    axes[0].set_ylabel("output throughput [tokens/s]")
    axes[0].set_title("Output throughput"
                      + (f" (rolling {smooth_periods} sample periods)" if smooth_periods > 1 else ""))

    per_time = (samples.groupby("time_s", sort=True)[
        ["queued_requests", "running_requests", "kv_blocks_used", "kv_blocks_total"]].sum()
        if len(samples) else pd.DataFrame(columns=["queued_requests", "running_requests",
                                                   "kv_blocks_used", "kv_blocks_total"]))
    t = per_time.index.to_numpy(dtype=float)
    axes[1].plot(t, per_time["queued_requests"].to_numpy(dtype=float), color="tab:orange", lw=1.2)
    axes[1].set_ylabel("queued requests")
    axes[1].set_title("Queue length (all groups)")

    axes[2].plot(t, per_time["running_requests"].to_numpy(dtype=float), color="tab:green", lw=1.2,
                 label="running requests")
    axes[2].set_ylabel("running requests")
    axes[2].set_title("Running requests and KV cache usage (all groups)")
    axes[2].set_xlabel("time [s]")
    kv = axes[2].twinx()
    total = per_time["kv_blocks_total"].to_numpy(dtype=float)
    used = per_time["kv_blocks_used"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        kv_pct = np.where(total > 0, 100.0 * used / total, np.nan)
    kv.plot(t, kv_pct, color="tab:purple", lw=1.0, alpha=0.8, label="KV usage")
    kv.set_ylabel("KV usage [%]")
    kv.set_ylim(0, 105)
    axes[2].legend(handles=axes[2].get_lines() + kv.get_lines(), fontsize=8, loc="upper left")

    _layout_events(list(axes), layouts)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, loc="upper right")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
