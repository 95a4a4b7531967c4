"""python -m sim {run,bench,calibrate,fidelity} ..."""
from __future__ import annotations

import sys

USAGE = """usage: python -m sim COMMAND [args]

commands:
  run        replay a trace on a simulated node:  python -m sim run +trace=azure [policy=static_tp ...]
             sweeps: python -m sim run -m +trace=azure policy=static_dp,static_tp
  bench      simulator speed on the full Azure conversation trace (static DP and TP)
  calibrate  check the roofline predictor against measured H100 operator and all-reduce times
  fidelity   the same trace on the real executor (CPU ranks) and here, with this machine's
             profile: per-metric error and policy rankings (python -m sim fidelity --help)
"""


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if len(sys.argv) >= 2 else 2
    command, args = sys.argv[1], sys.argv[2:]
    if command == "run":
        from sim.run import main as run_main
        return run_main(args)
    if command == "bench":
        from sim.bench import main as bench_main
        return bench_main(args)
    if command == "fidelity":
        from sim.fidelity import main as fidelity_main
        return fidelity_main(args)
    if command == "calibrate":
        from sim.calibrate import main as calibrate_main
        return calibrate_main(args)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
