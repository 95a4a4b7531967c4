"""One engine group's step loop on the coordinator: the executor's twin of ``sim.engine``.

The same three visible calls as the simulator, with real execution in the middle:
    out = scheduler.schedule(now)  ->  every member runs the same StepInput  ->
    scheduler.update(out, end)
At each step boundary the loop first applies aborts (a request in a step can only leave the
scheduler after it: ``update`` pairs ``out.scheduled`` with ``running`` by position), then
asks the control plane ``may_step`` exactly where the simulator does. That call is where a
switch reaches this group: a retiring group drains, pauses or drops its work there (by the
strategy), parks, and the last one to park starts the flip. A parked loop only waits; the
group that forms after the flip gets a new loop, and every member receives every one of
its plans, so the members issue the same collectives in the same order.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from executor.protocol import Step, StepResult
from executor.step_input import StepInput, build_step_input
from executor.worker_pool import WorkerFailure
from policies.plan import SchedulerOutput

if TYPE_CHECKING:
    from executor.coordinator import Coordinator

log = logging.getLogger(__name__)


class EngineLoop:
    def __init__(self, coordinator: "Coordinator", gid: int) -> None:
        runtime = coordinator.control.groups[gid]
        self.c = coordinator
        self.gid = gid
        self.label = runtime.label
        self.ranks = tuple(runtime.group.engines)  # one engine = one rank
        self.tp_gpus = runtime.tp_gpus
        self.scheduler = runtime.scheduler
        self.retired = False
        self.failed = False  # its requests were failed; a step still in flight is void
        self.in_step = False
        self.step_ids: frozenset[int] = frozenset()  # requests of the step in flight
        self.num_steps = 0
        self.output_tokens_total = 0
        # When the previous step's results came back; None after the loop waited for work.
        # The time from there to the next dispatch (completing the previous step, applying
        # aborts, scheduling and building the next) is host cost the steps pay back to back.
        self._last_end_s: float | None = None
        self._wakeup = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run(), name=f"engine-{self.label}")

    def wake(self) -> None:
        self._wakeup.set()

    def retire(self) -> None:
        self.retired = True
        self.wake()

    async def run(self) -> None:
        try:
            await self.c.ensure_width(self.ranks)
            while not self.retired:
                self.c.apply_aborts()
                now = self.c.now()
                if not self.c.control.may_step(self.gid, now) or not self.scheduler.has_work:
                    self._wakeup.clear()  # no await since the check: no wake-up is lost
                    self._last_end_s = None
                    await self._wakeup.wait()
                    continue
                await self.step(now)
        except WorkerFailure as e:
            self.c.fail_group(self, str(e))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug: fail loudly, never leave requests waiting forever
            log.exception("engine %s crashed", self.label)
            self.c.fail_group(self, f"engine {self.label} crashed: {type(e).__name__}: {e}")

    async def step(self, now_s: float) -> None:
        out = self.scheduler.schedule(now_s)
        if out.is_empty:
            raise RuntimeError(f"engine {self.label}: work queued but nothing schedulable")
        step = self.build(out)
        self.in_step, self.step_ids = True, frozenset(s.request_id for s in out.scheduled)
        t0 = time.perf_counter()
        host_s = t0 - self._last_end_s if self._last_end_s is not None else float("nan")
        try:
            results = await self.c.pool.request(self.ranks, Step(step), self.c.cfg.step_timeout_s,
                                                f"finish step {step.step_id}")
        finally:
            self.in_step = False
        self._last_end_s = time.perf_counter()
        shape, step_s = out.shape(), self._last_end_s - t0
        self.c.step_costs.record(shape, step_s)
        self.c.step_log.append((self.c.now(), self.label, shape, step_s, host_s))
        tokens = self.agreed_tokens(step, results)
        self.num_steps += 1
        self.output_tokens_total += len(tokens)
        self.c.complete_step(self, out, step, tokens, self.c.now())

    def build(self, out: SchedulerOutput) -> StepInput:
        reqs = {s.request_id: self.c.requests[s.request_id] for s in out.scheduled}
        return build_step_input(
            out, {rid: sr.token_ids for rid, sr in reqs.items()},
            {rid: sr.request.block_ids for rid, sr in reqs.items()},
            {rid: sr.params.sampling for rid, sr in reqs.items()},
            sampling_seed=self.c.next_sampling_seed(), step_id=self.c.next_step_id())

    def agreed_tokens(self, step: StepInput, results: list[StepResult]) -> dict[int, int]:
        """The leader's tokens; every member must have sampled the same (same logits after
        the all-gather, same seeds), or the group has diverged and cannot go on."""
        leader = results[0].sampled_token_ids
        for rank, r in zip(self.ranks[1:], results[1:]):
            if r.sampled_token_ids != leader:
                raise WorkerFailure(self.ranks, f"group {self.label} diverged at step "
                                    f"{step.step_id}: rank {rank} sampled other tokens than "
                                    f"rank {self.ranks[0]}")
        return leader
