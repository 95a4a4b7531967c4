"""Parallelism policies: observe the node, choose the layout. Static ones never switch."""
from __future__ import annotations

from dataclasses import dataclass

from policies.layout import Layout

POLICY_KINDS = ("static_dp", "static_tp", "static_mixed")


@dataclass
class PolicyConfig:
    name: str = "static_dp"
    kind: str = "static_dp"
    engines_per_group: int = 2  # static_mixed: engines merged into each TP group
    # True: every engine keeps its full weights (Flying Serving; KV room is the same at any
    # width). False: a TP group shards weights over its GPUs like a plain vLLM deployment.
    weights_resident_per_engine: bool = False

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"policy.kind {self.kind!r} is not one of {POLICY_KINDS}")


class StaticPolicy:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.name = config.name

    def initial_layout(self, num_engines: int) -> Layout:
        kind = self.config.kind
        if kind == "static_dp":
            return Layout.static_dp(num_engines)
        if kind == "static_tp":
            return Layout.static_tp(num_engines)
        return Layout.uniform(num_engines, self.config.engines_per_group)


def make_policy(config: PolicyConfig) -> StaticPolicy:
    return StaticPolicy(config)
