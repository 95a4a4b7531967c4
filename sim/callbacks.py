"""Hydra callback: after a multirun, one comparison table over all jobs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CompareRuns(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from analysis.metrics import compare_runs, format_comparison

        sweep_dir = Path(config.hydra.sweep.dir)
        rows = []
        for summary in sorted(sweep_dir.glob("*/summary.json"), key=lambda p: _job_num(p.parent)):
            doc = json.loads(summary.read_text())
            doc["run"]["job"] = summary.parent.name
            rows.append(doc)
        if not rows:
            print(f"no job in {sweep_dir} wrote a summary.json")
            return
        table = with_relative_throughput(compare_runs(rows))
        table.to_csv(sweep_dir / "comparison.csv", index=False)
        print(f"\ncomparison of {len(rows)} runs ({sweep_dir / 'comparison.csv'}):")
        print(format_comparison(table))


def _job_num(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def with_relative_throughput(table):
    """Throughput of each run over static DP's in the same sweep (same trace), when present."""
    if "policy" not in table or "output_tokens_per_s" not in table:
        return table
    base = table[table.policy == "static_dp"]
    if len(base) == 1:
        table["throughput_vs_static_dp"] = table.output_tokens_per_s / float(
            base.output_tokens_per_s.iloc[0])
    return table
