"""Load run directories (requests / samples / layouts Parquet + summary.json) into pandas."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from policies.records import RECORD_COLUMNS

REQUESTS_FILE = "requests.parquet"
SAMPLES_FILE = "samples.parquet"
LAYOUTS_FILE = "layouts.parquet"
SUMMARY_FILE = "summary.json"
SAMPLE_COLUMNS = ["time_s", "group", "tp_gpus", "queued_requests", "running_requests",
                  "kv_blocks_used", "kv_blocks_total", "output_tokens_total"]
LAYOUT_COLUMNS = ["time_s", "layout", "event", "duration_s"]


def _read_parquet(path: Path, columns: list[str]) -> pd.DataFrame:
    """The Parquet file, or an empty frame with ``columns`` when the file is missing."""
    if path.is_file():
        return pd.read_parquet(path)
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """summary.json of a run dir, or ``{}`` when it has none."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return {}
    with open(path) as f:
        return json.load(f)


def load_run(path: str | Path) -> dict[str, Any]:
    """One run directory -> ``{"path", "requests", "samples", "layouts", "summary"}``.

    requests.parquet must exist (FileNotFoundError otherwise); missing samples / layouts
    come back as empty frames with their columns, a missing summary.json as ``{}``.
    """
    run_dir = Path(path)
    if not (run_dir / REQUESTS_FILE).is_file():
        raise FileNotFoundError(f"no run in {run_dir}: {REQUESTS_FILE} not found")
    return {
        "path": run_dir,
        "requests": pd.read_parquet(run_dir / REQUESTS_FILE),
        "samples": _read_parquet(run_dir / SAMPLES_FILE, SAMPLE_COLUMNS),
        "layouts": _read_parquet(run_dir / LAYOUTS_FILE, LAYOUT_COLUMNS),
        "summary": read_summary(run_dir),
    }


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_run_dirs(path: str | Path) -> list[Path]:
    """``[path]`` when it is a run dir (holds requests.parquet), else every run dir below
    it (e.g. the numbered job dirs of a Hydra multirun dir), in natural order (2 before 10).
    Raises FileNotFoundError when there is none."""
    root = Path(path)
    if (root / REQUESTS_FILE).is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no run in {root}: not a directory")
    runs = sorted({p.parent for p in root.rglob(REQUESTS_FILE)}, key=_natural_key)
    if not runs:
        raise FileNotFoundError(
            f"no run in {root}: no {REQUESTS_FILE} in it or in any folder below it")
    return runs


def _meta_value(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v)


def load_requests(paths_or_multirun_dir: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Requests of several runs in one frame.

    Accepts one path or a list of paths; each is a run dir or a dir with run dirs below it
    (a Hydra multirun dir). Adds ``run`` (the run dir's name; ``<parent>/<name>`` when two
    runs share a name) and one column per key of the ``run`` dict in each summary.json
    (``run_<key>`` when the key clashes with a record column; non-scalars as JSON).
    """
    if isinstance(paths_or_multirun_dir, (str, Path)):
        paths_or_multirun_dir = [paths_or_multirun_dir]
    run_dirs = [d for p in paths_or_multirun_dir for d in find_run_dirs(p)]
    if not run_dirs:
        raise FileNotFoundError("no run: no path given")
    names = [d.name for d in run_dirs]
    if len(set(names)) < len(names):
        names = [f"{d.parent.name}/{d.name}" for d in run_dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]

    frames = []
    for name, run_dir in zip(names, run_dirs):
        df = pd.read_parquet(run_dir / REQUESTS_FILE)
        df.insert(0, "run", name)
        for key, value in (read_summary(run_dir).get("run") or {}).items():
            col = key if key not in df.columns and key not in RECORD_COLUMNS else f"run_{key}"
            df[col] = _meta_value(value)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
