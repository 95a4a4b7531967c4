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
        table = compare_runs(rows)
        table.to_csv(sweep_dir / "comparison.csv", index=False)
        print(f"\ncomparison of {len(rows)} runs ({sweep_dir / 'comparison.csv'}):")
        print(format_comparison(table))


def _job_num(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)
