"""A simulated node: the shared control plane, one SimPy process per engine group, an
arrival process and a sampler. The node is the control plane's ``Listener``: it starts and
retires engine processes, wakes them, and times flips."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import simpy

from policies.control import ControlPlane
from policies.policy import Policy
from policies.records import sample_row
from policies.request import Request
from policies.scheduler import SchedulerConfig
from policies.specs import ClusterSpec, MemoryConfig, ModelSpec
from policies.switch import SwitchConfig, SwitchRecord
from sim.engine import HostLoad, SimEngine, StepPredictor
from traces.spec import RequestSpec


@dataclass
class NodeResult:
    requests: list[Request]
    samples: list[dict]
    layouts: list[dict]
    switches: list[SwitchRecord]
    sim_end_s: float
    num_steps: int
    stalled: bool = False
    predictor_report: dict | None = None  # a profiled predictor's fit and fallbacks
    # TP width -> seconds a client sees on top of the server's times (sim.client_view).
    client_overhead_s: dict[int, float] = field(default_factory=dict)


class SimNode:
    def __init__(self, env: simpy.Environment, model: ModelSpec, cluster: ClusterSpec,
                 memory: MemoryConfig, scheduler_config: SchedulerConfig,
                 predictor: StepPredictor, policy: Policy, *,
                 switch_config: SwitchConfig | None = None, dynamic: bool = False,
                 fast_forward: bool = True, sample_period_s: float = 1.0,
                 extra_weight_bytes_per_gpu: float = 0.0) -> None:
        if sample_period_s <= 0:
            raise ValueError("sample_period_s must be positive")
        self.env = env
        self.predictor = predictor
        self.fast_forward = fast_forward
        self.sample_period_s = sample_period_s
        self.engines: dict[int, SimEngine] = {}
        # Groups that slow each other down on a shared host, when the predictor prices it.
        self.load = HostLoad() if getattr(predictor, "has_contention", False) else None
        self.retired_steps = 0
        # Tokens of retired incarnations of a group label, so a label's sampled counter stays
        # cumulative when a switch forms the same group again.
        self.retired_tokens: dict[str, int] = {}
        self.samples: list[dict] = []
        self._arrivals_done = False
        self._quiet_since: float | None = None
        self.control = ControlPlane(model, cluster, memory, scheduler_config, policy,
                                    switch_config, listener=self, dynamic=dynamic,
                                    cost_model=predictor,
                                    extra_weight_bytes_per_gpu=extra_weight_bytes_per_gpu)
        self.control.start()

    # --- Listener ------------------------------------------------------------------------
    def wake(self, gid: int, stop_now: bool) -> None:
        engine = self.engines.get(gid)
        if engine is not None:
            engine.wake()

    def group_started(self, gid: int) -> None:
        self.engines[gid] = SimEngine(self.env, self.control, gid, self.predictor,
                                      self.fast_forward, self.load)
        if self.load is not None:
            self.load.engines[gid] = self.engines[gid]

    def group_retired(self, gid: int) -> None:
        engine = self.engines.pop(gid)
        if self.load is not None:
            self.load.engines.pop(gid, None)
        self.retired_steps += engine.num_steps
        self.retired_tokens[engine.label] = self.retired_tokens.get(engine.label, 0) + \
            engine.output_tokens_total
        engine.retire()

    def start_flip(self, duration_s: float) -> None:
        self.env.process(self._flip(duration_s))

    def _flip(self, duration_s: float):
        yield self.env.timeout(duration_s)
        self.control.finish_flip(self.env.now)

    # --- processes -----------------------------------------------------------------------
    def arrivals(self, specs: Sequence[RequestSpec]):
        for spec in specs:
            delay = spec.arrival_s - self.env.now
            if delay > 0:
                yield self.env.timeout(delay)
            self.control.admit(Request(spec), self.env.now)
        self._arrivals_done = True

    def sampler(self, on_tick: Callable[[float], None] | None = None):
        """Samples and lets the policy look every period, until every request is done."""
        while True:
            yield self.env.timeout(self.sample_period_s)
            self.sample()
            self.control.decide(self.env.now)
            if on_tick is not None:
                on_tick(self.env.now)
            if self._arrivals_done and self.control.pending is None and (
                    self.control.num_unfinished == 0 or self.stalled()):
                return  # all served (or stuck), and no switch left half done

    STALL_GRACE_S = 600.0  # a policy may wait (dwell, idle timers) before it frees work

    def stalled(self) -> bool:
        """Work is left but nothing has moved for ``STALL_GRACE_S`` simulated seconds (a
        policy that never frees paused work, say)."""
        quiet = self.control.pending is None and not any(
            e.scheduler.has_work for e in self.engines.values())
        if not quiet:
            self._quiet_since = None
            return False
        if self._quiet_since is None:
            self._quiet_since = self.env.now
        return self.env.now - self._quiet_since >= self.STALL_GRACE_S

    def sample(self) -> None:
        now = self.env.now
        for e in self.engines.values():
            e.sync(now)
            tokens = self.retired_tokens.get(e.label, 0) + e.output_tokens_total
            self.samples.append(sample_row(now, e.label, e.tp_gpus, e.scheduler, tokens))

    # --- driver --------------------------------------------------------------------------
    def run(self, specs: Sequence[RequestSpec], until_s: float | None = None,
            on_tick: Callable[[float], None] | None = None) -> NodeResult:
        self.env.process(self.arrivals(specs))
        done = self.env.process(self.sampler(on_tick))
        limit = done if until_s is None else self.env.any_of(
            [done, self.env.timeout(max(0.0, until_s - self.env.now))])
        self.env.run(until=limit)
        for e in self.engines.values():
            e.sync(self.env.now)
        stalled = self.control.num_unfinished > 0 and until_s is None
        c = self.control
        return NodeResult(c.requests, self.samples, c.layouts, c.switches, self.env.now,
                          self.retired_steps + sum(e.num_steps for e in self.engines.values()),
                          stalled)
