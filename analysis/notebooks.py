"""Run the figure notebooks (``notebooks/*.ipynb``) headless, with parameters.

    python -m analysis.notebooks                      # all of them, figures in outputs/figures
    python -m analysis.notebooks load_sweep -p runs_dir=outputs/multirun/2026-01-01/12-00-00
    python -m analysis.notebooks fidelity -p fidelity_dir=outputs/fidelity --out /tmp/figs

Parameters work as papermill's do: a cell tagged ``parameters`` holds the defaults, and the
values given here go into a cell inserted after it (tagged ``injected-parameters``). The
kernel is this interpreter (a kernelspec written to a temporary dir for the run), so it works
from a fresh virtual environment with nothing registered in Jupyter. Needs the ``dev`` extra
(nbclient, nbformat, ipykernel). The executed notebook is returned, never saved over the
source: the committed notebooks carry no outputs.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from analysis.simjobs import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = ("load_sweep", "bursty_timeline", "priority", "max_context", "fidelity")
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


def notebook_path(name: str | Path) -> Path:
    """``notebooks/<name>.ipynb`` for a bare name, else the path as given."""
    path = Path(name)
    if path.suffix != ".ipynb":
        path = NOTEBOOK_DIR / f"{name}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"no notebook {path} (known: {', '.join(NOTEBOOKS)})")
    return path


def inject_parameters(nb, parameters: dict[str, Any]):
    """Insert a cell assigning ``parameters`` right after the cell tagged ``parameters``
    (at the top when none is tagged), as papermill does. Returns ``nb``."""
    import nbformat
    if not parameters:
        return nb
    source = "# Injected parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
    tagged = [i for i, c in enumerate(nb.cells)
              if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])]
    nb.cells.insert(tagged[0] + 1 if tagged else 0, cell)
    return nb


def _write_kernelspec(root: Path, name: str) -> Path:
    """A kernelspec that starts ipykernel with this interpreter."""
    spec_dir = root / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python ({sys.executable})", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return spec_dir.parent


def run_notebook(name: str | Path, parameters: dict[str, Any] | None = None,
                 timeout_s: float = 600.0, cwd: str | Path = REPO_ROOT):
    """Execute a notebook with ``parameters`` and return the executed copy; a failing cell
    raises ``nbclient.exceptions.CellExecutionError`` with the cell's traceback."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.util import run_sync

    nb = inject_parameters(nbformat.read(notebook_path(name), as_version=4), parameters or {})
    with tempfile.TemporaryDirectory(prefix="fs-kernel-") as tmp:
        kernel_name = "flying-serving-python"
        specs = KernelSpecManager(kernel_dirs=[str(_write_kernelspec(Path(tmp), kernel_name))])
        km = AsyncKernelManager(kernel_name=kernel_name, kernel_spec_manager=specs)
        client = NotebookClient(nb, km=km, timeout=timeout_s, kernel_name=kernel_name,
                                resources={"metadata": {"path": str(cwd)}})
        try:
            client.execute()
        finally:  # nbclient leaves a kernel it did not start running
            if km.has_kernel:
                run_sync(km.shutdown_kernel)(now=True)
    return nb


def _parse_value(text: str) -> Any:
    """A parameter value: a Python literal when it parses as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _absolute_paths(key: str, value: Any) -> Any:
    """Dir parameters (``*_dir``, ``*_dirs``) relative to the caller's directory, since the
    kernel runs in the repository root."""
    if not key.endswith(("_dir", "_dirs")):
        return value
    if isinstance(value, str):
        return str(Path(value).resolve())
    if isinstance(value, (list, tuple)):
        return [str(Path(v).resolve()) if isinstance(v, str) else v for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    from nbclient.exceptions import CellExecutionError

    parser = argparse.ArgumentParser(prog="python -m analysis.notebooks",
                                     description="Run the figure notebooks headless.")
    parser.add_argument("names", nargs="*", default=list(NOTEBOOKS),
                        help=f"notebooks to run (default: all of {', '.join(NOTEBOOKS)})")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter for every notebook run (Python literal or string)")
    parser.add_argument("--out", default=None, help="out_dir parameter: where figures go")
    args = parser.parse_args(argv)
    params: dict[str, Any] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--param {item!r}: expected KEY=VALUE")
        params[key] = _absolute_paths(key, _parse_value(value))
    if args.out:
        params["out_dir"] = str(Path(args.out).resolve())
    for name in args.names:
        try:
            run_notebook(name, params)
        except CellExecutionError as e:
            print(f"{notebook_path(name).name} failed:\n{e}", file=sys.stderr)
            return 1
        print(f"ran {notebook_path(name).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
