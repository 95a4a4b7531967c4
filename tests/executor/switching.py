"""Helpers of the live-switching tests: a tiny served model (any KV-head count), a skewed
workload of token-id prompts with its reference outputs, a streaming client, the admin API
over raw HTTP, and bounded waits (a test fails on a time-out, never hangs)."""
from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.executor.serving import ServerThread


def make_switch_model(folder: Path, num_kv_heads: int = 2) -> Path:
    """The serving tests' tiny random Llama and BPE tokenizer, with ``num_kv_heads`` KV
    heads (4 lets four ranks form one TP group: KV heads are never replicated)."""
    from tests.executor.helpers import make_hf_model, save_hf
    from tests.executor.serving import make_tokenizer_folder

    ids = make_tokenizer_folder(folder)
    model = make_hf_model("llama", seed=3, vocab_size=ids["vocab_size"],
                          bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                          num_key_value_heads=num_kv_heads)
    model.generation_config.eos_token_id = ids["eos"]
    return save_hf(model, folder)


# --- workload ------------------------------------------------------------------------------
@dataclass
class Job:
    index: int
    prompt_ids: list[int]
    max_tokens: int
    delay_s: float  # after the previous job was sent
    stop_token_ids: list[int] = field(default_factory=list)  # an early stop if sampled
    priority: str | None = None  # the request class ("priority"), an extra field
    expected_text: str = ""
    expected_tokens: int | None = 0
    expected_reason: str | None = "length"


@dataclass
class Answer:
    text: str = ""
    reason: str | None = None
    completion_tokens: int | None = None
    finish_chunks: int = 0  # chunks that carried a finish reason: exactly one
    error: str | None = None


def skewed_jobs(rng: random.Random, n: int, vocab_size: int, *, duration_s: float,
                long_prompt=0.2, long_output=0.3, burst_every=10,
                stop_fraction=0.3) -> list[Job]:
    """Mostly short prompts and answers, some long ones; arrivals in bursts of
    ``burst_every`` over about ``duration_s``. A share of the jobs may stop early: three
    random stop token ids each (``Scheduler.update``'s early stop when one is sampled)."""
    jobs = []
    gap_s = duration_s / max(1, n // burst_every)
    for i in range(n):
        prompt = rng.randint(100, 240) if rng.random() < long_prompt else rng.randint(2, 24)
        output = rng.randint(20, 48) if rng.random() < long_output else rng.randint(1, 8)
        delay = rng.uniform(0.5, 1.5) * gap_s if i and i % burst_every == 0 \
            else rng.uniform(0.0, 0.02)
        stops = [rng.randrange(2, vocab_size) for _ in range(3)] \
            if rng.random() < stop_fraction else []
        jobs.append(Job(i, [rng.randrange(2, vocab_size) for _ in range(prompt)], output,
                        delay, stops))
    return jobs


def set_expected(jobs: list[Job], answers: list[Answer]) -> None:
    """The reference: each job's answer from the same server while it does not switch."""
    for job, answer in zip(jobs, answers):
        assert answer.error is None and answer.finish_chunks == 1, (job.index, answer)
        job.expected_text, job.expected_reason = answer.text, answer.reason
        job.expected_tokens = answer.completion_tokens


def stream(server: ServerThread, job: Job, timeout_s: float) -> Answer:
    """One streaming completion (ignore_eos: the random model may emit EOS anywhere)."""
    client = server.client(timeout=timeout_s)
    extra = {"ignore_eos": True}
    if job.stop_token_ids:
        extra["stop_token_ids"] = job.stop_token_ids
    if job.priority is not None:
        extra["priority"] = job.priority
    answer = Answer()
    try:
        chunks = client.completions.create(model=server.model_name, prompt=job.prompt_ids,
                                           max_tokens=job.max_tokens, temperature=0,
                                           stream=True, stream_options={"include_usage": True},
                                           extra_body=extra)
        parts = []
        for chunk in chunks:
            if chunk.choices:
                parts.append(chunk.choices[0].text)
                if chunk.choices[0].finish_reason is not None:
                    answer.reason = chunk.choices[0].finish_reason
                    answer.finish_chunks += 1
            if chunk.usage is not None:
                answer.completion_tokens = chunk.usage.completion_tokens
        answer.text = "".join(parts)
    except Exception as e:  # noqa: BLE001 - the test reports it
        answer.error = f"{type(e).__name__}: {e}"
    return answer


# --- admin API and waits ---------------------------------------------------------------------
def http(server: ServerThread, path: str, body: dict | None = None, key: str | None = "",
         raw: bytes | None = None) -> tuple[int, object]:
    """(status, JSON) of a raw request; ``key=""`` uses the server's key, None sends none."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(server.url + path, data=data,
                                 method="POST" if data is not None else "GET")
    req.add_header("Content-Type", "application/json")
    key = server.api_key if key == "" else key
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def wait_for(predicate, timeout_s: float, what: str, period_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(period_s)


def layout(server: ServerThread) -> dict:
    status, body = http(server, "/admin/layout")
    assert status == 200, body
    return body


def settled(server: ServerThread) -> bool:
    """No switch under way or queued."""
    body = layout(server)
    return body["pending_switch"] is None and not body["queued_switches"]


def resume_paused(server: ServerThread) -> bool:
    """If a group holds paused work and no switch is under way, switch to a layout that forms
    it again (its other ranks DP), so its requests resume. True if a switch was started."""
    body = layout(server)
    if body["pending_switch"] is not None or body["queued_switches"] or not body["paused"]:
        return False
    label = next(iter(body["paused"]))
    first, _, last = label[1:].partition("-")
    ranks = list(range(int(first), int(last or first) + 1))
    n = server.coordinator.cfg.num_ranks
    groups = sorted([ranks] + [[r] for r in range(n) if r not in ranks])
    status, answer = http(server, "/admin/switch", {"groups": groups, "strategy": "sequential",
                                                    "reason": f"resume paused on {label}"})
    assert status in (202, 409), answer
    return status == 202


def serve_jobs(server: ServerThread, jobs: list[Job], timeout_s: float,
               paced: bool = True) -> list[Answer]:
    """Stream every job concurrently, each sent ``delay_s`` after the previous one (or all
    at once); every wait is bounded by ``timeout_s`` in all."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = []
        for job in jobs:
            if paced:
                time.sleep(job.delay_s)
            futures.append(pool.submit(stream, server, job, timeout_s))
        return [f.result(timeout=max(1.0, timeout_s - (time.monotonic() - start)))
                for f in futures]


@dataclass
class SwitchLog:
    answers: list[tuple[int, dict]] = field(default_factory=list)

    def accepted(self) -> int:
        return sum(status == 202 for status, _ in self.answers)
