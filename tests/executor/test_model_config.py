"""config.json parsing: the four families, both RoPE formats, clear errors."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without torch)

import json

import pytest
import torch

from executor.model import rope_inv_freq
from executor.model_config import ModelConfig, ModelConfigError, RopeConfig
from policies.specs import ModelSpec

LLAMA = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
         "vocab_size": 256, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
         "torch_dtype": "bfloat16", "rope_theta": 500000.0}


def test_legacy_llama_config_with_llama3_rope_scaling():
    raw = {**LLAMA, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192}}
    c = ModelConfig.from_hf_dict(raw)
    assert (c.family, c.head_dim, c.num_kv_heads, c.dtype) == ("llama", 16, 2, "bfloat16")
    assert c.rope == RopeConfig(theta=500000.0, rope_type="llama3", factor=8.0,
                                low_freq_factor=1.0, high_freq_factor=4.0,
                                original_max_position_embeddings=8192)
    assert not (c.qkv_bias or c.o_bias or c.qk_norm or c.tie_word_embeddings)


def test_family_specific_fields():
    qwen2 = ModelConfig.from_hf_dict({**LLAMA, "architectures": ["Qwen2ForCausalLM"],
                                      "tie_word_embeddings": True})
    assert qwen2.qkv_bias and not qwen2.o_bias and qwen2.tie_word_embeddings
    qwen3 = ModelConfig.from_hf_dict({**LLAMA, "architectures": ["Qwen3ForCausalLM"],
                                      "head_dim": 32})
    assert qwen3.qk_norm and qwen3.head_dim == 32 and qwen3.q_size == 128
    llama_bias = ModelConfig.from_hf_dict({**LLAMA, "attention_bias": True})
    assert llama_bias.qkv_bias and llama_bias.o_bias
    mistral = ModelConfig.from_hf_dict({**LLAMA, "architectures": ["MistralForCausalLM"],
                                        "sliding_window": 128})
    assert mistral.max_model_len == 128  # full attention == sliding window up to the window


def test_folder_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(ModelConfigError, match="no config.json"):
        ModelConfig.from_hf_folder(tmp_path)
    cases = {
        "architectures": ({**LLAMA, "architectures": ["GPT2LMHeadModel"]}, "supported"),
        "hidden_size": ({k: v for k, v in LLAMA.items() if k != "hidden_size"}, "is missing"),
        "hidden_act": ({**LLAMA, "hidden_act": "gelu"}, "only 'silu'"),
        "rope_scaling": ({**LLAMA, "rope_scaling": {"type": "longrope", "factor": 2.0}},
                         "longrope"),
        "use_sliding_window": ({**LLAMA, "architectures": ["Qwen2ForCausalLM"],
                                "use_sliding_window": True}, "not implemented"),
    }
    for field, (raw, why) in cases.items():
        (tmp_path / "config.json").write_text(json.dumps(raw))
        with pytest.raises(ModelConfigError) as e:
            ModelConfig.from_hf_folder(tmp_path)
        assert str(tmp_path / "config.json") in str(e.value)
        assert f"field '{field}'" in str(e.value) and why in str(e.value)


def test_from_model_spec_matches_the_control_plane_shape():
    spec = ModelSpec(name="q", num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=2,
                     intermediate_size=96, vocab_size=300, qkv_bias=True, rope_theta=1e6)
    c = ModelConfig.from_model_spec(spec)
    assert (c.num_layers, c.kv_size, c.qkv_bias, c.rope.theta) == (3, 32, True, 1e6)
    with pytest.raises(ModelConfigError, match="fp8"):
        ModelConfig.from_model_spec(ModelSpec(name="f", num_layers=1, hidden_size=8, num_heads=2,
                                              num_kv_heads=1, intermediate_size=8,
                                              vocab_size=8, dtype="fp8"))


@pytest.mark.parametrize("rope_parameters", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
     "original_max_position_embeddings": 128},
])
def test_rope_frequencies_equal_transformers(rope_parameters):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = LlamaConfig(**{k: v for k, v in LLAMA.items() if k != "architectures"},
                            head_dim=32, rope_parameters=rope_parameters)
    ours = ModelConfig.from_hf_dict(hf_config.to_dict())
    inv_freq, scale = rope_inv_freq(ours.rope, ours.head_dim)
    rope_type = rope_parameters["rope_type"]
    if rope_type == "default":
        expected = 1.0 / (10000.0 ** (torch.arange(0, 32, 2).float() / 32))
        expected_scale = 1.0
    else:
        expected, expected_scale = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu")
    torch.testing.assert_close(inv_freq, expected, rtol=0, atol=0)
    assert scale == pytest.approx(expected_scale)
