"""The Model Weights Manager: shards are contiguous zero-copy views at every width."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without torch)

import pytest
import torch

from executor.model import CausalLM
from executor.parallel import (ColumnParallelLinear, FusedColumnParallelLinear, RowParallelLinear,
                               TensorParallelModule, VocabParallelEmbedding,
                               apply_tensor_parallel, prepare_tensor_parallel,
                               supported_widths)
from tests.executor.helpers import make_hf_model, save_hf
from executor.loader import load_model

MAX_WIDTH = 4


@pytest.fixture(scope="module")
def wide_pair(tmp_path_factory):
    """HF model with 8 heads / 4 KV heads (so widths 1, 2, 4 are all legal), and ours loaded
    with max_tp_width=4. vocab 250 is not a multiple of 4: exercises padding."""
    hf = make_hf_model("qwen2", num_attention_heads=8, num_key_value_heads=4, head_dim=8,
                       num_hidden_layers=2, vocab_size=250)
    folder = save_hf(hf, tmp_path_factory.mktemp("wide"))
    return hf, load_model(folder, max_tp_width=MAX_WIDTH)


def _parallel_layers(model: CausalLM):
    return [m for m in model.modules() if isinstance(m, TensorParallelModule)]


def _inside(view: torch.Tensor, full: torch.Tensor) -> bool:
    start = full.untyped_storage().data_ptr()
    end = start + full.untyped_storage().nbytes()
    first = view.data_ptr()
    last = first + (view.numel() - 1) * view.element_size()
    return (view.untyped_storage().data_ptr() == start and start <= first
            and last < end)


def test_switching_widths_only_repoints_views(wide_pair):
    _, model = wide_pair
    layers = _parallel_layers(model)
    originals = {id(m): m.active_weight.clone() for m in layers}
    for _ in range(3):
        for width in (2, 4, 1, 2):
            for rank in range(width):
                apply_tensor_parallel(model, rank, width)
                for m in layers:
                    assert _inside(m.active_weight, m.weight)
                    assert m.active_weight.is_contiguous()
                    if getattr(m, "active_bias", None) is not None:
                        assert _inside(m.active_bias, m.bias)
    apply_tensor_parallel(model, 0, 1)
    for m in layers:
        assert m.active_weight.data_ptr() == m.weight.data_ptr()
        assert m.active_weight.shape == m.weight.shape
        assert torch.equal(m.active_weight, originals[id(m)])


def _layout(layers) -> list:
    """What the switch set on every layer: tensors by (pointer, shape, stride), the rest as is."""
    def key(value):
        if isinstance(value, torch.Tensor):
            return ("tensor", value.data_ptr(), tuple(value.shape), value.stride())
        return value
    return [(id(m), name, key(getattr(m, name))) for m in layers
            for name in sorted(m.views(0, 1))]


def test_cached_views_equal_views_computed_per_switch(wide_pair):
    """The plan's precomputed views (apply_tensor_parallel) are exactly the views each layer
    computes for itself (TensorParallelModule.set_width, uncached), at every (rank, width)."""
    _, model = wide_pair
    prepare_tensor_parallel(model)
    layers = _parallel_layers(model)
    assert len(layers) == 2 * 4 + 2  # qkv, o, gate_up, down per layer; embedding; lm head
    for width in supported_widths(MAX_WIDTH):
        for rank in range(width):
            apply_tensor_parallel(model, rank, width)
            cached = _layout(layers)
            for m in layers:
                m.set_width(rank, width)
            assert _layout(layers) == cached, (rank, width)
            assert all((m.tp_rank, m.tp_width) == (rank, width) for m in layers)
    apply_tensor_parallel(model, 0, 1)


def test_a_switch_does_not_walk_the_module_tree(wide_pair, monkeypatch):
    """Once prepared, a switch touches the cached layers only (O(parallel layers))."""
    _, model = wide_pair
    prepare_tensor_parallel(model)
    layers = _parallel_layers(model)

    def walked(*args, **kwargs):
        raise AssertionError("a switch walked the module tree")
    for name in ("modules", "named_modules", "children", "named_children"):
        monkeypatch.setattr(model, name, walked)
    for rank, width in ((1, 2), (3, 4), (0, 1), (1, 4), (0, 2)):
        apply_tensor_parallel(model, rank, width)
        assert all((m.tp_rank, m.tp_width) == (rank, width) for m in layers)
        for m in layers:
            assert _inside(m.active_weight, m.weight)
            rows = m.weight.shape[0] // width
            assert m.active_weight.data_ptr() == m.weight[rank * rows].data_ptr()
    monkeypatch.undo()
    apply_tensor_parallel(model, 0, 1)


def _reference_fused_shard(pieces: list[torch.Tensor], rank: int, width: int) -> torch.Tensor:
    """The rank's rows of the interleaved layout, computed from the unfused HF tensors:
    blocks b = rank*S/w .. (rank+1)*S/w - 1, each [piece_0 rows of b | piece_1 rows of b ...]."""
    per_width = MAX_WIDTH // width
    blocks = []
    for b in range(rank * per_width, (rank + 1) * per_width):
        for piece in pieces:
            rows = piece.shape[0] // MAX_WIDTH
            blocks.append(piece[b * rows:(b + 1) * rows])
    return torch.cat(blocks)


@pytest.mark.parametrize("width", [1, 2, 4])
def test_fused_shards_are_contiguous_and_equal_reference(wide_pair, width):
    hf, model = wide_pair
    hf_layer, layer = hf.model.layers[1], model.model.layers[1]
    attn, mlp = hf_layer.self_attn, hf_layer.mlp
    x = torch.randn(5, hf.config.hidden_size)
    for rank in range(width):
        apply_tensor_parallel(model, rank, width)
        qkv, gate_up = layer.self_attn.qkv_proj, layer.mlp.gate_up_proj
        for module, pieces, biases in (
                (qkv, [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight],
                 [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]),
                (gate_up, [mlp.gate_proj.weight, mlp.up_proj.weight], None)):
            assert module.active_weight.is_contiguous()
            assert torch.equal(module.active_weight, _reference_fused_shard(pieces, rank, width))
            if biases:
                assert torch.equal(module.active_bias, _reference_fused_shard(biases, rank, width))
        # Functionally: the shard's q is exactly the rank's heads of HF's q projection.
        q, k, _ = qkv(x)
        q_rows = attn.q_proj.weight.shape[0] // width
        k_rows = attn.k_proj.weight.shape[0] // width
        with torch.no_grad():
            torch.testing.assert_close(q, attn.q_proj(x)[:, rank * q_rows:(rank + 1) * q_rows])
            torch.testing.assert_close(k, attn.k_proj(x)[:, rank * k_rows:(rank + 1) * k_rows])
        # Row-parallel shards are contiguous too (resident W^T, sharded by input rows).
        down = layer.mlp.down_proj
        rows = mlp.down_proj.weight.shape[1] // width
        assert down.active_weight.is_contiguous()
        assert torch.equal(down.active_weight,
                           mlp.down_proj.weight[:, rank * rows:(rank + 1) * rows].t())
    apply_tensor_parallel(model, 0, 1)


def test_row_parallel_partial_sums_add_up_and_bias_counts_once():
    torch.manual_seed(0)
    layer = RowParallelLinear(8, 3, bias=True, max_tp_width=2, dtype=torch.float32, device="cpu")
    w, b = torch.randn(3, 8), torch.randn(3)
    layer.weight.weight_loader(layer.weight, w)
    layer.bias.weight_loader(layer.bias, b)
    x = torch.randn(4, 8)
    full = layer(x)
    parts = []
    for rank in range(2):
        layer.set_width(rank, 2)
        parts.append(layer(x[:, rank * 4:(rank + 1) * 4]))  # the rank's input columns
    torch.testing.assert_close(parts[0] + parts[1], full)
    torch.testing.assert_close(full, x @ w.t() + b)


def test_vocab_parallel_embedding_masks_foreign_ids_and_pads():
    emb = VocabParallelEmbedding(10, 4, max_tp_width=4, dtype=torch.float32, device="cpu")
    table = torch.randn(10, 4)
    emb.weight.weight_loader(emb.weight, table)
    assert emb.weight.shape == (12, 4) and not emb.weight[10:].any()
    ids = torch.tensor([0, 3, 5, 9])
    total = torch.zeros(4, 4)
    for rank in range(4):
        emb.set_width(rank, 4)
        total += emb(ids)
    torch.testing.assert_close(total, table[ids])


def test_column_parallel_shards_concatenate_to_full():
    layer = ColumnParallelLinear(4, 6, bias=True, max_tp_width=2, dtype=torch.float32,
                                 device="cpu")
    layer.weight.weight_loader(layer.weight, torch.randn(6, 4))
    layer.bias.weight_loader(layer.bias, torch.randn(6))
    x = torch.randn(3, 4)
    full = layer(x)
    shards = []
    for rank in range(2):
        layer.set_width(rank, 2)
        shards.append(layer(x))
    torch.testing.assert_close(torch.cat(shards, dim=-1), full)


def test_unsupported_widths_are_refused_before_anything_changes(wide_pair):
    _, model = wide_pair
    apply_tensor_parallel(model, 1, 2)
    with pytest.raises(ValueError, match="supported widths: \\[1, 2, 4\\]"):
        apply_tensor_parallel(model, 0, 3)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        apply_tensor_parallel(model, 2, 2)
    assert (model.comm.rank, model.comm.width) == (1, 2)
    assert all((m.tp_rank, m.tp_width) == (1, 2) for m in _parallel_layers(model))
    apply_tensor_parallel(model, 0, 1)


def test_widths_above_kv_heads_are_refused(tiny_llama_dir):
    # The tiny Llama has 2 KV heads: KV heads are sharded, not replicated.
    with pytest.raises(ValueError, match="num_kv_heads=2 is not divisible by max_tp_width=4"):
        load_model(tiny_llama_dir, max_tp_width=4)


def test_fused_layer_rejects_wrong_piece_shape():
    layer = FusedColumnParallelLinear(4, {"q": 8, "k": 4}, bias=False, max_tp_width=2,
                                      dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match=r"expected shape \(4, 4\), got \(8, 4\)"):
        layer.weight.weight_loader(layer.weight, torch.zeros(8, 4), "k")
