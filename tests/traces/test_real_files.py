"""Parsing of the Azure CSV and Mooncake JSONL formats, and the data-dir search."""
from __future__ import annotations

import pytest

from tests.traces.helpers import AZURE_ROWS, mooncake_line, write_azure, write_lines
from traces import TraceError, load_trace
from traces.real import parse_azure_csv, parse_mooncake_jsonl


def _cfg(source, **kw):
    return {"name": "t", "source": source, **kw}


def test_azure_parses_rows_and_7_digit_fractions(azure_dir):
    reqs = load_trace(_cfg("azure", data_dir=str(azure_dir)))
    assert [r.request_id for r in reqs] == [0, 1, 2, 3]
    assert reqs[0].arrival_s == 0.0
    assert reqs[1].arrival_s == pytest.approx(50.9951690 - 46.6805900, abs=1e-7)
    assert reqs[3].arrival_s == pytest.approx(53.5 - 46.6805900, abs=1e-7)
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs[:2]] == [(374, 44), (396, 109)]
    assert all(r.hash_ids is None and r.request_class == "normal" for r in reqs)
    assert all(type(r.prompt_tokens) is int and type(r.arrival_s) is float for r in reqs)


def test_azure_timestamps_cross_midnight(tmp_path):
    path = write_azure(tmp_path / "a.csv", ["2023-12-31 23:59:59.5000000,1,1", "2024-01-01 00:00:01.0000000,1,1"])
    raw = parse_azure_csv(path)
    assert raw.times_s[1] - raw.times_s[0] == pytest.approx(1.5)


def test_mooncake_parses_ms_and_keeps_hash_ids(tmp_path):
    lines = [mooncake_line(0, 1000, 5, [7, 8]), mooncake_line(0, 600, 3, [7, 9]), mooncake_line(3001, 10, 1, [4])]
    path = write_lines(tmp_path / "m.jsonl", lines)
    reqs = load_trace(_cfg("mooncake", file=str(path)))
    assert [r.arrival_s for r in reqs] == [0.0, 0.0, 3.001]
    assert reqs[0].hash_ids == (7, 8) and isinstance(reqs[1].hash_ids, tuple)
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs] == [(1000, 5), (600, 3), (10, 1)]


def test_mooncake_without_hash_ids_gives_none(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", ['{"timestamp": 0, "input_length": 4, "output_length": 2}'])
    assert load_trace(_cfg("mooncake_synthetic", file=str(path)))[0].hash_ids is None


@pytest.mark.parametrize(
    "bad_row, what",
    [
        ("2023-11-16 18:15:52.0000000,5", "expected 3 columns"),
        ("2023-11-16 18:15:52.0000000,5,6,7", "expected 3 columns"),
        ("2023-11-16 18:15:52.0000000,five,6", "ContextTokens is not an integer"),
        ("2023-11-16 18:15:52.0000000,5,6.5", "GeneratedTokens is not an integer"),
        ("2023-11-16 18:15:52.0000000,0,6", "ContextTokens must be >= 1"),
        ("2023-11-16 18:15:52.0000000,5,-1", "GeneratedTokens must be >= 1"),
        ("16/11/2023 18:15:52,5,6", "is not 'YYYY-MM-DD HH:MM:SS.fffffff'"),
        ("2023-02-30 18:15:52.0000000,5,6", "invalid date"),
        ("2023-11-16 25:15:52.0000000,5,6", "invalid time of day"),
        ("2023-11-16 18:15:40.0000000,5,6", "timestamp goes backwards"),
    ],
)
def test_azure_malformed_row_names_file_and_line(tmp_path, bad_row, what):
    # header is line 1, the two good rows lines 2-3, the bad row line 4
    path = write_azure(tmp_path / "bad.csv", AZURE_ROWS[:2] + [bad_row])
    with pytest.raises(TraceError) as err:
        load_trace(_cfg("azure", file=str(path)))
    assert "bad.csv:4:" in str(err.value) and what in str(err.value)


@pytest.mark.parametrize(
    "bad_line, what",
    [
        ('{"timestamp": 5000, "input_length": 3', "invalid JSON"),
        ("[1, 2, 3]", "expected a JSON object"),
        ('{"timestamp": 5000, "output_length": 3}', "missing field 'input_length'"),
        ('{"input_length": 3, "output_length": 3}', "missing field 'timestamp'"),
        ('{"timestamp": "soon", "input_length": 3, "output_length": 3}', "timestamp is not a finite number"),
        ('{"timestamp": 5000, "input_length": 3.5, "output_length": 3}', "input_length is not an integer"),
        ('{"timestamp": 5000, "input_length": 3, "output_length": 0}', "output_length must be >= 1"),
        ('{"timestamp": 5000, "input_length": 3, "output_length": 3, "hash_ids": [1, "x"]}', "hash_ids"),
        ('{"timestamp": 500, "input_length": 3, "output_length": 3}', "timestamp goes backwards"),
    ],
)
def test_mooncake_malformed_line_names_file_and_line(tmp_path, bad_line, what):
    lines = [mooncake_line(0, 10, 1), "", mooncake_line(1000, 10, 1), bad_line]  # blank line 2 is skipped
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(TraceError) as err:
        load_trace(_cfg("mooncake", file=str(path)))
    assert "bad.jsonl:4:" in str(err.value) and what in str(err.value)


def test_azure_wrong_header(tmp_path):
    path = write_azure(tmp_path / "h.csv", AZURE_ROWS, header="time,in,out")
    with pytest.raises(TraceError, match=r"h\.csv:1: expected header 'TIMESTAMP,ContextTokens,GeneratedTokens'"):
        parse_azure_csv(path)


@pytest.mark.parametrize("content", ["", "TIMESTAMP,ContextTokens,GeneratedTokens\n"])
def test_azure_empty_file(tmp_path, content):
    path = tmp_path / "e.csv"
    path.write_text(content)
    with pytest.raises(TraceError, match=r"e\.csv: (empty file|no requests)"):
        parse_azure_csv(path)


def test_mooncake_empty_file(tmp_path):
    path = write_lines(tmp_path / "e.jsonl", ["", ""])
    with pytest.raises(TraceError, match=r"e\.jsonl: no requests"):
        parse_mooncake_jsonl(path)


def test_missing_file_lists_paths_tried_and_publisher(isolated_search):
    with pytest.raises(TraceError) as err:
        load_trace(_cfg("azure"))
    msg = str(err.value)
    for d in isolated_search.values():
        assert str(d) in msg
    xdg_dir = isolated_search["xdg"] / "flying-serving" / "traces"
    assert str(xdg_dir / "azure_llm_2023_conv" / "AzureLLMInferenceTrace_conv.csv") in msg
    assert str(xdg_dir / "AzureLLMInferenceTrace_conv.csv") in msg
    assert "https://github.com/Azure/AzurePublicDataset" in msg
    assert "trace.data_dir=" in msg and "FLYING_TRACES_DIR" in msg


def test_missing_mooncake_names_its_publisher(tmp_path):
    with pytest.raises(TraceError) as err:
        load_trace(_cfg("mooncake_synthetic", data_dir=str(tmp_path)))
    msg = str(err.value)
    assert "https://github.com/kvcache-ai/Mooncake" in msg and "synthetic_trace.jsonl" in msg
    assert str(tmp_path / "mooncake_fast25_synthetic" / "synthetic_trace.jsonl") in msg


def test_explicit_data_dir_is_the_only_place_searched(tmp_path, isolated_search):
    write_azure(isolated_search["env"] / "AzureLLMInferenceTrace_conv.csv", AZURE_ROWS)
    with pytest.raises(TraceError) as err:
        load_trace(_cfg("azure", data_dir=str(tmp_path / "nowhere")))
    assert str(isolated_search["env"]) not in str(err.value)


@pytest.mark.parametrize("where", ["env", "repo_shared", "xdg"])
def test_default_search_finds_bare_file(isolated_search, where):
    folder = isolated_search[where]
    if where == "xdg":
        folder = folder / "flying-serving" / "traces"
        folder.mkdir(parents=True)
    write_azure(folder / "AzureLLMInferenceTrace_code.csv", AZURE_ROWS[:2])
    assert len(load_trace(_cfg("azure_code"))) == 2


def test_env_var_dir_comes_before_repo_shared(isolated_search):
    write_azure(isolated_search["env"] / "AzureLLMInferenceTrace_conv.csv", AZURE_ROWS[:1])
    write_azure(isolated_search["repo_shared"] / "AzureLLMInferenceTrace_conv.csv", AZURE_ROWS)
    assert len(load_trace(_cfg("azure"))) == 1


def test_explicit_file_overrides_search(azure_dir, tmp_path):
    other = write_azure(tmp_path / "mine.csv", AZURE_ROWS[:3])
    assert len(load_trace(_cfg("azure", data_dir=str(azure_dir), file=str(other)))) == 3
