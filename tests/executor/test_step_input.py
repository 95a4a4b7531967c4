"""build_step_input turns the control plane's plan into what a worker executes."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without torch)

import pytest

from executor.sampling_params import SamplingParams
from executor.step_input import build_step_input
from policies.plan import ScheduledRequest, SchedulerOutput


def test_tokens_positions_tables_and_sampling_come_from_the_coordinator():
    out = SchedulerOutput(group_id=0, tp_gpus=2, scheduled=[
        ScheduledRequest(7, num_new_tokens=3, num_computed_tokens=4, samples=False),
        ScheduledRequest(9, num_new_tokens=1, num_computed_tokens=5, samples=True)])
    tokens = {7: list(range(100, 110)), 9: [1, 2, 3, 4, 5, 6]}
    greedy_hot = SamplingParams(temperature=0.7, seed=1)
    step = build_step_input(out, tokens, {7: [3, 1], 9: [0]}, {9: greedy_hot}, sampling_seed=11)
    first, second = step.sequences
    assert (step.width, step.num_tokens, step.sampling_seed) == (2, 4, 11)
    assert first.token_ids == [104, 105, 106] and first.num_tokens_after == 7
    assert first.block_table == [3, 1] and not first.samples
    assert first.sampling == SamplingParams()
    assert second.token_ids == [6] and second.samples and second.sampling is greedy_hot


def test_plan_beyond_the_known_tokens_is_refused():
    out = SchedulerOutput(0, 1, [ScheduledRequest(1, 4, 3, True)])
    with pytest.raises(ValueError, match="only 5 are known"):
        build_step_input(out, {1: [1, 2, 3, 4, 5]}, {1: [0, 1]})
