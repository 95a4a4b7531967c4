"""Request classes and SLO attachment."""
from __future__ import annotations

import pytest

from traces import load_trace

SLOS = {
    "normal": {"ttft_s": 2.0, "tpot_s": 0.1},
    "priority": {"ttft_s": 0.5, "tpot_s": 0.05},
    "long_context": {"ttft_s": 10.0},
}


def _cfg(classes, lengths=None, **kw):
    lengths = lengths or {"kind": "uniform", "prompt_tokens": 100, "prompt_tokens_max": 4000,
                          "output_tokens": 10, "output_tokens_max": 500}
    return {"name": "c", "source": "poisson", "rate_rps": 100.0, "duration_s": 200.0,
            "lengths": lengths, "classes": classes, **kw}


def _share(reqs, request_class):
    return sum(r.request_class == request_class for r in reqs) / len(reqs)


def test_priority_fraction_close_to_target():
    reqs = load_trace(_cfg({"priority_fraction": 0.3}))
    assert len(reqs) > 15_000
    assert _share(reqs, "priority") == pytest.approx(0.3, abs=0.015)
    assert _share(reqs, "long_context") == 0.0


@pytest.mark.parametrize("fraction, expected", [(0.0, "normal"), (1.0, "priority")])
def test_priority_fraction_extremes(fraction, expected):
    assert {r.request_class for r in load_trace(_cfg({"priority_fraction": fraction}))} == {expected}


def test_long_context_threshold_wins_over_priority():
    reqs = load_trace(_cfg({"priority_fraction": 1.0, "long_context_threshold_tokens": 3000}))
    for r in reqs:
        is_long = r.prompt_tokens + r.output_tokens >= 3000
        assert r.request_class == ("long_context" if is_long else "priority")
    assert 0 < _share(reqs, "long_context") < 1


def test_priority_fraction_applies_among_non_long_requests():
    reqs = load_trace(_cfg({"priority_fraction": 0.5, "long_context_threshold_tokens": 2000}))
    rest = [r for r in reqs if r.request_class != "long_context"]
    assert _share(rest, "priority") == pytest.approx(0.5, abs=0.02)


def test_slos_attached_per_class():
    reqs = load_trace(_cfg({"priority_fraction": 0.3, "long_context_threshold_tokens": 3000, **SLOS}))
    expected = {
        "normal": (2.0, 0.1),
        "priority": (0.5, 0.05),
        "long_context": (10.0, None),
    }
    assert {r.request_class for r in reqs} == set(expected)
    for r in reqs:
        assert (r.ttft_slo_s, r.tpot_slo_s) == expected[r.request_class]


def test_no_slos_by_default():
    assert all(r.ttft_slo_s is None and r.tpot_slo_s is None for r in load_trace(_cfg({})))


def test_classes_are_seeded_and_stable_under_the_cap():
    cfg = _cfg({"priority_fraction": 0.3})
    full = [r.request_class for r in load_trace(cfg)]
    capped = [r.request_class for r in load_trace({**cfg, "max_requests": 500})]
    assert capped == full[:500]
    assert [r.request_class for r in load_trace({**cfg, "seed": 1})] != full


def test_priority_fraction_does_not_move_arrivals():
    a = load_trace(_cfg({"priority_fraction": 0.1}))
    b = load_trace(_cfg({"priority_fraction": 0.9}))
    assert [r.arrival_s for r in a] == [r.arrival_s for r in b]
