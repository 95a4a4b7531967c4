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

POLICY_KINDS = ("static_dp", "static_tp", "static_mixed", "shift", "flying", "slo_aware")
SWITCHING_KINDS = ("flying", "slo_aware")  # policies that change the layout themselves


@dataclass
class FlyingRules:
    """The paper's reactive rules. A backlog (queued requests, not yet running) signals a
    burst; the outstanding count (queued + running) signals how busy the node is."""

    high_queue_per_engine: float = 2.0  # backlog above this: go DP (throughput)
    low_load_per_engine: float = 8.0  # outstanding below this for ``dwell_s``: go TP (latency)
    low_load_engines_per_group: int = 0  # group width at low load; 0 = the whole node
    priority_engines_per_group: int = 0  # TP group formed for priority requests; 0 = whole node
    class_idle_s: float = 0.0  # keep a priority / long-context group this long after it empties
    merge_strategy: str = "soft"  # load-driven merges: drained engines pre-run held work
    priority_strategy: str = "hard"  # merges for priority / long-context requests
    dwell_s: float = 5.0  # hysteresis: a load-driven merge needs low load this long
    split_dwell_s: float = 1.0  # and a split a backlog this long (a merge's own held backlog
    #                             clears within this; a burst's does not)
    min_interval_s: float = 2.0  # no load-driven switch sooner than this after the last


@dataclass
class SloAwareRules:
    """Our policy: pick the uniform layout with the best predicted SLO attainment."""

    ttft_slo_s: float = 2.0  # targets the prediction scores against (normal traffic)
    tpot_slo_s: float = 0.1
    improvement: float = 0.05  # hysteresis: switch only for this much predicted gain,
    confirmations: int = 3  # seen at this many consecutive evaluations (one per second)
    min_interval_s: float = 10.0  # and no sooner than this after the last switch
    arrival_window_s: float = 10.0  # time constant of the arrival-rate estimate
    max_batch: int = 256  # decode batch cap the prediction assumes (scheduler.max_num_seqs)
    merge_strategy: str = "soft"


@dataclass
class PolicyConfig:
    name: str = "static_dp"
    kind: str = "static_dp"
    engines_per_group: int = 2  # static_mixed: engines merged into each TP group
    # True: every engine keeps its full weights (Flying Serving; KV room is the same at any
    # width). False: a TP group shards weights over its GPUs like a plain vLLM deployment.
    weights_resident_per_engine: bool = False
    # shift (Shift-Parallelism-like): the whole node as one group with an invariant KV layout;
    # a step with fewer batched tokens than this runs in TP, otherwise in sequence-parallel
    # mode (full weights, all-to-alls). Its pricing is the backend's.
    shift_threshold_tokens: int = 1024
    flying: FlyingRules = field(default_factory=FlyingRules)
    slo_aware: SloAwareRules = field(default_factory=SloAwareRules)

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
    priority_waiting: int = 0  # priority requests queued, not yet running


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
    arrivals_total: int = 0
    mean_prompt_tokens: float = 0.0  # of recent arrivals (exponentially weighted)
    mean_output_tokens: float = 0.0
    cost_model: "StepCostModel | None" = None
    paused_groups: tuple = ()  # groups holding paused (hard-preempted) work, oldest first

    @property
    def outstanding(self) -> int:
        return sum(g.outstanding for g in self.groups) + self.held_requests


@dataclass
class Decision:
    target: Layout
    strategy: str  # how merging groups reach the switch point (policies.switch)
    reason: str
    roles: dict[Group, str] = field(default_factory=dict)  # routing roles of new groups
    # How splitting groups reach it (drain | recompute); None: the node's switch config.
    split_strategy: str | None = None


class StepCostModel(Protocol):
    """Step time of a plan shape: the backend's predictor (sim) or profile (executor)."""

    def step_time_s(self, shape) -> float: ...


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
        if kind in ("static_tp", "shift"):
            return Layout.static_tp(num_engines)
        return Layout.uniform(num_engines, self.config.engines_per_group)

    def decide(self, view: NodeView) -> Decision | None:
        return None


def make_policy(config: PolicyConfig) -> Policy:
    if config.kind == "flying":
        from policies.flying import FlyingPolicy
        return FlyingPolicy(config)
    if config.kind == "slo_aware":
        from policies.slo_aware import SloAwarePolicy
        return SloAwarePolicy(config)
    return StaticPolicy(config)
