"""The number a multirun sweeper optimises (`hydra_main`'s return value), from a run's summary.

    objective.metric / objective.scope     which summary metric (default: overall SLO attainment)
    objective.missing                      what to return when it is undefined (no SLO in the scope)
    objective.min_output_tokens_per_s      a throughput floor, absolute, or
    objective.reference_summary            the summary.json of a reference run (e.g. static DP on the
      + objective.min_throughput_ratio     same trace): floor = ratio x its overall output tok/s

With a floor, a run below it is infeasible and scores the negative relative shortfall
-(floor - tput) / floor, in [-1, 0): below every feasible run (a [0, 1] metric such as SLO
attainment), and closer to 0 the closer it is to feasible, which gives the sampler a slope to
follow. ``objective.penalty`` = lambda instead gives the soft form metric - lambda * shortfall.
Written for a metric that is maximised and non-negative.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


@dataclass
class ObjectiveConfig:
    metric: str = "slo_attainment"  # a key of summary.json's metrics[scope]
    scope: str = "all"  # "all", a request class (normal, priority, long_context) or "burst" (bursty traces)
    missing: Optional[float] = 0.0  # returned when the metric is None/NaN; null: return None
    min_output_tokens_per_s: Optional[float] = None  # absolute throughput floor (overall tok/s)
    reference_summary: Optional[str] = None  # summary.json of a reference run, e.g. static DP
    min_throughput_ratio: float = 0.95  # floor = this x the reference's overall output tok/s
    penalty: Optional[float] = None  # null: infeasible scores -shortfall; lambda: metric - lambda*shortfall


def _number(x: Any) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def throughput_floor(cfg: ObjectiveConfig) -> Optional[float]:
    floors = []
    if cfg.min_output_tokens_per_s is not None:
        floors.append(cfg.min_output_tokens_per_s)
    if cfg.reference_summary is not None:
        ref = json.loads(Path(cfg.reference_summary).read_text())
        floors.append(cfg.min_throughput_ratio * float(ref["metrics"]["all"]["output_tokens_per_s"]))
    return max(floors) if floors else None


def objective_value(cfg: ObjectiveConfig, metrics: dict[str, dict[str, Any]]) -> Optional[float]:
    value = _number(metrics.get(cfg.scope, {}).get(cfg.metric))
    if value is None:
        if cfg.missing is None:
            return None
        value = cfg.missing
    floor = throughput_floor(cfg)
    if floor is None or floor <= 0:
        return value
    tput = _number(metrics["all"].get("output_tokens_per_s")) or 0.0
    shortfall = max(0.0, (floor - tput) / floor)
    if cfg.penalty is not None:
        return value - cfg.penalty * shortfall
    return value if shortfall == 0.0 else -shortfall
