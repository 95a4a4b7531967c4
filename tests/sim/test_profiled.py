"""The profiled predictor: its fit recovers a known cost model, its fast path equals stepping,
steps outside the profile fall back to the roofline and are counted, and bad profiles are
refused with a clear message."""
import dataclasses
import json

import numpy as np
import pytest

from policies.plan import ScheduledRequest, SchedulerOutput, StepShape
from policies.specs import ModelSpec
from sim.predictor import RooflinePredictor
from sim.profiled import (PROFILE_FORMAT, ProfiledPredictor, ProfileError, load_profile, nnls)

TINY = ModelSpec(name="tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                 intermediate_size=128, vocab_size=256, max_model_len=2048)
# A made-up cost model: a floor, then linear in tokens (a kink at 64), plus per-logit,
# per-pair and per-KV-token costs. Piecewise linear with knots at the profiled token counts,
# so the fit must recover it exactly.
WIDTH_SPEEDUP = {1: 1.0, 2: 0.6}


def true_step_s(shape: StepShape) -> float:
    t = shape.num_tokens
    tokens_s = 1e-3 + 2e-6 * min(t, 64) + 5e-5 * max(0, t - 64)
    return WIDTH_SPEEDUP[shape.tp_gpus] * (tokens_s + 3e-5 * shape.num_logits
                                           + 1e-8 * shape.attn_pairs
                                           + 4e-8 * shape.kv_tokens_read)


def shape_of(width: int, seqs: list[tuple[int, int]]) -> StepShape:
    out = SchedulerOutput(0, width, [ScheduledRequest(i, n, c, True)
                                     for i, (n, c) in enumerate(seqs)])
    return out.shape()


def grid_shapes(width: int) -> list[StepShape]:
    shapes = [shape_of(width, [(n, c)]) for n in (8, 32, 64, 128, 512) for c in (0, 256)]
    shapes += [shape_of(width, [(1, c)] * b) for b in (1, 4, 16, 64) for c in (16, 512)]
    shapes += [shape_of(width, [(64, 0)] + [(1, 128)] * 8)]
    return shapes


def profile_doc(model: ModelSpec = TINY, widths=(1, 2), flip_s: float = 6e-4) -> dict:
    steps = [{"kind": "x", **dataclasses.asdict(s), "step_s": true_step_s(s)}
             for w in widths for s in grid_shapes(w)]
    return {"format": PROFILE_FORMAT, "model": dataclasses.asdict(model), "steps": steps,
            "switch": {"flip_s_p50": flip_s, "flip_s_p99": 2 * flip_s, "flips": 10}}


@pytest.fixture
def profile_path(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile_doc()))
    return path


@pytest.fixture
def predictor(profile_path):
    from policies.specs import GpuSpec
    gpu = GpuSpec("cpu", 16.0, 2e10, 1e11, "gloo", 5e9)
    return ProfiledPredictor(load_profile(profile_path), TINY, RooflinePredictor(TINY, gpu))


def test_nnls_matches_the_constrained_optimum():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 5))
    x_true = np.array([1.0, 0.0, 2.5, 0.0, 0.7])
    b = a @ x_true
    assert np.allclose(nnls(a, b), x_true, atol=1e-9)
    # An unconstrained solution with a negative entry: NNLS clamps it and stays optimal (KKT).
    b2 = a @ np.array([1.0, -2.0, 0.5, 0.0, 0.0])
    x = nnls(a, b2)
    grad = a.T @ (b2 - a @ x)
    assert (x >= 0).all() and np.all(grad[x == 0] <= 1e-9) and np.allclose(grad[x > 0], 0, atol=1e-9)


def test_fit_recovers_the_cost_model_inside_the_grid(predictor):
    assert all(f.mape < 1e-9 for f in predictor.fits.values())
    # Off the grid points but inside the region: interpolation is exact for this model.
    for shape in (shape_of(1, [(100, 200)]), shape_of(2, [(1, 300)] * 10),
                  shape_of(1, [(40, 0)] + [(1, 64)] * 3)):
        assert predictor.step_time_s(shape) == pytest.approx(true_step_s(shape), rel=1e-9)
    assert predictor.num_fallbacks == 0


def test_decode_run_is_bit_identical_to_single_steps(predictor):
    for width, batch, kv0, k in ((1, 4, 100, 50), (2, 16, 300, 12)):
        run = predictor.decode_run_times_s(width, batch, kv0, k)
        single = [predictor.step_time_s(StepShape(width, batch, batch, batch, kv0 + j * batch,
                                                  kv0 + j * batch)) for j in range(k)]
        assert run.tolist() == single


def test_steps_outside_the_profile_fall_back_and_are_counted(predictor):
    huge = shape_of(1, [(2000, 0)])
    assert predictor.step_time_s(huge) == predictor.fallback.step_time_s(huge)
    wide = shape_of(4, [(8, 0)])
    assert predictor.step_time_s(wide) == predictor.fallback.step_time_s(wide)
    long_run = predictor.decode_run_times_s(1, 64, 64 * 600, 3)  # more KV than profiled
    assert len(long_run) == 3
    assert predictor.num_fallbacks == 5
    report = predictor.report()
    assert report["fallback_steps"] == 5 and "width 4 not profiled" in report["fallback_reasons"]


def test_profile_of_another_model_is_refused(profile_path):
    other = dataclasses.replace(TINY, hidden_size=128)
    with pytest.raises(ProfileError, match="hidden_size: profile 64 vs config 128"):
        ProfiledPredictor(load_profile(profile_path), other, None)


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "other"}), "not a step profile"),
    (json.dumps({"format": PROFILE_FORMAT, "steps": []}), "no measured steps"),
    (json.dumps({"format": PROFILE_FORMAT, "steps": [{"tp_gpus": 1}]}), r"steps\[0\] lacks"),
])
def test_malformed_profiles_name_the_problem(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ProfileError, match=match):
        load_profile(path)


def test_missing_profile_says_how_to_make_one(tmp_path):
    with pytest.raises(ProfileError, match="python -m executor profile"):
        load_profile(tmp_path / "nope.json")


def test_simulator_runs_with_a_profile_and_reports_it(make_config, profile_path, tmp_path):
    from sim.run import simulate, write_outputs
    cfg = make_config("+trace=poisson", "model=tiny", "cluster=cpu2", "predictor=profiled",
                      f"predictor.profile_path={profile_path}", "memory.kv_cache_gib=0.25",
                      "trace.max_requests=60", "trace.lengths.kind=uniform",
                      "trace.lengths.prompt_tokens=20", "trace.lengths.prompt_tokens_max=400",
                      "trace.lengths.output_tokens=4", "trace.lengths.output_tokens_max=60",
                      "scheduler.max_num_batched_tokens=512", "output.plots=false",
                      "output.print_summary=false")
    result, wall_s = simulate(cfg)
    assert cfg.switch.flip_s == 6e-4  # the profile's measured flip
    doc = write_outputs(cfg, result, wall_s, tmp_path / "run")
    report = doc["run"]["predictor_report"]
    assert doc["run"]["predictor"] == "profiled" and report["profile"] == str(profile_path)
    assert all(r.status.value == "finished" for r in result.requests)


def test_profiled_without_a_path_is_a_config_error(make_config):
    from sim.config import ConfigError
    with pytest.raises(ConfigError, match="profile_path"):
        make_config("+trace=poisson", "predictor=profiled", "predictor.profile_path=null")


SMALL_POISSON = ("+trace=poisson", "model=tiny", "cluster=cpu2", "predictor=profiled",
                 "memory.kv_cache_gib=0.25", "trace.max_requests=40",
                 "trace.lengths.kind=uniform", "trace.lengths.prompt_tokens=20",
                 "trace.lengths.prompt_tokens_max=200", "trace.lengths.output_tokens=4",
                 "trace.lengths.output_tokens_max=30", "output.plots=false",
                 "output.print_summary=false")


def test_client_overhead_shifts_first_token_and_finish_only(make_config, tmp_path):
    """Records as a client sees them: TTFT and E2E grow by the width's measured overhead,
    TPOT and the server-side run (step count, switches) do not change."""
    from sim.run import records_frame, simulate
    doc = profile_doc()
    doc["serving"] = {"client_overhead_s": {"1": {"mean_s": 0.004, "median_s": 0.003,
                                                  "requests": 9}}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    runs = {}
    for use in (True, False):
        cfg = make_config(*SMALL_POISSON, f"predictor.profile_path={path}", "policy=static_dp",
                          f"predictor.use_client_overhead={str(use).lower()}")
        result, _ = simulate(cfg)
        runs[use] = (result, records_frame(result))
    (with_result, client), (without_result, server) = runs[True], runs[False]
    assert with_result.num_steps == without_result.num_steps
    assert with_result.predictor_report["client_overhead_s"] == {"1": 0.004}
    assert without_result.predictor_report["client_overhead_s"] == {}
    assert np.allclose(client.ttft_s - server.ttft_s, 0.004)
    assert np.allclose(client.e2e_s - server.e2e_s, 0.004)
    assert np.allclose(client.tpot_s.fillna(0), server.tpot_s.fillna(0))
    assert (client.arrival_s == server.arrival_s).all()


def test_unmeasured_width_takes_the_nearest_overhead():
    from sim.client_view import overhead_for_width
    measured = {1: 0.004, 4: 0.010}
    assert overhead_for_width(measured, 1) == 0.004
    assert overhead_for_width(measured, 2) == 0.004  # as near as 4 in log2: the smaller wins
    assert overhead_for_width(measured, 8) == 0.010


@pytest.mark.parametrize("serving, match", [
    ({"client_overhead_s": {"1": 0.004}}, "mean_s"),
    ({"client_overhead_s": {"0": {"mean_s": 0.004}}}, "width 0"),
    ({"client_overhead_s": {"1": {"mean_s": float("nan")}}}, "width 1"),
])
def test_malformed_client_overhead_is_refused(serving, match):
    from policies.specs import GpuSpec
    doc = {**profile_doc(), "serving": serving, "path": "p.json"}
    gpu = GpuSpec("cpu", 16.0, 2e10, 1e11, "gloo", 5e9)
    with pytest.raises(ProfileError, match=match):
        ProfiledPredictor(doc, TINY, RooflinePredictor(TINY, gpu))


CONTENTION = 0.4  # a step costs 1.4x while another group computes throughout


def contended_profile(others_levels=(0.0, 0.5, 1.0)) -> dict:
    """Width 1 measured alone and beside a busy group (served profiles record ``others_busy``);
    width 2 alone (one group spans the node)."""
    doc = profile_doc()
    steps = []
    for row in doc["steps"]:
        levels = others_levels if row["tp_gpus"] == 1 else (0.0,)
        steps += [{**row, "others_busy": o, "step_s": row["step_s"] * (1 + CONTENTION * o)}
                  for o in levels]
    return {**doc, "steps": steps, "path": "contended.json"}


@pytest.fixture
def contended():
    from policies.specs import GpuSpec
    gpu = GpuSpec("cpu", 16.0, 2e10, 1e11, "gloo", 5e9)
    return ProfiledPredictor(contended_profile(), TINY, RooflinePredictor(TINY, gpu))


def test_fit_recovers_host_contention(contended):
    assert contended.fits[1].contention == pytest.approx(CONTENTION, rel=1e-6)
    assert contended.fits[2].contention == 0.0 and contended.has_contention
    for shape in grid_shapes(1):
        alone, beside = contended.step_time_s(shape), contended.step_time_s(shape, others_busy=1)
        assert alone == pytest.approx(true_step_s(shape), rel=1e-6)
        assert beside == pytest.approx(true_step_s(shape) * (1 + CONTENTION), rel=1e-6)
    report = contended.report()["contention_by_width"]
    assert report["1"] == pytest.approx(CONTENTION) and report["2"] == 0.0


def test_profile_without_contention_prices_as_before(predictor):
    assert not predictor.has_contention
    shape = shape_of(1, [(1, 100)] * 4)
    assert predictor.step_time_s(shape) == predictor.step_time_s(shape, others_busy=0)


def test_contended_decode_run_is_bit_identical_to_single_steps(contended):
    times = contended.decode_run_times_s(1, 4, 400, 20, others_busy=1)
    single = [contended.step_time_s(StepShape(1, 4, 4, 4, 400 + 4 * j, 400 + 4 * j),
                                    others_busy=1) for j in range(20)]
    assert times.tolist() == single


def test_fast_path_is_exactly_stepping_with_contention(make_config, tmp_path):
    """Two DP groups slow each other down: a group's load change cuts the other's decode run
    where a step-by-step engine prices its next step, so both paths give the same records."""
    from sim.run import records_frame, simulate
    path = tmp_path / "contended.json"
    path.write_text(json.dumps(contended_profile()))
    cfg = make_config("+trace=bursty", "trace.duration_s=30", "trace.rate_rps=2",
                      "trace.burst_rate_rps=12", "model=tiny", "cluster=cpu2",
                      "predictor=profiled", f"predictor.profile_path={path}",
                      "memory.kv_cache_gib=0.25", "policy=static_dp",
                      "trace.lengths.kind=uniform", "trace.lengths.prompt_tokens=20",
                      "trace.lengths.prompt_tokens_max=200", "trace.lengths.output_tokens=10",
                      "trace.lengths.output_tokens_max=120", "output.plots=false",
                      "output.print_summary=false")
    fast, _ = simulate(cfg)
    cfg.fast_forward = False
    slow, _ = simulate(cfg)
    assert records_frame(fast).equals(records_frame(slow))
    assert fast.samples == slow.samples
    # and the contention is priced: the same run without it finishes sooner
    path.write_text(json.dumps(contended_profile(others_levels=(0.0,))))
    cfg.fast_forward = True
    alone, _ = simulate(cfg)
    assert records_frame(alone).tpot_s.mean() < records_frame(fast).tpot_s.mean()
