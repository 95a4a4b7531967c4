"""ModelRunner's contract: plan/width agreement, block-table checks, sampling per request."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without torch)

import pytest
import torch

from executor.sampling_params import SamplingParams
from executor.step_input import SequenceStep, StepInput
from tests.executor.helpers import make_runner


@pytest.fixture(scope="module")
def runner(tiny_llama_dir):
    return make_runner(tiny_llama_dir, max_tp_width=2, num_blocks=16)


def test_plan_for_another_width_is_refused(runner):
    with pytest.raises(ValueError, match="planned for width 2"):
        runner.execute(StepInput(2, [SequenceStep(0, [1, 2], 0, [0], True)]))


@pytest.mark.parametrize("seq, why", [
    (SequenceStep(3, [1] * 9, 0, [0, 1], True), "holds 8 tokens at width 1; the step needs 9"),
    (SequenceStep(3, [1, 2], 0, [16], True), "outside the pool of 16 blocks"),
    (SequenceStep(3, [1], 512, [0], True), "exceed max_model_len=512"),
    (SequenceStep(3, [], 0, [0], True), "at least one token"),
])
def test_bad_sequences_are_refused_with_the_request_id(runner, seq, why):
    with pytest.raises(ValueError, match=f"request 3: .*{why}"):
        runner.execute(StepInput(1, [seq]))


def test_only_sampling_sequences_return_tokens(runner):
    out = runner.execute(StepInput(1, [SequenceStep(0, [1, 2, 3], 0, [0], samples=False),
                                       SequenceStep(1, [4, 5], 0, [1], samples=True)]))
    assert list(out.sampled_token_ids) == [1] and out.logits is None
    assert runner.execute(StepInput(1, [])).sampled_token_ids == {}


def test_seeded_request_draws_the_same_token_in_any_batch(runner):
    hot = SamplingParams(temperature=1.0, seed=77)
    alone = runner.execute(StepInput(1, [SequenceStep(5, [7, 8, 9], 0, [2], True, hot)]))
    crowd = runner.execute(StepInput(1, [
        SequenceStep(6, [1, 2, 3, 4, 5], 0, [3, 4], True, SamplingParams(temperature=0.9)),
        SequenceStep(5, [7, 8, 9], 0, [5], True, hot)], sampling_seed=123))
    assert alone.sampled_token_ids[5] == crowd.sampled_token_ids[5]


def test_collectives_without_a_group_refuse_instead_of_returning_partial_sums(runner):
    runner.set_width(0, 2)  # views only: no process group bound
    try:
        with pytest.raises(RuntimeError, match="no process group bound"):
            runner.model.comm.all_reduce(torch.ones(2))
    finally:
        runner.set_width(0, 1)
