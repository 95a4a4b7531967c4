"""The Hydra group files conf/trace/*.yaml compose and fit the TraceConfig schema."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from traces import SOURCES, SYNTHETIC_SOURCES, load_trace
from traces.validation import as_trace_config

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def _compose(group_file: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(overrides=[f"+trace={group_file}", *overrides])


def test_one_file_per_source():
    assert sorted(p.stem for p in (CONF_DIR / "trace").glob("*.yaml")) == sorted(SOURCES)


@pytest.mark.parametrize("source", SOURCES)
def test_group_file_composes_into_the_schema(source):
    cfg = as_trace_config(_compose(source).trace)
    assert cfg.name == source and cfg.source == source


@pytest.mark.parametrize("source", SOURCES)
def test_common_keys_are_overridable_without_plus(source, tmp_path):
    cfg = _compose(source, f"trace.data_dir={tmp_path}", "trace.end_s=60", "trace.max_requests=5",
                   "trace.classes.priority_fraction=0.2").trace
    checked = as_trace_config(cfg)
    assert (checked.data_dir, checked.end_s, checked.max_requests) == (str(tmp_path), 60.0, 5)


def test_azure_defaults_carry_slos():
    classes = as_trace_config(_compose("azure").trace).classes
    assert (classes.normal.ttft_s, classes.normal.tpot_s) == (2.0, 0.1)
    assert (classes.priority.ttft_s, classes.priority.tpot_s) == (0.5, 0.05)


def test_bursty_defaults():
    cfg = as_trace_config(_compose("bursty").trace)
    assert (cfg.rate_rps, cfg.burst_rate_rps, cfg.duration_s) == (2.0, 12.0, 600.0)
    assert (cfg.burst_start_frac, cfg.burst_end_frac) == (0.4, 0.6)


@pytest.mark.parametrize("source", SYNTHETIC_SOURCES)
def test_synthetic_group_files_load_with_fixed_lengths(source):
    cfg = _compose(source, "trace.lengths.kind=fixed").trace
    reqs = load_trace(cfg)
    assert len(reqs) > 100 and reqs[-1].arrival_s < cfg.duration_s
