"""One engine group as a SimPy process: the three-call step loop, priced by a predictor.

Fast path: when a step is a pure decode whose batch provably repeats for k steps
(``Scheduler.decode_horizon``), the engine prices all k at once and sleeps to the end. An
arrival in between interrupts it, and it stops at the first step boundary at or after the
arrival, exactly where a step-by-step engine would have noticed the request. The engine keeps
its own clock, accumulated step by step in the same order on both paths, so both paths give
bit-identical times.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Protocol

import numpy as np
import simpy

from policies.control import ControlPlane
from policies.plan import SchedulerOutput, StepShape


class StepPredictor(Protocol):
    def step_time_s(self, shape: StepShape) -> float: ...

    def decode_run_times_s(self, tp_gpus: int, batch: int, kv_tokens_read: int, k: int) -> np.ndarray: ...


class HostLoad:
    """Which engine groups have work, for a predictor with a host-contention term (groups on
    one small host slow each other down: ``sim.profiled``). A step is priced with the number
    of other groups busy at its start. A change cuts the other groups' decode runs at their
    next step boundary, exactly where a step-by-step engine would price its next step. Such
    a predictor takes the count as a last argument of ``step_time_s`` and
    ``decode_run_times_s`` (``sim.profiled.ProfiledPredictor``)."""

    def __init__(self) -> None:
        self.engines: dict[int, SimEngine] = {}
        self.busy: set[int] = set()

    def others_busy(self, gid: int) -> int:
        return len(self.busy) - (gid in self.busy)

    def report(self, engine: SimEngine, busy: bool) -> None:
        if busy == (engine.gid in self.busy):
            return
        if busy:
            self.busy.add(engine.gid)
        else:
            self.busy.discard(engine.gid)
        for other in self.engines.values():
            if other is not engine and other.in_decode_run:
                other.wake()


class _DecodeRun:
    __slots__ = ("bounds_s", "batch", "committed", "cut")

    def __init__(self, bounds_s: list[float], batch: int) -> None:
        self.bounds_s = bounds_s  # end time of each step of the run
        self.batch = batch
        self.committed = 0  # steps already applied to the scheduler
        self.cut = False  # an arrival shortened the run; further arrivals need no interrupt


class SimEngine:
    """The process of one engine group of the control plane."""

    def __init__(self, env: simpy.Environment, control: ControlPlane, gid: int,
                 predictor: StepPredictor, fast_forward: bool = True,
                 load: HostLoad | None = None) -> None:
        runtime = control.groups[gid]
        self.env = env
        self.control = control
        self.gid = gid
        self.label = runtime.label
        self.tp_gpus = runtime.tp_gpus
        self.scheduler = runtime.scheduler
        self.predictor = predictor
        self.fast_forward = fast_forward
        self.load = load  # None: the predictor has no contention term
        self.clock_s = env.now
        self.num_steps = 0
        self.busy_s = 0.0
        self.output_tokens_total = 0
        self.retired = False
        self._run: _DecodeRun | None = None
        self._wakeup = env.event()
        self.process = env.process(self.loop())

    def wake(self) -> None:
        """New work or a stop request: an idle engine starts; a decode run ends at the next
        step boundary, exactly where a step-by-step engine would look again."""
        if self._run is not None and self.env.active_process is not self.process:
            # Mid-run (whatever the state of _wakeup: a group formed with work never waited)
            if not self._run.cut:
                self._run.cut = True
                self.process.interrupt("wake")
        elif not self._wakeup.triggered:
            self._wakeup.succeed()
        # else: woken by its own step's effects: it is at a boundary and looks again

    def retire(self) -> None:
        self.retired = True
        if self.load is not None:
            self.load.report(self, False)
        self.wake()

    @property
    def in_decode_run(self) -> bool:
        return self._run is not None

    def sync(self, now_s: float) -> None:
        """Apply the steps of a decode run that have ended by ``now_s`` (for observers)."""
        run = self._run
        if run is not None:
            self._commit(run, bisect_right(run.bounds_s, now_s))

    # --- the step loop -------------------------------------------------------------------
    def loop(self):
        while not self.retired:
            if self.load is not None:
                self.load.report(self, self.scheduler.has_work)
            if not self.control.may_step(self.gid, self.clock_s) or not self.scheduler.has_work:
                self._wakeup = self.env.event()
                yield self._wakeup
                self.clock_s = max(self.clock_s, self.env.now)
                continue
            out = self.scheduler.schedule(self.clock_s)
            if out.is_empty:
                raise RuntimeError(f"engine {self.label}: work queued but nothing schedulable "
                                   "(a request larger than the pool was admitted)")
            k = self.scheduler.decode_horizon(out) if self.fast_forward else 1
            if k > 1:
                yield from self._decode_run(out, k)
            else:
                yield from self._step(out)

    def _step(self, out: SchedulerOutput):
        if self.load is None:
            step_s = self.predictor.step_time_s(out.shape())
        else:
            step_s = self.predictor.step_time_s(out.shape(), self.load.others_busy(self.gid))
        end_s = self.clock_s + step_s
        yield self.env.timeout(max(0.0, end_s - self.env.now))
        self.clock_s = end_s
        self.num_steps += 1
        self.busy_s += step_s
        self.output_tokens_total += sum(s.samples for s in out.scheduled)
        self._finished(self.scheduler.update(out, end_s), end_s)

    def _decode_run(self, out: SchedulerOutput, k: int):
        shape = out.shape()
        args = (self.tp_gpus, shape.num_seqs, shape.kv_tokens_read, k)
        if self.load is None:
            times = self.predictor.decode_run_times_s(*args)
        else:
            times = self.predictor.decode_run_times_s(*args, self.load.others_busy(self.gid))
        # Sequential accumulation from this engine's clock: the same additions, in the same
        # order, as k single steps (np.cumsum is a sequential accumulate).
        bounds = np.cumsum(np.concatenate(([self.clock_s], times)))[1:].tolist()
        run = self._run = _DecodeRun(bounds, shape.num_seqs)
        try:
            yield self.env.timeout(max(0.0, bounds[-1] - self.env.now))
            n = k
        except simpy.Interrupt:
            # The step under way when the request arrived completes; the run stops there.
            n = min(bisect_left(bounds, self.env.now) + 1, k)
            yield self.env.timeout(max(0.0, bounds[n - 1] - self.env.now))
        self._commit(run, n)
        self._run = None
        start_s = self.clock_s
        self.clock_s = bounds[n - 1]
        self.busy_s += self.clock_s - start_s

    def _commit(self, run: _DecodeRun, upto: int) -> None:
        m = upto - run.committed
        if m <= 0:
            return
        finished = self.scheduler.advance_decode(m, run.bounds_s[upto - 1],
                                                 next_in_flight=upto < len(run.bounds_s))
        run.committed = upto
        self.num_steps += m
        self.output_tokens_total += m * run.batch
        self._finished(finished, run.bounds_s[upto - 1])

    def _finished(self, finished: list, end_s: float) -> None:
        if finished:
            self.control.on_finish(self.gid, finished, end_s)
