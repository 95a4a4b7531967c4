"""``flying``: the paper's reactive rules.

In order of precedence:
1. a held request too long for every current group -> form a group wide enough (long
   context), by ``priority_strategy``;
2. priority requests and no group formed for them -> form a priority TP group by
   ``priority_strategy`` (hard preempt in the paper), the other engines stay DP;
3. a class group with none of its class left -> split it back to DP;
   (every split keeps or re-forms the groups that hold paused work, so it resumes)
   paused work whose group is gone -> re-form that group once its engines have no queue;
4. load: all-DP and outstanding requests per engine below ``low_load_per_engine`` for
   ``dwell_s`` -> merge to TP; general TP groups and a backlog above
   ``high_queue_per_engine`` queued requests per engine -> split to DP.
"""
from __future__ import annotations

from policies.layout import Group, Layout
from policies.policy import Decision, NodeView, PolicyConfig
from policies.switch import MERGE_STRATEGIES


class FlyingPolicy:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.rules = config.flying
        self.name = config.name
        for name in ("merge_strategy", "priority_strategy"):
            if getattr(self.rules, name) not in MERGE_STRATEGIES:
                raise ValueError(f"policy.flying.{name} must be one of {MERGE_STRATEGIES}")
        if self.rules.low_load_per_engine <= 0 or self.rules.high_queue_per_engine <= 0:
            raise ValueError("policy.flying load thresholds must be positive")
        self._low_since: float | None = None
        self._backlog_since: float | None = None
        self._class_idle_since: float | None = None

    def initial_layout(self, num_engines: int) -> Layout:
        return Layout.static_dp(num_engines)

    def decide(self, view: NodeView) -> Decision | None:
        if view.switching:
            return None
        return (self._long_context(view) or self._priority(view) or self._release(view)
                or self._resume(view) or self._load(view))

    # --- rules -------------------------------------------------------------------------------
    def _class_layout(self, view: NodeView, engines: int, role: str, why: str) -> Decision:
        engines = min(_pow2_at_least(engines), view.num_engines)
        widths = [engines] + [1] * (view.num_engines - engines)
        target = Layout.from_widths(view.num_engines, widths)
        return Decision(target, self.rules.priority_strategy, why, {Group(0, engines): role})

    def _long_context(self, view: NodeView) -> Decision | None:
        widest = max(g.group.num_engines for g in view.groups)
        # Paused KV reserves its blocks on every engine of a wider group, so the wide group
        # might not fit the request: resume paused work first. And one long-context episode
        # at a time: preempting a half-done long prefill to start another one thrashes.
        if view.paused_groups or any(g.role == "long_context" and g.outstanding
                                     for g in view.groups):
            return None
        if view.held_needs_engines > widest:
            return self._class_layout(view, view.held_needs_engines, "long_context",
                                      f"a request needs {view.held_needs_engines} engines of KV")
        return None

    def _priority(self, view: NodeView) -> Decision | None:
        if any(g.role == "priority" for g in view.groups):
            return None
        # Queued ones only: a priority request already running keeps its place and KV.
        waiting_priority = view.held_priority + sum(
            g.priority_waiting for g in view.groups if g.group.num_engines == 1)
        if waiting_priority == 0:
            return None
        engines = self.rules.priority_engines_per_group or view.num_engines
        return self._class_layout(view, engines, "priority",
                                  f"{waiting_priority} priority request(s) outstanding")

    def _release(self, view: NodeView) -> Decision | None:
        idle = None
        for g in view.groups:
            if g.role == "priority" and g.priority_outstanding == 0 and view.held_priority == 0:
                idle = "priority group idle"
            if g.role == "long_context" and g.outstanding == 0 and view.held_needs_engines <= 1:
                idle = "long-context group idle"
        if idle is None:
            self._class_idle_since = None
            return None
        if self._class_idle_since is None:
            self._class_idle_since = view.now_s
        recent = view.now_s - view.last_switch_done_s < self.rules.min_interval_s
        if view.now_s - self._class_idle_since < self.rules.class_idle_s or recent:
            return None  # more of its class may come soon: do not churn
        self._class_idle_since = None
        return self._split(view, idle)

    def _split(self, view: NodeView, why: str) -> Decision:
        return Decision(self._dp_with_paused(view), self.rules.merge_strategy, why)

    @staticmethod
    def _dp_with_paused(view: NodeView) -> Layout:
        """DP engines, except the groups holding paused work (oldest first, no overlaps),
        so that work resumes with its KV where it stopped."""
        chosen: list[Group] = []
        for g in view.paused_groups:
            if all(not set(g.engines) & set(c.engines) for c in chosen):
                chosen.append(g)
        covered = {e for g in chosen for e in g.engines}
        singles = [Group(e, 1) for e in range(view.num_engines) if e not in covered]
        return Layout(view.num_engines, tuple(sorted(chosen + singles)))

    def _resume(self, view: NodeView) -> Decision | None:
        missing = [g for g in view.paused_groups if g not in view.layout.groups]
        if not missing:
            return None
        engines = set(missing[0].engines)
        for g in view.groups:
            if not set(g.group.engines) & engines:
                continue
            if g.waiting or g.role != "any":
                return None  # a queue, or a class group (released only when idle): wait
        target = self._dp_with_paused(view)
        if target == view.layout:
            return None
        return Decision(target, "sequential", f"resume paused work on {missing[0].label}")

    def _load(self, view: NodeView) -> Decision | None:
        per_engine = view.outstanding / view.num_engines
        all_dp = all(g.group.num_engines == 1 for g in view.groups)
        recent = view.now_s - view.last_switch_done_s < self.rules.min_interval_s
        if all_dp and per_engine < self.rules.low_load_per_engine:
            if self._low_since is None:
                self._low_since = view.now_s
            if view.now_s - self._low_since >= self.rules.dwell_s and not recent:
                self._low_since = None
                width = self.rules.low_load_engines_per_group or view.num_engines
                target = Layout.uniform(view.num_engines, min(width, view.num_engines))
                return Decision(target, self.rules.merge_strategy,
                                f"low load: {per_engine:.2f} requests per engine")
            return None
        self._low_since = None
        general_tp = any(g.group.num_engines > 1 and g.role == "any" for g in view.groups)
        queued = (sum(g.waiting for g in view.groups) + view.held_requests) / view.num_engines
        if not (general_tp and queued > self.rules.high_queue_per_engine):
            self._backlog_since = None
            return None
        if self._backlog_since is None:
            self._backlog_since = view.now_s
        if view.now_s - self._backlog_since < self.rules.split_dwell_s:
            return None
        self._backlog_since = None
        return self._split(view, f"backlog: {queued:.2f} queued requests per engine")


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p
