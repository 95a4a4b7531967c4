"""``python -m executor serve`` as a real process (DP=2 on gloo): a worker killed mid-answer
fails its own request with an error at once, the other engine's request still finishes,
/health turns 503 and new requests get 503; SIGTERM then stops the server with no process
left behind and writes the per-request records."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without the extra)

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from analysis.load import load_run  # noqa: E402
from tests.executor.serving import free_port, make_served_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
API_KEY = "cli-key"
DEADLINE_S = 60.0


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, parent in parents.items() if parent in frontier}
        found |= children
        frontier = children
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for_health(proc: subprocess.Popen, url: str, log: Path) -> dict:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return get(url + "/health")[1]
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    pytest.fail(f"the server did not come up within {DEADLINE_S} s:\n{log.read_text()}")


def stream_in_thread(client, model: str, results: list, first_chunk: threading.Event):
    def run():
        try:
            stream = client.completions.create(model=model, prompt="Hello world!",
                                               max_tokens=200, temperature=0, stream=True,
                                               extra_body={"ignore_eos": True})
            reason = None
            for chunk in stream:
                first_chunk.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    reason = chunk.choices[0].finish_reason
            results.append(reason)
        except openai.APIError as e:
            results.append(e)
            first_chunk.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_killed_worker_fails_its_requests_and_shutdown_leaves_nothing(tmp_path):
    model = make_served_model(tmp_path / "model")
    port, log, out_dir = free_port(), tmp_path / "server.log", tmp_path / "run"
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "executor", "serve", "--model", str(model), "--layout", "dp",
           "--num-ranks", "2", "--port", str(port), "--threads-per-rank", "1",
           "--kv-cache-mib", "16", "--output-dir", str(out_dir), "--log-level", "warning"]
    env = {**os.environ, "FLYING_API_KEY": API_KEY}
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=log_file)
    family: set[int] = set()
    try:
        health = wait_for_health(proc, url, log)
        family = descendants(proc.pid)
        pids = {w["rank"]: w["pid"] for w in health["workers"]}
        assert health["status"] == "ok" and set(pids.values()) <= family
        client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0,
                               timeout=DEADLINE_S)
        results: list = []
        started = [threading.Event(), threading.Event()]
        threads = [stream_in_thread(client, model.name, results, e) for e in started]
        assert all(e.wait(DEADLINE_S) for e in started)
        os.kill(pids[0], signal.SIGKILL)  # engine e0 dies mid-answer
        for t in threads:
            t.join(DEADLINE_S)
        errors = [r for r in results if isinstance(r, Exception)]
        assert len(errors) == 1 and "worker 0" in str(errors[0]), results
        assert "length" in results  # engine e1 finished its answer
        status, health = get(url + "/health")
        assert status == 503 and health["status"] == "unhealthy" and "worker 0" in \
            health["reason"]
        with pytest.raises(openai.InternalServerError) as refused:
            client.completions.create(model=model.name, prompt="x", max_tokens=1)
        assert refused.value.status_code == 503

        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit -15).
        assert proc.wait(DEADLINE_S) in (0, -signal.SIGTERM), log.read_text()
        deadline = time.monotonic() + 10
        while any(alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in family if alive(p)], "processes outlived the server"
        run = load_run(out_dir)  # the simulator's run-directory format
        records = run["requests"]
        assert sorted(records.status) == ["finished", "unfinished"]
        assert set(records.backend) == {"executor"}
        assert run["summary"]["startup"]["comm_pool_groups"] == 1  # the group {0, 1}
        steps = pd.read_parquet(out_dir / "steps.parquet")
        assert (steps.step_s > 0).all() and steps.host_s.dropna().ge(0).all()
        assert steps.host_s.notna().any()  # back-to-back decode steps measure their host time
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in family:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
