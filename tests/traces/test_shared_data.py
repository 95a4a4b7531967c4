"""The real traces in <repo>/../shared/traces load with the published row counts and stats."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.traces.helpers import SHARED_TRACES
from traces import load_trace

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason=f"{SHARED_TRACES} not present"),
]


def _load(source, **kw):
    return load_trace({"name": source, "source": source, "data_dir": str(SHARED_TRACES), **kw})


def test_azure_conversation():
    reqs = _load("azure")
    assert len(reqs) == 19_366
    assert np.mean([r.prompt_tokens for r in reqs]) == pytest.approx(1154.7, abs=0.05)
    assert np.mean([r.output_tokens for r in reqs]) == pytest.approx(211.1, abs=0.05)
    assert reqs[0].arrival_s == 0.0 and reqs[-1].arrival_s / 60 == pytest.approx(58.4, abs=0.05)


def test_azure_code():
    reqs = _load("azure_code")
    assert len(reqs) == 8_819
    assert np.mean([r.prompt_tokens for r in reqs]) == pytest.approx(2047.8, abs=0.05)


def test_mooncake_conversation_hash_ids_cover_every_block():
    reqs = _load("mooncake")
    assert len(reqs) == 12_031
    assert all(len(r.hash_ids) == math.ceil(r.prompt_tokens / 512) for r in reqs)
    assert len({r.arrival_s for r in reqs}) == 1_180  # the ~3 s timestamp buckets


def test_mooncake_conversation_bucket_spread():
    arrivals = [r.arrival_s for r in _load("mooncake", bucket_spread=True)]
    assert len(set(arrivals)) == 12_031 and arrivals == sorted(arrivals)


def test_mooncake_synthetic():
    reqs = _load("mooncake_synthetic")
    assert len(reqs) == 3_993
    assert all(len(r.hash_ids) == math.ceil(r.prompt_tokens / 512) for r in reqs)


def test_default_search_finds_shared_traces(monkeypatch):
    monkeypatch.delenv("FLYING_TRACES_DIR", raising=False)
    assert len(load_trace({"name": "a", "source": "azure_code"})) == 8_819


@pytest.mark.parametrize("source", ["poisson", "gamma", "bursty"])
def test_group_defaults_resample_azure_lengths(source):
    reqs = _load(source, rate_rps=2.0, duration_s=300.0, lengths={"kind": "trace", "source": "azure"})
    assert 400 < len(reqs) < 1500 and min(r.prompt_tokens for r in reqs) >= 1
