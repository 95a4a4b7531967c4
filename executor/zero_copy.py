"""Checks of the zero-copy invariants, runnable inside a worker (``CheckViews``,
``MemoryReport``) and in tests.

What "a switch never copies" means, concretely:

* every active weight/bias view's bytes lie inside its resident tensor's storage, and the
  view is one contiguous range (one dense GEMM operand, fused QKV and gate/up included) that
  starts exactly where the rank's shard starts;
* at width 1 every view IS the resident tensor (same pointer, same shape), which makes the
  restored weights bit-exact by construction;
* the KV pool's per-layer slot arrays are views of its one storage, re-shaped for the width;
* memory (RSS; allocated bytes on a GPU) does not grow with the number of switches.
"""
from __future__ import annotations

import os
import resource

import torch
from torch import nn

from executor.kv_cache import PagedKVCache
from executor.parallel import RowParallelLinear, TensorParallelModule
from executor.protocol import MemoryUsage, ViewCheck


def storage_bounds(tensor: torch.Tensor) -> tuple[int, int]:
    """[start, end) byte addresses of the storage under ``tensor``."""
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def view_inside(view: torch.Tensor, full: torch.Tensor) -> bool:
    """Whether every byte ``view`` can address lies in ``full``'s storage (same storage)."""
    start, end = storage_bounds(full)
    if view.untyped_storage().data_ptr() != start:
        return False
    if view.numel() == 0:
        return True
    first = view.data_ptr()
    # The furthest element a strided view reaches, not just numel past the start.
    last = first + sum((n - 1) * s for n, s in zip(view.shape, view.stride())) \
        * view.element_size()
    return start <= first and last + view.element_size() <= end


def _shard_violations(name: str, what: str, view: torch.Tensor | None,
                      full: torch.Tensor | None, rank: int, width: int) -> list[str]:
    """A dim-0 shard: rank r's ``1/width`` of the rows, one contiguous range."""
    if full is None:
        return [] if view is None else [f"{name}.{what}: a view with no resident tensor"]
    if view is None:
        return [f"{name}.{what}: no active view"]
    problems = []
    if not view_inside(view, full):
        problems.append(f"{name}.{what}: view outside the resident tensor's storage")
    if not view.is_contiguous():
        problems.append(f"{name}.{what}: view is not one contiguous range")
    rows = full.shape[0] // width
    expected_ptr = full.data_ptr() + rank * rows * full.stride(0) * full.element_size()
    if view.data_ptr() != expected_ptr or view.shape[0] != rows \
            or tuple(view.shape[1:]) != tuple(full.shape[1:]):
        problems.append(f"{name}.{what}: not rank {rank}'s shard of width {width} "
                        f"(offset {view.data_ptr() - full.data_ptr()} bytes, shape "
                        f"{tuple(view.shape)} of {tuple(full.shape)})")
    return problems


def layer_violations(name: str, layer: TensorParallelModule) -> list[str]:
    rank, width = layer.tp_rank, layer.tp_width
    problems = _shard_violations(name, "weight", layer.active_weight, layer.weight, rank, width)
    if isinstance(layer, RowParallelLinear):
        # Row-parallel bias is whole, on rank 0 only (the all-reduce adds it once).
        bias = getattr(layer, "bias", None)
        expected = bias if rank == 0 else None
        if layer.active_bias is not expected:
            problems.append(f"{name}.bias: rank {rank} must hold "
                            f"{'the whole bias' if expected is not None else 'no bias'}")
    elif hasattr(layer, "active_bias"):
        problems += _shard_violations(name, "bias", layer.active_bias,
                                      getattr(layer, "bias", None), rank, width)
    return problems


def kv_violations(kv: PagedKVCache) -> list[str]:
    problems = []
    for index in range(kv.num_layers):
        for what, view in zip(("K", "V"), kv.layer(index)):
            if not view_inside(view, kv.storage):
                problems.append(f"kv layer {index} {what}: view outside the pool's storage")
            expected = (kv.num_slots, kv.num_kv_heads // kv.width, kv.head_dim)
            if tuple(view.shape) != expected:
                problems.append(f"kv layer {index} {what}: shape {tuple(view.shape)} at width "
                                f"{kv.width}, expected {expected}")
    return problems


def parallel_layers(model: nn.Module) -> list[tuple[str, TensorParallelModule]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TensorParallelModule)]


def view_violations(model: nn.Module, kv: PagedKVCache | None = None) -> list[str]:
    """Every broken zero-copy invariant of ``model``'s (and ``kv``'s) current views."""
    problems = []
    for name, layer in parallel_layers(model):
        problems += layer_violations(name, layer)
    if kv is not None:
        problems += kv_violations(kv)
    return problems


def resident_ptrs(model: nn.Module) -> tuple[int, ...]:
    """Where every resident parameter lives, in name order (tied weights counted once)."""
    return tuple(p.data_ptr() for _, p in sorted(model.named_parameters()))


def view_check(rank: int, model: nn.Module, kv: PagedKVCache, width: int) -> ViewCheck:
    problems = view_violations(model, kv)
    if kv.width != width:
        problems.append(f"kv pool at width {kv.width}, model at width {width}")
    num_views = sum(1 + (getattr(m, "active_bias", None) is not None)
                    for _, m in parallel_layers(model))
    return ViewCheck(rank, width, num_views, tuple(problems), resident_ptrs(model),
                     kv.storage.data_ptr())


def rss_bytes() -> int:
    """Resident set size now (not the peak): /proc/self/statm on Linux, else the peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        # macOS reports ru_maxrss in bytes, Linux in KiB; only the fallback path needs it.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024


def memory_usage(rank: int, device: torch.device) -> MemoryUsage:
    if device.type == "cuda":
        allocated = torch.cuda.memory_allocated(device)
        reserved = torch.cuda.memory_reserved(device)
    else:
        allocated = reserved = 0
    return MemoryUsage(rank, rss_bytes(), allocated, reserved)
