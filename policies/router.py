"""Routing an arriving request to one engine group."""
from __future__ import annotations

from typing import Protocol, Sequence

from policies.request import Request


class RoutableGroup(Protocol):
    label: str

    @property
    def num_outstanding(self) -> int: ...

    @property
    def capacity_tokens(self) -> int: ...

    @property
    def accepting(self) -> bool: ...


class LeastLoadedRouter:
    """Fewest outstanding (waiting + running) requests among the groups that can ever hold the
    request; ties go round-robin so equal engines share work evenly.

    Load is a request count on purpose: it only changes at arrivals and finishes, so routing
    decisions do not depend on how finely a backend steps between them.
    """

    def __init__(self, max_model_len: int) -> None:
        self.max_model_len = max_model_len
        self._cursor = 0

    def route(self, request: Request, groups: Sequence[RoutableGroup]) -> tuple[int | None, str | None]:
        """Return (group index, None) or (None, reason the request can never be served)."""
        need = request.max_kv_tokens
        if request.prompt_tokens + request.output_tokens > self.max_model_len:
            return None, (f"prompt {request.prompt_tokens} + output {request.output_tokens} tokens "
                          f"exceed the model's max_model_len {self.max_model_len}")
        fits = [i for i, g in enumerate(groups) if g.capacity_tokens >= need]
        if not fits:
            largest = max((g.capacity_tokens for g in groups), default=0)
            return None, (f"needs {need} tokens of KV cache; the largest group in this layout "
                          f"holds {largest}")
        open_ = [i for i in fits if groups[i].accepting] or fits
        loads = {i: groups[i].num_outstanding for i in open_}
        best = min(loads.values())
        tied = [i for i in open_ if loads[i] == best]
        n = len(groups)
        choice = min(tied, key=lambda i: (i - self._cursor) % n)
        self._cursor = (choice + 1) % n
        return choice, None
