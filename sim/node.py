"""A simulated node: engine groups laid out by a policy, an arrival process, a sampler."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import simpy

from policies.block_manager import BlockManager
from policies.layout import Group, Layout
from policies.policy import StaticPolicy
from policies.request import Request, RequestStatus
from policies.router import LeastLoadedRouter
from policies.scheduler import Scheduler, SchedulerConfig
from policies.specs import ClusterSpec, MemoryConfig, ModelSpec, kv_blocks_per_gpu
from sim.engine import SimEngine, StepPredictor
from traces.spec import RequestSpec


@dataclass
class NodeResult:
    requests: list[Request]
    samples: list[dict]
    layouts: list[dict]
    sim_end_s: float
    num_steps: int


class SimNode:
    def __init__(self, env: simpy.Environment, model: ModelSpec, cluster: ClusterSpec,
                 memory: MemoryConfig, scheduler_config: SchedulerConfig,
                 predictor: StepPredictor, policy: StaticPolicy, *,
                 fast_forward: bool = True, sample_period_s: float = 1.0) -> None:
        if sample_period_s <= 0:
            raise ValueError("sample_period_s must be positive")
        self.env = env
        self.model = model
        self.cluster = cluster
        self.memory = memory
        self.scheduler_config = scheduler_config
        self.predictor = predictor
        self.policy = policy
        self.fast_forward = fast_forward
        self.sample_period_s = sample_period_s
        self.router = LeastLoadedRouter(model.max_model_len)
        self.layout = policy.initial_layout(cluster.num_engines)
        self.engines = [self._make_engine(i, g) for i, g in enumerate(self.layout.groups)]
        self.requests: list[Request] = []
        self.samples: list[dict] = []
        self.layouts = [{"time_s": 0.0, "layout": self.layout.describe(cluster.gpus_per_engine),
                         "event": "initial", "duration_s": 0.0}]
        self._arrivals_done = False
        self._unfinished = 0

    def _make_engine(self, index: int, group: Group) -> SimEngine:
        tp_gpus = group.num_engines * self.cluster.gpus_per_engine
        shards = (self.cluster.gpus_per_engine if self.policy.config.weights_resident_per_engine
                  else tp_gpus)
        num_blocks = kv_blocks_per_gpu(self.model, self.cluster, self.memory, shards)
        blocks = BlockManager(num_blocks, self.memory.block_size_tokens * group.num_engines)
        scheduler = Scheduler(index, tp_gpus, blocks, self.scheduler_config, label=group.label)
        return SimEngine(self.env, group, tp_gpus, scheduler, self.predictor,
                         self.fast_forward, on_finish=self._on_finish)

    # --- processes -----------------------------------------------------------------------
    def arrivals(self, specs: Sequence[RequestSpec]):
        for spec in specs:
            delay = spec.arrival_s - self.env.now
            if delay > 0:
                yield self.env.timeout(delay)
            self.admit(Request(spec))
        self._arrivals_done = True

    def admit(self, request: Request) -> None:
        self.requests.append(request)
        index, reason = self.router.route(request, self.engines)
        if index is None:
            request.status = RequestStatus.REJECTED
            request.reject_reason = reason
            return
        self._unfinished += 1
        self.engines[index].add_request(request)

    def _on_finish(self, finished: list[Request]) -> None:
        self._unfinished -= len(finished)

    def sampler(self, on_tick: Callable[[float], None] | None = None):
        """Samples every period until all arrivals are in and every request has finished."""
        while True:
            yield self.env.timeout(self.sample_period_s)
            self.sample()
            if on_tick is not None:
                on_tick(self.env.now)
            if self._arrivals_done and self._unfinished == 0:
                return

    def sample(self) -> None:
        now = self.env.now
        for e in self.engines:
            e.sync(now)
            s = e.scheduler
            self.samples.append({
                "time_s": now, "group": e.label, "tp_gpus": e.tp_gpus,
                "queued_requests": len(s.waiting), "running_requests": len(s.running),
                "kv_blocks_used": s.blocks.num_used_blocks, "kv_blocks_total": s.blocks.num_blocks,
                "output_tokens_total": e.output_tokens_total,
            })

    # --- driver --------------------------------------------------------------------------
    def run(self, specs: Sequence[RequestSpec], until_s: float | None = None,
            on_tick: Callable[[float], None] | None = None) -> NodeResult:
        self.env.process(self.arrivals(specs))
        done = self.env.process(self.sampler(on_tick))
        self.env.run(until=done if until_s is None else min_event(self.env, done, until_s))
        for e in self.engines:
            e.sync(self.env.now)
        return NodeResult(self.requests, self.samples, self.layouts, self.env.now,
                          sum(e.num_steps for e in self.engines))


def min_event(env: simpy.Environment, event: simpy.Event, until_s: float) -> simpy.Event:
    """Whichever comes first: ``event`` or the time limit."""
    return env.any_of([event, env.timeout(max(0.0, until_s - env.now))])
