"""The switch state machine on hand-made cases with hand-computed times, and switch storms.

Step time here is a constant 10 ms at width 1 and 5 ms at width 2 (LinearPredictor with only
a base cost), so every timestamp can be worked out by hand.
"""
import random

import pytest
import simpy

from policies.layout import Group, Layout
from policies.policy import Decision, PolicyConfig, StaticPolicy
from policies.scheduler import SchedulerConfig
from policies.specs import MemoryConfig
from policies.switch import SwitchConfig
from sim.node import SimNode
from tests.fakes import TINY_MODEL, LinearPredictor, tiny_cluster
from traces.spec import RequestSpec

STEP_S = 0.01
MEM = MemoryConfig(gpu_memory_utilization=0.9, activation_reserve_gib=0.85, block_size_tokens=4)


def make_node(num_engines=2, switch=None, predictor=None, mem=MEM):
    env = simpy.Environment()
    policy = StaticPolicy(PolicyConfig(kind="static_dp", weights_resident_per_engine=True))
    node = SimNode(env, TINY_MODEL, tiny_cluster(num_gpus=num_engines), mem,
                   SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=32),
                   predictor or LinearPredictor(base_s=STEP_S, per_token_s=0.0, per_kv_s=0.0,
                                                per_tp_s=0.0),
                   policy, switch_config=switch or SwitchConfig(flip_s=0.015),
                   dynamic=True, sample_period_s=0.05)
    return env, node


def at(env, t, fn):
    def proc():
        yield env.timeout(t - env.now)
        fn()
    env.process(proc())


def switch_to(node, layout, strategy, roles=None):
    return lambda: node.control.request_switch(
        Decision(layout, strategy, "test", roles or {}), node.env.now)


def by_id(result, i):
    return next(r for r in result.requests if r.request_id == i)


TP2 = Layout.static_tp(2)
DP2 = Layout.static_dp(2)


def test_sequential_waits_for_running_work_then_flips():
    env, node = make_node()
    # r0: prefill at 0-0.01 (first token), 10 decodes -> finishes at 0.11 on e0.
    specs = [RequestSpec(0, 0.0, 4, 11), RequestSpec(1, 0.06, 4, 3)]
    at(env, 0.05, switch_to(node, TP2, "sequential"))
    result = node.run(specs)
    sw = result.switches[0]
    assert sw.first_ready_s == pytest.approx(0.05)  # e1 was idle
    assert sw.ready_s == pytest.approx(0.11)  # e0 drained r0
    assert sw.drain_s == pytest.approx(0.06)
    assert sw.done_s == pytest.approx(0.125)  # + 15 ms flip
    r1 = by_id(result, 1)  # held during the switch, then served at width 2 (5 ms steps)
    assert r1.first_token_s == pytest.approx(0.13) and r1.tp_widths == [2]
    assert by_id(result, 0).preemptions == 0 and sw.recomputed_tokens == 0


def test_hard_preempt_pauses_keeps_kv_and_resumes_without_recompute():
    env, node = make_node()
    specs = [RequestSpec(0, 0.0, 4, 11), RequestSpec(1, 0.056, 4, 3, request_class="priority")]
    blocks_before = {}
    at(env, 0.055, switch_to(node, TP2, "hard", {Group(0, 2): "priority"}))
    at(env, 0.065, lambda: blocks_before.update(
        ids=list(node.control.paused[Group(0, 1)][0].block_ids)))
    at(env, 0.1, switch_to(node, DP2, "sequential"))
    result = node.run(specs)
    hard, back = result.switches
    # e0 stops at its next step boundary after 0.055 (0.06); r0 has 6 tokens by then.
    assert hard.ready_s == pytest.approx(0.06) and hard.paused_requests == 1
    assert hard.done_s == pytest.approx(0.075)
    r1 = by_id(result, 1)
    assert r1.first_token_s == pytest.approx(0.08) and r1.finish_s == pytest.approx(0.09)
    # Back to DP at 0.1 (TP group idle): flip done 0.115; r0 resumes its 5 remaining tokens.
    assert back.done_s == pytest.approx(0.115)
    r0 = by_id(result, 0)
    assert r0.finish_s == pytest.approx(0.165)
    assert r0.recomputed_tokens == 0 and r0.preemptions == 0 and hard.recomputed_tokens == 0
    assert blocks_before["ids"], "the paused request kept its blocks"


def test_soft_preempt_prereruns_priority_work_then_recomputes_it_at_the_flip():
    env, node = make_node()
    specs = [RequestSpec(0, 0.0, 4, 11), RequestSpec(1, 0.025, 4, 20, request_class="priority")]
    at(env, 0.02, switch_to(node, TP2, "soft", {Group(0, 2): "priority"}))
    result = node.run(specs)
    sw = result.switches[0]
    r1 = by_id(result, 1)
    # r1 is pre-run on the drained e1 at width 1: first token 10 ms after it arrives.
    assert r1.first_token_s == pytest.approx(0.035) and r1.tp_widths == [1, 2]
    # e0 drains r0 at 0.11; e1 parks at its next boundary (0.115) and the flip starts there.
    assert sw.first_ready_s == pytest.approx(0.02) and sw.ready_s == pytest.approx(0.115)
    assert sw.prerun_requests == 1 and sw.preempted_requests == 1
    assert sw.recomputed_tokens == 12  # prompt 4 + 8 decoded tokens had KV at width 1
    assert r1.recomputed_tokens == 12
    assert sw.done_s == pytest.approx(0.13)
    # The TP group recomputes the 13 known tokens in one 5 ms step and samples token 10.
    assert r1.finish_s == pytest.approx(0.135 + 10 * 0.005)


def test_restart_baseline_pays_restart_and_recomputes_in_flight_work():
    env, node = make_node(switch=SwitchConfig(restart_s=1.0))
    specs = [RequestSpec(0, 0.0, 4, 11)]
    at(env, 0.055, switch_to(node, TP2, "restart"))
    result = node.run(specs)
    sw = result.switches[0]
    assert sw.ready_s == pytest.approx(0.06) and sw.flip_s == pytest.approx(1.0)
    assert sw.recomputed_tokens == 9  # prompt 4 + 5 decoded
    r0 = by_id(result, 0)
    # After the restart (1.06): one 5 ms step recomputes 10 tokens and samples the 7th,
    # 4 decodes follow.
    assert r0.finish_s == pytest.approx(1.06 + 5 * 0.005)
    assert r0.preemptions == 1 and r0.generated_tokens if hasattr(r0, "generated_tokens") else True


def test_lazy_communicator_pays_group_creation_once():
    env, node = make_node(switch=SwitchConfig(comm_pool="lazy", lazy_group_create_s=0.5))
    specs = [RequestSpec(0, 0.0, 4, 3), RequestSpec(1, 3.0, 4, 3)]  # keeps the run going
    at(env, 0.1, switch_to(node, TP2, "sequential"))
    at(env, 1.0, switch_to(node, DP2, "sequential"))
    at(env, 2.0, switch_to(node, TP2, "sequential"))
    result = node.run(specs)
    assert [s.comm_setup_s for s in result.switches] == [0.5, 0.0, 0.0]


def test_a_switch_during_a_switch_is_queued_not_lost():
    env, node = make_node()
    specs = [RequestSpec(0, 0.0, 4, 11)]
    outcome = []
    at(env, 0.05, lambda: outcome.append(switch_to(node, TP2, "sequential")()))
    at(env, 0.06, lambda: outcome.append(switch_to(node, DP2, "sequential")()))
    result = node.run(specs)
    assert outcome == ["started", "queued"]
    assert [s.to_layout for s in result.switches] == ["1xTP2", "2xTP1"]
    assert all(s.done_s is not None for s in result.switches)


def test_long_context_request_waits_for_a_group_wide_enough():
    # A pool small enough that one engine holds ~1,200 tokens; two merged hold ~2,400.
    mem = MemoryConfig(gpu_memory_utilization=0.9, activation_reserve_gib=0.8995,
                       block_size_tokens=4)
    env = simpy.Environment()
    from policies.flying import FlyingPolicy
    from policies.policy import FlyingRules
    policy = FlyingPolicy(PolicyConfig(kind="flying", weights_resident_per_engine=True,
                                       flying=FlyingRules(dwell_s=1e9)))
    node = SimNode(env, TINY_MODEL, tiny_cluster(num_gpus=2), mem,
                   SchedulerConfig(max_num_batched_tokens=4096, max_num_seqs=32),
                   LinearPredictor(), policy, dynamic=True, sample_period_s=0.05)
    one_engine = node.control.groups[0].capacity_tokens
    specs = [RequestSpec(0, 0.0, one_engine + 100, 5), RequestSpec(1, 0.0, 10, 5),
             RequestSpec(2, 0.0, 3 * one_engine, 5)]
    result = node.run(specs)
    r0, r1, r2 = (by_id(result, i) for i in range(3))
    assert r0.is_finished and r0.tp_widths == [2]
    assert r1.is_finished
    assert r2.status.value == "rejected" and "whole node" in r2.reject_reason


# --- switch storms --------------------------------------------------------------------------
def random_layout(rng, num_engines):
    def split(first, width):
        if width == 1 or rng.random() < 0.4:
            return [Group(first, width)]
        half = width // 2
        return split(first, half) + split(first + half, half)
    return Layout(num_engines, tuple(split(0, num_engines)))


@pytest.mark.parametrize("seed", range(6))
def test_switch_storm_loses_nothing_and_conserves_blocks(seed):
    rng = random.Random(seed)
    num_engines = 4
    mem = MemoryConfig(gpu_memory_utilization=0.9, activation_reserve_gib=0.897,
                       block_size_tokens=4)  # small pools: preemptions happen too
    env, node = make_node(num_engines, predictor=LinearPredictor(), mem=mem)
    # Skewed load: mostly short requests, a few long ones, bursts.
    t, specs = 0.0, []
    for i in range(300):
        t += rng.expovariate(200 if (i // 50) % 2 else 40)
        long = rng.random() < 0.1
        specs.append(RequestSpec(i, t, rng.randint(200, 900) if long else rng.randint(1, 60),
                                 rng.randint(50, 200) if long else rng.randint(1, 30),
                                 request_class="priority" if rng.random() < 0.1 else "normal"))
    strategies = ["sequential", "soft", "hard", "restart"]
    node.control.switch_config.restart_s = 0.05
    answers = []
    for k in range(40):
        layout = random_layout(rng, num_engines)
        roles = {layout.groups[0]: "priority"} if rng.random() < 0.3 else {}
        at(env, rng.uniform(0, t), lambda l=layout, s=rng.choice(strategies), r=roles:
           answers.append(node.control.request_switch(Decision(l, s, "storm", r), env.now)))

    def checker():
        while True:
            yield env.timeout(0.003)
            for e in node.engines.values():
                e.sync(env.now)
            node.control.check_invariants()
            # Paused work resumes only when its group forms again: after the storm, bring
            # each paused group back in turn.
            c = node.control
            if env.now > t and c.pending is None and not c.queued and c.paused:
                group = next(iter(c.paused))
                widths = Layout(num_engines, tuple(
                    [group] + [Group(e, 1) for e in range(num_engines) if e not in group.engines]))
                ordered = Layout(num_engines, tuple(sorted(widths.groups)))
                c.request_switch(Decision(ordered, "sequential", "resume paused"), env.now)

    env.process(checker())
    result = node.run(specs)
    node.control.check_invariants()
    ids = [r.request_id for r in result.requests]
    assert sorted(ids) == list(range(len(specs)))  # none lost, none duplicated
    assert all(r.is_finished for r in result.requests), "every request completes"
    assert all(r.num_generated == r.output_tokens for r in result.requests)
    assert all(s.done_s is not None for s in result.switches)  # every switch completed
    assert len(answers) == 40 and sum(a in ("started", "queued") for a in answers) >= 10
    for g in node.control.groups.values():  # all KV returned at the end
        assert g.scheduler.blocks.num_used_blocks == 0
