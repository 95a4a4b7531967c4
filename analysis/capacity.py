"""Maximum servable context per policy and per group width, computed from the specs
(``policies.specs.kv_blocks_per_gpu``), the same arithmetic both backends size their KV
pools with, so nothing here is a measured or hard-coded number.

A group of w engines holds ``kv_blocks_per_gpu * block_size_tokens * w`` tokens: a block has
fixed bytes per GPU and holds w * B_base tokens at width w. How many GPUs share one copy of
the weights decides ``kv_blocks_per_gpu``: one engine's GPUs when every engine keeps its
weights resident (Flying Serving, which may switch), every GPU of the group for a vLLM-style
static TP group. A request is servable if its KV fits the widest group the policy can form
and its length fits ``model.max_model_len``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from policies.policy import PolicyConfig, make_policy
from policies.specs import ClusterSpec, MemoryConfig, ModelSpec, kv_blocks_per_gpu

# Policies that may form any group up to the whole node at run time (sim/run.py runs these
# with dynamic=True); every other policy keeps its initial layout.
DYNAMIC_KINDS = ("flying", "slo_aware")
CAPACITY_COLUMNS = ["policy", "kind", "widest_group_engines", "widest_group_gpus",
                    "weights_resident", "kv_capacity_tokens", "max_model_len",
                    "max_context_tokens", "one_engine_tokens", "vs_one_engine"]


def group_kv_tokens(model: ModelSpec, cluster: ClusterSpec, memory: MemoryConfig,
                    group_engines: int, weights_resident: bool,
                    extra_weight_bytes_per_gpu: float = 0.0) -> int:
    """Tokens of KV one group of ``group_engines`` engines holds."""
    tp_gpus = group_engines * cluster.gpus_per_engine
    shards = cluster.gpus_per_engine if weights_resident else tp_gpus
    blocks = kv_blocks_per_gpu(model, cluster, memory, shards, extra_weight_bytes_per_gpu)
    return blocks * memory.block_size_tokens * group_engines


def widest_group_engines(policy: PolicyConfig, num_engines: int) -> int:
    """Engines in the widest group ``policy`` can ever run: the whole node for a switching
    policy, else the widest group of its (fixed) initial layout."""
    if policy.kind in DYNAMIC_KINDS:
        return num_engines
    layout = make_policy(policy).initial_layout(num_engines)
    return max(g.num_engines for g in layout.groups)


def _extra_weight_bytes(policy: PolicyConfig, model: ModelSpec, cluster: ClusterSpec) -> float:
    if policy.kind != "shift":
        return 0.0
    # Shift-Parallelism keeps a second full weight copy for its SP mode (as sim/run.py sizes it)
    from sim.predictor import shift_extra_weight_bytes_per_gpu
    return float(shift_extra_weight_bytes_per_gpu(model, cluster.num_gpus))


def policy_capacity(model: ModelSpec, cluster: ClusterSpec, memory: MemoryConfig,
                    policy: PolicyConfig) -> dict[str, Any]:
    """One row of ``CAPACITY_COLUMNS`` for ``policy`` on this model and node."""
    engines = widest_group_engines(policy, cluster.num_engines)
    resident = policy.weights_resident_per_engine or engines == 1
    kv_tokens = group_kv_tokens(model, cluster, memory, engines, resident,
                                _extra_weight_bytes(policy, model, cluster))
    one_engine = group_kv_tokens(model, cluster, memory, 1, True)
    context = min(kv_tokens, model.max_model_len)
    return {"policy": policy.name, "kind": policy.kind, "widest_group_engines": engines,
            "widest_group_gpus": engines * cluster.gpus_per_engine, "weights_resident": resident,
            "kv_capacity_tokens": kv_tokens, "max_model_len": model.max_model_len,
            "max_context_tokens": context, "one_engine_tokens": one_engine,
            "vs_one_engine": context / one_engine}


def width_capacity(model: ModelSpec, cluster: ClusterSpec, memory: MemoryConfig) -> pd.DataFrame:
    """KV tokens per group width (1, 2, 4, ... engines, and the whole node), with weights
    resident per engine (Flying Serving) and sharded over the group (static TP):
    columns ``group_engines, group_gpus, resident_tokens, sharded_tokens``."""
    widths, w = [], 1
    while w < cluster.num_engines:
        widths.append(w)
        w *= 2
    widths.append(cluster.num_engines)
    return pd.DataFrame([{
        "group_engines": w, "group_gpus": w * cluster.gpus_per_engine,
        "resident_tokens": group_kv_tokens(model, cluster, memory, w, True),
        "sharded_tokens": group_kv_tokens(model, cluster, memory, w, False)} for w in widths])


def capacity_table(configs: list[Any]) -> pd.DataFrame:
    """``policy_capacity`` of each config (anything with ``model``, ``cluster``, ``memory``
    and ``policy`` attributes, e.g. ``sim.config.SimConfig``), one row each, de-duplicated."""
    rows = [policy_capacity(c.model, c.cluster, c.memory, c.policy) for c in configs]
    return pd.DataFrame(rows, columns=CAPACITY_COLUMNS).drop_duplicates(ignore_index=True)


def run_config(run_dir: str | Path):
    """The typed ``SimConfig`` a simulator run used, from its ``.hydra/config.yaml``."""
    from omegaconf import OmegaConf

    from sim.config import SimConfig, load_config
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a simulator run: no .hydra/config.yaml "
                                "(the capacity of an executor run is not derivable from it)")
    return load_config(OmegaConf.merge(OmegaConf.structured(SimConfig), OmegaConf.load(path)))


def compose_config(overrides: list[str]):
    """The typed ``SimConfig`` of ``python -m sim run OVERRIDES`` without running it."""
    from hydra import compose, initialize_config_dir

    from sim.config import load_config, register_schema
    from sim.run import CONF_DIR
    register_schema()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return load_config(compose("config", overrides=list(overrides)))


def served_context(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run of a ``load_runs`` frame: the longest context (prompt + output tokens) it
    finished, and how many requests it rejected for their size. Columns ``run, policy,
    served_max_tokens, rejected_too_long``."""
    out = []
    for run, df in runs.groupby("run", sort=False):
        finished = df[df["status"] == "finished"]
        total = finished["prompt_tokens"] + finished["output_tokens"]
        reason = df["reject_reason"].fillna("").astype(str)
        too_long = (df["status"] == "rejected") & reason.str.contains(
            "KV cache|max_model_len", regex=True)
        out.append({"run": run, "policy": df["policy"].iloc[0] if "policy" in df else run,
                    "served_max_tokens": int(total.max()) if len(total) else 0,
                    "rejected_too_long": int(too_long.sum())})
    return pd.DataFrame(out)
