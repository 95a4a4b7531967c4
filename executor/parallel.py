"""Tensor-parallel layers whose shards are zero-copy views of full resident weights.

The Model Weights Manager of Flying Serving: every rank keeps the FULL weight of every layer
(a ``torch.nn.Parameter`` named like the Hugging Face tensor, so checkpoints map by name),
and ``set_width(rank, width)`` only re-points ``active_weight`` (and ``active_bias``) at the
rank's slice of it. Switching layouts therefore never copies or moves a weight. Those views
are computed once per supported (rank, width) when the model is prepared
(``TensorParallelPlan``), so a model-wide switch is one dict update per parallel layer.

Layout invariants (checked by tests/executor/test_parallel.py):

* Every active shard, at every supported width, is ONE contiguous range of its resident
  tensor, so a shard is one GEMM on one dense operand and costs zero bytes.
* The supported widths are the divisors of ``max_tp_width`` (the layout's granularity; a
  power of two in practice). Width 1 views the whole tensor.
* Column-parallel weights are stored ``[out, in]`` and sharded by output rows.
* Fused column-parallel weights (QKV, gate/up) interleave their pieces by the smallest
  shard: with granularity S the rows are ``S`` blocks ``[q_b k_b v_b]`` where block b holds
  the b-th 1/S of each piece. Rank r at width w takes blocks ``r*S/w .. (r+1)*S/w - 1``,
  a contiguous row range, and finds its own q, k and v inside it.
* Row-parallel weights are stored TRANSPOSED, ``[in, out]``, so an input-column shard is a
  contiguous range of rows (a plain ``x @ W_t`` GEMM), not a strided column slice.
* KV heads are sharded, never replicated: a width must divide ``num_kv_heads``. Replicating
  heads (vLLM's choice) would break the KV Cache Adaptor's invariant that at width p a rank
  stores exactly 1/p of the KV heads per token (``B(p) = p * B_base`` tokens per block).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class WeightShapeError(ValueError):
    """A checkpoint tensor does not have the shape the layer expects."""


def supported_widths(max_tp_width: int) -> list[int]:
    return [w for w in range(1, max_tp_width + 1) if max_tp_width % w == 0]


def check_width(rank: int, width: int, max_tp_width: int) -> None:
    if width < 1 or max_tp_width % width:
        raise ValueError(f"TP width {width} is not supported by a layout built for "
                         f"max_tp_width={max_tp_width}; supported widths: "
                         f"{supported_widths(max_tp_width)}")
    if not 0 <= rank < width:
        raise ValueError(f"rank {rank} is outside a group of width {width}")


def check_divisible(what: str, size: int, max_tp_width: int, why: str = "") -> None:
    if size % max_tp_width:
        raise ValueError(f"{what}={size} is not divisible by max_tp_width={max_tp_width}; "
                         f"choose a max_tp_width that divides it{why}")


def _resident(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str,
              loader: Callable) -> nn.Parameter:
    """A full resident tensor with its ``weight_loader`` (nano-vllm style)."""
    param = nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)
    param.weight_loader = loader
    return param


def _check_shape(loaded: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(loaded.shape) != tuple(expected):
        raise WeightShapeError(f"expected shape {tuple(expected)}, got {tuple(loaded.shape)}")


def copy_full(param: nn.Parameter, loaded: torch.Tensor) -> None:
    """Default loader: the checkpoint tensor is the whole resident tensor (cast on copy)."""
    _check_shape(loaded, param.shape)
    param.data.copy_(loaded)


class TensorParallelModule(nn.Module):
    """Base of the layers ``apply_tensor_parallel`` re-points.

    A subclass says what its (rank, width) views are in ``_views``; nothing else of the layer
    depends on the width. ``views`` is the whole per-width state (the views plus ``tp_rank``
    and ``tp_width``), so ``TensorParallelPlan`` can compute it once per supported width when
    the model is prepared and a switch only installs it.
    """

    def __init__(self, max_tp_width: int) -> None:
        super().__init__()
        if max_tp_width < 1:
            raise ValueError(f"max_tp_width must be >= 1, got {max_tp_width}")
        self.max_tp_width = max_tp_width
        self.tp_rank = 0
        self.tp_width = 1

    def set_width(self, rank: int, width: int) -> None:
        """Re-point this one layer, computing its views now (the uncached path)."""
        check_width(rank, width, self.max_tp_width)
        self._install(self.views(rank, width))

    def views(self, rank: int, width: int) -> dict[str, object]:
        """Every attribute that (rank, width) sets: views of the resident tensors, no copies."""
        return {"tp_rank": rank, "tp_width": width, **self._views(rank, width)}

    def _views(self, rank: int, width: int) -> dict[str, object]:
        raise NotImplementedError

    def _select_views(self) -> None:
        self._install(self.views(self.tp_rank, self.tp_width))

    def _install(self, views: dict[str, object]) -> None:
        # Plain attributes (never Parameters, buffers or submodules; TensorParallelPlan checks
        # once), so writing the instance dict is what nn.Module.__setattr__ would do, minus
        # its per-attribute bookkeeping.
        self.__dict__.update(views)

    @staticmethod
    def _rows(param: torch.Tensor | None, num_rows: int, rank: int,
              width: int) -> torch.Tensor | None:
        """Rank ``rank``'s ``num_rows // width`` rows of ``param`` (a view; dim 0)."""
        if param is None:
            return None
        part = num_rows // width
        return param.narrow(0, rank * part, part)


class ColumnParallelLinear(TensorParallelModule):
    """``y = x W^T + b`` with ``W [out, in]`` split by output rows; output stays sharded."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, max_tp_width: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__(max_tp_width)
        check_divisible("out_features", out_features, max_tp_width)
        self.in_features, self.out_features = in_features, out_features
        self.weight = _resident((out_features, in_features), dtype, device, copy_full)
        self.bias = _resident((out_features,), dtype, device, copy_full) if bias else None
        self._select_views()

    def _views(self, rank: int, width: int) -> dict[str, object]:
        return {"active_weight": self._rows(self.weight, self.out_features, rank, width),
                "active_bias": self._rows(self.bias, self.out_features, rank, width)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.active_weight, self.active_bias)


class FusedColumnParallelLinear(TensorParallelModule):
    """Several column-parallel projections of the same input in one GEMM (QKV, gate/up).

    ``pieces`` maps a shard id (the checkpoint piece, e.g. "q") to its output rows. The
    resident rows are interleaved in ``max_tp_width`` blocks (see the module docstring), so
    the active shard is one contiguous range at every width. ``forward`` returns the pieces
    of the rank's shard, each in the original (un-interleaved) order.
    """

    def __init__(self, in_features: int, pieces: dict[str, int], *, bias: bool,
                 max_tp_width: int, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__(max_tp_width)
        self.in_features = in_features
        self.piece_rows = dict(pieces)
        self.block_piece_rows: dict[str, int] = {}  # rows of each piece in one block
        self.block_offsets: dict[str, int] = {}  # where each piece starts inside a block
        offset = 0
        for shard_id, rows in pieces.items():
            check_divisible(f"rows of fused piece {shard_id!r}", rows, max_tp_width)
            self.block_offsets[shard_id] = offset
            self.block_piece_rows[shard_id] = rows // max_tp_width
            offset += rows // max_tp_width
        self.block_rows = offset
        self.out_features = offset * max_tp_width
        self.weight = _resident((self.out_features, in_features), dtype, device, self.load_piece)
        self.bias = (_resident((self.out_features,), dtype, device, self.load_piece)
                     if bias else None)
        self._select_views()

    @property
    def shard_ids(self) -> tuple[str, ...]:
        return tuple(self.piece_rows)

    def load_piece(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str) -> None:
        """Scatter the full checkpoint piece ``shard_id`` into its slot of every block."""
        if shard_id not in self.piece_rows:
            raise KeyError(f"unknown fused piece {shard_id!r}; expected one of {self.shard_ids}")
        rest = tuple(param.shape[1:])
        _check_shape(loaded, (self.piece_rows[shard_id], *rest))
        rows, offset = self.block_piece_rows[shard_id], self.block_offsets[shard_id]
        blocks = param.data.view(self.max_tp_width, self.block_rows, *rest)
        blocks[:, offset:offset + rows].copy_(loaded.reshape(self.max_tp_width, rows, *rest))

    def _views(self, rank: int, width: int) -> dict[str, object]:
        return {"active_weight": self._rows(self.weight, self.out_features, rank, width),
                "active_bias": self._rows(self.bias, self.out_features, rank, width)}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = F.linear(x, self.active_weight, self.active_bias)
        # [..., blocks of this shard, block]. Gathering a piece from several blocks copies
        # activations (small), never weights; with one block per shard it is a view.
        blocks = out.unflatten(-1, (-1, self.block_rows))
        return tuple(
            blocks[..., off:off + self.block_piece_rows[sid]].flatten(-2)
            for sid, off in self.block_offsets.items())


class RowParallelLinear(TensorParallelModule):
    """``y = x W^T + b`` with ``W`` split by input columns; returns the rank's PARTIAL sum.

    The caller all-reduces. The resident tensor is ``W^T`` (``[in, out]``), so the shard is a
    contiguous row range. The bias is added by rank 0 only, so the all-reduce adds it once.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, max_tp_width: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__(max_tp_width)
        check_divisible("in_features", in_features, max_tp_width)
        self.in_features, self.out_features = in_features, out_features
        self.weight = _resident((in_features, out_features), dtype, device, self.load_transposed)
        self.bias = _resident((out_features,), dtype, device, copy_full) if bias else None
        self._select_views()

    def load_transposed(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        _check_shape(loaded, (self.out_features, self.in_features))  # HF layout [out, in]
        param.data.copy_(loaded.t())

    def _views(self, rank: int, width: int) -> dict[str, object]:
        return {"active_weight": self._rows(self.weight, self.in_features, rank,
                                            width),  # [in/width, out]
                "active_bias": self.bias if rank == 0 else None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.active_weight)
        if self.active_bias is not None:
            y = y + self.active_bias
        return y


def padded_vocab_size(vocab_size: int, max_tp_width: int) -> int:
    """Vocabulary rows rounded up to a multiple of the granularity; padding rows are zero."""
    return -(-vocab_size // max_tp_width) * max_tp_width


class VocabParallelEmbedding(TensorParallelModule):
    """Embedding split by vocabulary rows; the caller all-reduces the (masked) lookups."""

    def __init__(self, vocab_size: int, hidden_size: int, *, max_tp_width: int,
                 dtype: torch.dtype, device: torch.device | str,
                 shared_weight: nn.Parameter | None = None) -> None:
        super().__init__(max_tp_width)
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size(vocab_size, max_tp_width)
        if shared_weight is not None:
            if tuple(shared_weight.shape) != (self.padded_vocab_size, hidden_size):
                raise ValueError(f"shared vocabulary weight has shape {tuple(shared_weight.shape)},"
                                 f" expected {(self.padded_vocab_size, hidden_size)}")
            self.weight = shared_weight
        else:
            self.weight = _resident((self.padded_vocab_size, hidden_size), dtype, device,
                                    self.load_padded)
        self._select_views()

    def load_padded(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        _check_shape(loaded, (self.vocab_size, param.shape[1]))
        param.data[:self.vocab_size].copy_(loaded)
        param.data[self.vocab_size:].zero_()

    def _views(self, rank: int, width: int) -> dict[str, object]:
        return {"active_weight": self._rows(self.weight, self.padded_vocab_size, rank, width),
                "vocab_start": rank * (self.padded_vocab_size // width)}

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_width == 1:
            return F.embedding(token_ids, self.active_weight)
        local = token_ids - self.vocab_start
        mine = (local >= 0) & (local < self.active_weight.shape[0])
        out = F.embedding(torch.where(mine, local, torch.zeros_like(local)), self.active_weight)
        return out.masked_fill_(~mine.unsqueeze(-1), 0)


class ParallelLMHead(VocabParallelEmbedding):
    """Output projection split by vocabulary rows: local logits ``[..., padded_vocab/width]``.

    With tied embeddings it shares the embedding's resident Parameter (one tensor, two views).
    """

    def __init__(self, vocab_size: int, hidden_size: int, *, max_tp_width: int,
                 dtype: torch.dtype, device: torch.device | str,
                 tied_to: VocabParallelEmbedding | None = None) -> None:
        super().__init__(vocab_size, hidden_size, max_tp_width=max_tp_width, dtype=dtype,
                         device=device, shared_weight=tied_to.weight if tied_to else None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.active_weight)


class TensorParallelPlan:
    """Everything a switch of ``model`` re-points, found and computed once, when the model is
    prepared: its parallel layers, and each layer's views (``TensorParallelModule.views``) at
    every supported (rank, width). A switch is then one dict update per parallel layer: no
    walk of the module tree, no view constructed, nothing allocated.

    Nothing is ever invalidated: the structure of a loaded model does not change, and
    weights are loaded in place (``weight_loader`` copies into the resident tensor), so views
    taken before loading see the loaded bytes. A model whose resident tensors are
    re-allocated (``.to()``, ``param.data = ...``) must be prepared again
    (``prepare_tensor_parallel``); ``executor.zero_copy.view_violations`` would report the
    stale views as lying outside their resident storage.

    Memory: ``sum(w for w | max_tp_width)`` views per layer (15 at granularity 8), a few
    hundred bytes of tensor header each; no weight bytes.
    """

    def __init__(self, model: nn.Module) -> None:
        self.max_tp_width: int = model.max_tp_width
        self.layers: list[tuple[str, TensorParallelModule]] = [
            (name, m) for name, m in model.named_modules() if isinstance(m, TensorParallelModule)]
        for name, layer in self.layers:
            registered = [k for k in layer.views(0, 1)
                          if k in layer._parameters or k in layer._buffers or k in layer._modules]
            if registered:
                raise TypeError(f"{name}: per-width attributes {registered} must be plain "
                                f"attributes, not Parameters, buffers or submodules")
        # (rank, width) -> ((layer's instance dict, its attributes at (rank, width)), ...)
        self.switches: dict[tuple[int, int], tuple[tuple[dict, dict], ...]] = {}
        for width in supported_widths(self.max_tp_width):
            if any(layer.max_tp_width % width for _, layer in self.layers):
                continue
            for rank in range(width):
                self.switches[(rank, width)] = tuple(
                    (layer.__dict__, layer.views(rank, width)) for _, layer in self.layers)

    def check(self, rank: int, width: int) -> None:
        """Raise, as ``check_width`` would, unless every layer supports (rank, width)."""
        if (rank, width) in self.switches:
            return
        check_width(rank, width, self.max_tp_width)
        for _, layer in self.layers:
            check_width(rank, width, layer.max_tp_width)
        raise AssertionError(f"(rank {rank}, width {width}) passes every check but has no "
                             f"precomputed views")

    def apply(self, rank: int, width: int) -> None:
        """Install the precomputed views of (rank, width); ``check`` first."""
        for attributes, views in self.switches[(rank, width)]:
            attributes.update(views)


def prepare_tensor_parallel(model: nn.Module) -> TensorParallelPlan:
    """Build (again) and keep ``model``'s ``TensorParallelPlan``; call once the model is
    loaded (``ModelRunner`` does). ``apply_tensor_parallel`` prepares an unprepared model."""
    plan = TensorParallelPlan(model)
    model.__dict__["_tp_plan"] = plan  # a plain attribute: not a submodule, not state
    return plan


def tensor_parallel_plan(model: nn.Module) -> TensorParallelPlan:
    plan = model.__dict__.get("_tp_plan")
    return plan if plan is not None else prepare_tensor_parallel(model)


def apply_tensor_parallel(model: nn.Module, rank: int, width: int,
                          group: dist.ProcessGroup | None = None) -> None:
    """Re-point every parallel layer of ``model`` and its comm handle at (rank, width, group).

    Only views and one handle change; width 1 restores the full views bit-exactly. The
    model must have a ``comm`` (``TensorParallelComm``) and a ``max_tp_width``. Everything is
    validated before anything changes, so a refused switch leaves the model as it was. The
    views come from the model's ``TensorParallelPlan`` (built on first use if the model was
    not prepared): O(parallel layers) dict updates, no module-tree walk.
    """
    plan = tensor_parallel_plan(model)
    plan.check(rank, width)
    model.comm.set_group(rank, width, group)
    plan.apply(rank, width)
