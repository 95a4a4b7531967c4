"""Helpers that write small trace files into tmp_path (no real data is copied into the repo)."""
from __future__ import annotations

import json
from pathlib import Path

from traces.real import AZURE_HEADER

# <repo>/../shared/traces, where the real traces live next to the repository.
SHARED_TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "traces"

AZURE_ROWS = [
    "2023-11-16 18:15:46.6805900,374,44",
    "2023-11-16 18:15:50.9951690,396,109",
    "2023-11-16 18:15:51.0000000,879,55",
    "2023-11-16 18:15:53.5000000,91,16",
]


def write_azure(path: Path, rows: list[str], header: str = AZURE_HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def mooncake_line(timestamp_ms, input_length, output_length, hash_ids=None) -> str:
    row = {"timestamp": timestamp_ms, "input_length": input_length, "output_length": output_length}
    row["hash_ids"] = list(range(-(-input_length // 512))) if hash_ids is None else hash_ids
    return json.dumps(row)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path
