"""Max servable context from the specs: the same numbers the control plane admits by."""
import pytest

from analysis.capacity import (
    capacity_table, compose_config, group_kv_tokens, policy_capacity, served_context,
    width_capacity,
)
from policies.control import ControlPlane
from policies.policy import make_policy
from policies.scheduler import SchedulerConfig
from policies.specs import kv_blocks_per_gpu
from tests.analysis.conftest import make_requests

POLICIES = ("static_dp", "static_mixed", "static_tp", "flying", "slo_aware", "shift")


@pytest.fixture(scope="module")
def configs():
    # the long-context scenario of docs/results.md: Llama-3-70B, 8xH200, engines of TP2
    base = ["experiment=long_context"]
    return {p: compose_config([*base, f"policy={p}"]) for p in POLICIES if p != "shift"} | {
        "shift": compose_config(["+trace=poisson", "policy=shift"])}  # 70B cannot run shift


def _control_plane_capacity(cfg) -> int:
    """What the simulator's control plane admits against (sim/run.py's wiring)."""
    extra = 0
    if cfg.policy.kind == "shift":
        from sim.predictor import shift_extra_weight_bytes_per_gpu
        extra = shift_extra_weight_bytes_per_gpu(cfg.model, cfg.cluster.num_gpus)
    cp = ControlPlane(cfg.model, cfg.cluster, cfg.memory, SchedulerConfig(),
                      make_policy(cfg.policy), dynamic=cfg.policy.kind in ("flying", "slo_aware"),
                      extra_weight_bytes_per_gpu=extra)
    cp.start()
    return cp.max_capacity_tokens()


@pytest.mark.parametrize("policy", POLICIES)
def test_matches_the_control_plane(configs, policy):
    cfg = configs[policy]
    row = policy_capacity(cfg.model, cfg.cluster, cfg.memory, cfg.policy)
    assert row["kv_capacity_tokens"] == _control_plane_capacity(cfg)
    assert row["max_context_tokens"] == min(row["kv_capacity_tokens"], cfg.model.max_model_len)


def test_long_context_factors(configs):
    table = capacity_table([configs[p] for p in ("static_dp", "static_tp", "flying")])
    cfg = configs["static_dp"]
    one = kv_blocks_per_gpu(cfg.model, cfg.cluster, cfg.memory) * cfg.memory.block_size_tokens
    rows = table.set_index("policy")
    assert rows.loc["static_dp", "kv_capacity_tokens"] == one
    assert rows.loc["flying", "vs_one_engine"] == pytest.approx(cfg.cluster.num_engines)
    assert not rows.loc["static_tp", "weights_resident"]
    # sharded weights leave more room than resident copies
    assert rows.loc["static_tp", "kv_capacity_tokens"] > rows.loc["flying", "kv_capacity_tokens"]


def test_width_capacity(configs):
    cfg = configs["flying"]
    widths = width_capacity(cfg.model, cfg.cluster, cfg.memory)
    assert widths["group_engines"].tolist() == [1, 2, 4]
    assert widths["group_gpus"].tolist() == [2, 4, 8]
    assert widths["resident_tokens"].tolist() == [
        group_kv_tokens(cfg.model, cfg.cluster, cfg.memory, w, True) for w in (1, 2, 4)]
    assert (widths["sharded_tokens"] >= widths["resident_tokens"]).all()


def test_served_context():
    rows = [dict(request_class="long_context", status="finished", arrival_s=0.0,
                 first_scheduled_s=0.0, first_token_s=1.0, finish_s=2.0, generated_tokens=2,
                 prompt_tokens=5000, output_tokens=10),
            dict(request_class="long_context", status="rejected", arrival_s=1.0,
                 generated_tokens=0, prompt_tokens=90000, output_tokens=10,
                 reject_reason="needs 90010 tokens of KV cache; the largest group holds 80000")]
    df = make_requests(rows).assign(run="r", policy="static_dp")
    out = served_context(df)
    assert out.to_dict("records") == [{"run": "r", "policy": "static_dp",
                                       "served_max_tokens": 5010, "rejected_too_long": 1}]
