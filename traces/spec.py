"""The one thing every trace source produces: a list of request specs."""
from __future__ import annotations

from dataclasses import dataclass

REQUEST_CLASSES = ("normal", "priority", "long_context")


@dataclass(frozen=True, slots=True)
class RequestSpec:
    request_id: int
    arrival_s: float  # seconds from the start of the (windowed, scaled) trace
    prompt_tokens: int
    output_tokens: int
    request_class: str = "normal"
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    # Mooncake's 512-token prefix block hashes, kept for a later prefix-cache model.
    hash_ids: tuple[int, ...] | None = None
