"""The control plane's hooks for a real backend, driven by hand (no simulator): early stops
in ``Scheduler.update``, switch tickets (queued, never lost), a split strategy per switch,
``withdraw`` from every place a request can be, and hard preempt keeping the KV."""
import pytest

from policies.block_manager import BlockManager
from policies.control import ControlPlane
from policies.layout import Group, Layout
from policies.policy import Decision, PolicyConfig, StaticPolicy
from policies.request import Request, RequestStatus
from policies.scheduler import Scheduler, SchedulerConfig
from policies.specs import MemoryConfig
from tests.fakes import TINY_MODEL, tiny_cluster
from traces.spec import RequestSpec

MEM = MemoryConfig(gpu_memory_utilization=0.9, activation_reserve_gib=0.85, block_size_tokens=4)
DP2, TP2 = Layout.static_dp(2), Layout.static_tp(2)


class Recorder:
    """A Listener that only writes down what it was told."""

    def __init__(self):
        self.events = []

    def wake(self, gid, stop_now):
        self.events.append(("wake", gid, stop_now))

    def group_started(self, gid):
        self.events.append(("started", gid))

    def group_retired(self, gid):
        self.events.append(("retired", gid))

    def start_flip(self, duration_s):
        self.events.append(("flip", duration_s))


def make_control(kind="static_dp"):
    listener = Recorder()
    policy = StaticPolicy(PolicyConfig(kind=kind, weights_resident_per_engine=True))
    c = ControlPlane(TINY_MODEL, tiny_cluster(num_gpus=2), MEM,
                     SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=32), policy,
                     listener=listener, dynamic=True)
    c.start()
    return c, listener


def req(i, prompt=8, output=5, cls="normal"):
    return Request(RequestSpec(i, 0.0, prompt, output, request_class=cls))


def group_of(c, label):
    return next(g for g in c.groups.values() if g.label == label)


def step(c, label, t=0.0):
    """One step of group ``label`` as a backend runs it: boundary check, plan, update."""
    g = group_of(c, label)
    assert c.may_step(g.gid, t)
    out = g.scheduler.schedule(t)
    finished = g.scheduler.update(out, t + 0.01)
    if finished:
        c.on_finish(g.gid, finished, t + 0.01)
    return out, finished


def flip(c, t=1.0):
    """Bring every retiring group to its boundary, then finish the flip."""
    for gid in list(c.pending.retiring):
        c.may_step(gid, t)
    assert c.pending.flipping
    c.finish_flip(t)


# --- early stop ------------------------------------------------------------------------------
def test_early_stop_finishes_in_update_and_keeps_the_requested_count():
    s = Scheduler(0, 1, BlockManager(20, 4), SchedulerConfig())
    a, b = req(0, prompt=6, output=10), req(1, prompt=6, output=10)
    s.add_request(a)
    s.add_request(b)
    out = s.schedule(0.0)
    assert s.update(out, 1.0) == []  # both sampled their first token
    out = s.schedule(1.0)
    finished = s.update(out, 2.0, stopped_ids={1})  # b's second token was a stop token
    assert finished == [b] and b.status is RequestStatus.FINISHED and b.finish_s == 2.0
    assert b.num_generated == 2 and b.output_tokens == 10  # the record keeps what was asked
    assert s.running == [a] and s.blocks.num_free_blocks == 20 - 2  # a's 7 tokens; b's are back
    assert b.record("executor")["generated_tokens"] == 2


def test_a_stop_in_a_step_that_samples_nothing_is_a_bug():
    s = Scheduler(0, 1, BlockManager(20, 4), SchedulerConfig(max_num_batched_tokens=4))
    r = req(0, prompt=10, output=3)
    s.add_request(r)
    out = s.schedule(0.0)  # a prefill chunk: 4 of 10 prompt tokens, no sample
    with pytest.raises(ValueError, match="did not sample"):
        s.update(out, 1.0, stopped_ids={0})


# --- tickets -----------------------------------------------------------------------------------
def test_a_switch_asked_during_another_is_queued_then_run_or_ended_as_a_no_op():
    c, _ = make_control()
    first = c.submit_switch(Decision(TP2, "hard", "first"), 0.0)
    second = c.submit_switch(Decision(DP2, "sequential", "second"), 0.1)
    third = c.submit_switch(Decision(DP2, "sequential", "third"), 0.2)
    assert (first.state, second.state, third.state) == ("switching", "queued", "queued")
    assert [t.switch_id for t in (first, second, third)] == [0, 1, 2]
    assert list(c.queued) == [second, third]
    flip(c)
    assert first.state == "done" and first.record.done_s == 1.0
    assert second.state == "switching" and second.record.switch_id == 1
    flip(c, 2.0)
    # At its turn the node is in DP2 already: the third ends as a no-op, not silently.
    assert second.state == "done" and third.state == "no-op" and third.record is None
    assert "at its turn" in third.note and c.pending is None and not c.queued
    assert [r.switch_id for r in c.switches] == [0, 1]
    assert c.request_switch(Decision(DP2, "hard", "again"), 3.0) == \
        "no-op: already in that layout"


def test_an_impossible_switch_is_refused_before_anything_changes():
    c, _ = make_control()
    with pytest.raises(ValueError, match="strategy 'fast'"):
        c.submit_switch(Decision(TP2, "fast", "x"), 0.0)
    with pytest.raises(ValueError, match="split strategy 'teleport'"):
        c.submit_switch(Decision(TP2, "hard", "x", split_strategy="teleport"), 0.0)
    with pytest.raises(ValueError, match="4 engines, the node has 2"):
        c.submit_switch(Decision(Layout.static_dp(4), "hard", "x"), 0.0)
    assert c.pending is None and not c.tickets and not c.switches


@pytest.mark.parametrize("split, recomputed", [("drain", 0), ("recompute", 11)])
def test_each_switch_may_name_its_split_strategy(split, recomputed):
    c, _ = make_control("static_tp")
    r = req(0, prompt=10, output=8)
    c.admit(r, 0.0)
    step(c, "e0-1")
    step(c, "e0-1")  # 10 prompt tokens, then one decode: 11 tokens of KV
    c.submit_switch(Decision(DP2, "hard", "split", split_strategy=split), 0.1)
    tp = group_of(c, "e0-1")
    assert c.pending.split_strategy == split
    if split == "drain":
        assert c.may_step(tp.gid, 0.2)  # still running: drains at width 2
        assert r.num_computed_tokens == 11 and r.preemptions == 0
    else:
        assert not c.may_step(tp.gid, 0.2)  # dropped at once, to be recomputed in DP
        assert r.preemptions == 1 and r.num_computed_tokens == 0 and r in c.held
    assert c.switches[0].recomputed_tokens == recomputed


# --- withdraw ----------------------------------------------------------------------------------
def test_withdraw_takes_a_request_out_of_a_queue_a_batch_or_the_held_queue():
    c, listener = make_control()
    a, b, d = req(0), req(1), req(2)
    for r in (a, b, d):
        c.admit(r, 0.0)  # least loaded, round robin: a -> e0, b -> e1, d -> e0
    e0, e1 = group_of(c, "e0"), group_of(c, "e1")
    assert list(e1.scheduler.waiting) == [b]
    step(c, "e0")  # a and d run: 8 tokens each, 2 blocks each
    assert e0.scheduler.running == [a, d] and e0.scheduler.blocks.num_used_blocks == 4
    assert c.withdraw(a, 0.1) and not a.block_ids  # from a batch: its KV is freed
    assert e0.scheduler.running == [d] and e0.scheduler.blocks.num_used_blocks == 2
    assert ("wake", e0.gid, False) in listener.events
    assert c.withdraw(b, 0.1) and not e1.scheduler.has_work  # from a queue
    c.submit_switch(Decision(TP2, "sequential", "merge"), 0.2)  # e0 drains d first
    late = req(3)
    c.admit(late, 0.3)
    assert list(c.held) == [late]  # no group accepts during the switch
    assert c.withdraw(late, 0.3) and not c.held  # from the held queue
    assert c.num_unfinished == 1
    c.check_invariants()
    assert not c.withdraw(a, 0.4)  # not in the node any more


def test_hard_preempt_keeps_kv_and_withdrawing_a_paused_request_frees_its_blocks():
    c, _ = make_control()
    a, b = req(0, prompt=8, output=20), req(1, prompt=8, output=20)
    c.admit(a, 0.0)
    c.admit(b, 0.0)
    step(c, "e0")
    step(c, "e1")
    a_blocks, b_blocks = list(a.block_ids), list(b.block_ids)
    c.submit_switch(Decision(TP2, "hard", "priority"), 0.1)
    flip(c, 0.2)
    assert a.pauses == b.pauses == 1 and a.preemptions == b.preemptions == 0
    assert c.paused == {Group(0, 1): [a], Group(1, 1): [b]}
    tp = group_of(c, "e0-1").scheduler.blocks
    # Same-numbered blocks on two engines: both ids stay reserved while either is paused.
    assert a_blocks == b_blocks and tp.reserved_ids == frozenset(a_blocks)
    usable = tp.num_usable_blocks
    assert c.withdraw(a, 0.3)
    assert tp.reserved_ids == frozenset(b_blocks) and tp.num_usable_blocks == usable
    assert c.withdraw(b, 0.3)
    assert tp.reserved_ids == frozenset() and tp.num_usable_blocks == usable + len(b_blocks)
    assert not c.paused and c.num_unfinished == 0
    c.check_invariants()


def test_paused_work_resumes_with_its_blocks_and_computes_nothing_again():
    c, _ = make_control()
    a = req(0, prompt=8, output=6)
    c.admit(a, 0.0)
    step(c, "e0")
    step(c, "e0")
    computed, blocks = a.num_computed_tokens, list(a.block_ids)
    c.submit_switch(Decision(TP2, "hard", "episode"), 0.1)
    flip(c, 0.2)
    c.submit_switch(Decision(DP2, "sequential", "back"), 0.3)
    flip(c, 0.4)
    assert a.block_ids == blocks and a.num_computed_tokens == computed
    out, _ = step(c, "e0", 0.5)
    assert [(s.num_new_tokens, s.num_computed_tokens) for s in out.scheduled] == [(1, computed)]
    t = 0.6
    while not a.is_finished:
        step(c, "e0", t)
        t += 0.01
    assert a.recomputed_tokens == 0 and a.pauses == 1 and a.tp_widths == [1]
