"""A sweep's comparison.csv as a Markdown table: the columns issue #3 asks for."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

SCOPES = ("burst", "normal", "priority", "long_context")


def scenario_table(sweep_dir: str | Path) -> str:
    df = pd.read_csv(Path(sweep_dir) / "comparison.csv")
    rows = []
    for _, r in df.iterrows():
        row = {"policy": r["policy"], "P90 TTFT (s)": _f(r.get("ttft_p90_s")),
               "P90 TPOT (ms)": _f(1e3 * r.get("tpot_p90_s", float("nan")), 1)}
        for scope in SCOPES:
            if f"{scope}_ttft_p90_s" in df:
                row[f"{scope} P90 TTFT (s)"] = _f(r[f"{scope}_ttft_p90_s"])
        row["out tok/s"] = _f(r.get("output_tokens_per_s"), 1)
        if "throughput_vs_static_dp" in df:
            row["vs static DP"] = _f(r["throughput_vs_static_dp"])
        row["P90 queueing (s)"] = _f(r.get("queueing_p90_s"))
        for scope in ("all",) + SCOPES:
            col = "slo_attainment" if scope == "all" else f"{scope}_slo_attainment"
            if col in df and df[col].notna().any():
                row[f"SLO {scope} %"] = _f(100 * r[col], 1)
        row["rejected"] = int(r.get("rejected", 0))
        row["switches"] = int(r.get("switches", 0) or 0)
        row["switch time (s)"] = _f(r.get("switch_time_s", 0.0), 1)
        rows.append(row)
    out = pd.DataFrame(rows)
    header = "| " + " | ".join(out.columns) + " |\n|" + "---|" * len(out.columns) + "\n"
    return header + "".join("| " + " | ".join(map(str, v)) + " |\n" for v in out.values)


def _f(x, digits: int = 3) -> str:
    return "-" if x is None or pd.isna(x) else f"{x:.{digits}f}"


if __name__ == "__main__":
    print(scenario_table(sys.argv[1]))
