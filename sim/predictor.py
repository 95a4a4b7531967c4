"""Analytic step-time predictor: a per-operator roofline at the step's TP width.

A step of one engine group (``StepShape``) costs, on every GPU of its ``tp_gpus``-wide group
(Megatron split: QKV and gate/up column-parallel, O and down row-parallel, LM head split over
the vocabulary, attention heads split ``tp`` ways)::

    step = L * (sum_g gemm_g(num_tokens) + elementwise(num_tokens))     # linear layers, norms...
         + L * 2 * allreduce(num_tokens * hidden * dtype_bytes)          # only when tp > 1
         + step_overhead_s
         + gemm_lm_head(num_logits)                                      # 0 when num_logits == 0
         + attention(attn_pairs, kv_tokens_read)

    gemm(rows, K, N) = ||(flops / (peak * gemm_eff), bytes / (hbm_bw * hbm_eff))||_p  ∨ kernel_floor_s
                       + kernel_latency_s
        flops = 2 * rows * K * N;  bytes = (K * N + rows * (K + N)) * dtype_bytes   (weight shard + act in/out)
        ||(c, m)||_p = (c^p + m^p)^(1/p): p = inf is the plain roofline max(c, m); p = 2 (default) a smooth
        roofline that charges the compute/memory transition region (fits the measured H100 GEMMs better,
        see docs/predictor_validation.md).
    attention = max(L * 4 * attn_pairs * q_size / tp / (peak * attention_eff),        # QK^T and PV
                    kv_tokens_read * kv_bytes_per_token / tp / (hbm_bw * hbm_eff))    # KV streamed once
    elementwise(T) = elementwise_latency_s + T * elementwise_bytes_per_token / (hbm_bw * elementwise_eff)
    allreduce(S, w) = alpha_w + 2 (w - 1) / w * S / busbw_w      (fitted per width 2/4/8)

An empty step (num_tokens == 0) costs 0.

Sanity anchor (DESIGN.md §3): Llama-3-8B weights stream in 4.8 ms at TP1 and 0.6 ms at TP8 at peak
H100 HBM bandwidth. A batch-1 decode step reads the layers' and the LM head's weights (15.0 GB, 4.5 ms
at peak; the embedding is only gathered) at the fitted hbm_efficiency (0.79): 5.7 ms at TP1; plus
4 GEMM latencies and one small-op group per layer (0.67 + 0.34 ms), plus step_overhead_s (0.5 ms):
≈ 7.2 ms = 1.5x the floor. At TP8 the weights take 0.7 ms but the fixed per-kernel costs do not
shrink and 64 NCCL all-reduces add ~1.8 ms: ≈ 4.1 ms (1.8x faster than TP1, not 8x). Tests pin these
bounds; docs/predictor_validation.md has the breakdown per TP width.

``decode_run_times_s`` prices k consecutive decode steps at once and is bit-identical to calling
``step_time_s`` k times: both add the same cached per-(tp, tokens) and per-(tp, logits) parts to
the same ``_attention_s`` expression, evaluated on Python scalars or on numpy arrays (the same
IEEE multiplications, max and additions in the same order give the same bits).

Shift-Parallelism (Snowflake Arctic Inference; the paper's third baseline) switches every step
between TP and Ulysses sequence parallelism (SP) over the same w GPUs. ``sp_step_time_s`` prices a
step in SP mode: each GPU runs the linear layers, the small ops and the LM head on its
``ceil(num_tokens / w)`` tokens (``ceil(num_logits / w)`` logits) with the FULL weights (no
all-reduce), attention on all tokens for 1/w of the heads (exactly TP's attention term: the KV
layout is head-sharded in both modes, so a mode change moves no KV), and two all-to-alls per
layer::

    sp_step = L * (sum_g gemm_g(ceil(T/w)) @ full weights + elementwise(ceil(T/w)) @ tp=1
                   + alltoall(ceil(T/w) * (q_size + 2 * w * kv_local) * dtype, w)     # q, k, v -> head-sharded
                   + alltoall(ceil(T/w) * q_size * dtype, w))                          # attention out -> token-sharded
            + step_overhead_s + gemm_lm_head(ceil(num_logits/w)) @ full vocab + attention(tp=w)
    alltoall(S, w) = alpha_w + (w - 1) / w * S / busbw_w       (S = one GPU's buffer, nccl-tests' convention)

with kv_local = ceil(num_kv_heads / w) * head_dim (GQA heads replicated when w > num_kv_heads, as in
TP). α and busbw are the all-reduce fits per width (a stated approximation: there is no all-to-all
profile; the intra-node send/recv profile fits α = 7.6 µs and B = 357 GB/s, within 5 % of the
all-reduce bus bandwidth at w = 8 and with a smaller α, so the approximation is on the slow side for
small messages). At w = 1 every extra term is 0.0 and ``sp_step_time_s == step_time_s`` bit for bit.
``shift_step_time_s`` applies Arctic's per-step rule (TP below ``threshold_tokens`` batched tokens,
SP at or above), and ``shift_extra_weight_bytes_per_gpu`` is the memory the second weight copy costs.
For Llama-3-8B on 8 H100s (default fit) SP is 2.2x slower than TP for a batch-1 decode (9.0 vs
4.1 ms: every GPU streams all 15 GB of weights) and 1.8x faster for an 8192-token prefill (34 vs
63 ms: TP's 64 all-reduces of 64 MiB cost ~21 ms); it becomes faster from 987 tokens per step for
pure decodes and from 1005 for a single prefill chunk (w = 4: 924 / 955; w = 2: 750 / 780), pinned
in tests/sim/test_predictor_sp.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from policies.plan import StepShape
from policies.specs import GpuSpec, ModelSpec

# Defaults marked "fit" come from `python -m sim.calibrate` against the Vidur H100 profiles
# (../shared/profiles/vidur_h100_dgx, Llama-2-7B operators at TP 1/2/4/8, NCCL all-reduce on a
# DGX H100); see docs/predictor_validation.md for the method and the errors.


@dataclass
class RooflineConfig:
    kind: str = "roofline"
    # --- GEMMs (fit on mlp.csv: attn_pre_proj, attn_post_proj, mlp_up_proj, mlp_down_proj) ---
    gemm_flops_efficiency: float = 0.7154  # share of dense bf16 peak FLOP/s GEMMs reach (fit)
    hbm_efficiency: float = 0.7914  # share of peak HBM bandwidth streaming weights / KV (fit)
    kernel_floor_s: float = 0.0  # minimum time per GEMM kernel, s, per layer per GEMM (fit: 0)
    kernel_latency_s: float = 5.207e-6  # fixed cost added to every GEMM kernel, s (fit)
    roofline_p: float = 2.0  # compute/memory combination norm: inf = max (plain roofline), 1 = sum.
    #                          Chosen, not fit: p = 2 is within 1 pt of the best MAPE (p ~ 1.25) and
    #                          keeps the efficiencies physical (p = 1 drives hbm_efficiency to 1.0).
    # --- attention (no measurement in the Vidur data: assumption) ---
    attention_flops_efficiency: float = 0.5  # share of peak FLOP/s for QK^T/PV; FlashAttention-2/3
    #                                          reach ~35-75 % of H100 dense bf16 peak (assumption)
    # --- norms, residual adds, RoPE, SiLU*mul (fit on the small ops of mlp.csv) ---
    elementwise_efficiency: float = 0.6365  # share of peak HBM bandwidth these kernels reach (fit)
    elementwise_latency_s: float = 1.066e-5  # fixed cost of a layer's ~6 small kernels, s (fit)
    # --- collectives: α + 2(w−1)/w · S/B_bus (fit on all_reduce.csv, NCCL on a DGX H100) ---
    allreduce_alpha_s: float = 2.259e-5  # latency of one all-reduce, s; joint fit over widths 2/4/8,
    #                                      used for widths without their own value below
    allreduce_bus_bandwidth_bytes_per_s: float = 3.238e11  # bus bandwidth, B/s (joint fit)
    allreduce_alpha_w2_s: float = 1.662e-5  # per-width fits (s and B/s); per width is ~2x more accurate
    allreduce_bus_bandwidth_w2_bytes_per_s: float = 2.821e11  # at 8 GPUs than the joint fit
    allreduce_alpha_w4_s: float = 3.061e-5
    allreduce_bus_bandwidth_w4_bytes_per_s: float = 3.795e11
    allreduce_alpha_w8_s: float = 2.858e-5
    allreduce_bus_bandwidth_w8_bytes_per_s: float = 3.389e11
    # --- per step ---
    step_overhead_s: float = 5e-4  # CPU scheduling / input prep / sampling per step, s. Assumption
    #                                (not in the Vidur data); recalibrate from `executor profile`.

    def __post_init__(self) -> None:
        for name in ("gemm_flops_efficiency", "hbm_efficiency", "attention_flops_efficiency",
                     "elementwise_efficiency"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"predictor.{name}={value} must be in (0, 1]")
        if self.roofline_p < 1.0:
            raise ValueError(f"predictor.roofline_p={self.roofline_p} must be >= 1 (inf for max)")
        for w, (_, bus) in self.allreduce_params().items():
            if bus <= 0:
                raise ValueError(f"predictor: all-reduce bus bandwidth at width {w} must be positive")

    def allreduce_params(self) -> dict[int | None, tuple[float, float]]:
        """(alpha_s, bus_bytes_per_s) per width; key None is the fallback for other widths."""
        return {None: (self.allreduce_alpha_s, self.allreduce_bus_bandwidth_bytes_per_s),
                2: (self.allreduce_alpha_w2_s, self.allreduce_bus_bandwidth_w2_bytes_per_s),
                4: (self.allreduce_alpha_w4_s, self.allreduce_bus_bandwidth_w4_bytes_per_s),
                8: (self.allreduce_alpha_w8_s, self.allreduce_bus_bandwidth_w8_bytes_per_s)}


GEMMS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")  # Vidur's operator names


def layer_gemm_shapes(model: ModelSpec, tp: int) -> dict[str, tuple[float, float]]:
    """Per-GPU GEMM shapes (K, N) of one layer at width tp. KV heads stay whole: when tp exceeds
    num_kv_heads each GPU keeps (a replica of) one KV head, as vLLM does."""
    h, i, d = model.hidden_size, model.intermediate_size, model.head_dim_
    q_local = model.q_size / tp
    kv_local = math.ceil(model.num_kv_heads / tp) * d
    return {
        "attn_pre_proj": (h, q_local + 2 * kv_local),  # fused QKV, column-parallel
        "attn_post_proj": (q_local, h),  # O, row-parallel
        "mlp_up_proj": (h, 2 * i / tp),  # fused gate+up, column-parallel
        "mlp_down_proj": (i / tp, h),  # down, row-parallel
    }


def elementwise_bytes_per_token(model: ModelSpec, tp: int) -> float:
    """HBM bytes the small ops of one layer move per token on one GPU: 2 RMSNorms (read+write h),
    2 residual adds (read 2h, write h), RoPE on the local q and k (read+write), SiLU*mul on the local
    gate/up (read 2I/tp, write I/tp)."""
    h = model.hidden_size
    kv_local = math.ceil(model.num_kv_heads / tp) * model.head_dim_
    elements = 2 * 2 * h + 2 * 3 * h + 2 * (model.q_size / tp + kv_local) + 3 * model.intermediate_size / tp
    return elements * model.dtype_bytes


def gemm_time_s(flops, bytes_, peak_flops: float, hbm_bytes_per_s: float, gemm_eff, hbm_eff,
                p: float, floor_s, latency_s):
    """Roofline time of GEMM kernels; every argument may be a numpy array (broadcast)."""
    compute_s = flops / (peak_flops * gemm_eff)
    memory_s = bytes_ / (hbm_bytes_per_s * hbm_eff)
    if math.isinf(p):
        core_s = np.maximum(compute_s, memory_s)
    else:
        core_s = (compute_s**p + memory_s**p) ** (1.0 / p)
    return np.maximum(core_s, floor_s) + latency_s


def allreduce_time_s(message_bytes, width: int, alpha_s, bus_bytes_per_s):
    """Ring all-reduce cost α + 2(w−1)/w · S/B_bus; 0 at width 1."""
    if width <= 1:
        return 0.0
    return alpha_s + 2.0 * (width - 1) / width * message_bytes / bus_bytes_per_s


class RooflinePredictor:
    def __init__(self, model: ModelSpec, gpu: GpuSpec, cfg: RooflineConfig | None = None):
        self.model, self.gpu = model, gpu
        self.cfg = cfg if cfg is not None else RooflineConfig()
        self._tokens_s: dict[tuple[int, int], float] = {}  # (tp, num_tokens) -> s
        self._logits_s: dict[tuple[int, int], float] = {}  # (tp, num_logits) -> s
        self._attn_coeffs: dict[int, tuple[float, float]] = {}  # tp -> (s per pair, s per kv token)
        self._allreduce = self.cfg.allreduce_params()
        self._sp_tokens_s: dict[tuple[int, int], float] = {}  # SP mode: (width, num_tokens) -> s

    # --- building blocks (vectorized over num_tokens) ---------------------------------------
    def _gemm_s(self, rows, k: float, n: float):
        c, g = self.cfg, self.gpu
        flops = 2.0 * rows * k * n
        bytes_ = (k * n + rows * (k + n)) * self.model.dtype_bytes
        return gemm_time_s(flops, bytes_, g.dense_bf16_flops, g.hbm_bandwidth_bytes_per_s,
                           c.gemm_flops_efficiency, c.hbm_efficiency, c.roofline_p,
                           c.kernel_floor_s, c.kernel_latency_s)

    def operator_times_s(self, tp_gpus: int, num_tokens) -> dict[str, np.ndarray]:
        """Per-layer time of each GEMM and of the elementwise group at ``num_tokens`` (array ok);
        the names match the Vidur profile's operators."""
        rows = np.asarray(num_tokens, dtype=np.float64)
        out = {name: self._gemm_s(rows, k, n) for name, (k, n) in layer_gemm_shapes(self.model, tp_gpus).items()}
        bw = self.gpu.hbm_bandwidth_bytes_per_s * self.cfg.elementwise_efficiency
        out["elementwise"] = self.cfg.elementwise_latency_s + rows * elementwise_bytes_per_token(self.model, tp_gpus) / bw
        return out

    def allreduce_time_s(self, message_bytes: float, width: int) -> float:
        alpha_s, bus_bytes_per_s = self._allreduce.get(width, self._allreduce[None])
        return float(allreduce_time_s(message_bytes, width, alpha_s, bus_bytes_per_s))

    # --- cached parts of a step -------------------------------------------------------------
    def _tokens_part_s(self, tp: int, num_tokens: int) -> float:
        """Everything that depends on (tp, num_tokens): layers' GEMMs, small ops, all-reduces,
        and the fixed step overhead."""
        key = (tp, num_tokens)
        t = self._tokens_s.get(key)
        if t is None:
            m = self.model
            layer_s = sum(float(v) for v in self.operator_times_s(tp, num_tokens).values())
            ar_s = self.allreduce_time_s(num_tokens * m.hidden_size * m.dtype_bytes, tp)
            t = m.num_layers * (layer_s + 2.0 * ar_s) + self.cfg.step_overhead_s
            self._tokens_s[key] = t
        return t

    def _logits_part_s(self, tp: int, num_logits: int) -> float:
        key = (tp, num_logits)
        t = self._logits_s.get(key)
        if t is None:
            m = self.model
            t = float(self._gemm_s(float(num_logits), m.hidden_size, m.vocab_size / tp)) if num_logits else 0.0
            self._logits_s[key] = t
        return t

    def _attention_s(self, tp: int, attn_pairs, kv_tokens_read):
        """Attention of all layers; scalars or numpy arrays (same operations either way)."""
        coeffs = self._attn_coeffs.get(tp)
        if coeffs is None:
            m, g, c = self.model, self.gpu, self.cfg
            kv_heads_local = math.ceil(m.num_kv_heads / tp)
            kv_bytes_per_token_local = 2 * m.num_layers * kv_heads_local * m.head_dim_ * m.dtype_bytes
            coeffs = (m.num_layers * 4.0 * m.q_size / tp / (g.dense_bf16_flops * c.attention_flops_efficiency),
                      kv_bytes_per_token_local / (g.hbm_bandwidth_bytes_per_s * c.hbm_efficiency))
            self._attn_coeffs[tp] = coeffs
        compute_s = attn_pairs * coeffs[0]
        memory_s = kv_tokens_read * coeffs[1]
        # Same IEEE operations either way; builtin max avoids numpy's per-call cost on scalars.
        return np.maximum(compute_s, memory_s) if isinstance(compute_s, np.ndarray) else max(compute_s, memory_s)

    def _step_s(self, tp: int, num_tokens: int, num_logits: int, attn_pairs, kv_tokens_read):
        """The one formula both public entry points use."""
        return (self._tokens_part_s(tp, num_tokens) + self._logits_part_s(tp, num_logits)) \
            + self._attention_s(tp, attn_pairs, kv_tokens_read)

    # --- public API -------------------------------------------------------------------------
    def step_time_s(self, shape: StepShape) -> float:
        if shape.num_tokens == 0:
            return 0.0
        if shape.tp_gpus < 1:
            raise ValueError(f"tp_gpus={shape.tp_gpus} must be >= 1")
        return float(self._step_s(shape.tp_gpus, shape.num_tokens, shape.num_logits,
                                  shape.attn_pairs, shape.kv_tokens_read))

    def decode_run_times_s(self, tp_gpus: int, batch: int, kv_tokens_read: int, k: int) -> np.ndarray:
        """Times of k consecutive pure-decode steps of ``batch`` sequences; step j reads
        ``kv_tokens_read + j * batch`` KV tokens (and has as many attention pairs)."""
        if batch == 0 or k <= 0:
            return np.zeros(max(k, 0), dtype=np.float64)
        if tp_gpus < 1:
            raise ValueError(f"tp_gpus={tp_gpus} must be >= 1")
        kv = kv_tokens_read + batch * np.arange(k, dtype=np.int64)
        return np.asarray(self._step_s(tp_gpus, batch, batch, kv, kv), dtype=np.float64)

    # --- Shift-Parallelism: SP (Ulysses) mode and the per-step TP/SP rule -----------------------
    def alltoall_time_s(self, message_bytes: float, width: int) -> float:
        """All-to-all of a ``message_bytes`` buffer per GPU over ``width`` GPUs, priced with that
        width's all-reduce fit (α, bus bandwidth): a stated approximation, see the module docstring."""
        alpha_s, bus_bytes_per_s = self._allreduce.get(width, self._allreduce[None])
        return float(alltoall_time_s(message_bytes, width, alpha_s, bus_bytes_per_s))

    def _sp_alltoalls_s(self, width: int, local_tokens: int) -> float:
        """L × the two all-to-alls of a layer with ``local_tokens`` tokens per GPU; 0.0 at width 1.
        Before attention a GPU's buffer is its tokens' q, k, v (k, v of ``kv_local`` heads for each of
        the w destinations: GQA heads are replicated when w > num_kv_heads, as under TP); after it,
        its tokens' attention output (q_size)."""
        if width <= 1:
            return 0.0
        m = self.model
        kv_local = math.ceil(m.num_kv_heads / width) * m.head_dim_
        qkv_bytes = local_tokens * (m.q_size + 2 * width * kv_local) * m.dtype_bytes
        out_bytes = local_tokens * m.q_size * m.dtype_bytes
        return m.num_layers * (self.alltoall_time_s(qkv_bytes, width) + self.alltoall_time_s(out_bytes, width))

    def _sp_tokens_part_s(self, width: int, num_tokens: int) -> float:
        """SP mode's (width, num_tokens) part: the full-weight layers, small ops and step overhead on
        the local ceil(T/w) tokens (= TP's width-1 part, cached there) plus the all-to-alls."""
        key = (width, num_tokens)
        t = self._sp_tokens_s.get(key)
        if t is None:
            local = _sp_local(num_tokens, width)
            t = self._tokens_part_s(1, local) + self._sp_alltoalls_s(width, local)
            self._sp_tokens_s[key] = t
        return t

    def _sp_step_s(self, width: int, num_tokens: int, num_logits: int, attn_pairs, kv_tokens_read):
        """SP mode's one formula (attention inputs may be numpy arrays). At width 1 it adds the same
        terms in the same order as ``_step_s`` (plus 0.0), so it equals it bit for bit."""
        return (self._sp_tokens_part_s(width, num_tokens)
                + self._logits_part_s(1, _sp_local(num_logits, width))) \
            + self._attention_s(width, attn_pairs, kv_tokens_read)

    def sp_step_time_s(self, shape: StepShape) -> float:
        """Price ``shape`` in Shift-Parallelism's SP (Ulysses) mode over ``shape.tp_gpus`` GPUs.

        Each GPU runs the linear layers on ceil(T/w) tokens with the FULL weights (it streams all
        the weights every step, which is why SP pays off only for large batches), attention on all
        T tokens for 1/w of the heads (TP's attention term), and two all-to-alls per layer instead
        of TP's two all-reduces. Equals ``step_time_s`` at w = 1."""
        if shape.num_tokens == 0:
            return 0.0
        if shape.tp_gpus < 1:
            raise ValueError(f"tp_gpus={shape.tp_gpus} must be >= 1")
        return float(self._sp_step_s(shape.tp_gpus, shape.num_tokens, shape.num_logits,
                                     shape.attn_pairs, shape.kv_tokens_read))

    def shift_step_time_s(self, shape: StepShape, threshold_tokens: int) -> float:
        """Shift-Parallelism's per-step rule: TP when the step batches fewer than
        ``threshold_tokens`` tokens, SP otherwise (Arctic Inference's shift threshold)."""
        if shape.num_tokens < threshold_tokens:
            return self.step_time_s(shape)
        return self.sp_step_time_s(shape)

    def sp_decode_run_times_s(self, tp_gpus: int, batch: int, kv_tokens_read: int, k: int) -> np.ndarray:
        """``decode_run_times_s`` in SP mode: bit-identical to calling ``sp_step_time_s`` k times."""
        if batch == 0 or k <= 0:
            return np.zeros(max(k, 0), dtype=np.float64)
        if tp_gpus < 1:
            raise ValueError(f"tp_gpus={tp_gpus} must be >= 1")
        kv = kv_tokens_read + batch * np.arange(k, dtype=np.int64)
        return np.asarray(self._sp_step_s(tp_gpus, batch, batch, kv, kv), dtype=np.float64)

    def shift_decode_run_times_s(self, tp_gpus: int, batch: int, kv_tokens_read: int, k: int,
                                 threshold_tokens: int) -> np.ndarray:
        """k decode steps under the per-step rule. A run's batch (its tokens) is constant, so the
        whole run is in one mode: bit-identical to calling ``shift_step_time_s`` k times."""
        if batch < threshold_tokens:
            return self.decode_run_times_s(tp_gpus, batch, kv_tokens_read, k)
        return self.sp_decode_run_times_s(tp_gpus, batch, kv_tokens_read, k)

    @staticmethod
    def shift_extra_weight_bytes_per_gpu(model: ModelSpec, width: int) -> int:
        """See the module function of the same name."""
        return shift_extra_weight_bytes_per_gpu(model, width)


# --- Shift-Parallelism helpers -----------------------------------------------------------------
def alltoall_time_s(message_bytes, width: int, alpha_s, bus_bytes_per_s):
    """All-to-all cost α + (w−1)/w · S/B_bus; 0 at width 1. ``message_bytes`` S is one GPU's buffer
    (nccl-tests' convention): it keeps 1/w of it and sends (w−1)/w to the others, all at once."""
    if width <= 1:
        return 0.0
    return alpha_s + (width - 1) / width * message_bytes / bus_bytes_per_s


def _sp_local(count: int, width: int) -> int:
    """One GPU's share of ``count`` tokens (or logits) in SP mode; Ulysses pads to a multiple of w."""
    return -(-count // width)


def shift_weight_bytes_per_gpu(model: ModelSpec, width: int) -> int:
    """Weights one GPU holds under Shift-Parallelism at width w: the full weights (SP mode) plus the
    1/w TP shard (TP mode) as a second copy. At w = 1 the two modes are one and the same copy."""
    if width < 1:
        raise ValueError(f"width={width} must be >= 1")
    if width == 1:
        return model.weight_bytes
    return model.weight_bytes + math.ceil(model.weight_bytes / width)


def shift_extra_weight_bytes_per_gpu(model: ModelSpec, width: int) -> int:
    """Bytes per GPU that Shift-Parallelism's second weight copy costs over plain TP at width w,
    which holds the 1/w shard (``weight_bytes / w``, as ``policies.specs.kv_blocks_per_gpu`` charges
    it): the full weights, ``model.weight_bytes``, for w > 1; 0 at w = 1. Subtract it from a GPU's
    free memory (before dividing by the block bytes) to size a Shift-Parallelism group's KV pool."""
    plain_tp = model.weight_bytes if width == 1 else math.ceil(model.weight_bytes / width)
    return shift_weight_bytes_per_gpu(model, width) - plain_tp


class ShiftPricer:
    """Prices every step the Shift-Parallelism way: TP below ``threshold_tokens`` batched
    tokens, sequence parallelism at or above (the same predictor underneath)."""

    def __init__(self, predictor: RooflinePredictor, threshold_tokens: int) -> None:
        if threshold_tokens < 1:
            raise ValueError("policy.shift_threshold_tokens must be >= 1")
        self.predictor = predictor
        self.threshold_tokens = threshold_tokens

    def step_time_s(self, shape: StepShape) -> float:
        return self.predictor.shift_step_time_s(shape, self.threshold_tokens)

    def decode_run_times_s(self, tp_gpus: int, batch: int, kv_tokens_read: int, k: int) -> np.ndarray:
        return self.predictor.shift_decode_run_times_s(tp_gpus, batch, kv_tokens_read, k,
                                                       self.threshold_tokens)
