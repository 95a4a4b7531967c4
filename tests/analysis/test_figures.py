"""Each figure function writes a non-empty PNG from small hand-made tables."""
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from analysis.figures import (
    plot_fidelity, plot_layout_timeline, plot_load_sweep, plot_max_context, plot_priority_tradeoff,
)

PNG = b"\x89PNG"


def _is_png(path):
    data = path.read_bytes()
    return data.startswith(PNG) and len(data) > 1000


def _metrics():
    rows = []
    for policy, scale in (("static_dp", 1.0), ("static_tp", 0.5), ("flying", 0.7)):
        for load in (10.0, 40.0, 80.0):
            rows.append({"policy": policy, "offered_rps": load, "ttft_mean_s": scale * load / 100,
                         "ttft_p90_s": scale * load / 50, "tpot_mean_s": 0.01 * scale,
                         "output_tokens_per_s": 100 * load, "priority_ttft_p90_s": scale * 0.05,
                         "priority_tpot_p90_s": scale * 0.02})
    return pd.DataFrame(rows)


def test_plot_load_sweep_and_priority(tmp_path):
    assert _is_png(plot_load_sweep(_metrics(), tmp_path / "load.png"))
    assert _is_png(plot_priority_tradeoff(_metrics(), tmp_path / "prio.png"))
    with pytest.raises(ValueError, match="no 'priority' requests"):
        plot_priority_tradeoff(_metrics().drop(columns=["priority_ttft_p90_s"]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="missing columns"):
        plot_load_sweep(_metrics().drop(columns=["ttft_p90_s"]), tmp_path / "x.png")


def _run():
    samples = []
    for t in range(1, 11):
        groups = [("e0-3", 4)] if 3 <= t <= 6 else [(f"e{e}", 1) for e in range(4)]
        for g, w in groups:
            samples.append({"time_s": float(t), "group": g, "tp_gpus": w, "queued_requests": 0,
                            "running_requests": 1, "kv_blocks_used": 1, "kv_blocks_total": 10,
                            "output_tokens_total": 10 * t})
    layouts = pd.DataFrame({"time_s": [0.0, 2.0, 2.1, 2.1, 6.0, 6.1, 6.2],
                            "layout": ["4xTP1", "1xTP4", "1xTP4", "1xTP4", "4xTP1", "4xTP1", "4xTP1"],
                            "event": ["initial", "switch_requested", "flip", "done",
                                      "switch_requested", "flip", "done"], "duration_s": 0.0})
    requests = pd.DataFrame({"arrival_s": [0.5 * i for i in range(20)]})
    return {"requests": requests, "samples": pd.DataFrame(samples), "layouts": layouts}


def test_plot_layout_timeline(tmp_path):
    assert _is_png(plot_layout_timeline([("flying", _run()), ("other", _run())], tmp_path / "t.png"))
    with pytest.raises(ValueError, match="no run"):
        plot_layout_timeline([], tmp_path / "x.png")


def test_plot_max_context(tmp_path):
    capacity = pd.DataFrame({"policy": ["static_dp", "flying"], "max_context_tokens": [400_000, 1_600_000],
                             "vs_one_engine": [1.0, 4.0], "max_model_len": [2_000_000] * 2})
    served = pd.DataFrame({"run": ["0", "1"], "policy": ["static_dp", "flying"],
                           "served_max_tokens": [300_000, 900_000], "rejected_too_long": [2, 0]})
    widths = pd.DataFrame({"group_engines": [1, 2, 4], "group_gpus": [2, 4, 8],
                           "resident_tokens": [4e5, 8e5, 1.6e6], "sharded_tokens": [4e5, 1.1e6, 2.7e6]})
    assert _is_png(plot_max_context(capacity, tmp_path / "c.png", served=served, widths=widths))
    assert _is_png(plot_max_context(capacity, tmp_path / "c2.png"))


def test_plot_fidelity(tmp_path):
    rows = [{"policy": p, "metric": m, "sim": s, "real": r, "error_pct": 100 * (s - r) / r}
            for p in ("static_dp", "static_tp", "flying")
            for m, s, r in (("ttft_mean_s", 0.21, 0.2), ("output_tokens_per_s", 95.0, 100.0))]
    assert _is_png(plot_fidelity(pd.DataFrame(rows), tmp_path / "f.png"))


def test_figures_closed(tmp_path):
    before = len(plt.get_fignums())
    plot_load_sweep(_metrics(), tmp_path / "a.png")
    plot_layout_timeline([("x", _run())], tmp_path / "b.png")
    assert len(plt.get_fignums()) == before
