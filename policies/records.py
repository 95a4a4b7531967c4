"""The per-request record both backends write (one row per request, DESIGN.md section 2).

``analysis/`` reads these columns and cannot tell the backends apart except by ``backend``.
"""
from __future__ import annotations

# column -> meaning; the order is the Parquet column order.
RECORD_COLUMNS: dict[str, str] = {
    "request_id": "int: id from the trace",
    "request_class": "str: normal | priority | long_context",
    "status": "str: finished | rejected | unfinished (still in flight when the run ended)",
    "reject_reason": "str or None",
    "arrival_s": "float: arrival time",
    "first_scheduled_s": "float or NaN: first step that computed any of its tokens",
    "first_token_s": "float or NaN: end of the step that sampled its first token",
    "finish_s": "float or NaN: end of the step that sampled its last token",
    "prompt_tokens": "int",
    "output_tokens": "int: tokens requested (trace)",
    "generated_tokens": "int: tokens actually produced",
    "engine_group": "str: engines of the group that produced the first token, e.g. '0-1'",
    "tp_widths": "str: comma-separated TP GPU counts the request ran at, in order seen",
    "preemptions": "int: times preempted",
    "recomputed_tokens": "int: tokens whose KV was computed again after a preemption",
    "ttft_slo_s": "float or NaN",
    "tpot_slo_s": "float or NaN",
    "ttft_s": "float or NaN: first_token_s - arrival_s",
    "tpot_s": "float or NaN: (finish_s - first_token_s) / (generated_tokens - 1)",
    "e2e_s": "float or NaN: finish_s - arrival_s",
    "queueing_s": "float or NaN: first_scheduled_s - arrival_s",
    "slo_met": "bool or None: TTFT and TPOT within their SLOs (None when no SLO is set)",
    "backend": "str: sim | executor | replay",
}

# One row per switch (policies.switch.SwitchRecord.row()).
SWITCH_COLUMNS = [
    "switch_id", "requested_s", "from_layout", "to_layout", "strategy", "reason", "ready_s",
    "first_ready_s", "flip_s", "comm_setup_s", "done_s", "paused_requests",
    "preempted_requests", "recomputed_tokens", "prerun_requests", "drain_s", "skew_s",
]


def sample_row(time_s: float, label: str, tp_gpus: int, scheduler, output_tokens_total: int) -> dict:
    """One row of ``samples.parquet``: a group's queue, batch and KV use at ``time_s``, and
    the output tokens it has produced so far (cumulative per group label)."""
    return {
        "time_s": time_s, "group": label, "tp_gpus": tp_gpus,
        "queued_requests": len(scheduler.waiting), "running_requests": len(scheduler.running),
        "kv_blocks_used": scheduler.blocks.num_used_blocks,
        "kv_blocks_total": scheduler.blocks.num_usable_blocks,
        "output_tokens_total": output_tokens_total,
    }
