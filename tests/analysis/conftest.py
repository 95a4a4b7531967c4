"""Hand-made records shared by the analysis tests."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from policies.records import RECORD_COLUMNS

NAN = math.nan


def make_requests(rows: list[dict], backend: str = "sim") -> pd.DataFrame:
    """Records with the RECORD_COLUMNS columns; derived latencies computed from the times
    unless given."""
    out = []
    for i, r in enumerate(rows):
        rec = {c: None for c in RECORD_COLUMNS}
        rec.update(request_id=i, reject_reason=None, engine_group="0", tp_widths="1",
                   preemptions=0, recomputed_tokens=0, prompt_tokens=100, output_tokens=8,
                   first_scheduled_s=NAN, first_token_s=NAN, finish_s=NAN,
                   ttft_slo_s=NAN, tpot_slo_s=NAN, slo_met=None, backend=backend)
        rec.update(r)
        a, s, f, e, g = (rec["arrival_s"], rec["first_scheduled_s"], rec["first_token_s"],
                         rec["finish_s"], rec["generated_tokens"])
        if "ttft_s" not in r:
            rec["ttft_s"] = f - a
        if "e2e_s" not in r:
            rec["e2e_s"] = e - a
        if "queueing_s" not in r:
            rec["queueing_s"] = s - a
        if "tpot_s" not in r:
            rec["tpot_s"] = (e - f) / (g - 1) if g > 1 else NAN
        out.append(rec)
    df = pd.DataFrame(out, columns=list(RECORD_COLUMNS))
    return df


@pytest.fixture
def requests() -> pd.DataFrame:
    return make_requests([
        # 0: normal, finished, met SLO: ttft 1, e2e 3, tpot 0.5, queueing 0.5
        dict(request_class="normal", status="finished", arrival_s=0.0, first_scheduled_s=0.5,
             first_token_s=1.0, finish_s=3.0, generated_tokens=5, ttft_slo_s=1.5, tpot_slo_s=1.0,
             slo_met=True),
        # 1: normal, finished, 1 token (tpot_s deliberately 0.0: must be excluded), missed SLO
        dict(request_class="normal", status="finished", arrival_s=1.0, first_scheduled_s=1.0,
             first_token_s=3.0, finish_s=4.0, generated_tokens=1, tpot_s=0.0, ttft_slo_s=1.5,
             tpot_slo_s=1.0, slo_met=False),
        # 2: priority, finished, met: ttft 0.5, e2e 4, tpot 0.5, queueing 0.2
        dict(request_class="priority", status="finished", arrival_s=2.0, first_scheduled_s=2.2,
             first_token_s=2.5, finish_s=6.0, generated_tokens=8, ttft_slo_s=1.0, tpot_slo_s=1.0,
             slo_met=True),
        # 3: priority, rejected, has SLO -> a miss
        dict(request_class="priority", status="rejected", reject_reason="queue_full",
             arrival_s=3.0, generated_tokens=0, ttft_slo_s=1.0, tpot_slo_s=1.0, slo_met=None),
        # 4: normal, unfinished, has SLO -> a miss
        dict(request_class="normal", status="unfinished", arrival_s=4.0, first_scheduled_s=4.0,
             first_token_s=5.0, generated_tokens=2, ttft_slo_s=1.5, tpot_slo_s=1.0, slo_met=None),
        # 5: long_context, finished, no SLO: ttft 1.5, e2e 4.5, tpot 1.0, queueing 0.5
        dict(request_class="long_context", status="finished", arrival_s=0.5,
             first_scheduled_s=1.0, first_token_s=2.0, finish_s=5.0, generated_tokens=4),
    ])
