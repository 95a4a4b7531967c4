"""The decoder shape the executor builds, parsed from a Hugging Face ``config.json``.

Pure data (no torch), so a coordinator can read a model's shape without loading it. Four
architectures share one decoder: Llama (2/3/3.1), Mistral, Qwen2 (QKV bias) and Qwen3
(per-head q/k RMSNorm). Anything the decoder does not implement is refused with an error
naming the file and the field, never silently approximated.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.specs import ModelSpec

# HF ``architectures[0]`` -> our family name (also accepted as ``model_type``).
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
SUPPORTED_DTYPES = ("bfloat16", "float16", "float32")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class ModelConfigError(ValueError):
    """A config.json the executor cannot run; the message names the file and the field."""


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters (HF ``rope_parameters`` / legacy ``rope_scaling``)."""

    theta: float = 10000.0
    rope_type: str = "default"  # one of ROPE_TYPES
    factor: float = 1.0  # linear, llama3, yarn
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position_embeddings: int | None = None  # llama3, yarn
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float | None = None  # yarn: cos/sin scale; None = 0.1*ln(factor)+1
    truncate: bool = True  # yarn: round the correction range outwards (HF default)


@dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs to be built. ``dtype`` is the checkpoint's own."""

    name: str
    family: str  # "llama" | "mistral" | "qwen2" | "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_model_len: int
    rms_norm_eps: float = 1e-5
    rope: RopeConfig = field(default_factory=RopeConfig)
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 always; Llama/Qwen3 with attention_bias
    o_bias: bool = False  # Llama/Qwen3 with attention_bias
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim", "max_model_len"):
            if getattr(self, name) <= 0:
                raise ModelConfigError(f"model {self.name}: {name} must be positive, "
                                       f"got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(f"model {self.name}: num_heads={self.num_heads} is not a "
                                   f"multiple of num_kv_heads={self.num_kv_heads}")
        if self.dtype not in SUPPORTED_DTYPES:
            raise ModelConfigError(f"model {self.name}: dtype {self.dtype!r} is not one of "
                                   f"{SUPPORTED_DTYPES}")
        if self.rope.rope_type not in ROPE_TYPES:
            raise ModelConfigError(f"model {self.name}: rope type {self.rope.rope_type!r} is not "
                                   f"one of {ROPE_TYPES}")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    # --- constructors --------------------------------------------------------------------
    @classmethod
    def from_hf_folder(cls, folder: str | Path) -> "ModelConfig":
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise ModelConfigError(f"{path}: no config.json (is {folder} a Hugging Face model "
                                   f"folder?)")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelConfigError(f"{path}: not valid JSON ({e})") from e
        return cls.from_hf_dict(raw, source=str(path), name=Path(folder).name)

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], source: str = "config.json",
                     name: str = "model") -> "ModelConfig":
        return _HfConfigParser(raw, source).parse(name)

    @classmethod
    def from_model_spec(cls, spec: ModelSpec) -> "ModelConfig":
        """The shape of a control-plane ``ModelSpec``, for dummy-weight benchmarks."""
        if spec.dtype not in SUPPORTED_DTYPES:
            raise ModelConfigError(f"model spec {spec.name}: dtype {spec.dtype!r} is not one of "
                                   f"{SUPPORTED_DTYPES} (the executor has no fp8 kernels)")
        return cls(
            name=spec.name, family="qwen2" if spec.qkv_bias else "llama",
            vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size, num_layers=spec.num_layers,
            num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim_,
            max_model_len=spec.max_model_len, rope=RopeConfig(theta=spec.rope_theta),
            tie_word_embeddings=spec.tie_word_embeddings, qkv_bias=spec.qkv_bias,
            dtype=spec.dtype)


class _HfConfigParser:
    """Reads one config.json; every error names ``source`` and the offending field."""

    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw = raw
        self.source = source

    def error(self, field_name: str, why: str) -> ModelConfigError:
        return ModelConfigError(f"{self.source}: field '{field_name}' {why}")

    def required(self, key: str, kind: type = int) -> Any:
        if key not in self.raw or self.raw[key] is None:
            raise self.error(key, "is missing")
        value = self.raw[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise self.error(key, f"must be an integer, got {value!r}")
        return value

    def optional(self, key: str, default: Any) -> Any:
        value = self.raw.get(key)
        return default if value is None else value

    def parse(self, name: str) -> ModelConfig:
        family = self.family()
        hidden = self.required("hidden_size")
        heads = self.required("num_attention_heads")
        kv_heads = self.optional("num_key_value_heads", heads)  # HF: absent means MHA
        head_dim = self.optional("head_dim", None)
        if head_dim is None:
            if hidden % heads:
                raise self.error("head_dim", f"is missing and hidden_size={hidden} is not a "
                                 f"multiple of num_attention_heads={heads}")
            head_dim = hidden // heads
        if self.optional("hidden_act", "silu") != "silu":
            raise self.error("hidden_act", f"is {self.raw['hidden_act']!r}; only 'silu' "
                             f"(gated SiLU MLP) is implemented")
        if self.optional("mlp_bias", False):
            raise self.error("mlp_bias", "is true; MLP biases are not implemented")
        attention_bias = bool(self.optional("attention_bias", False))
        return ModelConfig(
            name=name, family=family,
            vocab_size=self.required("vocab_size"), hidden_size=hidden,
            intermediate_size=self.required("intermediate_size"),
            num_layers=self.required("num_hidden_layers"), num_heads=heads,
            num_kv_heads=kv_heads, head_dim=head_dim,
            max_model_len=self.max_model_len(family),
            rms_norm_eps=float(self.optional("rms_norm_eps", 1e-6)),
            rope=self.rope(),
            tie_word_embeddings=bool(self.optional("tie_word_embeddings", False)),
            # Qwen2 hard-codes a bias on q/k/v (never on o_proj); Llama and Qwen3 put
            # ``attention_bias`` on all four projections.
            qkv_bias=family == "qwen2" or attention_bias,
            o_bias=family != "qwen2" and attention_bias,
            qk_norm=family == "qwen3",
            dtype=self.dtype(),
        )

    def family(self) -> str:
        archs = self.raw.get("architectures") or []
        if archs:
            arch = archs[0]
            if arch not in SUPPORTED_ARCHITECTURES:
                raise self.error("architectures", f"is {arch!r}; supported: "
                                 f"{sorted(SUPPORTED_ARCHITECTURES)}")
            return SUPPORTED_ARCHITECTURES[arch]
        model_type = self.raw.get("model_type")
        if model_type in SUPPORTED_ARCHITECTURES.values():
            return model_type
        raise self.error("architectures", f"is missing and model_type={model_type!r} is not one "
                         f"of {sorted(SUPPORTED_ARCHITECTURES.values())}")

    def max_model_len(self, family: str) -> int:
        length = self.required("max_position_embeddings")
        if family in ("qwen2", "qwen3") and self.optional("use_sliding_window", False):
            raise self.error("use_sliding_window", "is true; sliding-window attention layers are "
                             "not implemented")
        window = self.raw.get("sliding_window") if family == "mistral" else None
        if window is not None:
            # Full causal attention equals Mistral's sliding-window attention for sequences of
            # at most ``window`` tokens, so cap the length instead of approximating.
            length = min(length, int(window))
        return length

    def dtype(self) -> str:
        # transformers >= 5 writes "dtype"; older versions "torch_dtype".
        value = self.raw.get("dtype") or self.raw.get("torch_dtype") or "bfloat16"
        if value not in SUPPORTED_DTYPES:
            raise self.error("dtype", f"is {value!r}; supported: {SUPPORTED_DTYPES}")
        return value

    def rope(self) -> RopeConfig:
        # transformers >= 5: ``rope_parameters`` holds theta and scaling together; older
        # configs have ``rope_theta`` plus an optional ``rope_scaling`` dict.
        if self.raw.get("rope_parameters") is not None:
            key, params = "rope_parameters", dict(self.raw["rope_parameters"])
        else:
            key, params = "rope_scaling", dict(self.raw.get("rope_scaling") or {})
            params.setdefault("rope_theta", self.optional("rope_theta", 10000.0))
        if any(isinstance(v, dict) for v in params.values()):
            raise self.error(key, "has per-layer-type RoPE parameters, which are not implemented")
        rope_type = params.get("rope_type") or params.get("type") or "default"
        if rope_type not in ROPE_TYPES:
            raise self.error(key, f"has rope type {rope_type!r}; supported: {ROPE_TYPES}")
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise self.error(key, "has partial_rotary_factor != 1, which is not implemented")
        theta = float(params.get("rope_theta", 10000.0))
        if rope_type == "default":
            return RopeConfig(theta=theta)

        def need(name: str) -> Any:
            if params.get(name) is None:
                raise self.error(key, f"has rope type {rope_type!r} but no '{name}'")
            return params[name]

        factor = float(need("factor"))
        if rope_type == "linear":
            return RopeConfig(theta=theta, rope_type="linear", factor=factor)
        original = int(params.get("original_max_position_embeddings")
                       or self.required("max_position_embeddings"))
        if rope_type == "llama3":
            return RopeConfig(theta=theta, rope_type="llama3", factor=factor,
                              low_freq_factor=float(need("low_freq_factor")),
                              high_freq_factor=float(need("high_freq_factor")),
                              original_max_position_embeddings=original)
        attention_factor = params.get("attention_factor")
        if attention_factor is None and params.get("mscale") and params.get("mscale_all_dim"):
            raise self.error(key, "has YaRN mscale/mscale_all_dim (DeepSeek style), which is not "
                             "implemented")
        return RopeConfig(theta=theta, rope_type="yarn", factor=factor,
                          original_max_position_embeddings=original,
                          beta_fast=float(params.get("beta_fast") or 32.0),
                          beta_slow=float(params.get("beta_slow") or 1.0),
                          attention_factor=None if attention_factor is None
                          else float(attention_factor),
                          truncate=bool(params.get("truncate", True)))


def yarn_default_attention_factor(factor: float) -> float:
    """YaRN's cos/sin scale when the config gives none: 0.1 * ln(s) + 1 (1 for s <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0
