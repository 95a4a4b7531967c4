"""Build a ``CausalLM`` and fill its resident weights from a Hugging Face folder, or with
seeded random weights of a named shape. Local files only: never a hub download.

A checkpoint tensor reaches its parameter by name (our names are HF's) through the
parameter's ``weight_loader``; the five fused pieces are renamed on the way
(``q_proj/k_proj/v_proj -> qkv_proj`` with shard id q/k/v, ``gate_proj/up_proj ->
gate_up_proj`` with gate/up). Dummy weights take the same path as a random checkpoint in HF
layout, so a seed gives the same function at every ``max_tp_width``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import torch

from executor.model import CausalLM
from executor.model_config import ModelConfig
from executor.parallel import FusedColumnParallelLinear, WeightShapeError

# checkpoint piece -> (our fused module, shard id)
PACKED_PIECES = {
    "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", "gate"), "up_proj": ("gate_up_proj", "up"),
}
_PIECE_OF = {target: piece for piece, target in PACKED_PIECES.items()}
# Present in some checkpoints, derived (not loaded) here.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

NamedTensor = tuple[str, torch.Tensor, str]  # (checkpoint name, tensor, where it came from)


class CheckpointError(ValueError):
    """A model folder that cannot be loaded; the message names the file and the tensor."""


# --- public entry points ---------------------------------------------------------------------
def load_model(folder: str | Path, *, dtype: torch.dtype | None = None, max_tp_width: int = 1,
               device: torch.device | str = "cpu") -> CausalLM:
    """Load an HF folder (config.json + model.safetensors, or shards with an index). Weights
    are cast to ``dtype`` (default: the checkpoint's). ``max_tp_width``: widths the resident
    layout will serve are its divisors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder (weights are read from local "
                              f"files only)")
    config = ModelConfig.from_hf_folder(folder)
    files = checkpoint_files(folder)  # fail on a broken folder before allocating
    model = CausalLM(config, max_tp_width=max_tp_width, dtype=dtype, device=device)
    load_tensors(model, safetensors_tensors(files), source=str(folder))
    return model


def dummy_model(config: ModelConfig, *, seed: int = 0, std: float = 0.02,
                dtype: torch.dtype | None = None, max_tp_width: int = 1,
                device: torch.device | str = "cpu") -> CausalLM:
    """A model of ``config``'s shape with seeded N(0, std) weights (norm weights 1)."""
    model = CausalLM(config, max_tp_width=max_tp_width, dtype=dtype, device=device)
    load_tensors(model, random_tensors(config, seed=seed, std=std, device=device),
                 source=f"dummy weights (seed {seed})")
    return model


# --- checkpoint files ------------------------------------------------------------------------
def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of ``folder``: the shards an index names, or model.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' "
                                  f"({e!r})") from e
        files = [folder / name for name in sorted(set(weight_map.values()))]
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"{index}: names shard {file.name}, which is missing")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json "
                          f"(only safetensors checkpoints are supported)")


def safetensors_tensors(files: list[Path]) -> Iterator[NamedTensor]:
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name), str(file)


def random_tensors(config: ModelConfig, *, seed: int, std: float,
                   device: torch.device | str) -> Iterator[NamedTensor]:
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, shape in checkpoint_shapes(config).items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(shape, dtype=torch.float32, device=device)
        else:
            tensor = torch.empty(shape, dtype=torch.float32, device=device)
            tensor.normal_(0.0, std, generator=generator)
        yield name, tensor, "random"


def checkpoint_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor an HF checkpoint of ``config`` holds, with its shape, in a fixed order."""
    h, q, kv, inter = config.hidden_size, config.q_size, config.kv_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, h)}
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            shapes[p + f"self_attn.{name}.weight"] = (rows, h)
            if config.qkv_bias:
                shapes[p + f"self_attn.{name}.bias"] = (rows,)
        shapes[p + "self_attn.o_proj.weight"] = (h, q)
        if config.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (h,)
        if config.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (config.head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (config.head_dim,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
    shapes["model.norm.weight"] = (h,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    return shapes


# --- name mapping and loading ----------------------------------------------------------------
def parameter_target(checkpoint_name: str) -> tuple[str, str | None]:
    """(our parameter name, fused shard id or None) for a checkpoint tensor name."""
    for piece, (fused, shard_id) in PACKED_PIECES.items():
        marker = f".{piece}."
        if marker in checkpoint_name:
            return checkpoint_name.replace(marker, f".{fused}."), shard_id
    return checkpoint_name, None


def expected_checkpoint_names(model: CausalLM) -> set[str]:
    """Checkpoint tensors ``model`` needs: one per parameter, one per piece of a fused one.
    (A tied LM head shares the embedding's parameter, so it is not listed.)"""
    names = set()
    for name, _ in model.named_parameters():
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(owner, FusedColumnParallelLinear):
            fused = name.split(".")[-2]
            for shard_id in owner.shard_ids:
                piece = _PIECE_OF[(fused, shard_id)]
                names.add(name.replace(f".{fused}.", f".{piece}."))
        else:
            names.add(name)
    return names


def load_tensors(model: CausalLM, tensors: Iterable[NamedTensor], source: str) -> None:
    """Route every checkpoint tensor to its parameter's ``weight_loader`` (which casts it into
    the resident layout); then check that nothing the model needs was missing."""
    params = dict(model.named_parameters())
    tied = model.config.tie_word_embeddings
    loaded: set[str] = set()
    with torch.no_grad():
        for name, tensor, origin in tensors:
            if name.endswith(IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
                continue
            target, shard_id = parameter_target(name)
            param = params.get(target)
            if param is None:
                raise CheckpointError(f"{origin}: tensor {name!r} has no parameter in a "
                                      f"{model.config.family} model of this config")
            try:
                if shard_id is None:
                    param.weight_loader(param, tensor)
                else:
                    param.weight_loader(param, tensor, shard_id)
            except WeightShapeError as e:
                raise CheckpointError(f"{origin}: tensor {name!r}: {e}") from e
            loaded.add(name)
    missing = sorted(expected_checkpoint_names(model) - loaded)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(f"{source}: {len(missing)} tensor(s) the model needs are missing "
                              f"from the checkpoint: {shown}")

