"""The Communicator Pool: every process group a layout may use, created once at start-up.

A switch only picks a handle from here; it never calls ``new_group`` (seconds of NCCL set-up
on a GPU node). The candidates are the control plane's (``policies.layout.candidate_groups``):
aligned power-of-two ranges of engines plus the whole node. One engine is one rank here.

``dist.new_group`` is collective over the whole world: every rank creates every group, in
the same order, member or not. NCCL builds a communicator lazily at its first collective,
so each group's members also run one small all-reduce right away; the pool is then really
ready, and the time per group is what lazy creation would add to a switch.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

from policies.layout import candidate_groups


def group_key(ranks: tuple[int, ...]) -> str:
    return f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else str(ranks[0])


def candidate_rank_sets(world_size: int) -> list[tuple[int, ...]]:
    """Rank tuples of every candidate group wider than one rank, in creation order."""
    return [tuple(g.engines) for g in candidate_groups(world_size) if g.num_engines > 1]


class CommunicatorPool:
    def __init__(self, groups: dict[tuple[int, ...], dist.ProcessGroup],
                 create_s: dict[str, float], total_s: float) -> None:
        self._groups = groups
        self.create_s = create_s  # group key -> seconds (create + first all-reduce)
        self.total_s = total_s

    @classmethod
    def create(cls, rank: int, world_size: int, device: torch.device) -> "CommunicatorPool":
        groups: dict[tuple[int, ...], dist.ProcessGroup] = {}
        create_s: dict[str, float] = {}
        start = time.perf_counter()
        for ranks in candidate_rank_sets(world_size):
            t0 = time.perf_counter()
            group = dist.new_group(list(ranks))
            if rank in ranks:
                groups[ranks] = group
                dist.all_reduce(torch.zeros(1, device=device), group=group)
            create_s[group_key(ranks)] = time.perf_counter() - t0
        return cls(groups, create_s, time.perf_counter() - start)

    def get(self, ranks: tuple[int, ...], rank: int) -> dist.ProcessGroup | None:
        """The handle of the group of ``ranks`` (None for a one-rank group: no collectives)."""
        if rank not in ranks:
            raise ValueError(f"rank {rank} is not a member of group {ranks}")
        if len(ranks) == 1:
            return None
        if ranks not in self._groups:
            raise KeyError(f"group {ranks} is not in the communicator pool; candidates for "
                           f"this rank: {sorted(self._groups)}")
        return self._groups[ranks]
