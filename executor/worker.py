"""One worker process per device rank: load the model, join the world, build the communicator
pool, then execute what the coordinator sends until told to stop.

Start-up: load weights (full copy resident: shards are views) -> join the process group
(gloo on CPU ranks, NCCL on GPUs) -> create every candidate group once -> reply ``Ready``
with the measured costs. Then a request/reply loop over the control channel:
``AllocateKV`` (pool size decided by the control plane), ``SetWidth`` (a handle from the
pool, views re-pointed), ``Step`` (forward + sample; every member of a TP group gets the
same plan, so collectives are issued in plan order by construction), ``Shutdown``;
``MoveKV`` (DP-written KV into a TP layout, ``executor.kv_move``), and the zero-copy probes
``CheckViews`` / ``MemoryReport`` (``executor.zero_copy``).

Failure policy: any exception is reported as ``WorkerError`` and the worker exits; the
coordinator fails the group (a TP peer may be inside a collective with it, so carrying on
would only hang). A worker whose coordinator disappears exits too: the pipe reads EOF, and on
Linux the kernel kills it with its parent (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from executor.comm_pool import CommunicatorPool
from executor.kv_cache import PagedKVCache
from executor.kv_move import move_kv_to_tp
from executor.loader import dummy_model, load_model
from executor.model import TORCH_DTYPES, CausalLM
from executor.model_runner import ModelRunner
from executor.protocol import (Ack, AllocateKV, CheckViews, KVMoved, MemoryReport, MoveKV,
                               Ready, SetWidth, Shutdown, StartupCosts, Step, StepResult,
                               WorkerConfig, WorkerError)
from executor.zero_copy import memory_usage, view_check

PR_SET_PDEATHSIG = 1


def worker_main(config: WorkerConfig, conn: Connection) -> None:
    """Process entry point (importable by name for spawn / forkserver)."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the coordinator owns the workers' lifetime and
    # stops them itself, after the steps in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker = Worker(config)
        conn.send(worker.ready)
        worker.serve(conn)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        sys.exit(0)  # the coordinator is gone: nothing to report to
    except BaseException as e:  # noqa: BLE001 - report anything, then die
        try:
            conn.send(WorkerError(config.rank, f"{type(e).__name__}: {e}", traceback.format_exc()))
        except (OSError, EOFError):
            pass
        sys.exit(1)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans on a crash)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.rank = config.rank
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = self._select_device()
        t0 = time.perf_counter()
        self.model = self._load_model()
        t1 = time.perf_counter()
        self._init_process_group()
        t2 = time.perf_counter()
        self.pool = CommunicatorPool.create(self.rank, config.world_size, self.device) \
            if config.world_size > 1 else None
        costs = StartupCosts(load_model_s=t1 - t0, init_process_group_s=t2 - t1,
                             comm_pool_s=self.pool.total_s if self.pool else 0.0,
                             group_create_s=dict(self.pool.create_s) if self.pool else {})
        memory = torch.cuda.mem_get_info(self.device)[1] if self.device.type == "cuda" else 0
        self.ready = Ready(self.rank, os.getpid(), str(self.device), memory, costs)
        self.runner: ModelRunner | None = None

    # --- start-up ------------------------------------------------------------------------
    def _select_device(self) -> torch.device:
        if self.config.device == "cpu":
            return torch.device("cpu")
        if self.config.device != "cuda":
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.config.device!r}")
        if self.rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {self.rank} needs cuda:{self.rank}; this node has "
                               f"{torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", self.rank)
        torch.cuda.set_device(device)
        return device

    def _load_model(self) -> CausalLM:
        c = self.config
        dtype = TORCH_DTYPES[c.dtype] if c.dtype else None
        if c.model_folder is not None:
            return load_model(c.model_folder, dtype=dtype, max_tp_width=c.max_tp_width,
                              device=self.device)
        return dummy_model(c.model_config, seed=c.seed, dtype=dtype,
                           max_tp_width=c.max_tp_width, device=self.device)

    def _init_process_group(self) -> None:
        c = self.config
        if c.world_size == 1:
            return  # one rank: no collectives, no group
        kwargs = {}
        if self.device.type == "cuda":
            backend = "nccl"
            kwargs["device_id"] = self.device  # eager NCCL init: fail at start, not mid-step
        else:
            backend = "gloo"
            # A sandbox or laptop may have no routable interface; the ranks share a host.
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        dist.init_process_group(backend, init_method=c.rendezvous, rank=self.rank,
                                world_size=c.world_size,
                                timeout=timedelta(seconds=c.collective_timeout_s), **kwargs)

    # --- the loop ------------------------------------------------------------------------
    def serve(self, conn: Connection) -> None:
        while True:
            msg = conn.recv()
            if isinstance(msg, Shutdown):
                # Only on a clean stop: after an error a peer may sit in a collective with us.
                if dist.is_initialized():
                    dist.destroy_process_group()
                conn.send(Ack("shutdown", 0.0))
                return
            conn.send(self.handle(msg))

    def handle(self, msg):
        t0 = time.perf_counter()
        if isinstance(msg, Step):
            if self.runner is None:
                raise RuntimeError("a step arrived before the KV pool was allocated")
            out = self.runner.execute(msg.step)
            return StepResult(msg.step.step_id, out.sampled_token_ids, time.perf_counter() - t0)
        if isinstance(msg, SetWidth):
            self._set_width(msg.ranks)
            return Ack("set_width", time.perf_counter() - t0)
        if isinstance(msg, AllocateKV):
            kv = PagedKVCache.for_model(self.model.config, num_blocks=msg.num_blocks,
                                        block_size_tokens=msg.block_size_tokens,
                                        dtype=self.model.dtype, device=self.device)
            self.runner = ModelRunner(self.model, kv)
            return Ack("allocate_kv", time.perf_counter() - t0)
        if isinstance(msg, MoveKV):
            sent, received = self._move_kv(msg)
            return KVMoved(self.rank, sent, received, time.perf_counter() - t0)
        if isinstance(msg, MemoryReport):
            return memory_usage(self.rank, self.device)
        if isinstance(msg, CheckViews):
            if self.runner is None:
                raise RuntimeError("views were checked before the KV pool was allocated")
            return view_check(self.rank, self.model, self.runner.kv_cache, self.runner.width)
        raise TypeError(f"unknown control message {type(msg).__name__}")

    def _move_kv(self, msg: MoveKV) -> tuple[int, int]:
        """DP-written KV into the TP layout of ``msg.ranks`` (see ``executor.kv_move``)."""
        if self.runner is None or self.runner.width != len(msg.ranks):
            raise RuntimeError(f"move_kv for group {msg.ranks} arrived while rank {self.rank} "
                               f"runs at width {self.runner.width if self.runner else None}")
        return move_kv_to_tp(self.runner.kv_cache, msg.items, msg.ranks, self.rank,
                             self.pool.get(msg.ranks, self.rank))

    def _set_width(self, ranks: tuple[int, ...]) -> None:
        if self.runner is None:
            raise RuntimeError("set_width arrived before the KV pool was allocated")
        if len(ranks) == 1:
            if ranks != (self.rank,):
                raise ValueError(f"rank {self.rank} was told to run alone as rank {ranks[0]}")
            self.runner.set_width(0, 1, None)
            return
        group = self.pool.get(ranks, self.rank)
        self.runner.set_width(ranks.index(self.rank), len(ranks), group)
