"""What one scheduling step decides, and the compact shape a step-time predictor prices.

``StepShape`` is the whole contract between the control plane and a predictor: the simulator
prices it, the executor's profiler measures over a grid of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class StepShape:
    """Aggregates of one step of one engine group.

    For a sequence that computes ``n`` new tokens on top of ``c`` cached ones:
    ``attn_pairs`` adds ``n*c + n*(n+1)/2`` (causal query-key pairs) and ``kv_tokens_read``
    adds ``c + n`` (the KV it streams once). A decode token is ``n = 1``.
    """

    tp_gpus: int  # GPUs the step is split across (engine TP x merge width)
    num_tokens: int  # new tokens in the batch (prefill chunks + decodes)
    num_seqs: int  # sequences in the batch
    num_logits: int  # sequences that sample a token this step
    attn_pairs: int
    kv_tokens_read: int
    num_prefill_tokens: int = 0

    @property
    def is_pure_decode(self) -> bool:
        return self.num_prefill_tokens == 0 and self.num_tokens == self.num_seqs


@dataclass(slots=True)
class ScheduledRequest:
    request_id: int
    num_new_tokens: int
    num_computed_tokens: int  # cached tokens before this step
    samples: bool  # this step completes the known tokens, so it samples one


@dataclass(slots=True)
class SchedulerOutput:
    """One step's plan for one engine group: the only thing that crosses to workers."""

    group_id: int
    tp_gpus: int
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted_ids: list[int] = field(default_factory=list)
    # New block ids per request this step (the executor writes KV there).
    new_block_ids: dict[int, list[int]] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    def shape(self) -> StepShape:
        tokens = seqs = logits = pairs = kv = prefill = 0
        for s in self.scheduled:
            n, c = s.num_new_tokens, s.num_computed_tokens
            tokens += n
            seqs += 1
            logits += s.samples
            pairs += n * c + n * (n + 1) // 2
            kv += c + n
            if n > 1 or not s.samples:
                prefill += n
        return StepShape(self.tp_gpus, tokens, seqs, logits, pairs, kv, prefill)
