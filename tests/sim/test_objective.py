import json

from sim.objective import ObjectiveConfig, objective_value

METRICS = {"all": {"slo_attainment": 0.9, "output_tokens_per_s": 900.0},
           "priority": {"slo_attainment": None}}


def test_default_is_overall_slo_attainment_and_missing_becomes_a_number():
    assert objective_value(ObjectiveConfig(), METRICS) == 0.9
    assert objective_value(ObjectiveConfig(scope="priority"), METRICS) == 0.0
    assert objective_value(ObjectiveConfig(scope="priority", missing=None), METRICS) is None


def test_throughput_floor_from_a_reference_run(tmp_path):
    ref = tmp_path / "summary.json"
    ref.write_text(json.dumps({"metrics": {"all": {"output_tokens_per_s": 1000.0}}}))
    feasible = ObjectiveConfig(reference_summary=str(ref), min_throughput_ratio=0.9)
    assert objective_value(feasible, METRICS) == 0.9  # 900 >= 0.9 * 1000
    short = ObjectiveConfig(reference_summary=str(ref), min_throughput_ratio=0.95)
    assert objective_value(short, METRICS) == -(950 - 900) / 950  # infeasible: below any feasible
    soft = ObjectiveConfig(min_output_tokens_per_s=1000.0, penalty=2.0)
    assert objective_value(soft, METRICS) == 0.9 - 2.0 * 0.1
