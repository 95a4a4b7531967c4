"""Typed schema of the simulator's Hydra config. Composition fails on unknown keys or wrong
types; ``load_config`` then builds the dataclasses, whose own checks run on construction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from policies.policy import PolicyConfig
from policies.scheduler import SchedulerConfig
from policies.specs import ClusterSpec, MemoryConfig, ModelSpec
from policies.switch import SwitchConfig
from sim.objective import ObjectiveConfig
from sim.predictor import RooflineConfig
from traces.config import TraceConfig


PREDICTOR_KINDS = ("roofline", "profiled")


@dataclass
class PredictorConfig(RooflineConfig):
    """kind=roofline: the analytic predictor. kind=profiled: fitted to a measured profile
    (``python -m executor profile``); the roofline fields then price steps outside it."""

    profile_path: Optional[str] = None  # profile JSON (absolute, or from cwd / the repo root)
    use_profiled_flip: bool = True  # the profile's measured flip (p50) replaces switch.flip_s
    # Report times as a streaming client sees them: the profile's measured client overhead
    # (serving.client_overhead_s, per TP width) is added to first token and finish.
    use_client_overhead: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in PREDICTOR_KINDS:
            raise ValueError(f"predictor.kind={self.kind!r} must be one of {PREDICTOR_KINDS}")
        if self.kind == "profiled" and not self.profile_path:
            raise ValueError("predictor=profiled needs predictor.profile_path=PROFILE.json "
                             "(make one with `python -m executor profile`)")


@dataclass
class OutputConfig:
    plots: bool = True  # latency CDFs and time series as PNG in the run directory
    progress: bool = True  # a progress bar over simulated time (only on a terminal)
    print_summary: bool = True


@dataclass
class SimConfig:
    trace: TraceConfig = MISSING
    cluster: ClusterSpec = MISSING
    model: ModelSpec = MISSING
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    switch: SwitchConfig = field(default_factory=SwitchConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    seed: int = 0
    fast_forward: bool = True
    sample_period_s: float = 1.0
    max_sim_time_s: Optional[float] = None


class ConfigError(ValueError):
    pass


def register_schema() -> None:
    ConfigStore.instance().store(name="sim_schema", node=SimConfig)


def trace_options() -> list[str]:
    from pathlib import Path
    conf = Path(__file__).resolve().parents[1] / "conf" / "trace"
    return sorted(p.stem for p in conf.glob("*.yaml"))


def load_config(cfg: DictConfig | dict[str, Any]) -> SimConfig:
    """Composed config -> typed SimConfig, with messages a user can act on."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.merge(OmegaConf.structured(SimConfig), cfg)
    if OmegaConf.is_missing(cfg, "trace"):
        raise ConfigError("no trace chosen: add +trace=NAME, one of " + ", ".join(trace_options()))
    try:
        typed: SimConfig = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise ConfigError(f"config value missing: {e.full_key}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"bad config: {e}") from None
    typed.trace.seed = typed.seed
    if typed.sample_period_s <= 0:
        raise ConfigError("sample_period_s must be positive")
    return typed
