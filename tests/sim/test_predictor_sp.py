"""Shift-Parallelism pricing in the roofline predictor: SP (Ulysses) mode, the per-step TP/SP rule,
the all-to-all cost and the memory of the second weight copy."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from policies.plan import StepShape
from policies.specs import GIB, ClusterSpec, MemoryConfig, ModelSpec, kv_block_bytes_per_gpu, kv_blocks_per_gpu
from sim.predictor import (RooflineConfig, RooflinePredictor, alltoall_time_s, shift_extra_weight_bytes_per_gpu,
                           shift_weight_bytes_per_gpu)

from .test_predictor import CONFIGS, H100, LLAMA3_8B, decode_shape

WIDTHS = (2, 4, 8)
MAX_TOKENS = 8192


def prefill_shape(w: int, n: int, cached: int = 0) -> StepShape:
    """One prefill chunk of n tokens on ``cached`` ones, sampling at its end."""
    return StepShape(w, n, 1, 1, n * cached + n * (n + 1) // 2, cached + n, n)


def decode_batch(w: int, batch: int, context: int) -> StepShape:
    """``batch`` decodes, each on ``context`` cached tokens."""
    return decode_shape(w, batch, batch * (context + 1))


@pytest.fixture(scope="module")
def pred() -> RooflinePredictor:
    return RooflinePredictor(LLAMA3_8B, H100, RooflineConfig())


def crossover(pred: RooflinePredictor, make) -> int | None:
    """Smallest n such that SP is strictly faster than TP for every n' in [n, MAX_TOKENS]."""
    ns = np.arange(1, MAX_TOKENS + 1)
    faster = np.array([pred.sp_step_time_s(make(int(n))) < pred.step_time_s(make(int(n))) for n in ns])
    if not faster[-1]:
        return None
    slower = np.flatnonzero(~faster)
    return int(ns[slower[-1] + 1]) if slower.size else 1


# --- w = 1: SP is TP -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sp_at_width_one_is_tp_bit_for_bit(name):
    rng = np.random.default_rng(7)
    sp_first, tp_first = RooflinePredictor(LLAMA3_8B, H100, CONFIGS[name]), RooflinePredictor(LLAMA3_8B, H100, CONFIGS[name])
    for i in range(300):
        n = int(rng.integers(1, 8193))
        seqs = int(rng.integers(1, n + 1))
        cached = int(rng.integers(0, 100_000))
        shape = StepShape(1, n, seqs, int(rng.integers(0, seqs + 1)), n * cached + n, cached + n, int(rng.integers(0, n + 1)))
        a = (sp_first.sp_step_time_s(shape), sp_first.step_time_s(shape))  # SP fills the caches first
        b = (tp_first.step_time_s(shape), tp_first.sp_step_time_s(shape))
        assert a[0] == a[1] == b[0] == b[1]
        assert sp_first.shift_step_time_s(shape, threshold_tokens=int(rng.integers(0, 9000))) == a[0]


def test_empty_and_invalid_steps(pred):
    assert pred.sp_step_time_s(StepShape(8, 0, 0, 0, 0, 0)) == 0.0
    assert pred.shift_step_time_s(StepShape(8, 0, 0, 0, 0, 0), threshold_tokens=0) == 0.0
    with pytest.raises(ValueError, match="tp_gpus"):
        pred.sp_step_time_s(StepShape(0, 1, 1, 1, 1, 1))
    assert pred.sp_decode_run_times_s(8, 0, 10, 4).tolist() == [0.0] * 4
    assert pred.sp_decode_run_times_s(8, 4, 10, 0).shape == (0,)


# --- the SP formula, by hand -----------------------------------------------------------------------
def test_sp_is_full_weight_layers_on_local_tokens_plus_alltoalls(pred):
    m = LLAMA3_8B
    for w in WIDTHS:
        for n in (1, 7, 1000, 4096):
            local = -(-n // w)
            shape = prefill_shape(w, n, cached=300)
            # TP at width 1 on the local tokens and logits, with TP-w attention and no all-reduce ...
            tp1_local = pred.step_time_s(StepShape(1, local, 1, 1, 0, 0, local))
            attn = pred._attention_s(w, shape.attn_pairs, shape.kv_tokens_read)
            # ... plus, per layer, an all-to-all of q,k,v (8 KV heads >= w: no replication) and one of the output
            qkv = local * (m.q_size + 2 * m.kv_size) * m.dtype_bytes
            out = local * m.q_size * m.dtype_bytes
            comm = m.num_layers * (pred.alltoall_time_s(qkv, w) + pred.alltoall_time_s(out, w))
            assert pred.sp_step_time_s(shape) == pytest.approx(tp1_local + attn + comm, rel=1e-12)


def test_sp_weights_are_full_weights_not_the_shard(pred):
    """Batch-1 decode in SP streams all the weights: within the all-to-alls of TP1's time, not TP-w's."""
    t1 = pred.step_time_s(decode_batch(1, 1, 100))
    for w in WIDTHS:
        sp = pred.sp_step_time_s(decode_batch(w, 1, 100))
        comm = 2 * LLAMA3_8B.num_layers * pred.alltoall_time_s(0, w)  # α only: a few KB per all-to-all
        assert t1 < sp < t1 + comm * 1.05


def test_gqa_heads_are_replicated_in_the_alltoall():
    tiny = ModelSpec(name="tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                     intermediate_size=128, vocab_size=256)
    cfg = RooflineConfig()
    pred = RooflinePredictor(tiny, H100, cfg)
    n, w = 64, 4  # 2 KV heads over 4 GPUs: each destination gets one (replicated) KV head
    shape = prefill_shape(w, n)
    local = n // w
    qkv = local * (tiny.q_size + 2 * w * tiny.head_dim_) * tiny.dtype_bytes
    out = local * tiny.q_size * tiny.dtype_bytes
    comm = tiny.num_layers * (pred.alltoall_time_s(qkv, w) + pred.alltoall_time_s(out, w))
    tp1_local = pred.step_time_s(StepShape(1, local, 1, 1, 0, 0, local))
    attn = pred._attention_s(w, shape.attn_pairs, shape.kv_tokens_read)
    assert pred.sp_step_time_s(shape) == pytest.approx(tp1_local + attn + comm, rel=1e-12)


# --- all-to-all cost -------------------------------------------------------------------------------
def test_alltoall_formula_and_monotone(pred):
    cfg = pred.cfg
    s = 32 * 2**20
    assert pred.alltoall_time_s(s, 1) == 0.0
    assert pred.alltoall_time_s(s, 8) == pytest.approx(
        cfg.allreduce_alpha_w8_s + 7 / 8 * s / cfg.allreduce_bus_bandwidth_w8_bytes_per_s, rel=1e-12)
    assert pred.alltoall_time_s(s, 16) == pytest.approx(  # widths without their own fit: the joint one
        cfg.allreduce_alpha_s + 15 / 16 * s / cfg.allreduce_bus_bandwidth_bytes_per_s, rel=1e-12)
    sizes = np.unique(np.geomspace(1, 2**30, 200).astype(np.int64))
    for w in (2, 3, 4, 8, 16):
        times = [pred.alltoall_time_s(float(b), w) for b in sizes]
        assert all(a < b for a, b in zip(times, times[1:])), w  # strictly increasing in the buffer size
        # an all-to-all moves half what a ring all-reduce of the same buffer moves: never dearer
        assert all(t <= pred.allreduce_time_s(float(b), w) for t, b in zip(times, sizes))
    # at a fixed bandwidth and latency, a wider group costs more per byte of buffer: (w−1)/w grows
    assert [alltoall_time_s(s, w, 1e-5, 3e11) for w in (1, 2, 4, 8, 16)] == \
        sorted(alltoall_time_s(s, w, 1e-5, 3e11) for w in (1, 2, 4, 8, 16))


# --- where SP pays off -----------------------------------------------------------------------------
def test_llama3_8b_w8_sp_loses_batch1_decode_and_wins_large_prefill(pred):
    tp, sp = pred.step_time_s(decode_batch(8, 1, 1000)), pred.sp_step_time_s(decode_batch(8, 1, 1000))
    assert sp > 2.0 * tp  # 9.0 vs 4.1 ms: every GPU streams the full 15 GB of weights
    tp, sp = pred.step_time_s(prefill_shape(8, 8192)), pred.sp_step_time_s(prefill_shape(8, 8192))
    assert tp > 1.6 * sp  # 62.7 vs 34.2 ms: TP's 64 all-reduces of 64 MiB cost ~21 ms
    # a batch of 8192 decodes too
    assert pred.sp_step_time_s(decode_batch(8, 8192, 100)) < pred.step_time_s(decode_batch(8, 8192, 100))


@pytest.mark.parametrize("w,kind,expected", [
    (8, "decode", 987), (8, "prefill", 1005),
    (4, "decode", 924), (4, "prefill", 955),
    (2, "decode", 750), (2, "prefill", 780),
])
def test_crossover_exists_and_where(pred, w, kind, expected):
    """Above the crossover SP wins at every size up to 8192 tokens, below it TP wins (bar Ulysses
    padding of odd sizes right at the crossover). The numbers are today's default fit, pinned
    within ±10 % so that a recalibration moves them without breaking the shape."""
    make = (lambda n: decode_batch(w, n, 1000)) if kind == "decode" else (lambda n: prefill_shape(w, n, 1000))
    x = crossover(pred, make)
    assert x is not None
    assert expected * 0.9 <= x <= expected * 1.1, x
    assert all(pred.sp_step_time_s(make(n)) > pred.step_time_s(make(n)) for n in range(1, int(0.9 * x), 13))


def test_crossover_moves_with_context_only_through_padding(pred):
    """Attention is the same term in both modes: the context does not move the crossover."""
    at = {ctx: crossover(pred, lambda n: decode_batch(8, n, ctx)) for ctx in (0, 1000, 32_000)}
    assert len(set(at.values())) == 1, at


def test_shift_rule_picks_tp_below_threshold_and_sp_at_or_above(pred):
    for threshold in (1, 256, 987, 4096):
        for n in (1, 255, 256, 986, 987, 4096, 8192):
            shape = prefill_shape(8, n)
            want = pred.step_time_s(shape) if n < threshold else pred.sp_step_time_s(shape)
            assert pred.shift_step_time_s(shape, threshold) == want
    # at the crossover the rule is never worse than the better mode by more than padding noise
    for n in range(1, MAX_TOKENS + 1, 37):
        shape = decode_batch(8, n, 500)
        best = min(pred.step_time_s(shape), pred.sp_step_time_s(shape))
        assert pred.shift_step_time_s(shape, 987) <= best * 1.01


# --- fast-forward: SP and shift decode runs equal stepping bit for bit ------------------------------
@settings(max_examples=150, deadline=None)
@given(w=st.sampled_from((1, 2, 3, 4, 8, 16)), batch=st.integers(1, 4096), kv=st.integers(0, 2**40),
       k=st.integers(1, 64), threshold=st.integers(0, 5000), run_first=st.booleans())
def test_sp_and_shift_decode_runs_equal_stepping(w, batch, kv, k, threshold, run_first):
    run_pred = RooflinePredictor(LLAMA3_8B, H100)
    step_pred = run_pred if run_first else RooflinePredictor(LLAMA3_8B, H100)
    sp_run = run_pred.sp_decode_run_times_s(w, batch, kv, k)
    shift_run = run_pred.shift_decode_run_times_s(w, batch, kv, k, threshold)
    shapes = [decode_shape(w, batch, kv + j * batch) for j in range(k)]
    assert sp_run.dtype == np.float64 and sp_run.tolist() == [step_pred.sp_step_time_s(s) for s in shapes]
    assert shift_run.tolist() == [step_pred.shift_step_time_s(s, threshold) for s in shapes]


# --- memory of the second weight copy --------------------------------------------------------------
def test_extra_weight_bytes_by_hand():
    # Llama-3-8B: per layer QKV 4096·(4096+2·1024) + O 4096² + MLP 3·4096·14336 = 218,103,808 params;
    # 32 layers = 6,979,321,856; embedding + LM head 2·128256·4096 = 1,050,673,152; norms 65·4096 = 266,240.
    params = 32 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336) + 2 * 128256 * 4096 + 65 * 4096
    assert params == 8_030_261_248 == LLAMA3_8B.num_params
    full = 2 * params  # bf16: 16,060,522,496 B = 14.96 GiB
    assert full == 16_060_522_496
    # plain TP8 holds a 1/8 shard (2,007,565,312 B); Shift holds that shard AND the full weights
    assert shift_weight_bytes_per_gpu(LLAMA3_8B, 8) == full + 2_007_565_312 == 18_068_087_808
    assert shift_extra_weight_bytes_per_gpu(LLAMA3_8B, 8) == full
    assert RooflinePredictor.shift_extra_weight_bytes_per_gpu(LLAMA3_8B, 8) == full
    for w in (2, 4, 8, 16):
        assert shift_extra_weight_bytes_per_gpu(LLAMA3_8B, w) == full  # the second copy is whole at any w
    assert shift_extra_weight_bytes_per_gpu(LLAMA3_8B, 1) == 0  # w = 1: one mode, one copy
    assert shift_weight_bytes_per_gpu(LLAMA3_8B, 1) == full
    with pytest.raises(ValueError, match="width"):
        shift_weight_bytes_per_gpu(LLAMA3_8B, 0)


def test_extra_weight_bytes_shrink_the_kv_pool_as_expected():
    """How a simulator sizes a Shift group's KV pool: plain TP8's free memory minus the extra copy."""
    cluster = ClusterSpec(name="h100x8", gpu=H100, num_gpus=8, gpus_per_engine=8)
    memory = MemoryConfig()
    block = kv_block_bytes_per_gpu(LLAMA3_8B, 8, memory.block_size_tokens)
    tp_blocks = kv_blocks_per_gpu(LLAMA3_8B, cluster, memory, weight_shards=8)
    usable = H100.memory_bytes * memory.gpu_memory_utilization
    free_tp = usable - LLAMA3_8B.weight_bytes / 8 - memory.activation_reserve_gib * GIB
    assert tp_blocks == int(free_tp // block)
    shift_blocks = int((free_tp - shift_extra_weight_bytes_per_gpu(LLAMA3_8B, 8)) // block)
    # 72 GiB usable - 1.87 GiB shard - 4 GiB reserve = 66.1 GiB for KV under TP8; the copy takes 14.96
    assert shift_blocks / tp_blocks == pytest.approx((66.13 - 14.96) / 66.13, abs=0.005)

