import pandas as pd
import pytest

from analysis.timeline import (
    arrival_rate, engine_segments, group_counts, group_engines, layout_widths, switch_spans,
)


def test_labels_and_layouts():
    assert list(group_engines("e3")) == [3] and list(group_engines("e4-7")) == [4, 5, 6, 7]
    assert layout_widths("8xTP1") == [1] * 8
    assert layout_widths("TP4+2xTP2") == [4, 2, 2] and layout_widths("1xTP8") == [8]
    with pytest.raises(ValueError):
        group_engines("g0")
    with pytest.raises(ValueError):
        layout_widths("DP8")


def _samples():
    """4 engines: DP for t = 1, 2; a merge to TP4 sampled at t = 3 (old groups still there,
    retiring), TP4 at 4 and 5."""
    rows = [(t, f"e{e}", 1) for t in (1.0, 2.0, 3.0) for e in range(4)]
    rows += [(t, "e0-3", 4) for t in (3.0, 4.0, 5.0)]
    return pd.DataFrame(rows, columns=["time_s", "group", "tp_gpus"]).assign(
        queued_requests=0, running_requests=0, kv_blocks_used=0, kv_blocks_total=1,
        output_tokens_total=0)


def test_engine_segments_merge_and_prefer_the_wider_group():
    seg = engine_segments(_samples())
    e0 = seg[seg["engine"] == 0]
    assert e0[["start_s", "end_s", "group", "tp_gpus"]].values.tolist() == [
        [0.0, 2.0, "e0", 1], [2.0, 5.0, "e0-3", 4]]
    assert len(seg) == 8
    assert len(engine_segments(_samples().iloc[0:0])) == 0


def test_group_counts_and_arrival_rate():
    counts = group_counts(_samples())
    assert counts["num_groups"].tolist() == [4, 4, 5, 1, 1]
    assert counts["widest_tp_gpus"].tolist() == [1, 1, 4, 4, 4]
    rate = arrival_rate(pd.DataFrame({"arrival_s": [0.1, 0.2, 0.3, 2.5]}), bin_s=1.0)
    assert rate["start_s"].tolist() == [0.0, 1.0, 2.0]
    assert rate["arrivals_per_s"].tolist() == [3.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        arrival_rate(pd.DataFrame({"arrival_s": [1.0]}), bin_s=0)


def test_switch_spans():
    layouts = pd.DataFrame({"time_s": [0.0, 5.0, 6.0, 6.1, 9.0, 9.0, 9.2],
                            "layout": ["8xTP1", "1xTP8", "1xTP8", "1xTP8", "8xTP1", "8xTP1", "8xTP1"],
                            "event": ["initial", "switch_requested", "flip", "done",
                                      "switch_requested", "flip", "done"],
                            "duration_s": 0.0})
    assert switch_spans(layouts) == [(5.0, 6.1), (9.0, 9.2)]
    assert switch_spans(layouts.iloc[:1]) == []
