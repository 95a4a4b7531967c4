"""Every option of every config group composes and validates."""
from pathlib import Path

import pytest

from policies.specs import kv_blocks_per_gpu
from sim.config import ConfigError
from sim.run import CONF_DIR

GROUPS = ["cluster", "model", "policy", "predictor", "trace", "experiment"]


def options(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_has_options(group):
    assert options(group), f"conf/{group}/ is empty"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(make_config, group, option):
    if group == "trace":
        overrides = [f"+trace={option}"]
    elif group == "experiment":
        overrides = [f"experiment={option}"]  # an experiment picks its own trace
    else:
        overrides = ["+trace=poisson", f"{group}={option}"]
    cfg = make_config(*overrides)
    assert cfg.trace.source and cfg.model.num_layers > 0 and cfg.cluster.num_engines >= 1


def test_defaults_are_the_issue_setup(make_config):
    cfg = make_config("+trace=azure")
    assert (cfg.cluster.name, cfg.cluster.num_gpus, cfg.model.name, cfg.policy.kind) == (
        "h100x8", 8, "llama3_8b", "static_dp")


def test_missing_trace_names_the_choices(make_config):
    with pytest.raises(ConfigError, match=r"\+trace=NAME.*azure"):
        make_config()


def test_unknown_key_and_bad_type_fail_at_compose(make_config):
    with pytest.raises(Exception, match="num_layerz"):
        make_config("+trace=poisson", "model.num_layerz=3")
    with pytest.raises(Exception, match="num_gpus"):
        make_config("+trace=poisson", "cluster.num_gpus=eight")


def test_bad_values_fail_with_a_reason(make_config):
    with pytest.raises(ConfigError, match="not a multiple"):
        make_config("+trace=poisson", "cluster.gpus_per_engine=3")
    with pytest.raises(ConfigError, match="policy.kind"):
        make_config("+trace=poisson", "policy.kind=nope")


@pytest.mark.parametrize("model,cluster,gpe,lo,hi", [
    # Llama-3-8B on one H100: 0.9*79.6 GiB - 14.96 GiB weights - 4 GiB = 52.7 GiB of KV at
    # 128 KiB per token = ~431K tokens.
    ("llama3_8b", "h100x8", 1, 420_000, 440_000),
    # Llama-3-70B on H200 engines of TP2: (126.4 - 65.7 - 4) GiB per GPU at 160 KiB/token/GPU.
    ("llama3_70b", "h200x8", 2, 360_000, 380_000),
])
def test_kv_capacity_from_memory_left(make_config, model, cluster, gpe, lo, hi):
    cfg = make_config("+trace=poisson", f"model={model}", f"cluster={cluster}",
                      f"cluster.gpus_per_engine={gpe}")
    tokens = kv_blocks_per_gpu(cfg.model, cfg.cluster, cfg.memory) * cfg.memory.block_size_tokens
    assert lo <= tokens <= hi


def test_70b_does_not_fit_one_h100(make_config):
    cfg = make_config("+trace=poisson", "model=llama3_70b")
    with pytest.raises(ValueError, match="does not fit"):
        kv_blocks_per_gpu(cfg.model, cfg.cluster, cfg.memory)
