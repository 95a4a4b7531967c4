"""Policy decisions on hand-made node views."""
import math

import pytest

from policies.flying import FlyingPolicy
from policies.layout import Group, Layout
from policies.plan import StepShape
from policies.policy import FlyingRules, GroupView, NodeView, PolicyConfig, SloAwareRules
from policies.slo_aware import SloAwarePolicy


def gv(gid, first, width, outstanding=0, waiting=0, priority=0, role="any", cap=10**6):
    # ``priority`` requests count as queued (and outstanding) here.
    return GroupView(gid, Group(first, width), width, outstanding, waiting, outstanding - waiting,
                     priority, cap, True, role, priority)


def view(groups, now=100.0, held=0, needs=0, held_priority=0, last_switch=0.0, **kw):
    layout = Layout(4, tuple(g.group for g in groups))
    return NodeView(now, 4, layout, groups, False, held, needs, held_priority, 0, last_switch, **kw)


def dp(loads=(0, 0, 0, 0), waiting=(0, 0, 0, 0), priority=(0, 0, 0, 0)):
    return [gv(i, i, 1, loads[i], waiting[i], priority[i]) for i in range(4)]


def flying(**rules):
    return FlyingPolicy(PolicyConfig(kind="flying", weights_resident_per_engine=True,
                                     flying=FlyingRules(**rules)))


def test_long_context_forms_a_group_wide_enough_by_the_priority_strategy():
    d = flying().decide(view(dp(loads=(5, 5, 5, 5)), held=1, needs=3))
    assert d.target == Layout.from_widths(4, [4]) and d.strategy == "hard"
    assert d.roles == {Group(0, 4): "long_context"}


def test_priority_request_forms_a_tp_group_by_hard_preempt():
    d = flying(priority_engines_per_group=2).decide(view(dp(loads=(5, 5, 5, 5), priority=(1, 0, 0, 0))))
    assert d.target == Layout.from_widths(4, [2, 1, 1]) and d.strategy == "hard"
    assert d.roles == {Group(0, 2): "priority"}


def test_idle_priority_group_splits_back():
    groups = [gv(0, 0, 2, role="priority"), gv(1, 2, 1, 3), gv(2, 3, 1, 3)]
    d = flying().decide(view(groups))
    assert d.target == Layout.static_dp(4) and "priority group idle" in d.reason


def test_low_load_merges_after_dwell_and_backlog_splits_after_its_dwell():
    p = flying(dwell_s=5.0, low_load_per_engine=2.0, high_queue_per_engine=1.0, split_dwell_s=2.0,
               min_interval_s=0.0)
    assert p.decide(view(dp(loads=(1, 1, 1, 1)), now=100.0)) is None  # dwell starts
    d = p.decide(view(dp(loads=(1, 1, 1, 1)), now=105.0))
    assert d.target == Layout.static_tp(4)
    tp = [gv(0, 0, 4, outstanding=20, waiting=10)]
    assert p.decide(view(tp, now=110.0)) is None  # backlog seen, dwell starts
    assert p.decide(view(tp, now=111.0)) is None
    assert p.decide(view(tp, now=112.0)).target == Layout.static_dp(4)


def test_busy_dp_does_not_merge():
    assert flying(low_load_per_engine=2.0).decide(view(dp(loads=(3, 3, 3, 3)))) is None


class Cost:
    """Step: 20 ms / tp (weights) + 6 ms if tp > 1 (all-reduces) + 1 ms per sequence beyond
    the first (KV reads, not split here) + 20 us per token / tp (GEMMs)."""

    def step_time_s(self, s: StepShape) -> float:
        return (0.02 / s.tp_gpus + (0.006 if s.tp_gpus > 1 else 0.0) + 1e-3 * (s.num_seqs - 1)
                + 2e-5 * s.num_tokens / s.tp_gpus)


def test_slo_aware_predictions_grow_with_load_and_overload_is_infinite():
    low = SloAwarePolicy.predict(Cost(), 1, 0.5, 500, 100, 0)
    high = SloAwarePolicy.predict(Cost(), 1, 2.0, 500, 100, 0)
    assert high[0] > low[0] and high[1] >= low[1]
    assert SloAwarePolicy.predict(Cost(), 1, 100.0, 500, 100, 0)[0] == math.inf


def test_slo_aware_prefers_tp_at_low_load_and_dp_at_high_load():
    p = SloAwarePolicy(PolicyConfig(kind="slo_aware", weights_resident_per_engine=True,
                                    slo_aware=SloAwareRules(ttft_slo_s=0.1, tpot_slo_s=0.05)))
    base = dict(mean_prompt_tokens=500.0, mean_output_tokens=100.0, cost_model=Cost())
    p._rate_rps = 0.2
    low = {w: p.score(view(dp(), **base), w) for w in (1, 2, 4)}
    assert max(low, key=low.get) == 4
    p._rate_rps = 30.0
    high = {w: p.score(view(dp(), **base), w) for w in (1, 2, 4)}
    assert max(high, key=high.get) == 1


def test_slo_aware_needs_confirmations_before_switching():
    p = SloAwarePolicy(PolicyConfig(kind="slo_aware", weights_resident_per_engine=True,
                                    slo_aware=SloAwareRules(ttft_slo_s=0.1, tpot_slo_s=0.01,
                                                            confirmations=3, min_interval_s=0)))
    base = dict(mean_prompt_tokens=500.0, mean_output_tokens=100.0, cost_model=Cost())
    decisions = []
    for i in range(5):
        decisions.append(p.decide(view(dp(), now=100.0 + i, arrivals_total=0, **base)))
    assert decisions[:2] == [None, None] and decisions[2].target == Layout.static_tp(4)


def test_paused_work_is_resumed_by_reforming_its_group():
    p = flying()
    tp = [gv(0, 0, 4, outstanding=0)]
    d = p.decide(view(tp, paused_groups=(Group(0, 2), Group(2, 1), Group(0, 1))))
    # The oldest paused groups that do not overlap come back; e0 (overlapping e0-1) waits.
    assert d.target == Layout(4, (Group(0, 2), Group(2, 1), Group(3, 1)))
    assert "resume" in d.reason


def test_release_keeps_groups_with_paused_work():
    groups = [gv(0, 0, 2, role="long_context"), gv(1, 2, 1, 3), gv(2, 3, 1, 3)]
    d = flying().decide(view(groups, paused_groups=(Group(0, 1),)))
    assert d.target == Layout.static_dp(4)
    groups = [gv(0, 0, 4, role="long_context")]
    d = flying().decide(view(groups, paused_groups=(Group(0, 2),)))
    assert d.target == Layout(4, (Group(0, 2), Group(2, 1), Group(3, 1)))


def test_long_context_waits_for_paused_work_and_busy_long_groups():
    d = flying().decide(view(dp(), held=1, needs=4, paused_groups=(Group(0, 1),)))
    assert d is None or "long_context" not in d.roles.values()
    busy = [gv(0, 0, 2, outstanding=1, role="long_context"), gv(1, 2, 1), gv(2, 3, 1)]
    assert flying().decide(view(busy, held=1, needs=4)) is None


def test_resume_never_cuts_into_a_busy_class_group():
    busy = [gv(0, 0, 2, outstanding=1, role="long_context"), gv(1, 2, 1), gv(2, 3, 1)]
    assert flying().decide(view(busy, paused_groups=(Group(0, 1),))) is None


def test_running_priority_work_does_not_form_a_group_and_class_groups_are_not_resumed_through():
    running = [GroupView(i, Group(i, 1), 1, 2, 0, 2, 1, 10**6, True, "any", 0) for i in range(4)]
    assert flying(low_load_per_engine=1.0).decide(view(running)) is None
    idle_prio = [gv(0, 0, 2, role="priority"), gv(1, 2, 1), gv(2, 3, 1)]
    assert flying(class_idle_s=30.0).decide(view(idle_prio, paused_groups=(Group(0, 1),))) is None
