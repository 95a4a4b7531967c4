"""Executes one ``StepInput`` on one rank: the forward pass over paged KV, then sampling.

The runner owns the rank's model (full weights resident) and KV pool. ``set_width`` is the
whole of a layout switch on this rank: the model's shard views, its comm handle and the KV
pool's block parameterisation are re-pointed; nothing is copied or reloaded. The model's
parallel layers and their views at every supported width are found once, here
(``prepare_tensor_parallel``), so a switch costs O(parallel layers) dict updates, with no
walk of the module tree and no view built.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from executor.attention import build_attention_metadata
from executor.kv_cache import PagedKVCache
from executor.model import CausalLM
from executor.parallel import apply_tensor_parallel, prepare_tensor_parallel
from executor.sampler import Sampler
from executor.step_input import SequenceStep, StepInput


@dataclass
class StepOutput:
    sampled_token_ids: dict[int, int]  # request id -> next token, for sequences that sample
    # [sampling sequences, vocab] in step order; only when asked for (tests, debugging).
    logits: torch.Tensor | None = None


class ModelRunner:
    def __init__(self, model: CausalLM, kv_cache: PagedKVCache,
                 sampler: Sampler | None = None) -> None:
        if kv_cache.storage.dtype != model.dtype:
            raise ValueError(f"KV cache dtype {kv_cache.storage.dtype} differs from the model's "
                             f"{model.dtype}")
        if (kv_cache.num_layers, kv_cache.num_kv_heads, kv_cache.head_dim) != (
                model.config.num_layers, model.config.num_kv_heads, model.config.head_dim):
            raise ValueError("KV cache shape (layers, kv heads, head_dim) does not match the model")
        self.model = model
        self.kv_cache = kv_cache
        self.sampler = sampler or Sampler()
        self.device = kv_cache.storage.device
        self.rank, self.width = 0, 1
        prepare_tensor_parallel(model)  # weights are loaded: every view is final
        self.set_width(0, 1)

    def set_width(self, rank: int, width: int, group: dist.ProcessGroup | None = None) -> None:
        """Switch this rank to (rank, width) of ``group``: views and handles only."""
        apply_tensor_parallel(self.model, rank, width, group)  # validates before changing
        self.kv_cache.set_width(width)
        self.rank, self.width = rank, width

    @torch.inference_mode()
    def execute(self, step: StepInput, return_logits: bool = False) -> StepOutput:
        if step.width != self.width:
            raise ValueError(f"step {step.step_id} was planned for width {step.width}; this "
                             f"rank runs at width {self.width}")
        if not step.sequences:
            return StepOutput({})
        for seq in step.sequences:
            self._check_sequence(seq)
        seqs = step.sequences
        token_ids = torch.tensor([t for s in seqs for t in s.token_ids], dtype=torch.long,
                                 device=self.device)
        positions = torch.cat([torch.arange(s.num_computed_tokens, s.num_tokens_after,
                                            device=self.device) for s in seqs])
        meta = build_attention_metadata(
            [s.num_new_tokens for s in seqs], [s.num_computed_tokens for s in seqs],
            [s.block_table for s in seqs], self.kv_cache.tokens_per_block, self.device)
        hidden = self.model(token_ids, positions, self.kv_cache, meta)

        sampling = [s for s in seqs if s.samples]
        if not sampling:
            return StepOutput({})
        ends = torch.tensor([s.num_new_tokens for s in seqs], device=self.device).cumsum(0) - 1
        last_rows = ends[torch.tensor([s.samples for s in seqs], device=self.device)]
        logits = self.model.compute_logits(hidden[last_rows])
        tokens = self.sampler(logits, [s.sampling for s in sampling],
                              [s.num_tokens_after for s in sampling], step.sampling_seed)
        sampled = dict(zip((s.request_id for s in sampling), tokens.tolist()))
        return StepOutput(sampled, logits.float() if return_logits else None)

    def _check_sequence(self, seq: SequenceStep) -> None:
        rid = seq.request_id
        if not seq.token_ids:
            raise ValueError(f"request {rid}: a scheduled sequence computes at least one token")
        if seq.num_tokens_after > self.model.config.max_model_len:
            raise ValueError(f"request {rid}: {seq.num_tokens_after} tokens exceed "
                             f"max_model_len={self.model.config.max_model_len}")
        tokens_per_block = self.kv_cache.tokens_per_block
        if len(seq.block_table) * tokens_per_block < seq.num_tokens_after:
            raise ValueError(f"request {rid}: block table of {len(seq.block_table)} blocks holds "
                             f"{len(seq.block_table) * tokens_per_block} tokens at width "
                             f"{self.width}; the step needs {seq.num_tokens_after}")
        if seq.block_table and not (0 <= min(seq.block_table)
                                    and max(seq.block_table) < self.kv_cache.num_blocks):
            raise ValueError(f"request {rid}: block ids outside the pool of "
                             f"{self.kv_cache.num_blocks} blocks")
