"""The figure notebooks: stored without outputs, and executed headless on small inputs so
they never rot (each runs its own small simulator sweep, as from a clean clone; the
fidelity one reads a fidelity.csv or run dirs, and runs python -m sim fidelity itself only
in the slow tests)."""
import json
import time

import nbformat
import pandas as pd
import pytest
from nbclient.exceptions import CellExecutionError

from analysis.notebooks import (
    INJECTED_TAG, NOTEBOOK_DIR, NOTEBOOKS, PARAMETERS_TAG, inject_parameters, main, run_notebook,
)
from tests.analysis.rundirs import executor_run, sim_run

PNG = b"\x89PNG"
# Small enough for the default test run (each notebook well under 30 s on the 2-core machine).
SMALL = {
    "load_sweep": {"policies": ["static_dp", "flying"], "rates_rps": [10, 60], "duration_s": 10},
    "bursty_timeline": {"policies": ["flying"], "duration_s": 30},
    "priority": {"policies": ["static_dp", "flying"], "rates_rps": [20, 60], "duration_s": 10},
    "max_context": {"policies": ["static_dp", "flying"], "duration_s": 20, "long_fraction": 0.2},
}


def _notebook(name):
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def test_every_notebook_is_there_and_stored_without_outputs():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)
    for name in NOTEBOOKS:
        raw = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())
        nb = _notebook(name)
        nbformat.validate(nb)
        for cell in raw["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, name
        tagged = [c for c in nb.cells if PARAMETERS_TAG in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "out_dir" in tagged[0].source, name


def test_inject_parameters_after_the_parameters_cell():
    nb = inject_parameters(_notebook("load_sweep"), {"duration_s": 5, "out_dir": "/tmp/x"})
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    i = next(i for i, t in enumerate(tags) if PARAMETERS_TAG in t)
    assert INJECTED_TAG in tags[i + 1]
    assert "duration_s = 5\n" in nb.cells[i + 1].source and "out_dir = '/tmp/x'" in nb.cells[i + 1].source


def _check_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000, path


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs_its_own_sweep_and_writes_its_figure(tmp_path, name):
    start = time.perf_counter()
    run_notebook(name, {**SMALL[name], "out_dir": str(tmp_path)}, timeout_s=300)
    _check_png(tmp_path / f"{name}.png")
    assert (tmp_path / "runs" / name).is_dir()  # the notebook's own runs, under out_dir
    print(f"{name}: {time.perf_counter() - start:.1f} s")


def test_fidelity_notebook_reads_fidelity_csv(tmp_path):
    result = tmp_path / "fidelity_result"
    result.mkdir()
    pd.DataFrame([{"policy": p, "metric": m, "sim": s, "real": r, "error_pct": 100 * (s - r) / r}
                  for p in ("static_dp", "static_tp", "flying")
                  for m, s, r in (("ttft_mean_s", 0.105, 0.1), ("ttft_p90_s", 0.2, 0.21),
                                  ("tpot_mean_s", 0.02, 0.019), ("output_tokens_per_s", 50.0, 48.0),
                                  ("switches", 2, 2))]).to_csv(result / "fidelity.csv", index=False)
    out = tmp_path / "figs"
    assert main(["fidelity", "-p", f"fidelity_dir={str(result)!r}", "--out", str(out)]) == 0
    _check_png(out / "fidelity.png")


def test_fidelity_notebook_builds_the_table_from_runs(tmp_path):
    sim_run(tmp_path / "sim_flying", policy="flying")
    executor_run(tmp_path / "real_flying", policy="flying", switches=1)
    out = tmp_path / "figs"
    run_notebook("fidelity", {"sim_dirs": str(tmp_path / "sim_flying"),
                              "real_dirs": [str(tmp_path / "real_flying")], "out_dir": str(out)})
    _check_png(out / "fidelity.png")
    table = pd.read_csv(out / "fidelity.csv")
    assert table["policy"].unique().tolist() == ["flying"]
    assert table.set_index("metric").loc["switches", ["sim", "real"]].tolist() == [0, 1]


def test_fidelity_notebook_with_one_side_says_what_to_give(tmp_path, capsys):
    assert main(["fidelity", "-p", f"sim_dirs={tmp_path}", "--out", str(tmp_path)]) == 1
    assert "give both sim_dirs and real_dirs" in capsys.readouterr().err


@pytest.mark.slow
def test_fidelity_notebook_runs_sim_fidelity_itself(tmp_path):
    """No input: it runs python -m sim fidelity (executor on CPU ranks) at a tiny size."""
    run_notebook("fidelity", {"policies": ["static_dp"], "out_dir": str(tmp_path)})
    _check_png(tmp_path / "fidelity.png")
    assert (tmp_path / "runs" / "fidelity" / "fidelity.csv").is_file()


def test_a_failing_cell_raises(tmp_path):
    with pytest.raises(CellExecutionError, match="no run in"):
        run_notebook("load_sweep", {"runs_dir": str(tmp_path / "missing"), "out_dir": str(tmp_path)})
