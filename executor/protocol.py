"""Messages on the control channel between the coordinator and one worker (a Pipe).

Plain, torch-free dataclasses, pickled by ``multiprocessing``. The protocol is strictly
request/reply: the coordinator sends one message to a worker and waits for that worker's
reply before sending the next, so a worker never has more than one message queued and a
reply always answers the last request. Tensors never travel here, only over gloo/NCCL.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from executor.model_config import ModelConfig
from executor.step_input import StepInput


# --- how a worker starts (its process argument) --------------------------------------------
@dataclass(frozen=True)
class WorkerConfig:
    rank: int
    world_size: int
    device: str  # "cpu" (gloo) or "cuda" (NCCL; rank r uses cuda:r on one node)
    rendezvous: str  # torch.distributed init_method, e.g. file:///tmp/x/rendezvous
    model_folder: str | None  # HF folder, or None for dummy weights at ``model_config``
    model_config: ModelConfig
    dtype: str | None  # None: the checkpoint's own
    max_tp_width: int  # widest TP group this rank may join (the shard views' divisor)
    seed: int = 0  # dummy weights' seed
    num_threads: int | None = None  # CPU intra-op threads (ranks share the machine's cores)
    collective_timeout_s: float = 300.0  # a collective stuck longer fails the worker


# --- coordinator -> worker ---------------------------------------------------------------
@dataclass(frozen=True)
class AllocateKV:
    """Create the rank's paged KV pool (the count comes from the control plane)."""

    num_blocks: int
    block_size_tokens: int


@dataclass(frozen=True)
class SetWidth:
    """Join the group of these global ranks (from the communicator pool); one rank = DP."""

    ranks: tuple[int, ...]


@dataclass(frozen=True)
class Step:
    """Run one step; every member of the group receives the same ``StepInput``."""

    step: StepInput


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class MemoryReport:
    """Reply with the rank's memory use (``MemoryUsage``): the zero-copy checks' probe."""


@dataclass(frozen=True)
class CheckViews:
    """Reply with the zero-copy invariants of the rank's current views (``ViewCheck``)."""


@dataclass(frozen=True)
class KVMoveItem:
    """One request whose KV was written in the DP layout on ``src_rank`` (width 1) and is
    to live in the TP layout of the group (width w) from now on."""

    src_rank: int  # global rank whose pool holds the request's width-1 KV
    num_tokens: int
    dp_block_table: tuple[int, ...]  # on src_rank, blocks of B_base tokens
    tp_block_table: tuple[int, ...]  # on every member, blocks of w * B_base tokens


@dataclass(frozen=True)
class MoveKV:
    """Move these requests' KV into the TP layout of ``ranks`` over the process group (an
    all-to-all of (w-1)/w of its bytes) instead of recomputing it. Every member must already
    run at this width; every member gets the same message."""

    ranks: tuple[int, ...]
    items: tuple[KVMoveItem, ...]


# --- worker -> coordinator ---------------------------------------------------------------
@dataclass(frozen=True)
class StartupCosts:
    """What a worker spent before it could serve (seconds)."""

    load_model_s: float
    init_process_group_s: float
    comm_pool_s: float  # every candidate group created and warmed once
    # "first-last" ranks -> seconds to create that group and run its first all-reduce:
    # what creating it lazily, at the moment of a switch, would add to that switch.
    group_create_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Ready:
    rank: int
    pid: int
    device: str
    device_memory_bytes: int  # total memory of the device (0 on CPU: the budget is a flag)
    costs: StartupCosts


@dataclass(frozen=True)
class Ack:
    """A control message (AllocateKV, SetWidth, Shutdown) is done."""

    what: str
    elapsed_s: float


@dataclass(frozen=True)
class StepResult:
    step_id: int
    sampled_token_ids: dict[int, int]  # request id -> token, for sequences that sample
    elapsed_s: float


@dataclass(frozen=True)
class MemoryUsage:
    rank: int
    rss_bytes: int  # resident set size of the worker process
    device_allocated_bytes: int  # torch.cuda.memory_allocated (0 on CPU)
    device_reserved_bytes: int  # torch.cuda.memory_reserved (0 on CPU)


@dataclass(frozen=True)
class ViewCheck:
    rank: int
    width: int
    num_views: int  # active weight/bias views checked
    violations: tuple[str, ...]  # one line per broken invariant; empty when all hold
    resident_ptrs: tuple[int, ...]  # data_ptr of every resident parameter, by name
    kv_storage_ptr: int


@dataclass(frozen=True)
class KVMoved:
    rank: int
    sent_bytes: int  # to the other members (the self share is a local copy)
    received_bytes: int
    elapsed_s: float


@dataclass(frozen=True)
class WorkerError:
    """The worker hit an exception; it exits after sending this."""

    rank: int
    message: str
    traceback: str
