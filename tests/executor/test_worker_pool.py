"""Worker processes over gloo: the communicator pool at start-up, TP=2 steps equal to TP=1
steps, a dead worker reported at once (never a hang), and no process left behind."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without torch)

import asyncio
import os
import signal
import tempfile
import time

import pytest

from executor.model_config import ModelConfig
from executor.protocol import Ack, AllocateKV, Ready, SetWidth, Step, WorkerConfig
from executor.step_input import SequenceStep, StepInput
from executor.worker_pool import WorkerFailure, WorkerPool

SHAPE = ModelConfig(name="pool-test", family="llama", vocab_size=128, hidden_size=32,
                    intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=8, max_model_len=128, dtype="float32")
DEADLINE_S = 60


def _configs(rendezvous_dir: str, world_size: int = 2) -> list[WorkerConfig]:
    return [WorkerConfig(rank=r, world_size=world_size, device="cpu",
                         rendezvous=f"file://{rendezvous_dir}/store", model_folder=None,
                         model_config=SHAPE, dtype=None, max_tp_width=world_size, seed=1,
                         num_threads=1, collective_timeout_s=30) for r in range(world_size)]


def _step(width: int, step_id: int) -> Step:
    seqs = [SequenceStep(7, [3, 1, 4, 1, 5, 9, 2, 6], 0, [0, 1, 2, 3], True),
            SequenceStep(8, [2, 7, 1], 0, [4, 5], True)]
    return Step(StepInput(width, seqs, sampling_seed=11, step_id=step_id))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_pool_runs_tp2_like_tp1_and_stops_cleanly():
    async def scenario():
        deaths = []
        with tempfile.TemporaryDirectory() as rdv:
            pool = WorkerPool(_configs(rdv), on_death=lambda r, why: deaths.append(r))
            ready = await pool.start(DEADLINE_S)
            try:
                assert all(isinstance(r, Ready) for r in ready)
                assert set(ready[0].costs.group_create_s) == {"0-1"}  # the one candidate
                await pool.request([0, 1], AllocateKV(16, 4), DEADLINE_S, "allocate")
                (alone,) = await pool.request([0], _step(1, 1), DEADLINE_S, "step")
                acks = await pool.request([0, 1], SetWidth((0, 1)), DEADLINE_S, "set width")
                assert all(isinstance(a, Ack) for a in acks)
                both = await pool.request([0, 1], _step(2, 2), DEADLINE_S, "step")
            finally:
                await pool.shutdown(timeout_s=10)
            assert both[0].sampled_token_ids == both[1].sampled_token_ids == \
                alone.sampled_token_ids
            assert deaths == []  # a requested shutdown is not a death
            assert all(h.process.exitcode == 0 for h in pool.handles)
            return [r.pid for r in ready]

    pids = asyncio.run(scenario())
    assert all(_gone(pid) for pid in pids)


def test_a_killed_worker_fails_its_request_at_once():
    async def scenario():
        deaths = []
        with tempfile.TemporaryDirectory() as rdv:
            pool = WorkerPool(_configs(rdv), on_death=lambda r, why: deaths.append((r, why)))
            ready = await pool.start(DEADLINE_S)
            try:
                await pool.request([0, 1], AllocateKV(16, 4), DEADLINE_S, "allocate")
                await pool.request([0, 1], SetWidth((0, 1)), DEADLINE_S, "set width")
                os.kill(ready[1].pid, signal.SIGKILL)
                t0 = time.monotonic()
                # Rank 0 would wait in the all-reduce for its dead peer; the coordinator
                # learns of the death from the process sentinel and fails the step now. Rank 0
                # may get there first: its all-reduce reads a reset connection, it reports the
                # error and exits. Either way the step fails at once, naming a group member.
                with pytest.raises(WorkerFailure, match="worker [01]"):
                    await pool.request([0, 1], _step(2, 1), DEADLINE_S, "step")
                assert time.monotonic() - t0 < 10
                while 1 not in dict(deaths) and time.monotonic() - t0 < 10:
                    await asyncio.sleep(0.05)  # the sentinel may fire just after rank 0's error
                assert "signal 9" in dict(deaths)[1]
                assert {r for r, _ in deaths} <= {0, 1}
            finally:
                await pool.shutdown(timeout_s=2)
            return [r.pid for r in ready]

    pids = asyncio.run(scenario())
    assert all(_gone(pid) for pid in pids)


def test_a_worker_that_cannot_load_reports_why():
    async def scenario():
        with tempfile.TemporaryDirectory() as rdv:
            bad = [WorkerConfig(**{**c.__dict__, "model_folder": f"{rdv}/no-model"})
                   for c in _configs(rdv, world_size=1)]
            pool = WorkerPool(bad)
            with pytest.raises(WorkerFailure, match="no such model folder"):
                await pool.start(DEADLINE_S)
            assert all(not h.process.is_alive() for h in pool.handles)

    asyncio.run(scenario())
