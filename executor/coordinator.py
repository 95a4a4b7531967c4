"""The coordinator: the shared ``ControlPlane`` driven by real workers.

It is the control plane's ``Listener``, as ``sim.node.SimNode`` is for the simulator: a group
that starts gets an ``EngineLoop`` (an asyncio task), a retired group's loop ends, ``wake``
wakes a loop, and ``start_flip`` re-points the members of every group being formed
(``SetWidth``: views and a pool handle, nothing moved) and then calls ``finish_flip``.

Live switching (docs/executor_switching.md): the policy (``--policy``, the simulator's
configs) decides where the simulator lets it, at arrivals, finishes, flips and every
``sample_period_s``, on the real clock; an operator may ask for a switch too
(``switch``, the admin API). The control plane's state machine carries either out: it stops
admitting to the retiring groups, each loop reaches its switch point at a step boundary
(``may_step``) by the strategy, the flip re-points every member at once, and from then on
one plan per step goes to the whole new group. Hard-preempted requests keep their blocks
(reserved in every group formed over their engines) and resume with their KV.

Beyond the simulator it keeps what only a real server has: token ids, sampling parameters,
output text and the stream of each request; early stops (EOS, stop strings: the
``stopped_ids`` of ``Scheduler.update``); aborts (``ControlPlane.withdraw`` once no step in
flight computes the request); dead workers. Everything runs on one asyncio loop, so the
control plane is never touched from two threads.
"""
from __future__ import annotations

import asyncio
import logging
import random
import tempfile
import time
from collections import Counter, deque
from pathlib import Path

from executor.engine_loop import EngineLoop
from executor.metrics import ServerMetrics
from executor.protocol import AllocateKV, Ready, SetWidth, WorkerConfig
from executor.serve_config import (EXECUTOR_SPLIT_STRATEGIES, ResolvedModel, ServeConfig,
                                   cluster_and_memory, feasible_widths, model_spec,
                                   scheduler_config, worker_configs)
from executor.serving_request import GenerationParams, ServingRequest
from executor.step_costs import MeasuredStepCosts
from executor.step_input import StepInput
from executor.tokenizer import Tokenizer
from executor.worker_pool import WorkerFailure, WorkerPool
from policies.control import ControlPlane
from policies.layout import Group, Layout
from policies.plan import SchedulerOutput
from policies.policy import Decision, make_policy
from policies.records import SWITCH_COLUMNS, sample_row
from policies.request import Request, RequestStatus
from policies.switch import SwitchTicket, classify
from traces.spec import RequestSpec

log = logging.getLogger(__name__)

class Unavailable(RuntimeError):
    """The server cannot take requests (a worker died, or it is shutting down): HTTP 503."""


class Rejected(ValueError):
    """This request can never be served here (too long, ...): HTTP 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class SwitchRefused(RuntimeError):
    """A well-formed switch the node will not take now (already there, queue full): 409."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


STEP_LOG_MAX = 200_000  # ~40 MB of rows; a longer run keeps its latest steps
# Merge strategies an operator may ask for; "restart" is the simulator's baseline (an engine
# restart), which the executor never does to switch.
ADMIN_STRATEGIES = ("sequential", "soft", "hard")


class Coordinator:
    def __init__(self, cfg: ServeConfig, model: ResolvedModel, tokenizer: Tokenizer) -> None:
        cfg.check()
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.metrics = ServerMetrics(model.served_name)
        self.control: ControlPlane | None = None
        self.pool: WorkerPool | None = None
        self.loops: dict[int, EngineLoop] = {}
        self.requests: dict[int, ServingRequest] = {}
        self.aborting: set[int] = set()  # aborted, waiting for their step in flight to end
        # KV tokens each request's steps computed, repeats included: a request whose KV is
        # never dropped computes each of its prompt + generated - 1 tokens exactly once.
        self.computed_tokens: Counter[int] = Counter()
        # Output tokens of retired incarnations of a group label (samples stay cumulative).
        self.retired_tokens: dict[str, int] = {}
        self.widths = feasible_widths(model.config, cfg.num_ranks)  # what a switch may form
        self.step_costs = MeasuredStepCosts()  # what slo_aware prices layouts with
        # (time_s, group, StepShape, step_s, host_s) of the latest steps: steps.parquet, which
        # `python -m executor profile --from-runs` turns into a profile of steps as served.
        self.step_log: deque = deque(maxlen=STEP_LOG_MAX)
        self.rank_group: dict[int, tuple[int, ...]] = {r: (r,) for r in range(cfg.num_ranks)}
        self.failure: str | None = None
        self.closing = False
        self.samples: list[dict] = []
        self.startup: dict = {}
        self._t0 = time.monotonic()
        self._rng = random.Random(cfg.seed)
        self._next_request_id = 0
        self._step_id = 0
        self._tasks: set[asyncio.Task] = set()
        self._width_lock = asyncio.Lock()
        self._rendezvous_dir: tempfile.TemporaryDirectory | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- clock and ids -------------------------------------------------------------------
    def now(self) -> float:
        """Seconds since the coordinator was made: the control plane's time axis."""
        return time.monotonic() - self._t0

    def next_step_id(self) -> int:
        self._step_id += 1
        return self._step_id

    def next_sampling_seed(self) -> int:
        return self._rng.getrandbits(63)

    # --- start-up ------------------------------------------------------------------------
    async def start(self) -> None:
        t0 = time.perf_counter()
        self.loop = asyncio.get_running_loop()  # the one thread that may touch the control plane
        self._rendezvous_dir = tempfile.TemporaryDirectory(prefix="flying-rendezvous-")
        self.pool = WorkerPool(self._worker_configs(), start_method=self.cfg.start_method,
                               on_death=self._on_worker_death)
        ready = await self.pool.start(self.cfg.startup_timeout_s)
        t1 = time.perf_counter()
        try:
            self.control = self._make_control_plane(ready)
            num_blocks = self.control.blocks_per_engine(Group(0, 1))
            await self.pool.request(range(self.cfg.num_ranks),
                                    AllocateKV(num_blocks, self.cfg.block_size_tokens),
                                    self.cfg.startup_timeout_s, "allocate the KV pool")
            self.metrics.read_gauges_from(self._num_waiting, self._num_running,
                                          self._kv_usage, lambda: float(self.healthy))
            self.metrics.read_switch_gauges_from(
                lambda: float(self.control.pending is not None),
                lambda: float(len(self.control.queued)),
                lambda: float(sum(len(v) for v in self.control.paused.values())))
            self.control.start()  # group_started -> engine loops
            await self.ensure_widths([loop.ranks for loop in self.loops.values()])
        except BaseException:
            for loop in self.loops.values():
                if loop.task is not None:
                    loop.task.cancel()
            self.pool.kill()
            self._rendezvous_dir.cleanup()
            raise
        self.startup = self._startup_report(ready, num_blocks, t1 - t0, time.perf_counter() - t0)
        s = self.startup
        log.info("ready in %.2f s: %s on %d %s rank(s), %d KV blocks per rank; communicator "
                 "pool of %d group(s) built in %.1f ms (creating one at a switch instead: up "
                 "to %.1f ms)", s["startup_s"], s["layout"], s["num_ranks"], s["device"],
                 num_blocks, s["comm_pool_groups"], 1e3 * s["comm_pool_s"],
                 1e3 * max(s["lazy_group_create_s"].values(), default=0.0))
        self._spawn(self._sample_loop())

    def _worker_configs(self) -> list[WorkerConfig]:
        return worker_configs(self.cfg, self.model, self._rendezvous_dir.name)

    def _make_control_plane(self, ready: list[Ready]) -> ControlPlane:
        spec = model_spec(self.model)
        memory_bytes = min(r.device_memory_bytes for r in ready)
        cluster, memory = cluster_and_memory(self.cfg, spec, memory_bytes)
        return ControlPlane(spec, cluster, memory, scheduler_config(self.cfg),
                            make_policy(self.cfg.policy_config()), self.cfg.switch_config(),
                            listener=self, dynamic=self.cfg.dynamic,
                            cost_model=self.step_costs)

    def _startup_report(self, ready: list[Ready], num_blocks: int, workers_s: float,
                        total_s: float) -> dict:
        costs = [r.costs for r in ready]
        groups = {k: max(c.group_create_s[k] for c in costs) for k in costs[0].group_create_s}
        return {
            "layout": self.control.describe(self.control.layout),
            "policy": self.cfg.policy_name, "dynamic": self.control.dynamic,
            "num_ranks": self.cfg.num_ranks, "device": self.cfg.device,
            "kv_blocks_per_rank": num_blocks,
            "kv_tokens_per_rank": num_blocks * self.cfg.block_size_tokens,
            "workers_ready_s": workers_s, "startup_s": total_s,
            "load_model_s": max(c.load_model_s for c in costs),
            "init_process_group_s": max(c.init_process_group_s for c in costs),
            "comm_pool_s": max(c.comm_pool_s for c in costs),
            "comm_pool_groups": len(groups),
            # What creating a group at the moment of a switch would cost instead (lazy pool).
            "lazy_group_create_s": groups,
            "workers": [{"rank": r.rank, "pid": r.pid, "device": r.device} for r in ready],
        }

    # --- Listener ------------------------------------------------------------------------
    def wake(self, gid: int, stop_now: bool) -> None:
        loop = self.loops.get(gid)
        if loop is not None:
            loop.wake()

    def group_started(self, gid: int) -> None:
        loop = EngineLoop(self, gid)
        self.loops[gid] = loop
        loop.start()

    def group_retired(self, gid: int) -> None:
        loop = self.loops.pop(gid)
        self.retired_tokens[loop.label] = self.retired_tokens.get(loop.label, 0) + \
            loop.output_tokens_total
        loop.retire()

    def start_flip(self, duration_s: float) -> None:
        """``duration_s`` is the simulator's modelled flip; here the flip takes what it takes
        and its measured time replaces the modelled one in the switch record.

        Called at the step boundary where the last retiring group parked: every retiring
        loop is waiting (none is in a step), so no member of a forming group is inside a
        collective of its old group when its SetWidth arrives."""
        self._spawn(self._flip())

    async def _flip(self) -> None:
        pending = self.control.pending
        t0 = time.perf_counter()
        try:
            await self.ensure_widths([tuple(g.engines) for g in pending.forming])
        except WorkerFailure as e:
            self._fail_everything(f"layout switch failed: {e}")
            return
        pending.record.flip_s = time.perf_counter() - t0
        kinds = {classify(group, pending.target) for group in pending.retiring.values()}
        self.control.finish_flip(self.now())
        self.metrics.switch_done(kinds.pop() if len(kinds) == 1 else "reshape", pending.record)

    async def ensure_width(self, ranks: tuple[int, ...]) -> None:
        await self.ensure_widths([ranks])

    async def ensure_widths(self, groups: list[tuple[int, ...]]) -> None:
        """Point every member of each group at it (pool handle, shard views), all at once,
        unless it is there already (a flip may have done it). The groups are disjoint."""
        async with self._width_lock:  # start-up, a flip and a starting loop may ask at once
            asks = [(ranks, [r for r in ranks if self.rank_group[r] != ranks])
                    for ranks in groups]
            asks = [(ranks, stale) for ranks, stale in asks if stale]
            await asyncio.gather(*(self.pool.request(stale, SetWidth(ranks),
                                                     self.cfg.step_timeout_s,
                                                     f"join group {ranks}")
                                   for ranks, stale in asks))
            for ranks, stale in asks:
                for r in stale:
                    self.rank_group[r] = ranks

    # --- switches asked for by an operator -----------------------------------------------
    def switch(self, target: Layout, strategy: str = "sequential",
               split_strategy: str | None = None, reason: str = "admin") -> SwitchTicket:
        """Start a switch to ``target`` now, or queue it behind the one under way. Raises
        ``Rejected`` (cannot be made here), ``SwitchRefused`` (not now) or ``Unavailable``."""
        if not self.healthy:
            raise Unavailable(self.failure or "the server is not accepting switches")
        if strategy not in ADMIN_STRATEGIES:
            why = " (restart is the simulator's baseline; the executor switches without " \
                  "restarting workers)" if strategy == "restart" else ""
            raise Rejected(f"strategy {strategy!r} is not one of {ADMIN_STRATEGIES}{why}",
                           "strategy")
        if split_strategy is not None and split_strategy not in EXECUTOR_SPLIT_STRATEGIES:
            raise Rejected(f"split_strategy {split_strategy!r} is not one of "
                           f"{EXECUTOR_SPLIT_STRATEGIES}", "split_strategy")
        if target.num_engines != self.cfg.num_ranks:
            raise Rejected(f"the target layout has {target.num_engines} engines; this node "
                           f"has {self.cfg.num_ranks} ranks")
        for g in target.groups:
            if g.num_engines not in self.widths:
                raise Rejected(f"group {g.label} is {g.num_engines} ranks wide; this model "
                               f"splits over {self.widths} ranks only (its KV heads, heads and "
                               f"MLP must divide by the width)")
        c = self.control
        if c.pending is not None and len(c.queued) >= self.cfg.max_queued_switches:
            self.metrics.switch_refused("queue_full")
            raise SwitchRefused(f"{len(c.queued)} switches are queued behind switch "
                                f"{c.pending.record.switch_id} already "
                                f"(--max-queued-switches {self.cfg.max_queued_switches})",
                                "queue_full")
        ticket = c.submit_switch(Decision(target, strategy, reason, {}, split_strategy),
                                 self.now())
        if ticket.state == "no-op":
            self.metrics.switch_refused("no_op")
            raise SwitchRefused(f"the node is in layout {c.describe(target)} already",
                                "already_in_layout")
        return ticket

    def ticket_report(self, ticket: SwitchTicket) -> dict:
        d = ticket.decision
        row = {"switch_id": ticket.switch_id, "state": ticket.state,
               "requested_s": ticket.requested_s, "to_layout": self.control.describe(d.target),
               "groups": [list(g.engines) for g in d.target.groups], "strategy": d.strategy,
               "split_strategy": d.split_strategy or self.control.switch_config.split_strategy,
               "reason": d.reason, "note": ticket.note}
        if ticket.record is not None:
            row.update(ticket.record.row())
        if ticket.state == "queued":
            row["queue_position"] = list(self.control.queued).index(ticket)
        return row

    def layout_report(self) -> dict:
        """The layout now: groups (ranks, width, state, role), the switch under way and the
        queued ones, and the paused requests per group."""
        c = self.control
        groups = []
        for g in c.groups.values():
            loop = self.loops.get(g.gid)
            s = g.scheduler
            groups.append({"group": g.label, "ranks": list(g.group.engines),
                           "tp_gpus": g.tp_gpus, "state": g.state, "role": g.role,
                           "steps": loop.num_steps if loop else 0,
                           "output_tokens": loop.output_tokens_total if loop else 0,
                           "waiting": len(s.waiting), "running": len(s.running),
                           "kv_blocks_used": s.blocks.num_used_blocks,
                           "kv_blocks_total": s.blocks.num_usable_blocks,
                           "kv_blocks_reserved": len(s.blocks.reserved_ids)})
        pending = None
        if c.pending is not None:
            sw = c.pending
            pending = {**self.ticket_report(sw.ticket),
                       "phase": "flipping" if sw.flipping else "draining",
                       "retiring": [g.label for g in sw.retiring.values()],
                       "forming": [g.label for g in sw.forming],
                       "ready": sorted(c.groups[gid].label for gid in sw.ready)}
        return {"layout": c.describe(c.layout), "policy": self.cfg.policy_name,
                "dynamic": c.dynamic, "groups": groups, "pending_switch": pending,
                "queued_switches": [self.ticket_report(t) for t in c.queued],
                "held_requests": len(c.held),
                "paused": {g.label: len(reqs) for g, reqs in c.paused.items()},
                "feasible_widths": self.widths}

    def switches_report(self) -> dict:
        """Every switch started or queued, in order (``SWITCH_COLUMNS`` plus its state)."""
        return {"columns": SWITCH_COLUMNS,
                "switches": [self.ticket_report(t) for t in self.control.tickets]}

    # --- requests in ---------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self.failure is None and not self.closing and self.control is not None

    @property
    def max_model_len(self) -> int:
        return self.model.max_model_len

    def submit(self, prompt_ids: list[int], params: GenerationParams) -> ServingRequest:
        if not self.healthy:
            raise Unavailable(self.failure or "the server is not accepting requests")
        self.check_prompt(prompt_ids, params.max_tokens)
        rid = self._next_request_id
        self._next_request_id += 1
        now = self.now()
        spec = RequestSpec(rid, now, len(prompt_ids), params.max_tokens, params.request_class,
                           params.ttft_slo_s, params.tpot_slo_s)
        request = Request(spec)
        sr = ServingRequest(request, prompt_ids, params, self.tokenizer)
        self.requests[rid] = sr
        self.control.admit(request, now)
        if request.status is RequestStatus.REJECTED:
            del self.requests[rid]
            raise Rejected(request.reject_reason)
        self.metrics.prompt_tokens.inc(len(prompt_ids))
        return sr

    def check_prompt(self, prompt_ids: list[int], max_tokens: int) -> None:
        if not prompt_ids:
            raise Rejected("the prompt is empty", "prompt")
        vocab = self.model.config.vocab_size
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise Rejected(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab})",
                           "prompt")
        total = len(prompt_ids) + max_tokens
        if total > self.max_model_len:
            raise Rejected(f"This model's maximum context length is {self.max_model_len} "
                           f"tokens. However, you requested {total} tokens "
                           f"({len(prompt_ids)} in the prompt, {max_tokens} in the "
                           f"completion). Please reduce the prompt or max_tokens.", "max_tokens")

    def abort(self, request_id: int) -> None:
        """The client went away: take the request out and free its KV, wherever it is
        (queued, held, paused, running); a request in a step in flight goes when that step
        ends (``update`` pairs the plan with the batch by position)."""
        sr = self.requests.get(request_id)
        if sr is None or sr.done:
            return
        sr.abort()
        self.aborting.add(request_id)
        self.apply_aborts()

    def apply_aborts(self) -> None:
        """Withdraw the aborted requests that no step in flight is computing."""
        if not self.aborting:
            return
        busy = {rid for loop in self.loops.values() if loop.in_step for rid in loop.step_ids}
        for rid in list(self.aborting - busy):
            self.aborting.discard(rid)
            sr = self.requests.pop(rid, None)
            if sr is not None and self.control.withdraw(sr.request, self.now()):
                self.metrics.failed("abort")

    # --- steps ---------------------------------------------------------------------------
    def complete_step(self, loop: EngineLoop, out: SchedulerOutput, step: StepInput,
                      tokens: dict[int, int], end_s: float) -> None:
        """Apply a step's sampled tokens: stream them, stop early where asked, update the
        scheduler, finish what finished."""
        if loop.failed:
            return  # the group was failed while this step ran; its requests are gone
        reasons: dict[int, str] = {}
        for seq in step.sequences:
            self.computed_tokens[seq.request_id] += seq.num_new_tokens
            if not seq.samples:
                continue
            sr = self.requests[seq.request_id]
            reason = sr.add_token(tokens[seq.request_id])
            if reason is not None:
                reasons[seq.request_id] = reason
        self.metrics.generation_tokens.inc(len(tokens))
        finished = loop.scheduler.update(out, end_s, reasons.keys())
        for seq in step.sequences:
            req = self.requests[seq.request_id].request
            if seq.samples and req.num_generated == 1:
                self.metrics.first_token(req.first_token_s - req.arrival_s)
        for req in finished:
            self._finish(req, reasons.get(req.request_id, "length"))
        if finished:
            self.control.on_finish(loop.gid, finished, end_s)

    def _finish(self, req: Request, reason: str) -> None:
        sr = self.requests.pop(req.request_id)
        self.aborting.discard(req.request_id)
        if not sr.aborted:
            sr.finish(reason)
        e2e = req.finish_s - req.arrival_s
        tpot = (req.finish_s - req.first_token_s) / (req.num_generated - 1) \
            if req.num_generated > 1 else None
        self.metrics.finished(reason, tpot, e2e)

    # --- failures ------------------------------------------------------------------------
    def _on_worker_death(self, rank: int, reason: str) -> None:
        log.error("%s", reason)
        self.failure = self.failure or reason
        if self.control is not None:
            self.control.dynamic = False  # no policy switch from now on: it may need this rank
        if self.control is not None and self.control.pending is not None:
            # The switch may need this rank to flip, or wait for its group to park: nothing
            # that waits for it could ever be served.
            self._fail_everything(reason)
            return
        for loop in list(self.loops.values()):
            # A loop waiting on this worker gets WorkerFailure from its step; an idle one
            # would wait forever for work it cannot run, so it fails now.
            if rank in loop.ranks and not loop.in_step:
                self.fail_group(loop, reason)

    def fail_group(self, loop: EngineLoop, reason: str) -> None:
        """The group cannot run any more: fail its requests and those waiting for a switch
        (held, paused: no switch runs after a failure), stop its loop, and mark the server
        unhealthy."""
        self.failure = self.failure or reason
        self.control.dynamic = False  # a policy switch might need the dead rank
        loop.failed = True
        loop.retire()
        c, sched = self.control, loop.scheduler
        doomed = list(sched.running) + list(sched.waiting) + list(c.held) + \
            [r for reqs in c.paused.values() for r in reqs]
        for req in doomed:
            sr = self.requests.pop(req.request_id, None)
            if sr is not None:
                sr.fail(f"engine {loop.label} failed: {reason}")
            self.aborting.discard(req.request_id)
            if c.withdraw(req, self.now()):
                self.metrics.failed("worker_failure")

    def _fail_everything(self, reason: str) -> None:
        self.failure = self.failure or reason
        for loop in list(self.loops.values()):
            self.fail_group(loop, reason)

    # --- observation ---------------------------------------------------------------------
    def _num_waiting(self) -> float:
        if self.control is None:
            return 0.0
        return float(len(self.control.held) + sum(len(loop.scheduler.waiting)
                                                  for loop in self.loops.values()))

    def _num_running(self) -> float:
        return float(sum(len(loop.scheduler.running) for loop in self.loops.values()))

    def _kv_usage(self) -> float:
        pools = [loop.scheduler.blocks for loop in self.loops.values()]
        used = sum(p.num_used_blocks for p in pools)
        total = sum(p.num_usable_blocks for p in pools)
        return used / total if total else 0.0

    def health(self) -> dict:
        workers = [{"rank": h.rank, "pid": h.pid, "alive": h.alive, "error": h.error}
                   for h in (self.pool.handles if self.pool else [])]
        return {"status": "ok" if self.healthy else "unhealthy", "reason": self.failure,
                "layout": self.control.describe(self.control.layout) if self.control else None,
                "workers": workers}

    def groups_report(self) -> list[dict]:
        rows = []
        for loop in self.loops.values():
            s = loop.scheduler
            rows.append({"group": loop.label, "tp_gpus": loop.tp_gpus, "steps": loop.num_steps,
                         "output_tokens": loop.output_tokens_total,
                         "waiting": len(s.waiting), "running": len(s.running),
                         "kv_blocks_used": s.blocks.num_used_blocks,
                         "kv_blocks_total": s.blocks.num_usable_blocks})
        return rows

    async def _sample_loop(self) -> None:
        """Samples, and lets the policy look, every period (as the simulator's sampler)."""
        while True:
            await asyncio.sleep(self.cfg.sample_period_s)
            now = self.now()
            for loop in self.loops.values():
                tokens = self.retired_tokens.get(loop.label, 0) + loop.output_tokens_total
                self.samples.append(sample_row(now, loop.label, loop.tp_gpus, loop.scheduler,
                                               tokens))
            if self.healthy:
                self.control.decide(now)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- shutdown ------------------------------------------------------------------------
    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop taking requests, let steps in flight end (up to ``grace_s``), fail what is
        left, stop the workers (none survives), and write the run outputs."""
        if self.closing:
            return
        self.closing = True
        for task in self._tasks:  # the sampler, a flip under way
            task.cancel()
        loops = list(self.loops.values())
        for loop in loops:
            loop.retire()  # each ends at its next step boundary
        running = [loop.task for loop in loops if loop.task is not None and not loop.task.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=grace_s)
            for task in late:
                task.cancel()
        await asyncio.gather(*running, *self._tasks, return_exceptions=True)
        for sr in list(self.requests.values()):
            sr.fail("the server is shutting down")
        if self.pool is not None:
            await self.pool.shutdown(timeout_s=grace_s)
        if self._rendezvous_dir is not None:
            self._rendezvous_dir.cleanup()
        if self.cfg.output_dir and self.control is not None:
            from executor.run_outputs import write_run_outputs
            path = write_run_outputs(Path(self.cfg.output_dir), self)
            log.info("run outputs written to %s", path)
