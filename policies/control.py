"""The node's control plane: engine groups, admission, the switch state machine.

Both backends drive one ``ControlPlane``. A backend owns time and execution; it tells the
control plane when requests arrive, when a group reaches a step boundary
(``may_step``), when requests finish, and when a flip it was asked to perform is done. The
control plane tells the backend, through a ``Listener``, which groups to wake or stop at
their next boundary, which groups start and retire, and when to start a flip of how long.

A real backend also finishes requests early (``Scheduler.update``'s ``stopped_ids``) and
takes requests out whose client left (``withdraw``); it asks for switches of its own with
``submit_switch``, whose ticket follows a queued switch to its end.

Invariants (checked by ``check_invariants``):
- every accepted request is in exactly one place: a group's waiting or running queue, the
  held queue, a paused set, or finished (or withdrawn);
- on every engine, each block id is free in the group that covers the engine, or held by
  exactly one live request (running in that group, or paused there with its KV);
- a group is an aligned power-of-two range of engines or the whole node.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from policies.block_manager import BlockManager
from policies.layout import Group, Layout
from policies.policy import Decision, GroupView, NodeView, Policy
from policies.request import Request, RequestStatus
from policies.router import LeastLoadedRouter
from policies.scheduler import Scheduler, SchedulerConfig
from policies.specs import ClusterSpec, MemoryConfig, ModelSpec, kv_blocks_per_gpu
from policies.switch import (MERGE_STRATEGIES, SPLIT_STRATEGIES, PendingSwitch, SwitchConfig,
                             SwitchRecord, SwitchTicket, classify)


class Listener(Protocol):
    def wake(self, gid: int, stop_now: bool) -> None:
        """Group ``gid`` has news: new work, or (``stop_now``) it must stop at its next step
        boundary and call ``may_step``."""

    def group_started(self, gid: int) -> None: ...

    def group_retired(self, gid: int) -> None: ...

    def start_flip(self, duration_s: float) -> None:
        """Perform the flip; call ``ControlPlane.finish_flip`` when ``duration_s`` has passed."""


class _NullListener:
    def wake(self, gid, stop_now): pass
    def group_started(self, gid): pass
    def group_retired(self, gid): pass
    def start_flip(self, duration_s): pass


@dataclass
class GroupRuntime:
    gid: int
    group: Group
    tp_gpus: int
    scheduler: Scheduler
    role: str = "any"
    state: str = "active"  # active | retiring | ready

    @property
    def label(self) -> str:
        return self.group.label

    @property
    def accepting(self) -> bool:
        return self.state == "active"

    @property
    def num_outstanding(self) -> int:
        return self.scheduler.num_outstanding

    @property
    def capacity_tokens(self) -> int:
        return self.scheduler.blocks.capacity_tokens


class ControlPlane:
    def __init__(self, model: ModelSpec, cluster: ClusterSpec, memory: MemoryConfig,
                 scheduler_config: SchedulerConfig, policy: Policy,
                 switch_config: SwitchConfig | None = None, listener: Listener | None = None,
                 dynamic: bool = False, cost_model=None,
                 extra_weight_bytes_per_gpu: float = 0.0) -> None:
        self.model, self.cluster, self.memory = model, cluster, memory
        self.scheduler_config = scheduler_config
        self.policy = policy
        self.switch_config = switch_config or SwitchConfig()
        self.listener: Listener = listener or _NullListener()
        self.resident = getattr(policy, "config", None) is None or \
            policy.config.weights_resident_per_engine
        self.dynamic = dynamic
        if dynamic and not self.resident:
            raise ValueError("a switching policy needs policy.weights_resident_per_engine=true "
                             "(Flying Serving keeps every engine's full weights resident)")
        self.num_engines = cluster.num_engines
        self.router = LeastLoadedRouter(model.max_model_len)
        self.groups: dict[int, GroupRuntime] = {}
        self._next_gid = 0
        self.held: deque[Request] = deque()
        self.paused: dict[Group, list[Request]] = {}
        self.requests: list[Request] = []
        self.pending: PendingSwitch | None = None
        self.queued: deque[SwitchTicket] = deque()
        self.tickets: list[SwitchTicket] = []  # every switch started or queued; index = id
        self.switches: list[SwitchRecord] = []
        self.layout = policy.initial_layout(self.num_engines)
        self.layouts: list[dict] = [{"time_s": 0.0, "layout": self.describe(self.layout),
                                     "event": "initial", "duration_s": 0.0}]
        self.created_groups: set[Group] = set()  # communicators that exist (lazy pool)
        self.last_switch_done_s = 0.0
        self.num_unfinished = 0
        self._pending_roles: dict[Group, str] = {}
        self.cost_model = cost_model  # handed to policies that predict (StepCostModel)
        self.extra_weight_bytes_per_gpu = extra_weight_bytes_per_gpu
        self.arrivals_total = 0
        self._mean_prompt_tokens = 0.0
        self._mean_output_tokens = 0.0

    # --- start-up ------------------------------------------------------------------------
    def start(self) -> None:
        for group in self.layout.groups:
            self._form_group(group, "any")
        if self.switch_config.comm_pool == "eager":
            from policies.layout import candidate_groups
            self.created_groups.update(candidate_groups(self.num_engines))

    def describe(self, layout: Layout) -> str:
        return layout.describe(self.cluster.gpus_per_engine)

    def blocks_per_engine(self, group: Group) -> int:
        tp_gpus = group.num_engines * self.cluster.gpus_per_engine
        shards = self.cluster.gpus_per_engine if self.resident else tp_gpus
        return kv_blocks_per_gpu(self.model, self.cluster, self.memory, shards,
                                 self.extra_weight_bytes_per_gpu)

    def _form_group(self, group: Group, role: str) -> GroupRuntime:
        reserved: set[int] = set()
        for other, reqs in self.paused.items():
            if other != group and set(other.engines) & set(group.engines):
                for r in reqs:
                    reserved.update(r.block_ids)
        blocks = BlockManager(self.blocks_per_engine(group),
                              self.memory.block_size_tokens * group.num_engines, reserved)
        gid = self._next_gid
        self._next_gid += 1
        tp_gpus = group.num_engines * self.cluster.gpus_per_engine
        sched = Scheduler(gid, tp_gpus, blocks, self.scheduler_config, label=group.label)
        for req in self.paused.pop(group, []):
            blocks.adopt(req)
            req.status = RequestStatus.RUNNING
            sched.running.append(req)
        runtime = GroupRuntime(gid, group, tp_gpus, sched, role)
        self.groups[gid] = runtime
        self.listener.group_started(gid)
        return runtime

    # --- admission -----------------------------------------------------------------------
    def max_capacity_tokens(self) -> int:
        """The most KV any group could ever hold: the whole node if the policy may switch."""
        if self.dynamic:
            whole = Group(0, self.num_engines)
            return self.blocks_per_engine(whole) * self.memory.block_size_tokens * self.num_engines
        return max(g.capacity_tokens for g in self.groups.values())

    def admit(self, request: Request, now_s: float) -> None:
        self.requests.append(request)
        self._note_arrival(request)
        reason = self._never_servable(request)
        if reason is not None:
            request.status = RequestStatus.REJECTED
            request.reject_reason = reason
            return
        self.num_unfinished += 1
        if not self._route(request):
            self.held.append(request)
            self._wake_prerunners()
        self.decide(now_s)

    def _note_arrival(self, request: Request) -> None:
        self.arrivals_total += 1
        w = 0.02 if self.arrivals_total > 1 else 1.0  # ~50-request memory
        self._mean_prompt_tokens += w * (request.prompt_tokens - self._mean_prompt_tokens)
        self._mean_output_tokens += w * (request.output_tokens - self._mean_output_tokens)

    def _never_servable(self, request: Request) -> str | None:
        total = request.prompt_tokens + request.output_tokens
        if total > self.model.max_model_len:
            return (f"prompt {request.prompt_tokens} + output {request.output_tokens} tokens "
                    f"exceed the model's max_model_len {self.model.max_model_len}")
        cap = self.max_capacity_tokens()
        if request.max_kv_tokens > cap:
            where = "the whole node as one TP group" if self.dynamic else "the largest group"
            return f"needs {request.max_kv_tokens} tokens of KV cache; {where} holds {cap}"
        return None

    def _route(self, request: Request) -> bool:
        """Place ``request`` in an accepting group that can hold it; False if none can now."""
        open_ = [g for g in self.groups.values() if g.accepting
                 and g.capacity_tokens >= request.max_kv_tokens]
        if not open_:
            return False
        # Groups formed for a class (priority, long_context) take that class first; the rest
        # go to general groups while any accept.
        preferred = [g for g in open_ if g.role == request.request_class] or \
            [g for g in open_ if g.role == "any"] or open_
        index, _ = self.router.route(request, preferred)
        target = preferred[index]
        target.scheduler.add_request(request)
        self.listener.wake(target.gid, stop_now=False)
        return True

    def _route_held(self) -> None:
        for _ in range(len(self.held)):
            req = self.held.popleft()
            if not self._route(req):
                self.held.append(req)

    def on_finish(self, gid: int, finished: list[Request], now_s: float) -> None:
        self.num_unfinished -= len(finished)
        if self.held:
            self._route_held()
        self.decide(now_s)

    # --- what a policy sees ----------------------------------------------------------------
    def view(self, now_s: float) -> NodeView:
        groups = []
        for g in self.groups.values():
            s = g.scheduler
            prio_waiting = sum(r.request_class == "priority" for r in s.waiting)
            prio = prio_waiting + sum(r.request_class == "priority" for r in s.running)
            groups.append(GroupView(g.gid, g.group, g.tp_gpus, s.num_outstanding,
                                    len(s.waiting), len(s.running), prio, g.capacity_tokens,
                                    g.accepting, g.role, prio_waiting))
        widest = 0
        for r in self.held:
            widest = max(widest, self.engines_needed(r))
        return NodeView(now_s, self.num_engines, self.layout, groups, self.pending is not None,
                        len(self.held), widest, sum(r.request_class == "priority" for r in self.held),
                        sum(len(v) for v in self.paused.values()), self.last_switch_done_s,
                        self.arrivals_total, self._mean_prompt_tokens, self._mean_output_tokens,
                        self.cost_model, tuple(g for g, reqs in self.paused.items() if reqs))

    def engines_needed(self, request: Request) -> int:
        """Narrowest aligned group width (engines) whose pool can hold ``request``."""
        width = 1
        while width < self.num_engines:
            group = Group(0, width)
            cap = self.blocks_per_engine(group) * self.memory.block_size_tokens * width
            if cap >= request.max_kv_tokens:
                return width
            width *= 2
        return self.num_engines

    # --- decisions and switches ------------------------------------------------------------
    def decide(self, now_s: float) -> None:
        if not self.dynamic or self.pending is not None:
            return
        decision = self.policy.decide(self.view(now_s))
        if decision is not None:
            self.request_switch(decision, now_s)

    def request_switch(self, decision: Decision, now_s: float) -> str:
        """``submit_switch``, answered in a word: started | queued | no-op: why."""
        return self.submit_switch(decision, now_s).answer

    def submit_switch(self, decision: Decision, now_s: float) -> SwitchTicket:
        """Start a switch, or queue it behind the one under way; never drop it. Raises
        ValueError, changing nothing, for a switch this node cannot make."""
        self.check_decision(decision)
        if self.pending is None and decision.target == self.layout:
            return SwitchTicket(None, decision, now_s, "no-op", note="already in that layout")
        ticket = SwitchTicket(len(self.tickets), decision, now_s)
        self.tickets.append(ticket)
        if self.pending is not None:
            self.queued.append(ticket)
        else:
            self._begin(ticket, now_s)
        return ticket

    def check_decision(self, decision: Decision) -> None:
        if decision.strategy not in MERGE_STRATEGIES:
            raise ValueError(f"switch strategy {decision.strategy!r} is not one of {MERGE_STRATEGIES}")
        if decision.split_strategy is not None and decision.split_strategy not in SPLIT_STRATEGIES:
            raise ValueError(f"split strategy {decision.split_strategy!r} is not one of "
                             f"{SPLIT_STRATEGIES}")
        if decision.target.num_engines != self.num_engines:
            raise ValueError(f"target layout has {decision.target.num_engines} engines, the "
                             f"node has {self.num_engines}")

    def _begin(self, ticket: SwitchTicket, now_s: float) -> None:
        decision = ticket.decision
        target = decision.target
        retiring = {g.gid: g.group for g in self.groups.values() if g.group not in target.groups}
        forming = tuple(g for g in target.groups if g not in {x.group for x in self.groups.values()})
        record = SwitchRecord(ticket.switch_id, now_s, self.describe(self.layout),
                              self.describe(target), decision.strategy, decision.reason)
        self.switches.append(record)
        ticket.state, ticket.record = "switching", record
        self.pending = PendingSwitch(record, target, decision.strategy, retiring, forming,
                                     decision.split_strategy or self.switch_config.split_strategy,
                                     ticket)
        self._pending_roles = dict(decision.roles)
        self.layouts.append({"time_s": now_s, "layout": record.to_layout,
                             "event": "switch_requested", "duration_s": 0.0})
        for gid in retiring:
            self.groups[gid].state = "retiring"
        for gid in retiring:
            kind = classify(self.groups[gid].group, target)
            self.listener.wake(gid, stop_now=self._stops_at_once(kind))

    def _stops_at_once(self, kind: str) -> bool:
        strategy = self.pending.strategy
        if strategy == "restart":
            return True
        if kind == "merge":
            return strategy == "hard"
        return self.pending.split_strategy in ("recompute", "restart")

    def may_step(self, gid: int, now_s: float) -> bool:
        """Called by the backend at every step boundary of group ``gid``: may it step now?"""
        g = self.groups.get(gid)
        if g is None:
            return False
        if g.state == "active":
            return True
        sw = self.pending
        if sw.flipping:
            return False
        self._move_out_waiting(g)
        kind = classify(g.group, sw.target)
        if self._stops_at_once(kind):
            self._vacate(g, pause=kind == "merge" and sw.strategy == "hard")
        elif g.scheduler.running and not self._only_prerun(g):
            return True  # still draining
        if g.state != "ready":
            g.state = "ready"
            sw.ready.add(gid)
            if sw.record.first_ready_s is None:
                sw.record.first_ready_s = now_s
        if sw.strategy == "soft" and kind == "merge" and not sw.all_ready:
            self._prerun(g)
            if g.scheduler.has_work:
                sw.parked.discard(gid)
                return True  # soft: pre-run the new group's requests until all are ready
        sw.parked.add(gid)
        if sw.all_ready:
            for other in sw.retiring.keys() - sw.parked:
                self.listener.wake(other, stop_now=True)  # pre-running: park at next boundary
            if sw.parked >= sw.retiring.keys():
                self._start_flip(now_s)
        return False

    def _prerun_candidate(self, req: Request) -> bool:
        roles = set(self._pending_roles.values())
        return not roles or req.request_class in roles

    def _only_prerun(self, g: GroupRuntime) -> bool:
        return all(id(r) in self.pending.prerun_ids for r in g.scheduler.running)

    def _prerun(self, g: GroupRuntime) -> None:
        """Soft preempt: a drained member runs the new group's requests in its own mode."""
        sw = self.pending
        for req in list(self.held):
            if self._prerun_candidate(req) and g.scheduler.can_ever_hold(req):
                self.held.remove(req)
                g.scheduler.add_request(req)
                sw.prerun_ids.add(id(req))
                sw.record.prerun_requests += 1

    def _wake_prerunners(self) -> None:
        """A request held during a soft switch may be pre-run by a member that has drained."""
        sw = self.pending
        if sw is not None and sw.strategy == "soft" and not sw.all_ready:
            for gid in sw.ready:
                self.listener.wake(gid, stop_now=False)

    def _move_out_waiting(self, g: GroupRuntime) -> None:
        """Queued requests hold no KV: they leave a retiring group at once."""
        sched = g.scheduler
        keep = deque()
        while sched.waiting:
            req = sched.waiting.popleft()
            if id(req) in self.pending.prerun_ids:
                keep.append(req)  # soft: pre-run work stays where it runs
                continue
            assert not req.block_ids, "a waiting request never holds blocks"
            if not self._route(req):
                self.held.append(req)
        sched.waiting = keep

    def _vacate(self, g: GroupRuntime, pause: bool) -> None:
        """Hard preempt (pause, KV kept) or recompute/restart (KV dropped) of running work."""
        sched = g.scheduler
        rec = self.pending.record
        for req in sched.running:
            if pause:
                req.status = RequestStatus.WAITING
                req.pauses += 1
                self.paused.setdefault(g.group, []).append(req)
                rec.paused_requests += 1
            else:
                self._drop_kv(req, sched)
                if not self._route(req):
                    self.held.append(req)
        sched.running = []
        # may_step moved the queue out just before (soft pre-runs never reach here).
        assert not sched.waiting, "a group stopping at once has no queue left"

    def _drop_kv(self, req: Request, sched: Scheduler) -> None:
        rec = self.pending.record
        rec.preempted_requests += 1
        rec.recomputed_tokens += req.num_computed_tokens
        sched.blocks.free(req)
        req.num_computed_tokens = 0
        req.preemptions += 1
        req.status = RequestStatus.WAITING

    def _start_flip(self, now_s: float) -> None:
        sw = self.pending
        sw.flipping = True
        rec = sw.record
        rec.ready_s = now_s
        for gid in sw.retiring:  # soft: pre-run requests drop their narrow-width KV now
            sched = self.groups[gid].scheduler
            for req in reversed(sched.running):
                self._drop_kv(req, sched)
                self.held.appendleft(req)
            for req in reversed(sched.waiting):
                self.held.appendleft(req)
            sched.running, sched.waiting = [], deque()
        duration = self.switch_config.restart_s if sw.strategy == "restart" else \
            self.switch_config.flip_s
        comm = 0.0
        if self.switch_config.comm_pool == "lazy":
            new = [g for g in sw.forming if g.num_engines > 1 and g not in self.created_groups]
            comm = self.switch_config.lazy_group_create_s * len(new)
            self.created_groups.update(new)
        rec.comm_setup_s = comm
        rec.flip_s = duration + comm
        self.layouts.append({"time_s": now_s, "layout": rec.to_layout, "event": "flip",
                             "duration_s": rec.flip_s})
        self.listener.start_flip(rec.flip_s)

    def finish_flip(self, now_s: float) -> None:
        sw = self.pending
        for gid in sw.retiring:
            g = self.groups.pop(gid)
            assert not g.scheduler.has_work, f"retired group {g.label} still has work"
            self.listener.group_retired(gid)
        for group in sw.forming:
            self._form_group(group, self._pending_roles.get(group, "any"))
        for g in self.groups.values():  # surviving groups may take new roles
            if g.group in self._pending_roles:
                g.role = self._pending_roles[g.group]
        self.layout = sw.target
        sw.record.done_s = now_s
        sw.ticket.state = "done"
        self.last_switch_done_s = now_s
        self.layouts.append({"time_s": now_s, "layout": sw.record.to_layout, "event": "done",
                             "duration_s": now_s - sw.record.requested_s})
        self.pending = None
        self._route_held()
        while self.queued and self.pending is None:  # a queued no-op must not stall the rest
            ticket = self.queued.popleft()
            if ticket.decision.target == self.layout:
                ticket.state, ticket.note = "no-op", "already in that layout at its turn"
            else:
                self._begin(ticket, now_s)
        self.decide(now_s)

    # --- requests leaving early ------------------------------------------------------------
    def withdraw(self, request: Request, now_s: float) -> bool:
        """Take an unfinished request out of the node (its client went away, or it failed),
        wherever it is: held, paused, or queued or running in a group; its KV is freed (a
        paused request's reserved blocks become usable again). The backend calls this only
        for a request that is not in a step in flight. False if it is not in the node."""
        where = self._take_out(request)
        if where is None:
            return False
        request.block_ids = []
        self.num_unfinished -= 1
        if where >= 0:
            self.listener.wake(where, stop_now=False)  # a retiring group may be ready now
        if self.held:
            self._route_held()
        self.decide(now_s)
        return True

    def _take_out(self, request: Request) -> int | None:
        """Remove ``request`` from its place; the id of its group, -1 if in none, or None."""
        if request in self.held:
            self.held.remove(request)
            return -1
        for group, reqs in self.paused.items():
            if request in reqs:
                reqs.remove(request)
                if not reqs:
                    del self.paused[group]
                self._unreserve(group, set(request.block_ids))
                return -1
        for g in self.groups.values():
            sched = g.scheduler
            if request in sched.waiting:
                sched.waiting.remove(request)
                return g.gid
            if request in sched.running:
                sched.running.remove(request)
                sched.blocks.free(request)
                return g.gid
        return None

    def _unreserve(self, paused_group: Group, ids: set[int]) -> None:
        """Blocks of a paused request that left: usable again by the groups formed over its
        engines, unless another paused request there still holds the same id."""
        engines = set(paused_group.engines)
        for g in self.groups.values():
            if g.group == paused_group or not engines & set(g.group.engines):
                continue
            still = {b for other, reqs in self.paused.items()
                     if other != g.group and set(other.engines) & set(g.group.engines)
                     for r in reqs for b in r.block_ids}
            g.scheduler.blocks.unreserve(ids - still)

    # --- checks ----------------------------------------------------------------------------
    def check_invariants(self) -> None:
        seen: dict[int, str] = {}

        def place(req: Request, where: str) -> None:
            assert id(req) not in seen, f"request {req.request_id} in {seen[id(req)]} and {where}"
            seen[id(req)] = where

        for g in self.groups.values():
            for r in g.scheduler.waiting:
                place(r, f"{g.label}.waiting")
                assert not r.block_ids
            for r in g.scheduler.running:
                place(r, f"{g.label}.running")
        for r in self.held:
            place(r, "held")
            assert not r.block_ids
        for grp, reqs in self.paused.items():
            for r in reqs:
                place(r, f"paused@{grp.label}")
        live = len(seen)
        assert live == self.num_unfinished, f"{live} live requests, {self.num_unfinished} expected"
        for e in range(self.num_engines):
            covering = [g for g in self.groups.values() if e in g.group.engines]
            assert len(covering) <= 1, f"engine {e} in {len(covering)} groups"
            owners: dict[int, int] = {}
            holders = [r for g in covering for r in g.scheduler.running]
            holders += [r for grp, rs in self.paused.items() if e in grp.engines for r in rs]
            for r in holders:
                for b in r.block_ids:
                    assert b not in owners, f"engine {e} block {b} held twice"
                    owners[b] = r.request_id
            if covering:
                free = covering[0].scheduler.blocks.free_ids
                assert not (free & owners.keys()), f"engine {e}: a held block is also free"
