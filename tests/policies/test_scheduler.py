"""Scheduler tests with hand-made inputs and hand-computed results (vLLM v1 style)."""
import pytest

from policies.block_manager import BlockManager
from policies.request import Request, RequestStatus
from policies.scheduler import Scheduler, SchedulerConfig
from traces.spec import RequestSpec


def make(num_blocks=100, tokens_per_block=4, **cfg):
    return Scheduler(0, 1, BlockManager(num_blocks, tokens_per_block), SchedulerConfig(**cfg))


def req(i, prompt, output, cls="normal"):
    return Request(RequestSpec(i, 0.0, prompt, output, request_class=cls))


def step(s, t):
    out = s.schedule(t)
    finished = s.update(out, t + 1.0)
    return [(x.request_id, x.num_new_tokens, x.num_computed_tokens, x.samples) for x in out.scheduled], finished, out


def test_chunked_prefill_then_decode_to_completion():
    s = make(max_num_batched_tokens=8)
    r = req(0, prompt=20, output=3)
    s.add_request(r)
    assert step(s, 0)[0] == [(0, 8, 0, False)]
    assert step(s, 1)[0] == [(0, 8, 8, False)]
    assert step(s, 2)[0] == [(0, 4, 16, True)]  # last chunk samples the first token
    assert r.first_token_s == 3.0 and r.num_generated == 1
    assert step(s, 3)[0] == [(0, 1, 20, True)]
    sched, finished, _ = step(s, 4)
    assert sched == [(0, 1, 21, True)] and finished == [r]
    assert r.status is RequestStatus.FINISHED and r.finish_s == 5.0 and r.num_generated == 3
    assert r.first_scheduled_s == 0.0
    assert s.blocks.num_free_blocks == 100  # freed on finish
    assert not s.has_work


def test_running_decodes_go_before_waiting_prefill_within_budget():
    s = make(max_num_batched_tokens=10)
    a = req(0, prompt=4, output=10)
    s.add_request(a)
    step(s, 0)  # a prefilled, first token sampled
    b, c = req(1, prompt=6, output=2), req(2, prompt=30, output=2)
    s.add_request(b)
    s.add_request(c)
    # a decodes (1), b fully prefilled (6), c gets the 3 tokens left of the budget.
    assert step(s, 1)[0] == [(0, 1, 4, True), (1, 6, 0, True), (2, 3, 0, False)]


def test_max_num_seqs_caps_admission():
    s = make(max_num_batched_tokens=100, max_num_seqs=2)
    for i in range(3):
        s.add_request(req(i, prompt=5, output=5))
    assert [x[0] for x in step(s, 0)[0]] == [0, 1]
    assert len(s.waiting) == 1


def test_without_chunked_prefill_a_prompt_waits_for_a_whole_budget():
    s = make(max_num_batched_tokens=10, enable_chunked_prefill=False)
    a = req(0, prompt=4, output=5)
    s.add_request(a)
    step(s, 0)
    s.add_request(req(1, prompt=10, output=2))  # needs 10 > 9 left after a's decode
    assert step(s, 1)[0] == [(0, 1, 4, True)]


def test_preemption_by_recompute_when_blocks_run_out():
    # 4 blocks of 4 tokens = 16 token slots.
    s = make(num_blocks=4, tokens_per_block=4, max_num_batched_tokens=64)
    a, b = req(0, prompt=8, output=9), req(1, prompt=8, output=9)  # 16 KV tokens at most
    s.add_request(a)
    s.add_request(b)
    assert step(s, 0)[0] == [(0, 8, 0, True), (1, 8, 0, True)]  # 2 blocks each, pool full
    # a's decode needs a 3rd block: b (the later one) is preempted, its blocks freed.
    sched, _, out = step(s, 1)
    assert sched == [(0, 1, 8, True)] and out.preempted_ids == [1]
    assert b.status is RequestStatus.WAITING and b.block_ids == [] and b.num_computed_tokens == 0
    assert b.preemptions == 1 and s.waiting[0] is b
    # Nothing is admitted in a step that preempted; later, when a finishes, b recomputes
    # prompt + its 1 generated token: 8 of those 9 were computed before.
    while not a.is_finished:
        step(s, 2)
    while b.num_computed_tokens == 0:
        step(s, 3)
    assert b.recomputed_tokens == 8
    assert b.num_generated == 2  # the recompute step samples its second token


def test_preempting_self_when_alone_in_the_back():
    s = make(num_blocks=3, tokens_per_block=4, max_num_batched_tokens=64)
    a, b = req(0, prompt=4, output=9), req(1, prompt=4, output=9)
    s.add_request(a)
    s.add_request(b)
    step(s, 0)  # one block each, one free
    # a's 5th token takes the free block; b then needs one and is itself the last: it goes.
    sched, _, out = step(s, 1)
    assert sched == [(0, 1, 4, True)] and out.preempted_ids == [1]
    assert s.blocks.num_used_blocks == 2 and b.block_ids == []


def test_priority_policy_orders_waiting_and_protects_priority_from_preemption():
    s = make(num_blocks=4, tokens_per_block=4, max_num_batched_tokens=64, policy="priority")
    n1, p1 = req(0, 8, 9), req(1, 8, 9, cls="priority")
    s.add_request(n1)
    s.add_request(p1)
    assert [r.request_id for r in s.waiting] == [1, 0]
    step(s, 0)
    # Pool full; the next decode needs blocks: the normal request goes, not the priority one.
    _, _, out = step(s, 1)
    assert out.preempted_ids == [0]


def test_request_larger_than_the_pool_is_refused():
    s = make(num_blocks=2, tokens_per_block=4)
    with pytest.raises(ValueError, match="holds 8"):
        s.add_request(req(0, prompt=8, output=2))


def test_decode_horizon_hand_computed():
    s = make(num_blocks=100, tokens_per_block=4, max_num_batched_tokens=64)
    a, b = req(0, prompt=3, output=6), req(1, prompt=4, output=4)
    s.add_request(a)
    s.add_request(b)
    step(s, 0)  # both prefilled; generated = 1 each; remaining 5 and 3
    out = s.schedule(1.0)
    assert s.decode_horizon(out) == 3


def test_decode_horizon_stops_before_blocks_run_out():
    # After prefill a holds 4 tokens (1 block), b 3 (1 block). Pool of 3 blocks.
    s = make(num_blocks=3, tokens_per_block=4, max_num_batched_tokens=64)
    a, b = req(0, prompt=4, output=8), req(1, prompt=3, output=9)
    s.add_request(a)
    s.add_request(b)
    step(s, 0)
    out = s.schedule(1.0)  # a's 5th token takes the free block; b's 4th fits in its first
    # After k steps a holds 4+k tokens, b 3+k: k=1 needs 2+1 = 3 blocks; k=2 needs 2+2 = 4 > 3.
    assert s.decode_horizon(out) == 1
    assert s.blocks.num_free_blocks == 0


@pytest.mark.parametrize("k", [1, 2, 5, 9])
def test_advance_decode_equals_stepping(k):
    def setup():
        s = make(num_blocks=50, tokens_per_block=4, max_num_batched_tokens=64)
        rs = [req(i, prompt=3 + i, output=10 + i) for i in range(3)]
        for r in rs:
            s.add_request(r)
        step(s, 0)
        return s, rs

    s1, r1 = setup()
    for t in range(k):
        step(s1, 1 + t)
    s2, r2 = setup()
    out = s2.schedule(1.0)
    assert s2.decode_horizon(out) >= k
    s2.advance_decode(k, float(k))
    state = lambda rs: [(r.num_computed_tokens, r.num_generated, len(r.block_ids), r.status) for r in rs]
    assert state(r1) == state(r2)
    assert s1.blocks.num_free_blocks == s2.blocks.num_free_blocks
