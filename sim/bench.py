"""`python -m sim bench`: how fast the simulator replays a production trace.

Default workload (issue #2): the full Azure conversation trace (19,366 requests, 1 h) on an
8xH100 node serving Llama-3-8B, under static DP and static TP. Prints wall time, simulated
seconds per wall second and steps per second per layout, and the ratio to the wall-time
budget. ``--compare-stepping`` also runs with the multi-step fast path off and prints the
speed-up and whether the per-request records are identical.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_dir

from sim.config import load_config, register_schema
from sim.run import CONF_DIR, records_frame, simulate

VIDUR_REFERENCE = "Vidur 0.0.26: 88-122 s for one replica on this trace on a 2-core machine"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sim bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default="azure")
    p.add_argument("--policies", nargs="+", default=["static_dp", "static_tp"])
    p.add_argument("--budget-s", type=float, default=30.0, help="wall-time bar per layout")
    p.add_argument("--compare-stepping", action="store_true",
                   help="also run step by step and check the records are identical")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model=llama3_70b")
    return p.parse_args(argv)


def compose_config(trace: str, policy: str, overrides: list[str]):
    register_schema()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"+trace={trace}", f"policy={policy}",
                                           "output.progress=false", *overrides])
    return load_config(cfg)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    rows = []
    for policy in args.policies:
        cfg = compose_config(args.trace, policy, args.overrides)
        result, wall_s = simulate(cfg)
        row = {
            "policy": policy, "layout": result.layouts[0]["layout"],
            "requests": len(result.requests),
            "finished": sum(r.is_finished for r in result.requests),
            "sim_s": result.sim_end_s, "wall_s": wall_s,
            "sim_s_per_wall_s": result.sim_end_s / wall_s, "steps": result.num_steps,
            "steps_per_wall_s": result.num_steps / wall_s, "wall_vs_budget": wall_s / args.budget_s,
        }
        if args.compare_stepping:
            cfg.fast_forward = False
            stepped, stepped_wall_s = simulate(cfg)
            row["stepping_wall_s"] = stepped_wall_s
            row["fast_path_speedup"] = stepped_wall_s / wall_s
            row["records_identical"] = records_frame(result).equals(records_frame(stepped))
        rows.append(row)
        print_row(row, cfg)
    print(f"\nreference: {VIDUR_REFERENCE}")
    ok = all(r["wall_s"] <= args.budget_s for r in rows)
    ok = ok and all(r.get("records_identical", True) for r in rows)
    print("result:", "PASS" if ok else "FAIL",
          f"(every layout within {args.budget_s:.0f} s wall"
          + (", fast path identical to stepping)" if args.compare_stepping else ")"))
    return 0 if ok else 1


def print_row(row: dict, cfg) -> None:
    print(f"\n{cfg.trace.name} | {row['policy']} ({row['layout']}) | {cfg.model.name} on "
          f"{cfg.cluster.name}")
    print(f"  requests {row['requests']} (finished {row['finished']}), "
          f"simulated {row['sim_s']:.0f} s, steps {row['steps']:,}")
    print(f"  wall {row['wall_s']:.2f} s = {row['wall_vs_budget']:.3f} x the "
          f"budget | {row['sim_s_per_wall_s']:.0f} simulated s per wall s | "
          f"{row['steps_per_wall_s']:,.0f} steps per wall s")
    if "stepping_wall_s" in row:
        print(f"  step by step: {row['stepping_wall_s']:.2f} s wall; fast path "
              f"{row['fast_path_speedup']:.1f}x faster; records identical: "
              f"{row['records_identical']}")


if __name__ == "__main__":
    raise SystemExit(main(__import__("sys").argv[1:]))
