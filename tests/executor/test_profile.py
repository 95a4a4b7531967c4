"""``python -m executor profile`` on two gloo ranks: the file it writes records the machine and
the model, its steps carry the control plane's StepShape of what ran, and the simulator's
profiled predictor reads it."""
import json
import subprocess
import sys

import pytest

from executor.profile import (ProfileGrid, SeqSpec, blocks_needed, grid_points, percentile,
                              scheduler_output, step_input)
from policies.specs import ModelSpec


def test_synthetic_steps_match_the_shape_they_are_recorded_as():
    seqs = [SeqSpec(64, 0), SeqSpec(1, 100), SeqSpec(1, 100)]
    step = step_input(seqs, width=2, tokens_per_block=32, vocab_size=50, step_id=3)
    shape = scheduler_output(seqs, 2).shape()
    assert shape.num_tokens == step.num_tokens == 66
    assert (shape.num_seqs, shape.num_logits, shape.num_prefill_tokens) == (3, 3, 64)
    assert shape.kv_tokens_read == 64 + 2 * 101
    tables = [s.block_table for s in step.sequences]
    assert tables == [[0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]  # disjoint, ceil(tokens / 32) each
    assert blocks_needed(seqs, 32) == 10
    assert all(0 <= t < 50 for s in step.sequences for t in s.token_ids)


def test_grid_has_prefill_decode_and_mixed_points():
    kinds = {kind for kind, _ in grid_points(ProfileGrid())}
    assert kinds == {"prefill", "decode", "mixed"}
    with pytest.raises(ValueError, match="decode_batches"):
        ProfileGrid(decode_batches=[]).check()


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50.0, 99.0, 100.0)


def test_profile_command_writes_a_profile_the_simulator_reads(tmp_path):
    out = tmp_path / "profile.json"
    cmd = [sys.executable, "-m", "executor", "profile", "--model", "tiny", "--num-ranks", "2",
           "--prefill-tokens", "8,64", "--prefill-context-tokens", "0",
           "--decode-batches", "1,4", "--decode-context-tokens", "16,64",
           "--mixed-prefill-tokens", "16", "--mixed-decode-batches", "2",
           "--repeats", "2", "--warmup", "1", "--flips", "3", "--kv-cache-mib", "4",
           "--log-level", "warning", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "flip DP<->TP" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["model"]["name"] == "tiny" and doc["settings"]["num_ranks"] == 2
    assert doc["hardware"]["device"] == "cpu" and doc["hardware"]["cpu_count"] >= 1
    assert {r["tp_gpus"] for r in doc["steps"]} == {1, 2}
    assert len(doc["steps"]) == 2 * (2 + 4 + 1)
    assert all(r["step_s"] > 0 and r["samples"] >= 2 for r in doc["steps"])
    assert doc["switch"]["flips"] == 6 and doc["switch"]["flip_s_p99"] >= doc["switch"][
        "flip_s_p50"] > 0

    from sim.predictor import RooflinePredictor
    from sim.profiled import ProfiledPredictor, load_profile
    from policies.specs import GpuSpec
    spec = ModelSpec(**{k: v for k, v in doc["model"].items()})
    gpu = GpuSpec("cpu", 16.0, 2e10, 1e11, "gloo", 5e9)
    predictor = ProfiledPredictor(load_profile(out), spec, RooflinePredictor(spec, gpu))
    shape = scheduler_output([SeqSpec(1, 40)] * 2, 1).shape()
    assert predictor.step_time_s(shape) > 0 and predictor.num_fallbacks == 0


def test_bad_arguments_are_one_clear_error(tmp_path):
    cmd = [sys.executable, "-m", "executor", "profile", "--model", "no_such_shape",
           "-o", str(tmp_path / "p.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr
