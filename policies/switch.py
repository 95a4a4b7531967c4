"""The DP<->TP switch: its settings, its phases, and the record each switch leaves.

How an engine group that a switch changes reaches the switch point:
- merging into a wider group (DP->TP, or a wider TP):
  * ``sequential``: stop admitting; queued requests without KV move out at once; running
    requests finish; the group is ready when nothing runs.
  * ``soft``: as sequential, but a member that has drained pre-runs the requests the new
    group is for (e.g. priority ones) in its own (narrow) mode; at the flip their KV is
    dropped and recomputed at the new width.
  * ``hard``: at its next step boundary the group pauses its running requests, whose KV stays
    in the pool, and is ready at once; they resume when the same group forms again.
- splitting into narrower groups (TP->DP): ``drain`` (running requests finish) or
  ``recompute`` (they are preempted, their KV dropped, and recomputed where they land).
- ``restart`` (the baseline): every affected request loses its KV, and the flip costs
  ``restart_s`` instead of ``flip_s``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from policies.layout import Group, Layout

if TYPE_CHECKING:
    from policies.policy import Decision

MERGE_STRATEGIES = ("sequential", "soft", "hard", "restart")
SPLIT_STRATEGIES = ("drain", "recompute", "restart")


@dataclass
class SwitchConfig:
    flip_s: float = 0.015  # re-point weight views and KV block tables, pick a communicator
    comm_pool: str = "eager"  # eager: every candidate group made at start-up; lazy: on first use
    lazy_group_create_s: float = 2.0  # cost of creating a process group at switch time (lazy)
    restart_s: float = 146.0  # engine restart to a new layout (the paper reports 146-292 s, 70B)
    split_strategy: str = "drain"

    def __post_init__(self) -> None:
        if self.comm_pool not in ("eager", "lazy"):
            raise ValueError(f"switch.comm_pool must be 'eager' or 'lazy', got {self.comm_pool!r}")
        if self.split_strategy not in SPLIT_STRATEGIES:
            raise ValueError(f"switch.split_strategy must be one of {SPLIT_STRATEGIES}")
        for name in ("flip_s", "lazy_group_create_s", "restart_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"switch.{name} must be >= 0")


@dataclass
class SwitchRecord:
    switch_id: int
    requested_s: float
    from_layout: str
    to_layout: str
    strategy: str
    reason: str
    ready_s: float | None = None  # every affected group at its switch point
    first_ready_s: float | None = None
    flip_s: float = 0.0  # what the flip itself cost (incl. lazy group creation or restart)
    comm_setup_s: float = 0.0
    done_s: float | None = None
    paused_requests: int = 0
    preempted_requests: int = 0
    recomputed_tokens: int = 0  # KV tokens dropped at this switch (to be computed again)
    prerun_requests: int = 0

    @property
    def drain_s(self) -> float | None:
        return None if self.ready_s is None else self.ready_s - self.requested_s

    @property
    def skew_s(self) -> float | None:
        """Cutover skew: how far apart the affected groups reached their switch point."""
        if self.ready_s is None or self.first_ready_s is None:
            return None
        return self.ready_s - self.first_ready_s

    def row(self) -> dict:
        d = asdict(self)
        d["drain_s"], d["skew_s"] = self.drain_s, self.skew_s
        return d


TICKET_STATES = ("queued", "switching", "done", "no-op")


@dataclass
class SwitchTicket:
    """One requested switch from its request to its end, so that none is lost: a switch
    asked for while another is under way waits in the queue and, at its turn, either runs
    (``switching`` -> ``done``, with its ``record``) or ends as ``no-op`` when the node is
    already in its target layout. ``switch_id`` is its record's id; None for a no-op at
    once (nothing was queued or recorded)."""

    switch_id: int | None
    decision: Decision
    requested_s: float
    state: str = "queued"
    record: SwitchRecord | None = None
    note: str = ""

    @property
    def answer(self) -> str:
        """What ``ControlPlane.request_switch`` says: started | queued | no-op: why."""
        if self.state == "no-op":
            return f"no-op: {self.note}"
        return "queued" if self.state == "queued" else "started"


@dataclass
class PendingSwitch:
    """A switch under way: the old groups it retires and the new groups it forms."""

    record: SwitchRecord
    target: Layout
    strategy: str
    retiring: dict[int, Group]  # group id -> engines, of the groups that go away
    forming: tuple[Group, ...]
    split_strategy: str = "drain"  # how splitting groups reach the switch point
    ticket: SwitchTicket | None = None
    prerun_ids: set[int] = field(default_factory=set)  # soft: requests pre-run in narrow mode
    ready: set[int] = field(default_factory=set)  # retiring group ids at their switch point
    parked: set[int] = field(default_factory=set)  # ready and stopped at a step boundary
    flipping: bool = False

    @property
    def all_ready(self) -> bool:
        return self.ready >= set(self.retiring)


def classify(old: Group, new_layout: Layout) -> str:
    """'keep' if the group survives, 'merge' if it goes into a wider group, else 'split'."""
    if old in new_layout.groups:
        return "keep"
    for g in new_layout.groups:
        if g.num_engines > old.num_engines and set(old.engines) <= set(g.engines):
            return "merge"
    return "split"
