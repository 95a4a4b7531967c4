"""Simulator against real system: the fidelity table, read from ``fidelity.csv`` (what
``python -m sim fidelity`` writes) or built from matched simulator and real runs."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

FIDELITY_FILE = "fidelity.csv"
FIDELITY_COLUMNS = ["policy", "metric", "sim", "real", "error_pct"]
# The metrics the fidelity check compares (issue #6), as run_metrics columns.
FIDELITY_METRICS = ("ttft_mean_s", "ttft_p90_s", "tpot_mean_s", "output_tokens_per_s", "switches")
REAL_SOURCES = ("executor", "replay")


def error_pct(sim: float, real: float) -> float:
    """Signed relative error of the simulator, in % of the real value: 100 (sim - real) /
    |real|. 0 when both are 0 (e.g. no switches on either); NaN when only real is 0."""
    if real == 0:
        return 0.0 if sim == 0 else math.nan
    return 100.0 * (sim - real) / abs(real)


def read_fidelity(path: str | Path) -> pd.DataFrame:
    """The fidelity table from a result dir holding ``fidelity.csv`` (or the file itself).
    Checks the columns; ``error_pct`` is recomputed where the file leaves it empty."""
    path = Path(path)
    file = path / FIDELITY_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no fidelity result in {path}: {FIDELITY_FILE} not found "
                                "(python -m sim fidelity writes it)")
    table = pd.read_csv(file)
    missing = [c for c in FIDELITY_COLUMNS if c not in table]
    if missing:
        raise ValueError(f"{file}: missing columns {missing} (expected {FIDELITY_COLUMNS})")
    if len(table) == 0:
        raise ValueError(f"{file}: no rows")
    empty = table["error_pct"].isna()
    table.loc[empty, "error_pct"] = [error_pct(s, r) for s, r in
                                     table.loc[empty, ["sim", "real"]].itertuples(index=False)]
    return table


def fidelity_table(metrics: pd.DataFrame, metric_names=FIDELITY_METRICS) -> pd.DataFrame:
    """``FIDELITY_COLUMNS`` from a ``run_metrics`` table holding, per policy, one simulator
    run (source 'sim') and one real run. The real side is the replay when there is one (the
    client's latencies, as ``python -m sim fidelity`` compares), else the executor's own run.
    A replay cannot see switches: its ``switches`` (NaN) comes from the executor run of the
    same policy when there is one. Policies with only one side are left out; two runs of one
    side for a policy is an error (which to pair?)."""
    rows = []
    for policy, df in metrics.groupby("policy", sort=False):
        sim = df[df["source"] == "sim"]
        replay, executor = df[df["source"] == "replay"], df[df["source"] == "executor"]
        real = replay if len(replay) else executor
        if len(replay) == 1 and len(executor) == 1 and pd.isna(replay["switches"].iloc[0]):
            real = replay.assign(switches=executor["switches"].iloc[0])
        if len(sim) == 0 or len(real) == 0:
            continue
        if len(sim) > 1 or len(real) > 1:
            raise ValueError(f"policy {policy}: {len(sim)} sim and {len(real)} real runs; "
                             "give one of each")
        for m in metric_names:
            s, r = float(sim[m].iloc[0]), float(real[m].iloc[0])
            rows.append({"policy": policy, "metric": m, "sim": s, "real": r,
                         "error_pct": error_pct(s, r)})
    if not rows:
        raise ValueError("no policy has both a sim run and a real (executor or replay) run")
    return pd.DataFrame(rows, columns=FIDELITY_COLUMNS)


def write_fidelity(table: pd.DataFrame, out_dir: str | Path) -> Path:
    """Write ``table`` as ``out_dir/fidelity.csv`` (the format ``read_fidelity`` reads)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table[FIDELITY_COLUMNS].to_csv(out / FIDELITY_FILE, index=False)
    return out / FIDELITY_FILE
