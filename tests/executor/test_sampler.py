"""Sampling: greedy, top-k, top-p, temperature, per-request seeds, validation."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without torch)

import pytest
import torch

from executor.sampler import Sampler
from executor.sampling_params import SamplingParams

sample = Sampler()


def _logits(rows=6, vocab=50, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_top_k_one_is_greedy():
    logits = _logits()
    positions = list(range(6))
    greedy = sample(logits, [SamplingParams()] * 6, positions)
    assert torch.equal(greedy, logits.argmax(-1))
    top1 = sample(logits, [SamplingParams(temperature=1.5, top_k=1)] * 6, positions)
    assert torch.equal(top1, greedy)


def test_same_seed_and_position_give_the_same_token_anywhere_in_the_batch():
    logits = _logits(rows=1).expand(4, -1)
    p = SamplingParams(temperature=1.0, seed=1234)
    a = sample(logits, [p] * 4, [7, 7, 8, 9], step_seed=1)
    b = sample(logits[:1], [p], [7], step_seed=99)  # other step seed, other batch
    assert a[0] == a[1] == b[0]
    draws = [sample(logits[:1], [p], [pos]).item() for pos in range(40)]
    assert len(set(draws)) > 1  # positions give fresh draws


def test_unseeded_rows_follow_the_step_seed():
    logits = _logits()
    params = [SamplingParams(temperature=1.0)] * 6
    assert torch.equal(sample(logits, params, [0] * 6, step_seed=5),
                       sample(logits, params, [0] * 6, step_seed=5))


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).expand(300, -1)
    positions = list(range(300))
    top_k = sample(logits, [SamplingParams(temperature=5.0, top_k=2, seed=1)] * 300, positions)
    assert set(top_k.tolist()) == {0, 1}
    # softmax([4,3,2,1,0]) = [.64, .24, .09, .03, .01]: top_p=0.8 keeps the first two.
    top_p = sample(logits, [SamplingParams(temperature=1.0, top_p=0.8, seed=2)] * 300, positions)
    assert set(top_p.tolist()) == {0, 1}


def test_temperature_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(4000, -1)
    draws = sample(logits, [SamplingParams(temperature=1.0, seed=3)] * 4000, list(range(4000)))
    freq = torch.bincount(draws, minlength=3).float() / 4000
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03, rtol=0)


@pytest.mark.parametrize("bad", [dict(temperature=-0.1), dict(temperature=float("nan")),
                                 dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1),
                                 dict(top_k=2.5), dict(seed="7")])
def test_invalid_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)
