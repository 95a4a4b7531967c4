import pandas as pd
import pytest

from analysis.plots import plot_latency_cdfs, plot_timeseries, throughput_series

PNG = b"\x89PNG"


def _samples():
    rows = []
    for t, a, b in [(0.0, 0, 0), (1.0, 10, 5), (2.0, 30, 5), (3.0, 40, 9)]:
        rows.append(dict(time_s=t, group="0", tp_gpus=1, queued_requests=2, running_requests=3,
                         kv_blocks_used=4, kv_blocks_total=10, output_tokens_total=a))
        rows.append(dict(time_s=t, group="1", tp_gpus=1, queued_requests=1, running_requests=2,
                         kv_blocks_used=1, kv_blocks_total=10, output_tokens_total=b))
    # a group created by a switch at t=2 (its counter starts at 0 when created)
    rows.append(dict(time_s=2.0, group="2-3", tp_gpus=2, queued_requests=0, running_requests=1,
                     kv_blocks_used=2, kv_blocks_total=20, output_tokens_total=4))
    return pd.DataFrame(rows)


def test_throughput_series():
    thr = throughput_series(_samples())
    assert thr["time_s"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert pd.isna(thr["output_tokens_per_s"].iloc[0])
    assert thr["output_tokens_per_s"].iloc[1:].tolist() == pytest.approx([15.0, 24.0, 14.0])
    smooth = throughput_series(_samples(), smooth_periods=2)
    assert smooth["output_tokens_per_s"].iloc[2] == pytest.approx((15 + 24) / 2)


def test_plot_latency_cdfs(tmp_path, requests):
    out = plot_latency_cdfs(requests, tmp_path / "cdf.png")
    assert out == tmp_path / "cdf.png"
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000


def test_plot_latency_cdfs_single_class_and_empty(tmp_path, requests):
    assert plot_latency_cdfs(requests[requests["request_class"] == "normal"],
                             tmp_path / "one.png").stat().st_size > 0
    assert plot_latency_cdfs(requests.iloc[0:0], tmp_path / "none.png").stat().st_size > 0


@pytest.mark.parametrize("n_layouts", [0, 1, 3])
def test_plot_timeseries(tmp_path, n_layouts):
    layouts = pd.DataFrame({"time_s": [0.0, 1.5, 2.0][:n_layouts],
                            "layout": ["dp4", "dp2+tp2", "dp2+tp2"][:n_layouts],
                            "event": ["start", "switch_begin", "switch_end"][:n_layouts],
                            "duration_s": [0.0, 0.5, 0.0][:n_layouts]})
    out = plot_timeseries(_samples(), tmp_path / f"ts{n_layouts}.png",
                          layouts=layouts if n_layouts else None)
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000


def test_figures_closed(tmp_path, requests):
    import matplotlib.pyplot as plt
    before = len(plt.get_fignums())
    plot_latency_cdfs(requests, tmp_path / "a.png")
    plot_timeseries(_samples(), tmp_path / "b.png")
    assert len(plt.get_fignums()) == before
