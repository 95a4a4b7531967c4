from policies.block_manager import BlockManager, blocks_for
from policies.request import Request
from traces.spec import RequestSpec


def req(i=0, prompt=10, output=5):
    return Request(RequestSpec(i, 0.0, prompt, output))


def test_blocks_for_rounds_up():
    assert [blocks_for(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_ensure_grows_table_and_reports_new_blocks():
    bm = BlockManager(num_blocks=4, tokens_per_block=4)
    r = req()
    assert len(bm.ensure(r, 5)) == 2
    assert bm.ensure(r, 8) == []  # still fits in two blocks
    assert len(bm.ensure(r, 9)) == 1
    assert len(r.block_ids) == 3 and bm.num_free_blocks == 1 and bm.num_used_blocks == 3


def test_out_of_blocks_is_a_return_value_and_changes_nothing():
    bm = BlockManager(num_blocks=2, tokens_per_block=4)
    r = req()
    assert bm.ensure(r, 12) is None
    assert r.block_ids == [] and bm.num_free_blocks == 2


def test_free_returns_every_block_and_ids_stay_unique():
    bm = BlockManager(num_blocks=6, tokens_per_block=2)
    a, b = req(0), req(1)
    bm.ensure(a, 5)
    bm.ensure(b, 6)
    assert sorted(a.block_ids + b.block_ids) == list(range(6))
    bm.free(a)
    assert a.block_ids == [] and bm.num_free_blocks == 3
    c = req(2)
    bm.ensure(c, 6)
    assert set(c.block_ids).isdisjoint(b.block_ids)


def test_capacity_is_blocks_times_tokens_per_block():
    # At merge width p a logical block holds p * B_base tokens (KV Cache Adaptor).
    assert BlockManager(100, 16 * 4).capacity_tokens == 6400
