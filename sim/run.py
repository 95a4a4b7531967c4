"""`python -m sim run +trace=NAME [group=option ...] [key=value ...]`: one simulated replay."""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import hydra
import pandas as pd
import simpy
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm import tqdm

from analysis.metrics import format_summary, summarize, summary_dict
from policies.policy import make_policy
from policies.records import RECORD_COLUMNS, SWITCH_COLUMNS
from sim.config import ConfigError, SimConfig, load_config, register_schema, trace_options
from sim.client_view import client_record
from sim.node import NodeResult, SimNode
from sim.objective import objective_value
from sim.predictor import RooflinePredictor, ShiftPricer, shift_extra_weight_bytes_per_gpu
from traces import TraceError, load_trace

log = logging.getLogger(__name__)
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def simulate(cfg: SimConfig, progress: bool = False) -> tuple[NodeResult, float]:
    """Load the trace, build the node, run it. Returns the result and the wall time (s)."""
    specs = load_trace(cfg.trace)
    predictor = make_predictor(cfg)
    extra_weight_bytes = 0
    if cfg.policy.kind == "shift":  # SP mode needs a full copy of the weights beside the TP shard
        if not isinstance(predictor, RooflinePredictor):
            raise ConfigError("policy=shift prices sequence-parallel steps, which a profile does "
                              "not measure: use predictor=roofline")
        extra_weight_bytes = shift_extra_weight_bytes_per_gpu(cfg.model, cfg.cluster.num_gpus)
        predictor = ShiftPricer(predictor, cfg.policy.shift_threshold_tokens)
    env = simpy.Environment()
    node = SimNode(env, cfg.model, cfg.cluster, cfg.memory, cfg.scheduler, predictor,
                   make_policy(cfg.policy), switch_config=cfg.switch,
                   dynamic=cfg.policy.kind in ("flying", "slo_aware"),
                   fast_forward=cfg.fast_forward, sample_period_s=cfg.sample_period_s,
                   extra_weight_bytes_per_gpu=extra_weight_bytes)
    horizon_s = specs[-1].arrival_s if specs else 0.0
    bar = tqdm(total=round(horizon_s), unit="sim s", desc=f"{cfg.trace.name}/{cfg.policy.name}",
               disable=None if progress else True, leave=False)

    def tick(now_s: float) -> None:
        bar.update(min(round(now_s), bar.total) - bar.n)

    start = time.perf_counter()
    result = node.run(specs, until_s=cfg.max_sim_time_s, on_tick=tick)
    wall_s = time.perf_counter() - start
    bar.close()
    report = getattr(predictor, "report", None)
    if report is not None:
        result.predictor_report = report()
        if cfg.predictor.use_client_overhead:
            result.client_overhead_s = predictor.client_overhead_s()
        result.predictor_report["client_overhead_s"] = {
            str(w): o for w, o in result.client_overhead_s.items()}
        if result.predictor_report["fallback_steps"]:
            log.warning("%d step(s) outside the profile were priced by the roofline: %s",
                        result.predictor_report["fallback_steps"],
                        result.predictor_report["fallback_reasons"])
    return result, wall_s


def make_predictor(cfg: SimConfig):
    """The configured step-time predictor. A profiled one may also set the flip time from
    its measurement (``predictor.use_profiled_flip``)."""
    roofline = RooflinePredictor(cfg.model, cfg.cluster.gpu, cfg.predictor)
    if cfg.predictor.kind != "profiled":
        return roofline
    from sim.profiled import ProfiledPredictor, load_profile
    predictor = ProfiledPredictor(load_profile(cfg.predictor.profile_path), cfg.model, roofline)
    flip_s = predictor.flip_s()
    if cfg.predictor.use_profiled_flip and flip_s is not None:
        log.info("switch.flip_s %.4g s -> %.4g s (measured in %s)", cfg.switch.flip_s, flip_s,
                 predictor.profile["path"])
        cfg.switch.flip_s = flip_s
    return predictor


def records_frame(result: NodeResult) -> pd.DataFrame:
    rows = [client_record(r, r.record("sim"), result.client_overhead_s)
            for r in result.requests]
    return pd.DataFrame(rows, columns=list(RECORD_COLUMNS))


def write_outputs(cfg: SimConfig, result: NodeResult, wall_s: float, out_dir: Path,
                  choices: dict[str, str] | None = None) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    requests = records_frame(result)
    requests.to_parquet(out_dir / "requests.parquet", index=False)
    samples = pd.DataFrame(result.samples)
    samples.to_parquet(out_dir / "samples.parquet", index=False)
    layouts = pd.DataFrame(result.layouts)
    layouts.to_parquet(out_dir / "layouts.parquet", index=False)
    switches = pd.DataFrame([s.row() for s in result.switches], columns=SWITCH_COLUMNS)
    switches.to_parquet(out_dir / "switches.parquet", index=False)
    summary = summarize(requests)
    meta = run_metadata(cfg, result, wall_s, choices)
    doc = {"run": meta, "metrics": summary_dict(summary)}  # analysis.load reads this shape
    burst = burst_window_s(cfg)
    if burst is not None:  # the requests that arrive during the burst, as their own scope
        in_burst = requests[requests.arrival_s.between(*burst, inclusive="left")]
        doc["metrics"]["burst"] = summary_dict(summarize(in_burst)).get("all", {})
    (out_dir / "summary.json").write_text(json.dumps(doc, indent=2))
    if cfg.output.plots:
        from analysis.plots import plot_latency_cdfs, plot_timeseries
        plot_latency_cdfs(requests, out_dir / "latency_cdf.png")
        # About 300 points over the run: 1 s samples over an hour are mostly noise.
        smooth = max(1, round(result.sim_end_s / cfg.sample_period_s / 300))
        plot_timeseries(samples, out_dir / "timeseries.png", layouts=layouts,
                        smooth_periods=smooth)
    if cfg.output.print_summary:
        print(f"\n{meta['trace']} | {meta['policy']} ({meta['layout']}) | {meta['model']} on "
              f"{meta['cluster']} | {meta['num_requests']} requests, "
              f"{meta['sim_end_s']:.0f} simulated s in {wall_s:.1f} s wall")
        print(format_summary(summary))
        if result.switches:
            print(f"switches: {len(result.switches)}, drain+flip {meta['switch_time_s']:.2f} s, "
                  f"recomputed {meta['recomputed_tokens_at_switches']} tokens")
        if result.stalled:
            print("warning: the run stalled with requests unfinished (see status 'unfinished')")
        print(f"outputs: {out_dir}")
    return doc


def burst_window_s(cfg: SimConfig) -> tuple[float, float] | None:
    t = cfg.trace
    if t.source != "bursty":
        return None
    return (t.burst_start_frac * t.duration_s / t.rate_scale,
            t.burst_end_frac * t.duration_s / t.rate_scale)


def run_metadata(cfg: SimConfig, result: NodeResult, wall_s: float,
                 choices: dict[str, str] | None) -> dict:
    choices = choices or {}
    return {
        "backend": "sim",
        "trace": cfg.trace.name,
        "policy": cfg.policy.name,
        "layout": result.layouts[0]["layout"],
        "model": cfg.model.name,
        "cluster": cfg.cluster.name,
        "gpus_per_engine": cfg.cluster.gpus_per_engine,
        "predictor": cfg.predictor.kind,
        "experiment": choices.get("experiment"),
        "seed": cfg.seed,
        "rate_scale": cfg.trace.rate_scale,
        "num_requests": len(result.requests),
        "sim_end_s": result.sim_end_s,
        "num_steps": result.num_steps,
        "wall_s": wall_s,
        "sim_s_per_wall_s": result.sim_end_s / wall_s if wall_s > 0 else None,
        "fast_forward": cfg.fast_forward,
        "switches": len(result.switches),
        "switch_time_s": sum(s.flip_s + (s.drain_s or 0.0) for s in result.switches),
        "recomputed_tokens_at_switches": sum(s.recomputed_tokens for s in result.switches),
        "stalled": result.stalled,
        "predictor_report": result.predictor_report,
        "scheduler": asdict(cfg.scheduler),
    }


register_schema()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    try:
        typed = load_config(cfg)
        result, wall_s = simulate(typed, progress=typed.output.progress)
    except (ConfigError, TraceError, ValueError) as e:
        # A user error, not a crash: one clear line, non-zero exit, no traceback.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    hc = HydraConfig.get()
    doc = write_outputs(typed, result, wall_s, Path(hc.runtime.output_dir),
                        dict(hc.runtime.choices))
    # The objective a sweeper optimises (conf: objective.*); default: overall SLO attainment,
    # 0.0 when no request has an SLO (a sweeper needs a number). See docs/sweeps.md.
    return objective_value(typed.objective, doc["metrics"])


def _chooses_trace(argv: list[str]) -> bool:
    """The trace group has no default; Hydra would fail on it with an interpolation error
    deep in its own config, so say it plainly first."""
    info_flags = ("-h", "--help", "--hydra-help", "--info", "-c", "--cfg", "--shell-completion")
    return any(a.startswith(("+trace=", "trace=", "experiment=", "+experiment=")) or
               a in info_flags or a.startswith(info_flags) for a in argv)


def main(argv: list[str]) -> int:
    if not _chooses_trace(argv):
        print("error: no trace chosen: add +trace=NAME, one of " + ", ".join(trace_options())
              + " (or experiment=NAME)", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], *argv]
    hydra_main()
    return 0
