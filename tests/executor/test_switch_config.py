"""``--policy`` (the simulator's policy configs by name) and the switch settings: parsed,
checked before any worker starts, and refused with the reason where the executor cannot
honour them."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without the extra)

import subprocess
import sys
from pathlib import Path

import pytest

from executor.__main__ import build_parser
from executor.serve_config import (ServeConfig, ServeConfigError, feasible_widths,
                                   resident_tp_width, resolve_model)
from policies.layout import Layout

REPO = Path(__file__).resolve().parents[2]


def test_a_policy_is_the_simulators_config_with_overrides():
    cfg = ServeConfig(model="tiny", num_ranks=2, policy="flying",
                      policy_overrides=("flying.dwell_s=0.5", "flying.merge_strategy=hard"))
    cfg.check()
    policy = cfg.policy_config()
    assert (policy.kind, policy.flying.dwell_s, policy.flying.merge_strategy) == \
        ("flying", 0.5, "hard")
    assert policy.flying.priority_engines_per_group == 2  # the rest from conf/policy/flying.yaml
    assert policy.weights_resident_per_engine  # the executor keeps every rank's weights
    assert cfg.dynamic and cfg.layout_of() == Layout.static_dp(2) and cfg.max_tp_width == 2
    assert cfg.switch_config().split_strategy == "recompute"  # conf/config.yaml's default
    static = ServeConfig(model="tiny", num_ranks=4, policy="static_mixed")
    assert not static.dynamic and static.layout_of() == Layout.uniform(4, 2)
    assert ServeConfig(model="tiny", layout="tp", num_ranks=2).policy_name == "tp"


@pytest.mark.parametrize("settings, message", [
    ({"policy": "nope"}, "no conf/policy/nope.yaml"),
    ({"policy": "shift"}, "sequence-parallel step mode"),
    ({"policy": "flying", "policy_overrides": ("flying.bogus=1",)}, "Key 'bogus' not in"),
    ({"policy": "flying", "policy_overrides": ("flying.dwell_s",)}, "expected KEY=VALUE"),
    ({"switch_overrides": ("comm_pool=lazy",)}, "every candidate group at start-up"),
    ({"switch_overrides": ("split_strategy=restart",)}, "never restarts workers"),
    ({"policy": "flying", "num_ranks": 4}, r"may form a group of every rank\) needs TP width 4"),
    ({"max_queued_switches": 0}, "--max-queued-switches must be positive"),
])
def test_what_the_executor_cannot_do_is_refused_with_the_reason(settings, message):
    with pytest.raises(ServeConfigError, match=message):
        cfg = ServeConfig(model="tiny", **{"num_ranks": 2, **settings})
        cfg.check()
        resolve_model(cfg)


def test_weights_are_laid_out_for_every_width_a_switch_may_form():
    def width(**settings):
        cfg = ServeConfig(model="tiny", **settings)  # 2 KV heads
        return resident_tp_width(resolve_model(cfg).config, cfg)

    assert width(layout="dp", num_ranks=4) == 2  # an admin switch may form TP2 groups
    config = resolve_model(ServeConfig(model="llama3_8b")).config  # 8 KV heads
    assert feasible_widths(config, 8) == [1, 2, 4, 8]


def test_cli_flags_for_policies_and_switches():
    args = build_parser().parse_args(["serve", "--model", "tiny", "--policy", "flying",
                                      "--policy-set", "flying.dwell_s=1", "--policy-set",
                                      "flying.min_interval_s=1", "--switch-set",
                                      "split_strategy=drain", "--max-queued-switches", "3"])
    assert (args.policy, args.layout, args.max_queued_switches) == ("flying", None, 3)
    assert args.policy_overrides == ["flying.dwell_s=1", "flying.min_interval_s=1"]
    assert args.switch_overrides == ["split_strategy=drain"]


def test_cli_refuses_a_layout_and_a_policy_together():
    proc = subprocess.run([sys.executable, "-m", "executor", "serve", "--model", "tiny",
                           "--layout", "tp", "--policy", "flying"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--layout and --policy" in proc.stderr
