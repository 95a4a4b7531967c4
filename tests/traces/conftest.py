"""Fixtures: small trace files in tmp_path, and an isolated default search."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.traces.helpers import AZURE_ROWS, mooncake_line, write_azure, write_lines


@pytest.fixture
def azure_dir(tmp_path: Path) -> Path:
    """A data dir holding a small conversation trace in the published sub-folder layout."""
    folder = tmp_path / "azure_llm_2023_conv"
    folder.mkdir()
    write_azure(folder / "AzureLLMInferenceTrace_conv.csv", AZURE_ROWS)
    return tmp_path


@pytest.fixture
def mooncake_file(tmp_path: Path) -> Path:
    """Ten requests one second apart (0 .. 9 s), input 100*(i+1) tokens, output i+1."""
    lines = [mooncake_line(1000 * i, 100 * (i + 1), i + 1) for i in range(10)]
    return write_lines(tmp_path / "conversation_trace.jsonl", lines)


@pytest.fixture
def isolated_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point every default search location at empty temporary directories."""
    dirs = {name: tmp_path / name for name in ("env", "repo_shared", "xdg")}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.setenv("FLYING_TRACES_DIR", str(dirs["env"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(dirs["xdg"]))
    monkeypatch.setattr("traces.real.REPO_SHARED_DIR", dirs["repo_shared"])
    return dirs
