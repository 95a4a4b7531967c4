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


def _named_run_dirs(paths: str | Path | Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Every run dir under ``paths`` and a unique short name for each: the dir's name,
    ``<parent>/<name>`` when two runs share a name, the full path as a last resort."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    run_dirs = [d for p in paths for d in find_run_dirs(p)]
    if not run_dirs:
        raise FileNotFoundError("no run: no path given")
    names = [d.name for d in run_dirs]
    if len(set(names)) < len(names):
        names = [f"{d.parent.name}/{d.name}" for d in run_dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]
    return run_dirs, names


def _meta_value(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v)


def load_requests(paths_or_multirun_dir: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Requests of several runs in one frame.

    Accepts one path or a list of paths; each is a run dir or a dir with run dirs below it
    (a Hydra multirun dir). Adds ``run`` (the run dir's name; ``<parent>/<name>`` when two
    runs share a name) and one column per key of the ``run`` dict in each summary.json
    (``run_<key>`` when the key clashes with a record column; non-scalars as JSON).
    """
    run_dirs, names = _named_run_dirs(paths_or_multirun_dir)
    frames = []
    for name, run_dir in zip(names, run_dirs):
        df = pd.read_parquet(run_dir / REQUESTS_FILE)
        df.insert(0, "run", name)
        for key, value in (read_summary(run_dir).get("run") or {}).items():
            col = key if key not in df.columns and key not in RECORD_COLUMNS else f"run_{key}"
            df[col] = _meta_value(value)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- every kind of run, one frame

SWITCHES_FILE = "switches.parquet"
HYDRA_OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
SOURCES = ("sim", "executor", "replay")
ID_COLUMNS = ("run", "run_dir", "source", "served_by", "policy", "overrides")
UNKNOWN = "unknown"
# Keys a summary may use for "what produced this run" and "what served it". Only the
# simulator and the executor have a fixed format; a replay client's summary is matched
# leniently, so a renamed key does not turn its runs into unknowns.
_SOURCE_KEYS = ("backend", "source", "kind", "mode", "client", "tool", "producer")
_TARGET_KEYS = ("target", "target_backend", "served_by", "server", "system", "engine",
                "backend", "base_url", "url", "endpoint")
_POLICY_KEYS = ("policy", "policy_name", "policy_kind")


def run_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """The run's metadata in a summary.json: its ``run`` dict (simulator, executor), else
    the summary's own scalar entries (a flat summary, as a replay client may write)."""
    if isinstance(summary.get("run"), dict):
        return summary["run"]
    return {k: v for k, v in summary.items() if v is None or isinstance(v, (str, int, float, bool))}


def read_overrides(run_dir: str | Path) -> list[str]:
    """The Hydra overrides of a simulator run (``.hydra/overrides.yaml``), [] without one."""
    path = Path(run_dir) / HYDRA_OVERRIDES_FILE
    if not path.is_file():
        return []
    import yaml  # PyYAML comes with omegaconf; imported here so load.py stays light
    return [str(o) for o in (yaml.safe_load(path.read_text()) or [])]


def _classify_source(value: Any) -> str | None:
    """'sim' / 'executor' / 'replay' from a free-form backend-like value, None if unclear."""
    v = str(value).strip().lower()
    if not v or v in ("none", "nan"):
        return None
    if "replay" in v or "client" in v or "loadgen" in v:
        return "replay"
    if v.startswith("sim"):
        return "sim"
    if "exec" in v or v in ("real", "server"):
        return "executor"
    return None


def detect_source(run_dir: str | Path, summary: dict[str, Any],
                  record_backends: Iterable[Any] = ()) -> str:
    """What produced a run dir: ``sim``, ``executor`` or ``replay`` (``unknown`` if nothing
    says). A replay anywhere wins: a replay client may stamp its records or summary with the
    system it measured, but its latencies are the client's, not the backend's own. Then the
    records' ``backend`` column, the summary's backend-like keys, and last the file layout
    (only the simulator writes ``.hydra/``)."""
    meta = run_metadata(summary)
    top = {k: v for k, v in summary.items() if isinstance(v, (str, int, float, bool))}
    values = [meta.get(k) for k in _SOURCE_KEYS] + [top.get(k) for k in _SOURCE_KEYS]
    values += list(record_backends)
    found = [s for s in (_classify_source(v) for v in values if v is not None) if s]
    if "replay" in found or "replay" in summary or "client" in summary:
        return "replay"
    if found:
        return found[0]
    if (Path(run_dir) / HYDRA_OVERRIDES_FILE).is_file():
        return "sim"
    return UNKNOWN


def _served_by(source: str, summary: dict[str, Any]) -> str:
    """The system that served the requests: the source itself, except for a replay, whose
    target is read from a target-like key (raw value, e.g. 'executor', 'vllm' or a URL)."""
    if source != "replay":
        return source
    meta = run_metadata(summary)
    for where in (meta, summary):
        for key in _TARGET_KEYS:
            value = where.get(key)
            if isinstance(value, str) and value and _classify_source(value) != "replay":
                return _classify_source(value) or value
    return UNKNOWN


def _policy_in_path(run_dir: Path) -> str | None:
    """A policy kind named by a folder of the run's path ('real_static_dp/replay' ->
    static_dp), nearest folder first: a replay client does not know the server's policy,
    but whoever ran it often named the folder after it (python -m sim fidelity does)."""
    from policies.policy import POLICY_KINDS
    kinds = sorted(POLICY_KINDS, key=len, reverse=True)  # static_dp before a shorter match
    for part in reversed(Path(run_dir).resolve().parts):
        tokens = f"_{part.lower().replace('-', '_')}_"
        for kind in kinds:
            if f"_{kind}_" in tokens:
                return kind
    return None


def _policy(run_dir: Path, summary: dict[str, Any], overrides: list[str]) -> str:
    meta = run_metadata(summary)
    for key in _POLICY_KEYS:
        if meta.get(key):
            return str(meta[key])
    for o in overrides:  # a run dir without summary.json: Hydra's own record of the choice
        key, _, value = o.lstrip("+~").partition("=")
        if key == "policy" and value:
            return value
    return _policy_in_path(run_dir) or UNKNOWN


def run_info(run_dir: str | Path, record_backends: Iterable[Any] = ()) -> dict[str, Any]:
    """The identifying columns of one run dir (all of ``ID_COLUMNS`` but ``run``)."""
    summary = read_summary(run_dir)
    overrides = read_overrides(run_dir)
    source = detect_source(run_dir, summary, record_backends)
    return {"run_dir": str(run_dir), "source": source, "served_by": _served_by(source, summary),
            "policy": _policy(Path(run_dir), summary, overrides), "overrides": " ".join(overrides)}


def load_runs(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Requests of simulator runs, executor runs, replay runs and Hydra multirun dirs, in
    one frame: the ``policies.records`` columns plus ``ID_COLUMNS`` first:

    - ``run``: a unique short name (as in ``load_requests``); ``run_dir``: its path;
    - ``source``: sim | executor | replay | unknown (``detect_source``);
    - ``served_by``: the system that served the requests (a replay's target);
    - ``policy``: from the summary, else the Hydra overrides, else a policy named by a
      folder of the path (``real_flying/replay``), else ``unknown``;
    - ``overrides``: the run's Hydra overrides joined by spaces ('' when not a Hydra run);

    then every other key of the summary's run metadata (``run_<key>`` on a clash). Raises
    FileNotFoundError naming the path when a path holds no run.
    """
    run_dirs, names = _named_run_dirs(paths)
    frames = []
    for name, run_dir in zip(names, run_dirs):
        df = pd.read_parquet(run_dir / REQUESTS_FILE)
        backends = df["backend"].dropna().unique() if "backend" in df else ()
        ids = {"run": name, **run_info(run_dir, backends)}
        for i, (col, value) in enumerate(ids.items()):
            df.insert(i, col, value)
        for key, value in run_metadata(read_summary(run_dir)).items():
            if key in ids and str(ids[key]) == str(value):
                continue
            col = f"run_{key}" if key in df.columns or key in RECORD_COLUMNS else key
            df[col] = _meta_value(value)
        if "backend" not in df:  # an old or foreign records file: say who wrote it
            df["backend"] = ids["source"]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def count_switches(run_dir: str | Path) -> int | None:
    """Rows of switches.parquet, which the simulator and the executor write (the summary's
    ``switches`` key exists only for the simulator). None without the file: a replay client
    cannot see the server's switches, and 0 would claim it saw none."""
    path = Path(run_dir) / SWITCHES_FILE
    return len(pd.read_parquet(path, columns=[])) if path.is_file() else None


def override_columns(runs: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    """``runs`` with one column per Hydra override key (``trace.rate_rps=20`` ->
    ``<prefix>trace.rate_rps`` = 20.0; numbers parsed, the rest kept as strings), so a sweep's
    swept keys can be plotted against. Leading '+' / '~' are dropped from the key."""
    out = runs.copy()
    parsed = out["overrides"].fillna("").map(_parse_overrides)
    keys = sorted({k for d in parsed for k in d})
    for key in keys:
        out[f"{prefix}{key}"] = parsed.map(lambda d, k=key: d.get(k))
    return out


def _parse_overrides(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in text.split():
        key, sep, value = item.lstrip("+~").partition("=")
        if sep:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out
