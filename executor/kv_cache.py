"""The paged KV pool of one device, and its re-parameterisation per TP width.

The KV Cache Adaptor of Flying Serving: one physical pool of fixed-byte blocks per device.
At TP width p a device stores 1/p of the model's KV heads per token, so a block of the same
bytes holds ``p * block_size_tokens`` tokens (``B(p) = p * B_base``). ``set_width`` only
re-views the one storage tensor; no KV is moved or copied, and the blocks of requests paused
in another layout keep their bytes (a request's block table records the width its KV was
written at; the coordinator only schedules it again at that width).

Shapes at width p, per layer: K and V are each a flat slot array
``[num_blocks * B(p), num_kv_heads / p, head_dim]``; token ``t`` of a request lives in slot
``block_table[t // B(p)] * B(p) + t % B(p)``.
"""
from __future__ import annotations

import torch

from executor.model_config import ModelConfig


class PagedKVCache:
    def __init__(self, *, num_layers: int, num_kv_heads: int, head_dim: int, num_blocks: int,
                 block_size_tokens: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> None:
        if min(num_layers, num_kv_heads, head_dim, num_blocks, block_size_tokens) <= 0:
            raise ValueError("KV cache sizes must be positive, got "
                             f"layers={num_layers} kv_heads={num_kv_heads} head_dim={head_dim} "
                             f"blocks={num_blocks} block_size_tokens={block_size_tokens}")
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.num_blocks = num_blocks
        self.block_size_tokens = block_size_tokens  # B_base: tokens per block at width 1
        self.block_numel = block_size_tokens * num_kv_heads * head_dim  # per layer, K or V
        # Zero-filled, not empty: attention gathers padded key slots (masked out) from the
        # pool, and a NaN left in uninitialised memory would survive a zero attention weight.
        self.storage = torch.zeros((num_layers, 2, num_blocks, self.block_numel),
                                   dtype=dtype, device=device)
        self.set_width(1)

    @classmethod
    def for_model(cls, config: ModelConfig, *, num_blocks: int, block_size_tokens: int,
                  dtype: torch.dtype, device: torch.device | str = "cpu") -> "PagedKVCache":
        return cls(num_layers=config.num_layers, num_kv_heads=config.num_kv_heads,
                   head_dim=config.head_dim, num_blocks=num_blocks,
                   block_size_tokens=block_size_tokens, dtype=dtype, device=device)

    @classmethod
    def for_byte_budget(cls, config: ModelConfig, *, budget_bytes: int, block_size_tokens: int,
                        dtype: torch.dtype, device: torch.device | str = "cpu"
                        ) -> "PagedKVCache":
        """As many blocks as ``budget_bytes`` holds (see ``cuda_kv_budget_bytes`` on a GPU)."""
        per_block = block_bytes(config, block_size_tokens, dtype)
        num_blocks = budget_bytes // per_block
        if num_blocks < 1:
            raise ValueError(f"KV budget of {budget_bytes} bytes is smaller than one block "
                             f"({per_block} bytes: {block_size_tokens} tokens x "
                             f"{config.num_layers} layers x K,V)")
        return cls.for_model(config, num_blocks=num_blocks, block_size_tokens=block_size_tokens,
                             dtype=dtype, device=device)

    # --- layout -------------------------------------------------------------------------
    def set_width(self, width: int) -> None:
        """Re-parameterise the pool for TP width ``width`` (a view; no copy)."""
        if width < 1 or self.num_kv_heads % width:
            raise ValueError(f"KV cache: width {width} does not divide num_kv_heads="
                             f"{self.num_kv_heads} (KV heads are sharded, never replicated)")
        self.width = width
        self.tokens_per_block = width * self.block_size_tokens
        self.kv_heads_local = self.num_kv_heads // width
        self._slots = self.storage.view(self.num_layers, 2, self.num_slots,
                                        self.kv_heads_local, self.head_dim)

    @property
    def num_slots(self) -> int:
        """Token slots per layer at the current width (same bytes at every width)."""
        return self.num_blocks * self.tokens_per_block

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s (K, V) slot arrays ``[num_slots, kv_heads_local, head_dim]``."""
        return self._slots[index, 0], self._slots[index, 1]

    @property
    def block_bytes(self) -> int:
        """Bytes one block occupies on this device over all layers, K and V (width-free)."""
        return self.num_layers * 2 * self.block_numel * self.storage.element_size()

    @property
    def capacity_tokens(self) -> int:
        return self.num_slots


def block_bytes(config: ModelConfig, block_size_tokens: int, dtype: torch.dtype) -> int:
    """Bytes of one block (all layers, K and V) at width 1; equal to the control plane's
    ``policies.specs.kv_block_bytes_per_gpu`` for a one-GPU engine."""
    element_bytes = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_layers * config.kv_size * block_size_tokens * element_bytes


def cuda_kv_budget_bytes(device: torch.device | str, *, memory_utilization: float,
                         reserve_bytes: int) -> int:
    """KV bytes a GPU can give after weights are resident: ``utilization * total`` minus what
    is already used (weights, context) minus an activation reserve. Call after loading."""
    free, total = torch.cuda.mem_get_info(torch.device(device))
    used = total - free
    budget = int(total * memory_utilization) - used - reserve_bytes
    if budget <= 0:
        raise ValueError(f"no KV memory left on {device}: {used / 2**30:.1f} GiB used of "
                         f"{total / 2**30:.1f} GiB, utilization {memory_utilization}, reserve "
                         f"{reserve_bytes / 2**30:.1f} GiB")
    return budget
