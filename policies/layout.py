"""Layouts: a partition of the node's K engines into groups that each act as one TP engine.

A group is an aligned power-of-two range of engines (width 1 is a DP engine), or the whole
node. These are exactly the process groups a communicator pool must hold.
"""
from __future__ import annotations

from dataclasses import dataclass


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True, order=True)
class Group:
    first_engine: int
    num_engines: int

    @property
    def engines(self) -> range:
        return range(self.first_engine, self.first_engine + self.num_engines)

    @property
    def label(self) -> str:
        last = self.first_engine + self.num_engines - 1
        return f"e{self.first_engine}" if last == self.first_engine else f"e{self.first_engine}-{last}"


@dataclass(frozen=True)
class Layout:
    num_engines: int
    groups: tuple[Group, ...]

    def __post_init__(self) -> None:
        seen: list[int] = []
        for g in self.groups:
            whole = g.first_engine == 0 and g.num_engines == self.num_engines
            if not whole and not (_is_pow2(g.num_engines) and g.first_engine % g.num_engines == 0):
                raise ValueError(f"group {g.label}: a group must be an aligned power-of-two range "
                                 f"of engines or the whole node ({self.num_engines} engines)")
            seen.extend(g.engines)
        if sorted(seen) != list(range(self.num_engines)):
            raise ValueError(f"layout groups {[g.label for g in self.groups]} do not cover engines "
                             f"0..{self.num_engines - 1} exactly once")

    @classmethod
    def from_widths(cls, num_engines: int, widths: list[int] | tuple[int, ...]) -> "Layout":
        groups, first = [], 0
        for w in widths:
            groups.append(Group(first, w))
            first += w
        return cls(num_engines, tuple(groups))

    @classmethod
    def uniform(cls, num_engines: int, engines_per_group: int) -> "Layout":
        if engines_per_group < 1 or num_engines % engines_per_group:
            raise ValueError(f"{num_engines} engines cannot be cut into groups of {engines_per_group}")
        return cls.from_widths(num_engines, [engines_per_group] * (num_engines // engines_per_group))

    @classmethod
    def static_dp(cls, num_engines: int) -> "Layout":
        return cls.uniform(num_engines, 1)

    @classmethod
    def static_tp(cls, num_engines: int) -> "Layout":
        return cls.uniform(num_engines, num_engines)

    def describe(self, gpus_per_engine: int = 1) -> str:
        """E.g. '8xTP1', '1xTP8', '4xTP2', 'TP4+2xTP2' (TP counts GPUs)."""
        parts: list[str] = []
        run_width, run_len = None, 0
        for g in self.groups + (None,):
            width = g.num_engines * gpus_per_engine if g else None
            if width == run_width:
                run_len += 1
                continue
            if run_width is not None:
                parts.append(f"{run_len}xTP{run_width}" if run_len > 1 or len(self.groups) == 1
                             else f"TP{run_width}")
            run_width, run_len = width, 1
        return "+".join(parts)


def candidate_groups(num_engines: int) -> list[Group]:
    """Every group any layout may use: aligned power-of-two ranges plus the whole node."""
    groups = set()
    width = 1
    while width <= num_engines:
        for first in range(0, num_engines - width + 1, width):
            groups.add(Group(first, width))
        width *= 2
    groups.add(Group(0, num_engines))
    return sorted(groups, key=lambda g: (g.num_engines, g.first_engine))
