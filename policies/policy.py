"""Parallelism policies: observe the node, return the target layout and how to route.

One small interface, shared by both backends:
    initial_layout(num_engines) -> Layout
    decide(view) -> Decision | None   (a switch to make now, with the routing roles of the
                                       groups it forms; None: keep the layout)
Routing follows the roles: a group formed for a class (priority, long_context) takes that
class first, and the least-loaded router spreads the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from policies.layout import Group, Layout

POLICY_KINDS = ("static_dp", "static_tp", "static_mixed", "flying")


@dataclass
class FlyingRules:
    """The paper's reactive rules (thresholds are outstanding requests per engine)."""

    high_load_per_engine: float = 6.0  # above: go DP (throughput) for normal traffic
    low_load_per_engine: float = 1.0  # below, for ``dwell_s``: go TP (latency)
    low_load_engines_per_group: int = 0  # group width at low load; 0 = the whole node
    priority_engines_per_group: int = 0  # TP group formed for priority requests; 0 = whole node
    merge_strategy: str = "sequential"  # load-driven merges
    priority_strategy: str = "hard"  # merges for priority / long-context requests
    dwell_s: float = 5.0  # hysteresis: a load-driven switch needs the condition this long
    min_interval_s: float = 2.0  # no load-driven switch sooner than this after the last


@dataclass
class PolicyConfig:
    name: str = "static_dp"
    kind: str = "static_dp"
    engines_per_group: int = 2  # static_mixed: engines merged into each TP group
    # True: every engine keeps its full weights (Flying Serving; KV room is the same at any
    # width). False: a TP group shards weights over its GPUs like a plain vLLM deployment.
    weights_resident_per_engine: bool = False
    flying: FlyingRules = field(default_factory=FlyingRules)

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"policy.kind {self.kind!r} is not one of {POLICY_KINDS}")


@dataclass
class GroupView:
    gid: int
    group: Group
    tp_gpus: int
    outstanding: int
    waiting: int
    running: int
    priority_outstanding: int
    capacity_tokens: int
    accepting: bool
    role: str  # "any" | "priority" | "long_context"


@dataclass
class NodeView:
    """What a policy sees. Built by the control plane at decision points."""

    now_s: float
    num_engines: int
    layout: Layout
    groups: Sequence[GroupView]
    switching: bool
    held_requests: int  # accepted, waiting for a group (switch under way, or too long for now)
    held_needs_engines: int  # widest group a held request needs (0: none)
    held_priority: int
    paused_requests: int
    last_switch_done_s: float

    @property
    def outstanding(self) -> int:
        return sum(g.outstanding for g in self.groups) + self.held_requests


@dataclass
class Decision:
    target: Layout
    strategy: str
    reason: str
    roles: dict[Group, str] = field(default_factory=dict)  # routing roles of new groups


class Policy(Protocol):
    name: str

    def initial_layout(self, num_engines: int) -> Layout: ...

    def decide(self, view: NodeView) -> Decision | None: ...


class StaticPolicy:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.name = config.name

    def initial_layout(self, num_engines: int) -> Layout:
        kind = self.config.kind
        if kind == "static_dp":
            return Layout.static_dp(num_engines)
        if kind == "static_tp":
            return Layout.static_tp(num_engines)
        return Layout.uniform(num_engines, self.config.engines_per_group)

    def decide(self, view: NodeView) -> Decision | None:
        return None


def make_policy(config: PolicyConfig) -> Policy:
    if config.kind == "flying":
        from policies.flying import FlyingPolicy
        return FlyingPolicy(config)
    return StaticPolicy(config)
