"""The live step-cost model slo_aware prices layouts with in the executor."""
import random

import pytest

from executor.step_costs import MIN_FIT_STEPS, MeasuredStepCosts
from policies.plan import StepShape


def shape(width, tokens, seqs, pairs):
    return StepShape(width, tokens, seqs, seqs, pairs, tokens, tokens - seqs)


def true_s(s: StepShape) -> float:
    return 0.004 + 2e-5 * s.num_tokens + 1e-8 * s.attn_pairs + 3e-4 * s.num_seqs


def test_it_learns_a_width_from_its_steps_and_guesses_the_others_optimistically():
    costs = MeasuredStepCosts(refit_every=1)
    probe = shape(1, 64, 4, 5000)
    assert costs.step_time_s(probe) == 0.0  # nothing measured: no opinion
    rng = random.Random(0)
    for _ in range(MIN_FIT_STEPS + 20):
        s = shape(1, rng.randint(1, 512), rng.randint(1, 16), rng.randint(1, 200000))
        costs.record(s, true_s(s))
    assert costs.measured_widths == [1]
    assert costs.step_time_s(probe) == pytest.approx(true_s(probe), rel=1e-6)
    wide = shape(2, 64, 4, 5000)  # not run yet: fixed cost kept, work split two ways
    assert costs.step_time_s(wide) == pytest.approx(0.004 + (true_s(probe) - 0.004) / 2)
    for _ in range(MIN_FIT_STEPS):  # measured at width 2 (slower than the guess): believed
        costs.record(wide, 2 * true_s(probe))
    assert costs.measured_widths == [1, 2]
    assert costs.step_time_s(wide) == pytest.approx(2 * true_s(probe), rel=1e-6)
    assert costs.step_time_s(shape(2, 0, 0, 0)) == 0.0
