"""The KV Cache Adaptor: one fixed-byte pool, re-viewed per width without copying."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without torch)

import pytest
import torch

from executor.kv_cache import PagedKVCache, block_bytes
from executor.model_config import ModelConfig
from policies.specs import ModelSpec, kv_block_bytes_per_gpu

SPEC = ModelSpec(name="t", num_layers=3, hidden_size=64, num_heads=8, num_kv_heads=4,
                 intermediate_size=128, vocab_size=256, dtype="float16")


def _cache(num_blocks=6, block_size_tokens=4):
    return PagedKVCache(num_layers=3, num_kv_heads=4, head_dim=8, num_blocks=num_blocks,
                        block_size_tokens=block_size_tokens, dtype=torch.float32)


def test_width_p_holds_p_times_the_tokens_in_the_same_storage():
    cache = _cache()
    ptr, nbytes = cache.storage.data_ptr(), cache.storage.untyped_storage().nbytes()
    for width in (1, 2, 4, 2, 1):
        cache.set_width(width)
        k, v = cache.layer(2)
        assert cache.tokens_per_block == 4 * width
        assert k.shape == (6 * 4 * width, 4 // width, 8)
        assert k.untyped_storage().data_ptr() == ptr and v.untyped_storage().data_ptr() == ptr
        assert cache.storage.untyped_storage().nbytes() == nbytes


def test_kv_written_at_one_width_is_unchanged_after_switching_away_and_back():
    cache = _cache()
    k, _ = cache.layer(1)
    slots = torch.tensor([4, 5, 6, 7, 9])  # block 1 and part of block 2 at width 1
    written = torch.randn(5, 4, 8)
    k[slots] = written
    cache.set_width(2)
    k2, _ = cache.layer(1)
    k2[torch.arange(0, 8)] = torch.randn(8, 2, 8)  # a TP request writes block 0 at width 2
    cache.set_width(1)
    assert torch.equal(cache.layer(1)[0][slots], written)


def test_block_bytes_equal_the_control_planes_and_budget_sizing():
    config = ModelConfig.from_model_spec(SPEC)
    assert block_bytes(config, 16, torch.float16) == kv_block_bytes_per_gpu(SPEC, 1, 16)
    per_block = block_bytes(config, 16, torch.float16)
    cache = PagedKVCache.for_byte_budget(config, budget_bytes=10 * per_block + per_block // 2,
                                         block_size_tokens=16, dtype=torch.float16)
    assert cache.num_blocks == 10 and cache.block_bytes == per_block
    assert cache.storage.untyped_storage().nbytes() == 10 * per_block
    with pytest.raises(ValueError, match="smaller than one block"):
        PagedKVCache.for_byte_budget(config, budget_bytes=per_block - 1, block_size_tokens=16,
                                     dtype=torch.float16)


def test_width_must_divide_kv_heads():
    with pytest.raises(ValueError, match="width 8 does not divide num_kv_heads=4"):
        _cache().set_width(8)
