"""The Llama-family decoder (Llama 3, Mistral, Qwen2, Qwen3), written single-device.

Tensor parallelism is not in this file: the linear layers are the parallel layers of
``executor.parallel`` (at width 1 they are plain linears over the full weights), and the
only collectives are explicit calls on the model's one ``comm`` handle, which are no-ops at
width 1. ``apply_tensor_parallel`` (a separate pass) re-points the layers and the handle.
Local head counts follow from the active shard's shape, so no layer stores a width.

Numerics follow Hugging Face's modelling code (RMSNorm in float32, RoPE tables in float32
cast to the activation dtype, softmax scale ``head_dim ** -0.5``), so greedy tokens match
``transformers`` on the same weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from executor.attention import AttentionMetadata, paged_attention, write_kv
from executor.comm import TensorParallelComm
from executor.kv_cache import PagedKVCache
from executor.model_config import ModelConfig, RopeConfig, yarn_default_attention_factor
from executor.parallel import (FusedColumnParallelLinear, ParallelLMHead, RowParallelLinear,
                               VocabParallelEmbedding, check_divisible, copy_full)

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


# --- RoPE ------------------------------------------------------------------------------------
def rope_inv_freq(rope: RopeConfig, head_dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``[head_dim / 2]`` (float32) and the cos/sin scale of ``rope``,
    computed as ``transformers.modeling_rope_utils`` does."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (rope.theta ** exponents)
    if rope.rope_type == "default":
        return inv_freq, 1.0
    if rope.rope_type == "linear":
        return inv_freq / rope.factor, 1.0
    if rope.rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, rope), 1.0
    if rope.rope_type == "yarn":
        return _yarn_inv_freq(rope, head_dim)
    raise ValueError(f"unknown rope type {rope.rope_type!r}")


def _llama3_inv_freq(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    """Llama 3.1: keep high frequencies, divide low ones by ``factor``, blend in between."""
    old_len = rope.original_max_position_embeddings
    low_freq_wavelen = old_len / rope.low_freq_factor
    high_freq_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor
                                                            - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_inv_freq(rope: RopeConfig, head_dim: int) -> tuple[torch.Tensor, float]:
    """YaRN (static): interpolate low frequencies, extrapolate high ones, ramp between."""
    base, factor, original = rope.theta, rope.factor, rope.original_max_position_embeddings

    def correction_dim(num_rotations: float) -> float:
        return (head_dim * math.log(original / (num_rotations * 2 * math.pi))) \
            / (2 * math.log(base))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low),
                       0, 1)
    pos_freqs = base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extrapolation_weight = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight
    scale = (rope.attention_factor if rope.attention_factor is not None
             else yarn_default_attention_factor(factor))
    return inv_freq, scale


class RotaryEmbedding(nn.Module):
    def __init__(self, rope: RopeConfig, head_dim: int, device: torch.device | str) -> None:
        super().__init__()
        inv_freq, self.attention_scaling = rope_inv_freq(rope, head_dim)
        self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``[T, head_dim]`` for token ``positions`` [T], once per step."""
        freqs = positions.float().unsqueeze(1) * self.inv_freq.unsqueeze(0)
        emb = torch.cat((freqs, freqs), dim=-1)
        return ((emb.cos() * self.attention_scaling).to(dtype),
                (emb.sin() * self.attention_scaling).to(dtype))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [T, heads, head_dim]`` (the "rotate half" convention HF Llama uses)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


# --- layers ----------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype, device=device),
                                   requires_grad=False)
        self.weight.weight_loader = copy_full

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, comm: TensorParallelComm, layer_index: int,
                 max_tp_width: int, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        self.comm = comm
        self.layer_index = layer_index
        self.head_dim = config.head_dim
        self.scale = config.head_dim ** -0.5
        par = dict(max_tp_width=max_tp_width, dtype=dtype, device=device)
        self.qkv_proj = FusedColumnParallelLinear(
            config.hidden_size, {"q": config.q_size, "k": config.kv_size, "v": config.kv_size},
            bias=config.qkv_bias, **par)
        self.o_proj = RowParallelLinear(config.q_size, config.hidden_size,
                                        bias=config.o_bias, **par)
        self.q_norm = self.k_norm = None
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype, device)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype, device)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: PagedKVCache, meta: AttentionMetadata) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden)
        q = q.view(num_tokens, -1, self.head_dim)  # local heads = shard rows / head_dim
        k = k.view(num_tokens, -1, self.head_dim)
        v = v.view(num_tokens, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k_pool, v_pool = kv_cache.layer(self.layer_index)
        if k_pool.shape[1] != k.shape[1]:
            raise RuntimeError(f"KV cache is laid out for {k_pool.shape[1]} local KV heads but "
                               f"the model computes {k.shape[1]}: set the same width on both")
        write_kv(k_pool, v_pool, k, v, meta.slot_mapping)
        out = paged_attention(q, k_pool, v_pool, meta, self.scale)
        return self.comm.all_reduce(self.o_proj(out.flatten(1)))


class GatedMLP(nn.Module):
    def __init__(self, config: ModelConfig, comm: TensorParallelComm, max_tp_width: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        self.comm = comm
        par = dict(max_tp_width=max_tp_width, dtype=dtype, device=device)
        size = config.intermediate_size
        self.gate_up_proj = FusedColumnParallelLinear(
            config.hidden_size, {"gate": size, "up": size}, bias=False, **par)
        self.down_proj = RowParallelLinear(size, config.hidden_size, bias=False, **par)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x)
        return self.comm.all_reduce(self.down_proj(F.silu(gate) * up))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, comm: TensorParallelComm, layer_index: int,
                 max_tp_width: int, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype, device)
        self.self_attn = Attention(config, comm, layer_index, max_tp_width, dtype, device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype, device)
        self.mlp = GatedMLP(config, comm, max_tp_width, dtype, device)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: PagedKVCache, meta: AttentionMetadata) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin, kv_cache, meta)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Decoder(nn.Module):
    """HF's ``model.*`` submodule: embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig, comm: TensorParallelComm, max_tp_width: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        self.comm = comm
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   max_tp_width=max_tp_width, dtype=dtype,
                                                   device=device)
        self.layers = nn.ModuleList(
            DecoderLayer(config, comm, i, max_tp_width, dtype, device)
            for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.rotary = RotaryEmbedding(config.rope, config.head_dim, device)

    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor,
                kv_cache: PagedKVCache, meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.comm.all_reduce(self.embed_tokens(token_ids))
        cos, sin = self.rotary(positions, hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, cos, sin, kv_cache, meta)
        return self.norm(hidden)


class CausalLM(nn.Module):
    """Decoder plus LM head. Parameter names match the HF checkpoint's (``model.layers.0...``),
    except the fused ``qkv_proj`` / ``gate_up_proj`` (see ``executor.loader``)."""

    def __init__(self, config: ModelConfig, *, max_tp_width: int = 1,
                 dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> None:
        super().__init__()
        check_divisible("num_kv_heads", config.num_kv_heads, max_tp_width,
                        " (KV heads are sharded, never replicated: at width p a rank holds "
                        "exactly 1/p of them, which the KV block arithmetic B(p) = p * B_base "
                        "relies on)")
        check_divisible("num_heads", config.num_heads, max_tp_width)
        check_divisible("intermediate_size", config.intermediate_size, max_tp_width)
        self.config = config
        self.max_tp_width = max_tp_width
        self.dtype = dtype or TORCH_DTYPES[config.dtype]
        self.comm = TensorParallelComm()
        self.model = Decoder(config, self.comm, max_tp_width, self.dtype, device)
        self.lm_head = ParallelLMHead(
            config.vocab_size, config.hidden_size, max_tp_width=max_tp_width, dtype=self.dtype,
            device=device, tied_to=self.model.embed_tokens if config.tie_word_embeddings else None)

    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor,
                kv_cache: PagedKVCache, meta: AttentionMetadata) -> torch.Tensor:
        """Final hidden states ``[T, hidden]`` of the flattened batch's tokens."""
        return self.model(token_ids, positions, kv_cache, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits ``[N, vocab]`` on every rank of the group."""
        logits = self.comm.all_gather(self.lm_head(hidden), dim=-1)
        return logits[..., :self.config.vocab_size]

