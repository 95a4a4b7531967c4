"""The one communication handle a model calls: all-reduce / all-gather over its TP group.

The model holds a single ``TensorParallelComm`` and every layer keeps a reference to it, so a
layout switch re-points one object (rank, width, group handle) and no layer is rebuilt. At
width 1 both collectives return their input untouched, so the model code is the
single-device code.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class TensorParallelComm:
    def __init__(self) -> None:
        self.rank = 0
        self.width = 1
        self.group: dist.ProcessGroup | None = None

    def set_group(self, rank: int, width: int, group: dist.ProcessGroup | None) -> None:
        """Point at a (pre-created) process group; never creates one (the Communicator Pool
        creates every candidate group once at start-up). ``group=None`` at width > 1 selects
        the shard views without a group (to inspect shards); collectives then refuse to run
        rather than return a partial sum."""
        if width > 1 and group is not None:
            group_size = dist.get_world_size(group)
            if group_size != width:
                raise ValueError(f"process group has {group_size} ranks, width is {width}")
            if dist.get_rank(group) != rank:
                raise ValueError(f"this process is rank {dist.get_rank(group)} of the group, "
                                 f"not rank {rank}")
        self.rank, self.width = rank, width
        self.group = group if width > 1 else None

    def _require_group(self) -> None:
        if self.group is None:
            raise RuntimeError(f"rank {self.rank} of width {self.width} has no process group "
                               f"bound; pass one to apply_tensor_parallel / set_width")

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of ``x`` over the group, in place."""
        if self.width > 1:
            self._require_group()
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Concatenation of every rank's ``x`` along ``dim``, in rank order."""
        if self.width == 1:
            return x
        self._require_group()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.width)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=dim)
