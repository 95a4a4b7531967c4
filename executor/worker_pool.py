"""The coordinator's side of the workers: start them, talk to them, notice when one dies,
and make sure none outlives the coordinator.

Everything runs on the coordinator's asyncio loop, with no threads: a worker's pipe and its
process sentinel are watched with ``loop.add_reader``. A reply resolves the one pending
future of that worker (the protocol is request/reply, see ``executor.protocol``). Pipe EOF,
the sentinel firing, or a ``WorkerError`` marks the worker dead, fails its pending future
with ``WorkerFailure`` and tells the pool's ``on_death`` callback, so nobody waits on a dead
worker. Every wait also has a timeout, so a live but stuck worker cannot hang the server.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Callable, Sequence

from executor.protocol import Ready, Shutdown, WorkerConfig, WorkerError

log = logging.getLogger(__name__)

START_METHODS = ("forkserver", "spawn")
KILL_WAIT_S = 5.0  # after SIGTERM, then after SIGKILL


def start_worker(config: WorkerConfig, conn: Connection) -> None:
    """The worker process's target. It lives here, torch-free, so that the coordinator never
    imports torch (the forkserver has already imported ``executor.worker``)."""
    from executor.worker import worker_main

    worker_main(config, conn)


class WorkerFailure(RuntimeError):
    """A worker died, reported an error, or did not answer in time."""

    def __init__(self, ranks: Sequence[int], message: str) -> None:
        super().__init__(message)
        self.ranks = tuple(ranks)


class WorkerHandle:
    def __init__(self, rank: int, process: mp.process.BaseProcess, conn: Connection,
                 loop: asyncio.AbstractEventLoop, on_death: Callable[[int, str], None]) -> None:
        self.rank = rank
        self.process = process
        self.pid = process.pid
        self.conn = conn
        self.loop = loop
        self.on_death = on_death
        self.alive = True
        self.error: str | None = None
        self.pending: asyncio.Future | None = None
        self._fds = (conn.fileno(), process.sentinel)
        loop.add_reader(self._fds[0], self._on_readable)
        loop.add_reader(self._fds[1], self._on_exit)

    # --- requests ------------------------------------------------------------------------
    def expect_reply(self) -> asyncio.Future:
        if not self.alive:
            raise WorkerFailure([self.rank], f"worker {self.rank} is dead: {self.error}")
        if self.pending is not None and not self.pending.done():
            raise RuntimeError(f"worker {self.rank} already has a request in flight")
        self.pending = self.loop.create_future()
        return self.pending

    def send_bytes(self, data: bytes) -> asyncio.Future:
        """Send one pickled message; the future resolves with the reply."""
        future = self.expect_reply()
        try:
            self.conn.send_bytes(data)
        except OSError as e:  # BrokenPipeError: the worker is gone
            self._mark_dead(f"control channel broken ({e})")
        return future

    # --- events from the loop ------------------------------------------------------------
    def _on_readable(self) -> None:
        if self.conn.closed:
            return
        try:
            while self.alive and self.conn.poll():
                self._deliver(self.conn.recv())
        except (EOFError, OSError):
            self._mark_dead(self._exit_description("closed its control channel"))

    def _on_exit(self) -> None:
        # Read what it said last (a WorkerError) before declaring it dead for an exit code.
        self._on_readable()
        self._mark_dead(self._exit_description("exited"))

    def _exit_description(self, what: str) -> str:
        self.process.join(timeout=0.05)
        code = self.process.exitcode
        how = f" with exit code {code}" if code is not None and code >= 0 else \
            f" by signal {-code}" if code is not None else ""
        return f"worker {self.rank} (pid {self.pid}) {what}{how}"

    def _deliver(self, msg) -> None:
        if isinstance(msg, WorkerError):
            log.error("worker %d failed: %s\n%s", msg.rank, msg.message, msg.traceback)
            self._mark_dead(f"worker {msg.rank} failed: {msg.message}")
            return
        if self.pending is None or self.pending.done():
            log.warning("worker %d sent %s with no request in flight", self.rank,
                        type(msg).__name__)
            return
        self.pending.set_result(msg)

    def _mark_dead(self, reason: str) -> None:
        if not self.alive:
            return
        self.alive = False
        self.error = reason
        self._stop_watching()
        if self.pending is not None and not self.pending.done():
            self.pending.set_exception(WorkerFailure([self.rank], reason))
        self.on_death(self.rank, reason)

    def _stop_watching(self) -> None:
        for fd in self._fds:
            try:
                self.loop.remove_reader(fd)
            except (ValueError, OSError):
                pass

    def close(self) -> None:
        self._stop_watching()
        self.conn.close()


class WorkerPool:
    def __init__(self, configs: Sequence[WorkerConfig], *, start_method: str = "forkserver",
                 on_death: Callable[[int, str], None] | None = None) -> None:
        if start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")
        if start_method == "forkserver" and sys.platform == "win32":
            start_method = "spawn"
        self.configs = list(configs)
        self.start_method = start_method
        self._on_death = on_death or (lambda rank, reason: None)
        self.closing = False  # kill() ran: nothing left to watch
        self.stopping = False  # shutdown() began
        self.handles: list[WorkerHandle] = []
        self.ready: list[Ready] = []

    # --- start ---------------------------------------------------------------------------
    async def start(self, timeout_s: float) -> list[Ready]:
        """Start every worker and wait until all are ready (or fail: then none is left)."""
        loop = asyncio.get_running_loop()
        ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            # The server imports torch once; each worker then forks from it in milliseconds.
            # It must not touch CUDA before forking, and importing torch does not.
            ctx.set_forkserver_preload(["executor.worker"])
        try:
            for config in self.configs:
                parent, child = ctx.Pipe()
                process = ctx.Process(target=start_worker, args=(config, child), daemon=True,
                                      name=f"flying-worker-{config.rank}")
                process.start()
                child.close()  # only the worker holds its end: its death reads as EOF here
                handle = WorkerHandle(config.rank, process, parent, loop, self._death)
                handle.expect_reply()
                self.handles.append(handle)
            self.ready = await self.gather([h.pending for h in self.handles], timeout_s,
                                           "start up", range(len(self.configs)))
        except BaseException:
            self.kill()
            raise
        return self.ready

    def _death(self, rank: int, reason: str) -> None:
        if not (self.closing or self.stopping):
            self._on_death(rank, reason)

    # --- requests ------------------------------------------------------------------------
    async def request(self, ranks: Sequence[int], msg, timeout_s: float, what: str) -> list:
        """Send ``msg`` (pickled once) to ``ranks``; their replies in rank order."""
        data = bytes(ForkingPickler.dumps(msg))
        futures = [self.handles[r].send_bytes(data) for r in ranks]
        return await self.gather(futures, timeout_s, what, ranks)

    @staticmethod
    async def gather(futures, timeout_s: float, what: str, ranks: Sequence[int]) -> list:
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), timeout_s))
        except asyncio.TimeoutError:
            raise WorkerFailure(ranks, f"workers {list(ranks)} did not {what} within "
                                f"{timeout_s:g} s") from None

    @property
    def dead(self) -> dict[int, str]:
        return {h.rank: h.error or "dead" for h in self.handles if not h.alive}

    # --- stop ----------------------------------------------------------------------------
    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Ask every idle live worker to stop, then make sure all processes are gone."""
        self.stopping = True  # their exits from here on are expected
        idle = [h.rank for h in self.handles if h.alive and (h.pending is None
                                                             or h.pending.done())]
        if idle:
            try:
                await self.request(idle, Shutdown(), timeout_s, "shut down")
            except WorkerFailure as e:
                log.warning("shutdown: %s", e)
        self.kill(grace_s=timeout_s)

    def kill(self, grace_s: float = 0.0) -> None:
        """Synchronous last resort (also for ``finally`` / atexit): wait up to ``grace_s`` for
        workers that were told to stop, then terminate, then kill what is left."""
        if self.closing:
            return  # already done (a backstop call after a clean shutdown)
        self.closing = True  # deaths from here on are ours, not failures to report
        for h in self.handles:
            h._mark_dead("the worker pool was shut down")  # fails anything still waiting
            h.close()
        deadline = time.monotonic() + grace_s
        for h in self.handles:
            h.process.join(timeout=max(0.0, deadline - time.monotonic()))
        for h in self.handles:
            if h.process.is_alive():
                h.process.terminate()
        for h in self.handles:
            h.process.join(timeout=KILL_WAIT_S)
            if h.process.is_alive():
                h.process.kill()
                h.process.join(timeout=KILL_WAIT_S)
