"""Schemathesis fuzz of our server's OpenAPI schema (``/openapi.json``) against a live
server: every operation, schema-valid (positive) and schema-breaking (negative) requests,
a few hundred in all. No answer may be a 5xx, a 4xx must be an OpenAI-shaped error, no
stream may fail after its 200, and the server must stay healthy after every case and idle
at the end.

The admin API is fuzzed too: on two ranks, so that the generated ``POST /admin/switch``
bodies (``executor.admin.SwitchRequest``'s schema) really switch the server between DP2 and
TP2 (every strategy), besides being refused (400/409) for a target it cannot make.

The tiny named model with ``max_model_len`` 128 keeps any generated request cheap. Half the
generated bodies are steered toward a generation (``toward_generation``) so that they reach
tokenization, sampling and decoding rather than stopping at the model check, and half the
schema-valid switch bodies toward a target of this node (``toward_switch``). Deterministic:
Hypothesis is derandomized and keeps no example database.
"""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without the extra)

import json
import time
import urllib.error
import urllib.request

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.executor.serving import ServerThread, serve_config  # noqa: E402

MAX_MODEL_LEN = 128
NUM_RANKS = 2  # layouts to switch between: DP2 and TP2
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
# Generated cases per operation and mode. Operations without parameters or a body have
# one distinct request and stop after it; the two generation routes take most of the budget.
EXAMPLES = {POSITIVE: 120, NEGATIVE: 80}
EXAMPLES_OF = {"POST /admin/switch": {POSITIVE: 60, NEGATIVE: 40}}
REQUEST_TIMEOUT_S = 30.0  # a hang counts as a failure
CORE_OPERATIONS = {"POST /v1/completions", "POST /v1/chat/completions", "GET /v1/models",
                   "GET /health", "GET /metrics", "GET /admin/layout", "GET /admin/switches",
                   "POST /admin/switch"}


@pytest.fixture(scope="module")
def server():
    cfg = serve_config("tiny", num_ranks=NUM_RANKS, max_model_len=MAX_MODEL_LEN, max_num_seqs=8)
    with ServerThread(cfg) as s:
        yield s


@pytest.fixture(scope="module")
def operations(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


# Fields the server refuses unless left at their default (n > 1, logprobs, penalties, ...):
# valid by the schema, so a positive case carries some of them most of the time.
REFUSED_FIELDS = ("n", "best_of", "echo", "suffix", "logprobs", "top_logprobs", "tools",
                  "presence_penalty", "frequency_penalty", "logit_bias", "response_format")
MAX_TOKENS_CAP = 8
VOCAB_SIZE = 256  # conf/model/tiny.yaml


def toward_generation(case, steer: bool, model: str):
    """For half the cases, steer the body toward a generation: the served model's name, no
    field the server refuses by design, and a short answer (a long one only costs time)."""
    body = case.body
    if not (steer and isinstance(body, dict) and "model" in body):
        return case
    body["model"] = model
    for name in REFUSED_FIELDS:
        body.pop(name, None)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS_CAP:
            body[name] = value % MAX_TOKENS_CAP + 1
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS_CAP
    if "prompt" in body:
        body["prompt"] = _one_prompt(body["prompt"])
    return case


def _one_prompt(prompt):
    """One non-empty prompt (the server takes no batch), token ids inside the vocabulary."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)):
        prompt = prompt[0]
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return [abs(t) % VOCAB_SIZE for t in prompt] or [1]
    return prompt or "hello"


def toward_switch(case, steer: bool):
    """For half the schema-valid switch bodies, a target this node can make: a width (or
    ``engines_per_group``) of 1 or 2 ranks, groups that partition them (generated ones are
    long lists of large ranks, refused). The server then switches between DP2 and TP2, or
    answers 409 when it is in the target already."""
    body = case.body
    if not (steer and isinstance(body, dict)):
        return case
    for name in ("width", "engines_per_group"):
        value = body.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1:
            body[name] = (int(value) - 1) % NUM_RANKS + 1
    if isinstance(body.get("groups"), list):
        body["groups"] = [[0], [1]] if len(body["groups"]) % 2 else [[0, 1]]
    return case


def check_answer(response, label: str) -> None:
    status = response.status_code
    assert status < 500, f"{label}: HTTP {status}: {response.text[:500]}"
    if 400 <= status < 500:  # every refusal in OpenAI's error shape, with a message
        error = response.json().get("error")
        assert isinstance(error, dict) and isinstance(error.get("message"), str), \
            f"{label}: HTTP {status} not in OpenAI's error shape: {response.text[:300]}"
    content_type = response.headers.get("content-type") or [""]  # schemathesis: a list
    if "text/event-stream" in str(content_type):
        # A stream that fails after its 200 says so in an event: none may.
        assert '"error"' not in response.text, f"{label}: error in the stream: {response.text}"


def check_healthy(server, label: str) -> None:
    """After every case, so that a request that kills a worker is the one reported. (urllib:
    a fresh connection is quicker here than an httpx client made per call.)"""
    try:
        with urllib.request.urlopen(f"{server.url}/health", timeout=REQUEST_TIMEOUT_S):
            pass
    except urllib.error.HTTPError as e:
        pytest.fail(f"after {label}: the server is down: HTTP {e.code} {e.read()[:300]!r}")


def fuzz_operation(operation, mode, server, counts: dict) -> None:
    label = operation.label

    @settings(max_examples=EXAMPLES_OF.get(label, EXAMPLES)[mode], derandomize=True,
              database=None, deadline=None, phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), steer=st.booleans())
    def run(case, steer):
        case = toward_generation(case, steer, server.model_name)
        if label == "POST /admin/switch" and mode is POSITIVE:
            case = toward_switch(case, steer)
        response = case.call(base_url=server.url, timeout=REQUEST_TIMEOUT_S)
        counts[response.status_code // 100] = counts.get(response.status_code // 100, 0) + 1
        check_answer(response, label)
        check_healthy(server, label)

    try:
        run()
    except schemathesis.errors.SchemathesisError as e:  # pragma: no cover
        pytest.fail(f"{label} ({mode.value}): schemathesis could not generate cases: {e}")


def test_fuzz_every_operation_gets_no_server_error(server, operations):
    labels = {op.label for op in operations}
    assert CORE_OPERATIONS <= labels, labels
    assert all(_has_input(op) for op in operations if op.method.upper() == "POST")  # bodies
    counts: dict[int, int] = {}
    started = time.monotonic()
    for operation in operations:
        for mode in EXAMPLES:
            if mode is schemathesis.GenerationMode.NEGATIVE and not _has_input(operation):
                continue  # nothing to break in a request without parameters or a body
            fuzz_operation(operation, mode, server, counts)
    total = sum(counts.values())
    assert total >= 300, counts  # a few hundred requests, not a handful
    assert counts.get(2, 0) >= 20, counts  # enough of them got through to generation
    # Still serving, nothing left running or holding KV, no switch under way or queued.
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    deadline = time.monotonic() + 10.0
    while not _idle(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _idle(server)
    switches = httpx.get(f"{server.url}/admin/switches").json()["switches"]
    done = [s for s in switches if s["state"] == "done"]
    assert done, switches  # the generated switch bodies did switch the server
    print(f"fuzz: {total} requests by status class {counts}, {len(done)} switches done, in "
          f"{time.monotonic() - started:.1f} s")


def _has_input(operation) -> bool:
    return bool(operation.body) or any(True for _ in operation.iter_parameters())


def _idle(server) -> bool:
    now = httpx.get(f"{server.url}/admin/layout").json()
    return now["pending_switch"] is None and not now["queued_switches"] and not now["paused"] \
        and all(g["running"] == g["waiting"] == g["kv_blocks_used"] == 0 for g in now["groups"])


# Found by fuzzing (the generated cases above, and probing around what they hit): each of
# these was a 5xx or crashed the worker that sampled it, taking the whole server down.
FOUND = {
    "top_k beyond int64": ("/v1/completions", {"prompt": "hi", "top_k": 2**70}),
    "lone surrogate in the prompt": ("/v1/completions", {"prompt": "\ud800"}),
    "lone surrogate, streamed": ("/v1/completions", {"prompt": "a\udfff", "stream": True}),
    "lone surrogate in a chat": ("/v1/chat/completions",
                                 {"messages": [{"role": "user", "content": "\ud800"}]}),
}


@pytest.mark.parametrize("name", FOUND)
def test_inputs_found_by_fuzzing_are_answered_and_harmless(server, name):
    path, body = FOUND[name]
    raw = json.dumps({"model": server.model_name, "max_tokens": 4, **body})  # keeps \ud800
    response = httpx.post(f"{server.url}{path}", content=raw, timeout=REQUEST_TIMEOUT_S,
                          headers={"content-type": "application/json"})
    check_answer(response, name)
    check_healthy(server, name)


# The same for the admin API, found probing around the generated switch bodies: a body nested
# deeper than the JSON parser goes was a 500 (a RecursionError); lone surrogates were already
# refused (pydantic), kept here as guards.
ADMIN_FOUND = {
    "nested deeper than the JSON parser goes": ("[" * 100_000, "nested too deeply"),
    "lone surrogate in the reason": (json.dumps({"layout": "tp", "reason": "\ud800"}),
                                     "reason: Input should be a valid string"),
    "lone surrogate in an unknown field": (json.dumps({"layout": "tp", "\udfff": 1}),
                                           "Input should be a valid string"),
}


@pytest.mark.parametrize("name", ADMIN_FOUND)
def test_admin_inputs_found_by_fuzzing_are_refused_and_harmless(server, name):
    raw, message = ADMIN_FOUND[name]
    before = httpx.get(f"{server.url}/admin/switches").json()["switches"]
    response = httpx.post(f"{server.url}/admin/switch", content=raw, timeout=REQUEST_TIMEOUT_S,
                          headers={"content-type": "application/json"})
    check_answer(response, name)
    assert response.status_code == 400 and message in response.json()["error"]["message"], \
        response.text
    check_healthy(server, name)
    assert httpx.get(f"{server.url}/admin/switches").json()["switches"] == before


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_too_deeply_nested_bodies_are_a_400_on_the_openai_routes(server, path):
    """The same RecursionError on the OpenAI routes' own body parsing (was a 500)."""
    response = httpx.post(f"{server.url}{path}", content="[" * 100_000,
                          timeout=REQUEST_TIMEOUT_S, headers={"content-type": "application/json"})
    check_answer(response, path)
    assert response.status_code == 400 and "nested too deeply" in response.json()["error"][
        "message"], response.text
    check_healthy(server, path)
