"""Request state, as the control plane sees it (no token ids: the executor keeps those)."""
from __future__ import annotations

import enum
import math

from traces.spec import RequestSpec


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    REJECTED = "rejected"


class Request:
    """One request's progress.

    Token accounting, as in vLLM v1: a request *knows* ``prompt + generated`` tokens; a step
    computes the KV of some of the known tokens that are not cached yet, and when the cache
    catches up with the known tokens the step samples one more. Decode is the case where one
    known token is uncached. A request needs KV for at most ``prompt + output - 1`` tokens:
    the last sampled token is never fed back.
    """

    __slots__ = (
        "spec", "request_id", "prompt_tokens", "output_tokens", "request_class", "status",
        "num_computed_tokens", "num_generated", "block_ids", "arrival_s", "first_scheduled_s",
        "first_token_s", "finish_s", "preemptions", "recomputed_tokens", "max_computed_tokens",
        "group_label", "tp_widths", "reject_reason", "pauses",
    )

    def __init__(self, spec: RequestSpec) -> None:
        if spec.prompt_tokens < 1 or spec.output_tokens < 1:
            raise ValueError(f"request {spec.request_id}: prompt and output must be >= 1 token")
        self.spec = spec
        self.request_id = spec.request_id
        self.prompt_tokens = spec.prompt_tokens
        self.output_tokens = spec.output_tokens
        self.request_class = spec.request_class
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_generated = 0
        self.block_ids: list[int] = []
        self.arrival_s = spec.arrival_s
        self.first_scheduled_s: float | None = None
        self.first_token_s: float | None = None
        self.finish_s: float | None = None
        self.preemptions = 0  # KV dropped (recompute): KV-pool pressure, or a switch
        self.pauses = 0  # hard-preempted with its KV kept in place (resumed, not recomputed)
        self.recomputed_tokens = 0
        # High-water mark of cached tokens: tokens below it computed again were recomputed.
        self.max_computed_tokens = 0
        self.group_label: str | None = None
        self.tp_widths: list[int] = []
        self.reject_reason: str | None = None

    @property
    def num_known_tokens(self) -> int:
        return self.prompt_tokens + self.num_generated

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.prompt_tokens + self.num_generated - self.num_computed_tokens

    @property
    def max_kv_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens - 1

    @property
    def remaining_output_tokens(self) -> int:
        return self.output_tokens - self.num_generated

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def note_width(self, tp_gpus: int) -> None:
        if not self.tp_widths or self.tp_widths[-1] != tp_gpus:
            self.tp_widths.append(tp_gpus)

    def record(self, backend: str) -> dict:
        """This request as one row of the per-request record (``policies.records``)."""
        nan = math.nan
        spec = self.spec
        first_token = self.first_token_s if self.first_token_s is not None else nan
        finish = self.finish_s if self.finish_s is not None else nan
        first_sched = self.first_scheduled_s if self.first_scheduled_s is not None else nan
        if self.status is RequestStatus.FINISHED:
            status = "finished"
        elif self.status is RequestStatus.REJECTED:
            status = "rejected"
        else:
            status = "unfinished"
        ttft = first_token - self.arrival_s
        e2e = finish - self.arrival_s
        tpot = (finish - first_token) / (self.num_generated - 1) if self.num_generated > 1 else nan
        return {
            "request_id": self.request_id,
            "request_class": self.request_class,
            "status": status,
            "reject_reason": self.reject_reason,
            "arrival_s": self.arrival_s,
            "first_scheduled_s": first_sched,
            "first_token_s": first_token,
            "finish_s": finish,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "generated_tokens": self.num_generated,
            "engine_group": self.group_label,
            "tp_widths": ",".join(map(str, self.tp_widths)),
            "preemptions": self.preemptions,
            "recomputed_tokens": self.recomputed_tokens,
            "ttft_slo_s": spec.ttft_slo_s if spec.ttft_slo_s is not None else nan,
            "tpot_slo_s": spec.tpot_slo_s if spec.tpot_slo_s is not None else nan,
            "ttft_s": ttft,
            "tpot_s": tpot,
            "e2e_s": e2e,
            "queueing_s": first_sched - self.arrival_s,
            "slo_met": self._slo_met(status, ttft, tpot),
            "backend": backend,
        }

    def _slo_met(self, status: str, ttft_s: float, tpot_s: float) -> bool | None:
        return slo_met(self.spec, status, ttft_s, tpot_s)


def slo_met(spec: RequestSpec, status: str, ttft_s: float, tpot_s: float) -> bool | None:
    """None without SLOs; else finished within both targets (a replay client uses it too)."""
    if spec.ttft_slo_s is None and spec.tpot_slo_s is None:
        return None
    if status != "finished":
        return False
    ok = spec.ttft_slo_s is None or ttft_s <= spec.ttft_slo_s
    # A one-token answer has no TPOT; it cannot miss a TPOT target.
    if spec.tpot_slo_s is not None and not math.isnan(tpot_s):
        ok = ok and tpot_s <= spec.tpot_slo_s
    return ok
