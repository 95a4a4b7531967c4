"""Tiny Hugging Face models, a reference greedy decoder and a minimal test coordinator."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from executor.kv_cache import PagedKVCache
from executor.loader import load_model
from executor.model import CausalLM
from executor.model_runner import ModelRunner, StepOutput
from executor.sampling_params import SamplingParams
from executor.step_input import SequenceStep, StepInput

# hidden 64, 4 layers, 4 heads / 2 KV heads, vocab 256. A wide init (0.2, not HF's 0.02)
# keeps the top-2 logits far apart, so greedy tokens are not decided by rounding.
TINY = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=256, max_position_embeddings=512,
            initializer_range=0.2)
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 7], [5, 17, 33, 250, 4, 4, 91, 12, 60, 3, 77, 8, 1],
           [42]]


def make_hf_model(kind: str = "llama", seed: int = 0, **overrides):
    """A random tiny ``transformers`` model of ``kind`` (llama, qwen2, qwen3, mistral)."""
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[kind]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**TINY, **overrides})).eval()
    _perturb_defaults(model)
    return model


def _perturb_defaults(model) -> None:
    """HF initialises norm weights to 1 and biases to 0; make them random so a loader that
    dropped or misplaced them would change the output."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.1 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.2)


def save_hf(model, folder: Path, max_shard_size: str | None = None) -> Path:
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """``generate(do_sample=False)`` without EOS stopping (random models emit any id)."""
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         min_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt):].tolist()


def make_runner(model: CausalLM | Path, *, max_tp_width: int = 1, num_blocks: int = 64,
                block_size_tokens: int = 4) -> ModelRunner:
    if not isinstance(model, CausalLM):
        model = load_model(model, max_tp_width=max_tp_width)
    kv = PagedKVCache.for_model(model.config, num_blocks=num_blocks,
                                block_size_tokens=block_size_tokens, dtype=model.dtype)
    return ModelRunner(model, kv)


@dataclass
class _Request:
    tokens: list[int]
    max_new_tokens: int
    blocks: list[int]
    sampling: SamplingParams
    num_computed: int = 0
    generated: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return len(self.generated) == self.max_new_tokens


class Driver:
    """A minimal coordinator: each step runs every unfinished request (its uncached tokens,
    at most ``max_chunk`` of them) on one runner. Block tables are given up front."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.requests: dict[int, _Request] = {}
        self.steps: list[StepInput] = []

    def add(self, request_id: int, prompt: list[int], max_new_tokens: int, blocks: list[int],
            sampling: SamplingParams | None = None) -> None:
        self.requests[request_id] = _Request(list(prompt), max_new_tokens, list(blocks),
                                             sampling or SamplingParams())

    def step(self, max_chunk: int | None = None) -> StepOutput:
        seqs = []
        for rid, r in self.requests.items():
            if r.finished:
                continue
            todo = r.tokens[r.num_computed:][:max_chunk]
            seqs.append(SequenceStep(rid, todo, r.num_computed, r.blocks,
                                     samples=r.num_computed + len(todo) == len(r.tokens),
                                     sampling=r.sampling))
        step = StepInput(self.runner.width, seqs, sampling_seed=len(self.steps),
                         step_id=len(self.steps))
        self.steps.append(step)
        out = self.runner.execute(step, return_logits=True)
        rows = iter(range(len(out.sampled_token_ids)))
        for seq in seqs:
            r = self.requests[seq.request_id]
            r.num_computed += seq.num_new_tokens
            if seq.samples:
                token = out.sampled_token_ids[seq.request_id]
                r.tokens.append(token)
                r.generated.append(token)
                r.logits.append(out.logits[next(rows)])
        return out

    def run(self, max_chunk: int | None = None) -> dict[int, list[int]]:
        while not all(r.finished for r in self.requests.values()):
            self.step(max_chunk)
        return self.generated()

    def generated(self) -> dict[int, list[int]]:
        return {rid: r.generated for rid, r in self.requests.items()}

    def logits(self, request_id: int) -> torch.Tensor:
        return torch.stack(self.requests[request_id].logits)


def blocks_for_tokens(num_tokens: int, tokens_per_block: int) -> int:
    return -(-num_tokens // tokens_per_block)
