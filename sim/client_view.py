"""Records as a streaming client sees them.

The control plane times a request at the server: arrival when the request is admitted,
first token when the step that samples it ends. A client sees both later: its request is
parsed and tokenised before the server's arrival, and each token reaches it as an SSE chunk
after the step. A served profile measures the difference per TP width
(``serving.client_overhead_s``, see ``executor.served_profile``); the simulator keeps the
server's times for the control plane and shifts only its reported records: first token and
finish move by the overhead of the width that produced the first token, arrival stays the
client's send time. TPOT is unchanged (every token pays the same delay)."""
from __future__ import annotations

import math

from policies.request import Request, slo_met

SHIFTED = ("first_token_s", "finish_s", "ttft_s", "e2e_s")


def overhead_for_width(overhead_s: dict[int, float], width: int) -> float:
    """The measured width's overhead; an unmeasured width takes the nearest measured one."""
    if width in overhead_s:
        return overhead_s[width]
    nearest = min(overhead_s, key=lambda w: (abs(math.log2(w / width)), w))
    return overhead_s[nearest]


def client_record(request: Request, row: dict, overhead_s: dict[int, float]) -> dict:
    """``row`` (``request.record(...)``) with the client's view of its times."""
    if not overhead_s or not request.tp_widths or math.isnan(row["first_token_s"]):
        return row
    delay_s = overhead_for_width(overhead_s, request.tp_widths[0])
    row = dict(row)
    for key in SHIFTED:
        row[key] += delay_s
    row["slo_met"] = slo_met(request.spec, row["status"], row["ttft_s"], row["tpot_s"])
    return row
