"""Run small simulator jobs for the notebooks, so each can make its own inputs when it is
given none. They run ``python -m sim run`` (or ``python -m sim fidelity``) in a subprocess,
the same command a user types, writing into a directory the caller names."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
# Figures only need the Parquet files; the per-run PNGs and the progress bar cost time.
QUIET = ("output.plots=false", "output.progress=false", "output.print_summary=false")
# Synthetic lengths, so a notebook runs from a clean clone without the real traces.
SYNTHETIC_LENGTHS = ("trace.lengths.kind=lognormal", "trace.lengths.prompt_tokens=1024",
                     "trace.lengths.output_tokens=128", "trace.lengths.prompt_tokens_max=8192",
                     "trace.lengths.output_tokens_max=1024")


def _run(args: list[str], timeout_s: float, command: str = "run") -> None:
    cmd = [sys.executable, "-m", "sim", command, *args]
    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"simulator job failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stderr[-3000:]}")


def run_sim(run_dir: str | Path, overrides: Sequence[str], timeout_s: float = 300.0) -> Path:
    """One simulator run into ``run_dir`` (``python -m sim run OVERRIDES``); returns it."""
    run_dir = Path(run_dir).resolve()
    _run([*overrides, *QUIET, f"hydra.run.dir={run_dir}"], timeout_s)
    return run_dir


def run_sweep(sweep_dir: str | Path, overrides: Sequence[str], timeout_s: float = 600.0) -> Path:
    """A Hydra multirun (``python -m sim run -m OVERRIDES``, e.g. ``policy=a,b``) into
    ``sweep_dir``: one numbered job dir per point and ``comparison.csv``; returns the dir."""
    sweep_dir = Path(sweep_dir).resolve()
    _run(["-m", *overrides, *QUIET, f"hydra.sweep.dir={sweep_dir}"], timeout_s)
    return sweep_dir


def run_fidelity(out_dir: str | Path, args: Sequence[str], timeout_s: float = 600.0) -> Path:
    """``python -m sim fidelity --output-dir OUT_DIR ARGS``: the executor (CPU ranks) and the
    simulator on the same trace; writes ``fidelity.csv`` and every run dir. Needs the
    ``executor`` extra (torch). Returns ``out_dir``."""
    out_dir = Path(out_dir).resolve()
    _run(["--output-dir", str(out_dir), *args], timeout_s, command="fidelity")
    if not (out_dir / "fidelity.csv").is_file():
        raise RuntimeError(f"python -m sim fidelity wrote no fidelity.csv in {out_dir}")
    return out_dir
