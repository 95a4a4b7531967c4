"""A random Llama written as a Hugging Face folder that both our server and vLLM can load.

Used by ``python -m executor bench-peer`` (the same weights and tokenizer for both servers)
and by tests. Needs only torch, safetensors and tokenizers (no transformers): the config is
written by hand in the form both readers accept (legacy ``rope_theta`` and ``torch_dtype``
beside transformers 5's ``dtype``).

The tokenizer is word-level: token ``i >= 3`` is the word ``w<i>``, and a decoded sequence
is its words joined by spaces. Every token is then one whole word, so incremental
detokenization cannot split a character, and two servers' texts differ only if their tokens
do. The LM head rows of the special tokens are zero, so greedy decoding of the random model
never emits one (a special token decodes to nothing, which would hide a token from the text
comparison and delay a first-token time).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIAL_TOKENS = ("<s>", "</s>", "<unk>")  # ids 0, 1, 2
BOS_ID, EOS_ID, UNK_ID = 0, 1, 2
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class BenchModelShape:
    """Big enough that the GEMMs, not the Python around them, take most of a step on CPU."""

    hidden_size: int = 512
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 1536
    vocab_size: int = 8192
    max_position_embeddings: int = 2048
    # std of the random weights: wide enough that greedy's top-2 logits are rarely within
    # float32 rounding of each other (two engines summing in different orders then agree).
    init_std: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"hidden_size {self.hidden_size}, num_heads {self.num_heads} and "
                             f"num_kv_heads {self.num_kv_heads} must divide evenly")
        if self.vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def hf_config(shape: BenchModelShape) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": shape.hidden_size, "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads, "head_dim": shape.head_dim,
        "vocab_size": shape.vocab_size, "max_position_embeddings": shape.max_position_embeddings,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
        "torch_dtype": "float32", "dtype": "float32",
    }


def word(token_id: int) -> str:
    return f"w{token_id}"


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """tokenizer.json (word level, whitespace split) and tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({word(i): i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS[UNK_ID]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL_TOKENS[BOS_ID],
        "eos_token": SPECIAL_TOKENS[EOS_ID], "unk_token": SPECIAL_TOKENS[UNK_ID],
        "add_bos_token": False, "model_max_length": 1 << 20}, indent=1))


def write_weights(folder: Path, shape: BenchModelShape) -> None:
    from safetensors.torch import save_file

    from executor.loader import random_tensors
    from executor.model_config import ModelConfig

    config = ModelConfig.from_hf_dict(hf_config(shape), source="bench model")
    tensors = {name: t for name, t, _ in random_tensors(config, seed=shape.seed,
                                                        std=shape.init_std, device="cpu")}
    tensors["lm_head.weight"][:len(SPECIAL_TOKENS)] = 0.0  # see the module docstring
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})


def make_bench_model(folder: Path, shape: BenchModelShape = BenchModelShape()) -> Path:
    """Write (or reuse, if the same shape is already there) the model folder; returns it."""
    folder = Path(folder)
    marker = folder / "bench_model.json"
    if marker.is_file() and json.loads(marker.read_text()) == asdict(shape):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(hf_config(shape), indent=1))
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID}))
    write_tokenizer(folder, shape.vocab_size)
    write_weights(folder, shape)
    marker.write_text(json.dumps(asdict(shape)))  # last: a half-written folder is redone
    return folder


def random_prompts(num_prompts: int, prompt_tokens: int, vocab_size: int,
                   seed: int = 0) -> list[list[int]]:
    """Token-id prompts of ordinary words (no special ids), the same for every server."""
    rng = random.Random(seed)
    first = len(SPECIAL_TOKENS)
    return [[rng.randrange(first, vocab_size) for _ in range(prompt_tokens)]
            for _ in range(num_prompts)]
