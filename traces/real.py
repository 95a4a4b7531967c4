"""Loaders for the real public traces (Azure LLM 2023, Mooncake FAST'25).

Each loader returns a RawTrace in the file's own time base; windowing, scaling
and classes happen later in `traces.loader`. Files are never copied into the
repository: they are found in a data directory (see `candidate_paths`).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from traces.errors import TraceError
from traces.raw import RawTrace

# source -> (sub-folder in the data dir, file name), as laid out in ../shared/traces.
TRACE_FILES = {
    "azure": ("azure_llm_2023_conv", "AzureLLMInferenceTrace_conv.csv"),
    "azure_code": ("azure_llm_2023_code", "AzureLLMInferenceTrace_code.csv"),
    "mooncake": ("mooncake_fast25_conversation", "conversation_trace.jsonl"),
    "mooncake_synthetic": ("mooncake_fast25_synthetic", "synthetic_trace.jsonl"),
}
PUBLISHERS = {
    "azure": "https://github.com/Azure/AzurePublicDataset (data/AzureLLMInferenceTrace_conv.csv)",
    "azure_code": "https://github.com/Azure/AzurePublicDataset (data/AzureLLMInferenceTrace_code.csv)",
    "mooncake": "https://github.com/kvcache-ai/Mooncake (FAST25-release/traces/conversation_trace.jsonl)",
    "mooncake_synthetic": "https://github.com/kvcache-ai/Mooncake (FAST25-release/traces/synthetic_trace.jsonl)",
}
DATA_DIR_ENV = "FLYING_TRACES_DIR"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
# Repo root = parent of the `traces` package; the shared data sits beside the repo.
REPO_SHARED_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "traces"


def load_real(source: str, file: str | None = None, data_dir: str | None = None) -> RawTrace:
    path = find_trace_file(source, file, data_dir)
    if source.startswith("azure"):
        return parse_azure_csv(path)
    return parse_mooncake_jsonl(path)


# --- finding the file -------------------------------------------------------------


def search_dirs(data_dir: str | None = None) -> list[Path]:
    """Directories to look in: an explicit data_dir alone, else env var, repo-side, user cache."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    dirs = []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
    dirs.append(REPO_SHARED_DIR)
    cache_root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    dirs.append(Path(cache_root) / "flying-serving" / "traces")
    return dirs


def candidate_paths(source: str, file: str | None = None, data_dir: str | None = None) -> list[Path]:
    if file is not None:
        return [Path(file).expanduser()]
    folder, name = TRACE_FILES[source]
    # Accept both the published sub-folder layout and the bare file in the directory.
    return [p for d in search_dirs(data_dir) for p in (d / folder / name, d / name)]


def find_trace_file(source: str, file: str | None = None, data_dir: str | None = None) -> Path:
    tried = candidate_paths(source, file, data_dir)
    for path in tried:
        if path.is_file():
            return path
    tried_text = "\n".join(f"  - {p}" for p in tried)
    raise TraceError(
        f"trace file for source '{source}' not found. Paths tried:\n{tried_text}\n"
        f"The public trace is published at {PUBLISHERS[source]}. Download it and point at "
        f"its directory with trace.data_dir=... or the {DATA_DIR_ENV} environment variable "
        "(either the sub-folder layout or the bare file works), or give trace.file=..."
    )


# --- parsing helpers --------------------------------------------------------------


def _row_error(path: Path, line_no: int, what: str) -> TraceError:
    return TraceError(f"{path}:{line_no}: {what}")


def _positive_int(value: object, what: str) -> int:
    """Token counts: integers >= 1 (a JSON float like 3.0 or a bool is refused)."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{what} is not an integer: {value!r}") from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} is not an integer: {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


def _check_monotonic(path: Path, line_no: int, t_s: float, previous_s: float | None) -> None:
    if previous_s is not None and t_s < previous_s:
        raise _row_error(
            path, line_no, f"timestamp goes backwards ({t_s:.6f} s after {previous_s:.6f} s on the previous row)"
        )


def _raw_trace(path: Path, times_s, prompt, output, hash_ids=None) -> RawTrace:
    if not times_s:
        raise TraceError(f"{path}: no requests in trace file")
    if hash_ids is not None and all(h is None for h in hash_ids):
        hash_ids = None
    return RawTrace(
        times_s=np.asarray(times_s, dtype=np.float64),
        prompt_tokens=np.asarray(prompt, dtype=np.int64),
        output_tokens=np.asarray(output, dtype=np.int64),
        origin_s=float(times_s[0]),
        hash_ids=hash_ids,
        path=str(path),
    )


# --- Azure LLM inference 2023 (CSV) ----------------------------------------------

# 7 fractional digits, which strptime cannot take, so we parse by hand.
_AZURE_TIMESTAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2}(?:\.\d+)?)")


def _azure_timestamp_s(text: str, day_ordinals: dict[str, int]) -> tuple[int, float]:
    """(day ordinal, seconds of day): kept apart so float seconds keep sub-microsecond precision."""
    text = text.strip()
    m = _AZURE_TIMESTAMP.fullmatch(text)
    if m is None:
        raise ValueError(f"timestamp {text!r} is not 'YYYY-MM-DD HH:MM:SS.fffffff'")
    year, month, day, hour, minute = map(int, m.groups()[:5])
    second = float(m.group(6))
    if hour > 23 or minute > 59 or second >= 60:
        raise ValueError(f"timestamp {text!r} has an invalid time of day")
    date_text = text[:10]
    if date_text not in day_ordinals:
        try:
            day_ordinals[date_text] = dt.date(year, month, day).toordinal()
        except ValueError:
            raise ValueError(f"timestamp {text!r} has an invalid date") from None
    return day_ordinals[date_text], hour * 3600 + minute * 60 + second


def parse_azure_csv(path: Path) -> RawTrace:
    times_s, prompt, output = [], [], []
    day_ordinals: dict[str, int] = {}
    first_day = None
    with open(path, encoding="utf-8-sig") as f:
        header = f.readline().strip()
        if not header:
            raise TraceError(f"{path}: empty file, expected header '{AZURE_HEADER}'")
        if header != AZURE_HEADER:
            raise TraceError(f"{path}:1: expected header '{AZURE_HEADER}', found '{header}'")
        for line_no, line in enumerate(f, start=2):
            line = line.strip()
            if not line:
                continue
            fields = line.split(",")
            if len(fields) != 3:
                raise _row_error(path, line_no, f"expected 3 columns ({AZURE_HEADER}), found {len(fields)}")
            try:
                day, seconds_of_day = _azure_timestamp_s(fields[0], day_ordinals)
                prompt.append(_positive_int(fields[1], "ContextTokens"))
                output.append(_positive_int(fields[2], "GeneratedTokens"))
            except ValueError as e:
                raise _row_error(path, line_no, str(e)) from None
            first_day = day if first_day is None else first_day
            t_s = (day - first_day) * 86400.0 + seconds_of_day
            _check_monotonic(path, line_no, t_s, times_s[-1] if times_s else None)
            times_s.append(t_s)
    return _raw_trace(path, times_s, prompt, output)


# --- Mooncake FAST'25 (JSONL) ----------------------------------------------------


def _mooncake_row(obj: object) -> tuple[float, int, int, tuple[int, ...] | None]:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, found {type(obj).__name__}")
    for key in ("timestamp", "input_length", "output_length"):
        if key not in obj:
            raise ValueError(f"missing field '{key}'")
    stamp_ms = obj["timestamp"]
    if isinstance(stamp_ms, bool) or not isinstance(stamp_ms, (int, float)) or not math.isfinite(stamp_ms):
        raise ValueError(f"timestamp is not a finite number of milliseconds: {stamp_ms!r}")
    hash_ids = obj.get("hash_ids")
    if hash_ids is not None:
        if not isinstance(hash_ids, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) for h in hash_ids
        ):
            raise ValueError("hash_ids is not a list of integers")
        hash_ids = tuple(hash_ids)
    return (
        stamp_ms / 1000.0,
        _positive_int(obj["input_length"], "input_length"),
        _positive_int(obj["output_length"], "output_length"),
        hash_ids,
    )


def parse_mooncake_jsonl(path: Path) -> RawTrace:
    times_s, prompt, output, hash_ids = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                t_s, n_in, n_out, hashes = _mooncake_row(json.loads(line))
            except json.JSONDecodeError as e:
                raise _row_error(path, line_no, f"invalid JSON: {e.msg} (column {e.colno})") from None
            except ValueError as e:
                raise _row_error(path, line_no, str(e)) from None
            _check_monotonic(path, line_no, t_s, times_s[-1] if times_s else None)
            times_s.append(t_s)
            prompt.append(n_in)
            output.append(n_out)
            hash_ids.append(hashes)
    return _raw_trace(path, times_s, prompt, output, hash_ids)


def spread_buckets(times_s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Spread requests sharing a timestamp uniformly over their bucket.

    Mooncake timestamps are quantised to ~3 s buckets. Uniform random offsets
    (sorted, so file order is kept) are what a Poisson process looks like
    inside an interval given its count. The bucket width is the median gap
    between distinct timestamps, cut at the next timestamp so order holds.
    """
    distinct, first_index, counts = np.unique(times_s, return_index=True, return_counts=True)
    if len(distinct) < 2:  # no gap to measure a bucket width from
        return times_s.copy()
    gaps_s = np.diff(distinct)
    width_s = np.minimum(np.append(gaps_s, np.inf), np.median(gaps_s))
    spread = times_s.copy()
    for start, count, t_s, w_s in zip(first_index, counts, distinct, width_s):
        spread[start : start + count] = t_s + np.sort(rng.uniform(0.0, w_s, size=count))
    return spread
