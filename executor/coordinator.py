"""The coordinator: the shared ``ControlPlane`` driven by real workers.

It is the control plane's ``Listener``, as ``sim.node.SimNode`` is for the simulator: a group
that starts gets an ``EngineLoop`` (an asyncio task), a retired group's loop ends, ``wake``
wakes a loop, and ``start_flip`` re-points the members of every group being formed
(``SetWidth``: views and a pool handle, nothing moved) and then calls ``finish_flip``.
Static layouts never switch, but that path is the one a live switch will take.

Beyond the simulator it keeps what only a real server has: token ids, sampling parameters,
output text and the stream of each request; early stops (EOS, stop strings); aborts; dead
workers. Everything runs on one asyncio loop, so the control plane is never touched from two
threads.

Early stop: the control plane finishes a request when ``num_generated == output_tokens``
(``Scheduler.update``). A request that stops before ``max_tokens`` gets
``output_tokens = num_generated + 1`` just before the ``update`` of the step that sampled its
stop token, and its requested count back once finished (the record's ``output_tokens``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import tempfile
import time
from pathlib import Path

from executor.engine_loop import EngineLoop
from executor.metrics import ServerMetrics
from executor.protocol import AllocateKV, Ready, SetWidth, WorkerConfig
from executor.serve_config import (ResolvedModel, ServeConfig, cluster_and_memory, model_spec,
                                   resident_tp_width, scheduler_config)
from executor.serving_request import GenerationParams, ServingRequest
from executor.step_input import StepInput
from executor.tokenizer import Tokenizer
from executor.worker_pool import WorkerFailure, WorkerPool
from policies.control import ControlPlane
from policies.layout import Group
from policies.plan import SchedulerOutput
from policies.policy import StaticPolicy
from policies.records import sample_row
from policies.request import Request, RequestStatus
from traces.spec import RequestSpec

log = logging.getLogger(__name__)

NO_GROUP = -1  # on_finish for requests that never reached a group (its gid is unused)


class Unavailable(RuntimeError):
    """The server cannot take requests (a worker died, or it is shutting down): HTTP 503."""


class Rejected(ValueError):
    """This request can never be served here (too long, ...): HTTP 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


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
        self.aborting: set[int] = set()
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
            self.control.start()  # group_started -> engine loops
            await asyncio.gather(*(self.ensure_width(loop.ranks) for loop in self.loops.values()))
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
        cfg, model = self.cfg, self.model
        threads = cfg.threads_per_rank
        if threads is None and cfg.device == "cpu":  # ranks share the machine's cores
            threads = max(1, (os.cpu_count() or 1) // cfg.num_ranks)
        rendezvous = f"file://{self._rendezvous_dir.name}/store"
        return [WorkerConfig(rank=r, world_size=cfg.num_ranks, device=cfg.device,
                             rendezvous=rendezvous,
                             model_folder=str(model.folder) if model.folder else None,
                             model_config=model.config, dtype=model.load_dtype,
                             max_tp_width=resident_tp_width(model.config, cfg), seed=cfg.seed,
                             num_threads=threads,
                             collective_timeout_s=cfg.collective_timeout_s)
                for r in range(cfg.num_ranks)]

    def _make_control_plane(self, ready: list[Ready]) -> ControlPlane:
        spec = model_spec(self.model)
        memory_bytes = min(r.device_memory_bytes for r in ready)
        cluster, memory = cluster_and_memory(self.cfg, spec, memory_bytes)
        return ControlPlane(spec, cluster, memory, scheduler_config(self.cfg),
                            StaticPolicy(self.cfg.policy_config()), listener=self, dynamic=False)

    def _startup_report(self, ready: list[Ready], num_blocks: int, workers_s: float,
                        total_s: float) -> dict:
        costs = [r.costs for r in ready]
        groups = {k: max(c.group_create_s[k] for c in costs) for k in costs[0].group_create_s}
        return {
            "layout": self.control.describe(self.control.layout),
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
        self.loops.pop(gid).retire()

    def start_flip(self, duration_s: float) -> None:
        """``duration_s`` is the simulator's modelled flip; here the flip takes what it takes
        and its measured time replaces the modelled one in the switch record."""
        self._spawn(self._flip())

    async def _flip(self) -> None:
        pending = self.control.pending
        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(self.ensure_width(tuple(g.engines)) for g in pending.forming))
        except WorkerFailure as e:
            self._fail_everything(f"layout switch failed: {e}")
            return
        pending.record.flip_s = time.perf_counter() - t0
        self.control.finish_flip(self.now())

    async def ensure_width(self, ranks: tuple[int, ...]) -> None:
        """Point every member of ``ranks`` at that group (pool handle, shard views) unless it
        is there already (a flip may have done it)."""
        async with self._width_lock:  # start-up and an engine loop may ask at once
            stale = [r for r in ranks if self.rank_group[r] != ranks]
            if stale:
                await self.pool.request(stale, SetWidth(ranks), self.cfg.step_timeout_s,
                                        f"join group {ranks}")
                for r in stale:
                    self.rank_group[r] = ranks

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
        """The client went away: drop the request and free its KV (at once if it is queued
        for a group, else at its group's next step boundary)."""
        sr = self.requests.get(request_id)
        if sr is None or sr.done:
            return
        sr.abort()
        req = sr.request
        if req in self.control.held:
            self.control.held.remove(req)
            self._forget([req], NO_GROUP)
            return
        self.aborting.add(request_id)
        for loop in self.loops.values():
            if req in loop.scheduler.waiting or req in loop.scheduler.running:
                loop.wake()

    def apply_aborts(self, loop: EngineLoop) -> None:
        """At ``loop``'s step boundary: remove its aborted requests and free their blocks."""
        if not self.aborting:
            return
        sched, gone = loop.scheduler, []
        for rid in list(self.aborting):
            req = self.requests[rid].request
            if req in sched.waiting:
                sched.waiting.remove(req)
            elif req in sched.running:
                sched.running.remove(req)
                sched.blocks.free(req)
            else:
                continue
            self.aborting.discard(rid)
            gone.append(req)
        if gone:
            self._forget(gone, loop.gid)
            for _ in gone:
                self.metrics.failed("abort")

    def _forget(self, reqs: list[Request], gid: int) -> None:
        for req in reqs:
            self.requests.pop(req.request_id, None)
        self.control.on_finish(gid, reqs, self.now())

    # --- steps ---------------------------------------------------------------------------
    def complete_step(self, loop: EngineLoop, out: SchedulerOutput, step: StepInput,
                      tokens: dict[int, int], end_s: float) -> None:
        """Apply a step's sampled tokens: stream them, stop early where asked, update the
        scheduler, finish what finished."""
        if loop.failed:
            return  # the group was failed while this step ran; its requests are gone
        reasons: dict[int, str] = {}
        for seq in step.sequences:
            if not seq.samples:
                continue
            sr = self.requests[seq.request_id]
            reason = sr.add_token(tokens[seq.request_id])
            if reason is not None:
                reasons[seq.request_id] = reason
                req = sr.request
                if req.num_generated + 1 < req.output_tokens:
                    req.output_tokens = req.num_generated + 1  # finish in this update
        self.metrics.generation_tokens.inc(len(tokens))
        finished = loop.scheduler.update(out, end_s)
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
        req.output_tokens = req.spec.output_tokens  # the record keeps the requested count
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
        for loop in list(self.loops.values()):
            # A loop waiting on this worker gets WorkerFailure from its step; an idle one
            # would wait forever for work it cannot run, so it fails now.
            if rank in loop.ranks and not loop.in_step:
                self.fail_group(loop, reason)

    def fail_group(self, loop: EngineLoop, reason: str) -> None:
        """The group cannot run any more: fail its requests (and the held ones), stop its
        loop, and mark the server unhealthy."""
        self.failure = self.failure or reason
        loop.failed = True
        loop.retire()
        sched = loop.scheduler
        failed = list(sched.running) + list(sched.waiting)
        for req in sched.running:
            sched.blocks.free(req)
        sched.running.clear()
        sched.waiting.clear()
        held = list(self.control.held)
        self.control.held.clear()
        for req in failed + held:
            sr = self.requests.get(req.request_id)
            if sr is not None:
                sr.fail(f"engine {loop.label} failed: {reason}")
            self.aborting.discard(req.request_id)
            self.metrics.failed("worker_failure")
        if failed or held:
            self._forget(failed + held, loop.gid)

    def _fail_everything(self, reason: str) -> None:
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
        while True:
            await asyncio.sleep(self.cfg.sample_period_s)
            now = self.now()
            for loop in self.loops.values():
                self.samples.append(sample_row(now, loop.label, loop.tp_gpus, loop.scheduler,
                                               loop.output_tokens_total))

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
