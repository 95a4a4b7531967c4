"""The executor's run directory, in the simulator's format (``analysis.load_run`` reads both):
requests.parquet (``policies.records`` columns, backend "executor"), samples.parquet,
layouts.parquet, switches.parquet, summary.json (run metadata and start-up costs), and
steps.parquet: every step's ``StepShape``, measured round trip (``step_s``) and the host time
since the previous step's results (``host_s``, NaN after the loop waited for work): a profile
as served."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from policies.records import RECORD_COLUMNS, SWITCH_COLUMNS

if TYPE_CHECKING:
    from executor.coordinator import Coordinator

SAMPLE_COLUMNS = ["time_s", "group", "tp_gpus", "queued_requests", "running_requests",
                  "kv_blocks_used", "kv_blocks_total", "output_tokens_total"]
STEP_COLUMNS = ["time_s", "group", "tp_gpus", "num_tokens", "num_seqs", "num_logits",
                "attn_pairs", "kv_tokens_read", "num_prefill_tokens", "step_s", "host_s"]


def write_run_outputs(out_dir: Path, coordinator: "Coordinator") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    control = coordinator.control
    rows = [r.record("executor") for r in control.requests]
    pd.DataFrame(rows, columns=list(RECORD_COLUMNS)).to_parquet(out_dir / "requests.parquet",
                                                               index=False)
    pd.DataFrame(coordinator.samples, columns=SAMPLE_COLUMNS).to_parquet(
        out_dir / "samples.parquet", index=False)
    pd.DataFrame(control.layouts).to_parquet(out_dir / "layouts.parquet", index=False)
    pd.DataFrame([s.row() for s in control.switches], columns=SWITCH_COLUMNS).to_parquet(
        out_dir / "switches.parquet", index=False)
    steps = [{"time_s": t, "group": g, **dataclasses.asdict(shape), "step_s": step_s,
              "host_s": host_s} for t, g, shape, step_s, host_s in coordinator.step_log]
    pd.DataFrame(steps, columns=STEP_COLUMNS).to_parquet(out_dir / "steps.parquet", index=False)
    cfg, model = coordinator.cfg, coordinator.model
    run = {"backend": "executor", "model": model.served_name,
           "policy": cfg.policy_config().kind, "layout": control.describe(control.layout),
           "num_ranks": cfg.num_ranks, "device": cfg.device, "dtype": model.config.dtype,
           "num_requests": len(rows), "end_s": coordinator.now(), "failure": coordinator.failure}
    doc = {"run": run, "startup": coordinator.startup}
    (out_dir / "summary.json").write_text(json.dumps(doc, indent=2, default=str))
    return out_dir
