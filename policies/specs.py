"""Hardware and model shapes, and the KV capacity that follows from them.

Pure data plus arithmetic: both backends size their KV pools with these functions, so the
simulator's capacity is the executor's capacity by construction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

GIB = 1024**3

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "fp8": 1}


@dataclass
class ModelSpec:
    """A Llama-family decoder shape (Llama 3, Qwen2, Mistral)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    head_dim: int | None = None  # None: hidden_size // num_heads
    max_model_len: int = 8192
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 has a QKV bias
    dtype: str = "bfloat16"
    rope_theta: float = 500000.0

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model {self.name}: num_heads={self.num_heads} is not a multiple "
                             f"of num_kv_heads={self.num_kv_heads}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"model {self.name}: dtype {self.dtype!r} is not one of {sorted(DTYPE_BYTES)}")
        for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads",
                      "intermediate_size", "vocab_size", "max_model_len"):
            if getattr(self, field) <= 0:
                raise ValueError(f"model {self.name}: {field} must be positive")

    @property
    def head_dim_(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim_

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim_

    # --- parameter counts (elements) -------------------------------------------------
    @property
    def layer_linear_params(self) -> int:
        """QKV + output projection + gated MLP (gate, up, down) of one layer."""
        h = self.hidden_size
        qkv = h * (self.q_size + 2 * self.kv_size)
        o = self.q_size * h
        mlp = 3 * h * self.intermediate_size
        return qkv + o + mlp

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        norms = (2 * self.num_layers + 1) * self.hidden_size
        bias = self.num_layers * (self.q_size + 2 * self.kv_size) if self.qkv_bias else 0
        head = 0 if self.tie_word_embeddings else self.lm_head_params
        return self.num_layers * self.layer_linear_params + self.embedding_params + head + norms + bias

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer for one token, all KV heads (bytes)."""
        return 2 * self.num_layers * self.kv_size * self.dtype_bytes


@dataclass
class GpuSpec:
    name: str
    memory_gib: float
    hbm_bandwidth_bytes_per_s: float
    dense_bf16_flops: float
    interconnect: str
    interconnect_bandwidth_bytes_per_s: float  # per direction, per GPU

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)


@dataclass
class ClusterSpec:
    """A node of G GPUs cut into K engines of g_e GPUs (base TP inside an engine)."""

    name: str
    gpu: GpuSpec
    num_gpus: int
    gpus_per_engine: int = 1

    def __post_init__(self) -> None:
        if self.num_gpus <= 0 or self.gpus_per_engine <= 0:
            raise ValueError(f"cluster {self.name}: num_gpus and gpus_per_engine must be positive")
        if self.num_gpus % self.gpus_per_engine:
            raise ValueError(f"cluster {self.name}: num_gpus={self.num_gpus} is not a multiple of "
                             f"gpus_per_engine={self.gpus_per_engine}")

    @property
    def num_engines(self) -> int:
        return self.num_gpus // self.gpus_per_engine


@dataclass
class MemoryConfig:
    gpu_memory_utilization: float = 0.90  # vLLM's default share of HBM the engine may use
    activation_reserve_gib: float = 4.0  # activations, CUDA graphs, sampler scratch per GPU
    block_size_tokens: int = 16  # B_base: tokens per block at width 1 (one engine)
    # A fixed KV pool per GPU instead of the arithmetic above: CPU ranks (a configured
    # budget) and a simulator replaying an executor run with a known pool.
    kv_cache_gib: Optional[float] = None

    def __post_init__(self) -> None:
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            raise ValueError(f"memory.kv_cache_gib={self.kv_cache_gib} must be positive")


def kv_block_bytes_per_gpu(model: ModelSpec, gpus_per_engine: int, block_size_tokens: int) -> int:
    """Bytes one block occupies on one GPU. Constant across layouts (the KV Cache Adaptor's
    invariant): at merge width p a GPU keeps 1/p of the engine's heads per token, so the same
    bytes hold p * block_size_tokens tokens."""
    return block_size_tokens * math.ceil(model.kv_bytes_per_token / gpus_per_engine)


def kv_blocks_per_gpu(model: ModelSpec, cluster: ClusterSpec, memory: MemoryConfig,
                      weight_shards: int | None = None, extra_weight_bytes: float = 0.0) -> int:
    """Physical KV blocks one GPU can hold.

    ``weight_shards`` is how many GPUs share one copy of the weights: ``gpus_per_engine`` when
    every engine keeps its full weights resident (Flying Serving), or the group's GPU count
    for a vLLM-style static TP group that shards weights across all its GPUs.
    ``extra_weight_bytes`` is weight memory per GPU beyond that (Shift-Parallelism's second,
    full copy for its sequence-parallel mode).
    """
    block_bytes = kv_block_bytes_per_gpu(model, cluster.gpus_per_engine, memory.block_size_tokens)
    if memory.kv_cache_gib is not None:
        return int(memory.kv_cache_gib * GIB // block_bytes)
    shards = weight_shards or cluster.gpus_per_engine
    usable = cluster.gpu.memory_bytes * memory.gpu_memory_utilization
    weights = model.weight_bytes / shards + extra_weight_bytes
    reserve = memory.activation_reserve_gib * GIB
    free = usable - weights - reserve
    if free <= 0:
        extra = (f", of which {extra_weight_bytes / GIB:.1f} GiB is a second full copy "
                 "(Shift-Parallelism's SP mode)") if extra_weight_bytes else ""
        raise ValueError(
            f"{model.name} does not fit: {weights / GIB:.1f} GiB of weights per GPU "
            f"(sharded {shards} ways{extra}) + {memory.activation_reserve_gib:.1f} GiB reserve "
            f"exceed {usable / GIB:.1f} GiB usable on {cluster.gpu.name}; use more GPUs per engine")
    return int(free // block_bytes)
