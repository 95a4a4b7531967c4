"""vLLM-v1-style continuous batching for one engine group.

Each step: running requests first (decodes and unfinished prefill chunks, in admission
order), preempting from the back by recompute when blocks run out; then, if nothing was
preempted, waiting requests are admitted while the token budget, the sequence cap and the
block pool allow. Chunked prefill splits a prompt across steps.

The three-call loop both backends run:
    out = scheduler.schedule(now_s)  ->  run or price ``out``  ->  scheduler.update(out, end_s)
"""
from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

from policies.block_manager import BlockManager
from policies.plan import ScheduledRequest, SchedulerOutput
from policies.request import Request, RequestStatus


@dataclass
class SchedulerConfig:
    max_num_batched_tokens: int = 8192  # token budget per step (vLLM V1 default on large GPUs)
    max_num_seqs: int = 256
    enable_chunked_prefill: bool = True
    # "fcfs": arrival order. "priority": priority-class requests jump the waiting queue and
    # are preempted last.
    policy: str = "fcfs"

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("scheduler: max_num_batched_tokens and max_num_seqs must be >= 1")
        if self.policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduler.policy must be 'fcfs' or 'priority', got {self.policy!r}")


class Scheduler:
    def __init__(self, group_id: int, tp_gpus: int, block_manager: BlockManager,
                 config: SchedulerConfig, label: str = "") -> None:
        self.group_id = group_id
        self.tp_gpus = tp_gpus
        self.blocks = block_manager
        self.config = config
        self.label = label or str(group_id)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    # --- admission ---------------------------------------------------------------------
    @property
    def num_outstanding(self) -> int:
        """Requests accepted and not finished: the router's load measure."""
        return len(self.waiting) + len(self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def can_ever_hold(self, request: Request) -> bool:
        return request.max_kv_tokens <= self.blocks.capacity_tokens

    def add_request(self, request: Request) -> None:
        if not self.can_ever_hold(request):
            raise ValueError(f"request {request.request_id} needs {request.max_kv_tokens} KV "
                             f"tokens; group {self.label} holds {self.blocks.capacity_tokens}")
        request.status = RequestStatus.WAITING
        if self.config.policy == "priority" and request.request_class == "priority":
            # Behind earlier priority requests, ahead of every normal one.
            i = 0
            while i < len(self.waiting) and self.waiting[i].request_class == "priority":
                i += 1
            self.waiting.insert(i, request)
        else:
            self.waiting.append(request)

    # --- schedule ------------------------------------------------------------------------
    def schedule(self, now_s: float) -> SchedulerOutput:
        out = SchedulerOutput(self.group_id, self.tp_gpus)
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running(out, budget)
        if not out.preempted_ids:
            self._schedule_waiting(out, budget)
        # ``out.scheduled`` is a prefix of ``running`` in the same order: running requests are
        # walked front to back, victims leave from behind the cursor, admissions append.
        for req in self.running[:len(out.scheduled)]:
            if req.first_scheduled_s is None:
                req.first_scheduled_s = now_s
                req.group_label = self.label
            req.note_width(self.tp_gpus)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_uncomputed_tokens, budget)
            new_blocks = self.blocks.ensure(req, req.num_computed_tokens + n)
            while new_blocks is None:
                victim = self._pick_victim(i)
                self._preempt(victim, out)
                if victim is req:
                    break
                new_blocks = self.blocks.ensure(req, req.num_computed_tokens + n)
            if new_blocks is None:
                continue  # req itself was preempted; running[i] is now the next request
            self._add(out, req, n, new_blocks)
            budget -= n
            i += 1
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[0]
            n = req.num_uncomputed_tokens
            if n > budget and not self.config.enable_chunked_prefill:
                break
            n = min(n, budget)
            new_blocks = self.blocks.ensure(req, req.num_computed_tokens + n)
            if new_blocks is None:
                break  # head-of-line: FCFS admission stops at the first that does not fit
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            self._add(out, req, n, new_blocks)
            budget -= n

    def _add(self, out: SchedulerOutput, req: Request, n: int, new_blocks: list[int]) -> None:
        samples = req.num_computed_tokens + n == req.num_known_tokens
        out.scheduled.append(ScheduledRequest(req.request_id, n, req.num_computed_tokens, samples))
        if new_blocks:
            out.new_block_ids[req.request_id] = new_blocks

    def _pick_victim(self, cursor: int) -> Request:
        """The request to preempt, from those not yet scheduled this step (index >= cursor;
        ``running[cursor]`` is the one asking for blocks)."""
        if self.config.policy == "priority":
            for j in range(len(self.running) - 1, cursor - 1, -1):
                if self.running[j].request_class != "priority":
                    return self.running[j]
        return self.running[-1]

    def _preempt(self, victim: Request, out: SchedulerOutput) -> None:
        self.running.remove(victim)
        self.blocks.free(victim)
        victim.num_computed_tokens = 0
        victim.status = RequestStatus.WAITING
        victim.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(victim)
        out.preempted_ids.append(victim.request_id)
        # A victim scheduled earlier in this step would be a bug: victims come from the back.
        assert all(s.request_id != victim.request_id for s in out.scheduled)

    # --- update --------------------------------------------------------------------------
    def update(self, out: SchedulerOutput, end_s: float,
               stopped_ids: Collection[int] = ()) -> list[Request]:
        """Apply a finished step: cache the computed tokens, sample, retire finished ones.

        ``stopped_ids``: requests whose token sampled in this step ends them before
        ``output_tokens`` (an EOS or a stop string: only a real backend knows). They finish
        here like a request at its length; ``output_tokens`` keeps the requested count.
        """
        finished: list[Request] = []
        # ``out.scheduled`` is a prefix of ``running`` in the same order (see schedule()).
        for s, req in zip(out.scheduled, self.running):
            assert req.request_id == s.request_id
            start = req.num_computed_tokens
            req.num_computed_tokens = start + s.num_new_tokens
            if start < req.max_computed_tokens:
                req.recomputed_tokens += min(req.num_computed_tokens, req.max_computed_tokens) - start
            if req.num_computed_tokens > req.max_computed_tokens:
                req.max_computed_tokens = req.num_computed_tokens
            if s.samples:
                req.num_generated += 1
                if req.first_token_s is None:
                    req.first_token_s = end_s
                if req.num_generated == req.output_tokens:
                    finished.append(req)
        if stopped_ids:  # off the simulator's hot path: it never stops early
            finished += self._stopped_early(out, stopped_ids, finished)
        for req in finished:
            self._finish(req, end_s)
        return finished

    def _stopped_early(self, out: SchedulerOutput, stopped_ids: Collection[int],
                       finished: list[Request]) -> list[Request]:
        done = {id(r) for r in finished}
        early = []
        for s, req in zip(out.scheduled, self.running):
            if req.request_id in stopped_ids and id(req) not in done:
                if not s.samples:
                    raise ValueError(f"request {req.request_id} stopped in a step that did not "
                                     "sample a token for it")
                early.append(req)
        return early

    def _finish(self, req: Request, end_s: float) -> None:
        req.status = RequestStatus.FINISHED
        req.finish_s = end_s
        self.running.remove(req)
        self.blocks.free(req)

    # --- multi-step decode (exact fast path) ---------------------------------------------
    def decode_horizon(self, out: SchedulerOutput) -> int:
        """How many steps, starting with ``out``, are pure decodes of the same batch.

        ``out`` must have just been produced by ``schedule()``. Within the horizon the plan
        provably repeats: no request finishes before its last step, no block allocation fails
        (so no preemption), and no waiting request gets in, because admission failed for
        ``out`` and its inputs only worsen (same budget and sequence count, fewer free
        blocks). Returns 1 when the fast path does not apply.
        """
        if out.preempted_ids or len(out.scheduled) != len(self.running):
            return 1
        horizon = None
        for s, req in zip(out.scheduled, self.running):
            # num_generated == 0: a one-token prompt's first step looks like a decode but
            # produces the first token, which the batched path does not stamp.
            if s.num_new_tokens != 1 or not s.samples or req.num_generated == 0:
                return 1
            left = req.output_tokens - req.num_generated
            if horizon is None or left < horizon:
                horizon = left
        if horizon is None or horizon <= 1:
            return 1
        return self._fits_blocks(horizon)

    def _fits_blocks(self, k: int) -> int:
        """Largest k' <= k whose extra blocks (beyond the first step's) fit in the pool."""
        free = self.blocks.num_free_blocks
        if self._extra_blocks(k) <= free:
            return k
        lo, hi = 1, k  # extra(1) == 0 <= free; find the largest feasible by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._extra_blocks(mid) <= free:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _extra_blocks(self, k: int) -> int:
        tpb = self.blocks.tokens_per_block
        total = 0
        for req in self.running:
            # After k steps the request holds computed + k tokens of KV.
            total += max(0, -(-(req.num_computed_tokens + k) // tpb) - len(req.block_ids))
        return total

    def advance_decode(self, num_steps: int, last_end_s: float, next_in_flight: bool = False
                       ) -> list[Request]:
        """Apply ``num_steps`` consecutive decode steps of the current batch at once: the same
        state that ``num_steps`` rounds of schedule()/update() produce. ``last_end_s`` is the
        end of the last of them (the finish time of requests that end there). With
        ``next_in_flight`` the next decode step has started, so its blocks are held too, as
        schedule() would have taken them."""
        finished = []
        ahead = 1 if next_in_flight else 0
        for req in self.running:
            req.num_computed_tokens += num_steps
            req.num_generated += num_steps
            if req.num_computed_tokens > req.max_computed_tokens:
                req.max_computed_tokens = req.num_computed_tokens
            ok = self.blocks.ensure(req, req.num_computed_tokens + ahead)
            assert ok is not None, "decode_horizon() guaranteed the blocks"
            if req.num_generated == req.output_tokens:
                finished.append(req)
        for req in finished:
            self._finish(req, last_end_s)
        return finished
