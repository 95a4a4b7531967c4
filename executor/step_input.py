"""What a worker executes in one step: the executor-side twin of ``SchedulerOutput``.

The control plane's ``SchedulerOutput`` carries counts and new block ids only; the
coordinator keeps every request's token ids and full block table and builds one
``StepInput`` per step with ``build_step_input``. Every member of a TP group receives the
same ``StepInput`` and issues the same collectives in the same order. Torch-free and plain
data, so it pickles over the control channel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from executor.sampling_params import SamplingParams
from policies.plan import SchedulerOutput


@dataclass
class SequenceStep:
    """One scheduled request in one step."""

    request_id: int
    token_ids: list[int]  # the tokens whose KV this step computes (the uncached ones)
    num_computed_tokens: int  # tokens already cached; ``token_ids[i]`` is at this + i
    block_table: list[int]  # the request's physical blocks in order, at the step's width
    samples: bool  # this step reaches the last known token, so it samples the next one
    sampling: SamplingParams = field(default_factory=SamplingParams)

    @property
    def num_new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_tokens_after(self) -> int:
        """Tokens cached once this step has run; the sampled token's position."""
        return self.num_computed_tokens + len(self.token_ids)


@dataclass
class StepInput:
    width: int  # TP width of the group the plan was made for; the runner checks its own
    sequences: list[SequenceStep]
    # Seeds the draws of requests without their own seed, identically on every rank, so all
    # members of a group sample the same tokens (the coordinator draws one per step).
    sampling_seed: int = 0
    step_id: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.sequences)


def build_step_input(out: SchedulerOutput, token_ids: Mapping[int, Sequence[int]],
                     block_tables: Mapping[int, Sequence[int]],
                     sampling: Mapping[int, SamplingParams] | None = None, *,
                     sampling_seed: int = 0, step_id: int = 0) -> StepInput:
    """The step the scheduler planned, with the tokens and tables the coordinator keeps.

    ``token_ids[r]``: all known tokens of request r (prompt + generated); ``block_tables[r]``:
    its full table (``Request.block_ids`` after ``schedule()``); ``sampling[r]``: its
    parameters (greedy when absent).
    """
    sampling = sampling or {}
    sequences = []
    for s in out.scheduled:
        known = token_ids[s.request_id]
        end = s.num_computed_tokens + s.num_new_tokens
        if end > len(known):
            raise ValueError(f"request {s.request_id}: the plan computes tokens up to {end} but "
                             f"only {len(known)} are known")
        sequences.append(SequenceStep(
            request_id=s.request_id,
            token_ids=list(known[s.num_computed_tokens:end]),
            num_computed_tokens=s.num_computed_tokens,
            block_table=list(block_tables[s.request_id]),
            samples=s.samples,
            sampling=sampling.get(s.request_id, SamplingParams())))
    return StepInput(width=out.tp_gpus, sequences=sequences, sampling_seed=sampling_seed,
                     step_id=step_id)
