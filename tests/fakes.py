"""Small stand-ins shared by tests: a linear step-time predictor and tiny shapes."""
from __future__ import annotations

import numpy as np

from policies.plan import StepShape
from policies.specs import ClusterSpec, GpuSpec, ModelSpec


class LinearPredictor:
    """step = base + per_token * tokens + per_kv * kv_tokens_read (+ comm when tp > 1)."""

    def __init__(self, base_s=0.01, per_token_s=1e-4, per_kv_s=1e-7, per_tp_s=0.002):
        self.base_s, self.per_token_s, self.per_kv_s, self.per_tp_s = base_s, per_token_s, per_kv_s, per_tp_s

    def _time(self, tp, tokens, kv):
        comm = self.per_tp_s if tp > 1 else 0.0
        return (self.base_s + self.per_token_s * tokens + self.per_kv_s * kv) / tp + comm

    def step_time_s(self, shape: StepShape) -> float:
        if shape.num_tokens == 0:
            return 0.0
        return float(self._time(shape.tp_gpus, np.float64(shape.num_tokens), np.float64(shape.kv_tokens_read)))

    def decode_run_times_s(self, tp_gpus, batch, kv_tokens_read, k):
        kv = kv_tokens_read + batch * np.arange(k, dtype=np.int64)
        return self._time(tp_gpus, np.float64(batch), kv.astype(np.float64))


TINY_MODEL = ModelSpec(name="tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                       intermediate_size=128, vocab_size=256, max_model_len=4096)
TINY_GPU = GpuSpec(name="toy", memory_gib=1.0, hbm_bandwidth_bytes_per_s=1e12,
                   dense_bf16_flops=1e14, interconnect="nvlink",
                   interconnect_bandwidth_bytes_per_s=1e11)


def tiny_cluster(num_gpus=4, gpus_per_engine=1) -> ClusterSpec:
    return ClusterSpec(name="toy", gpu=TINY_GPU, num_gpus=num_gpus, gpus_per_engine=gpus_per_engine)
