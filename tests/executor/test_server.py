"""The OpenAI-compatible server on one CPU rank, through the official ``openai`` client and
raw HTTP: outputs equal the engine's own greedy output; streaming; stops; 4xx errors in
OpenAI's shape; the API key; metrics; a client that goes away frees its KV."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without the extra)

import time

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from executor.tokenizer import HFTokenizer  # noqa: E402
from tests.executor.serving import ServerThread, direct_greedy, make_served_model, \
    serve_config  # noqa: E402

API_KEY = "test-key"
PROMPT = "Hello world! How are you today?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_served_model(tmp_path_factory.mktemp("served_model"))


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return HFTokenizer(model_dir)


@pytest.fixture(scope="module")
def server(model_dir):
    with ServerThread(serve_config(model_dir, api_key=API_KEY)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def greedy(client, server, **kw):
    body = {"model": server.model_name, "prompt": PROMPT, "max_tokens": 12, "temperature": 0,
            "extra_body": {"ignore_eos": True}}
    body.update(kw)
    return client.completions.create(**body)


def http(server, path, body=None, key=API_KEY, raw: bytes | None = None):
    """(status, parsed JSON or text) of a raw request (no client-side checks)."""
    from tests.executor.switching import http as raw_http
    return raw_http(server, path, body, key, raw)


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def idle(server) -> bool:
    groups = http(server, "/admin/layout")[1]["groups"]
    return all(g["running"] == g["waiting"] == g["kv_blocks_used"] == 0 for g in groups)


# --- outputs --------------------------------------------------------------------------------
def test_greedy_completion_equals_the_engines_direct_output(server, client, model_dir,
                                                            tokenizer):
    ids = tokenizer.encode(PROMPT)
    expected = direct_greedy(model_dir, ids, 12)
    out = greedy(client, server)
    assert out.choices[0].text == tokenizer.decode(expected)
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(ids), 12)
    by_ids = greedy(client, server, prompt=ids)  # a prompt of token ids
    assert by_ids.choices[0].text == out.choices[0].text


def test_streaming_adds_up_to_the_same_text_with_usage(server, client):
    whole = greedy(client, server).choices[0].text
    chunks = list(greedy(client, server, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text == whole and reasons[-1] == "length" and set(reasons[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []


def test_chat_uses_the_folders_template(server, client, model_dir, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    ids = tokenizer.encode(tokenizer.render_chat(messages), add_special_tokens=False)
    assert ids[0] == tokenizer.backend.token_to_id("<s>")  # from the template, once
    expected = tokenizer.decode(direct_greedy(model_dir, ids, 8))
    common = dict(model=server.model_name, messages=messages, max_tokens=8, temperature=0,
                  extra_body={"ignore_eos": True})
    out = client.chat.completions.create(**common)
    assert out.choices[0].message.content == expected and out.usage.prompt_tokens == len(ids)
    chunks = list(client.chat.completions.create(stream=True, **common))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_string_and_stop_token_end_early_and_free_the_kv(server, client, model_dir,
                                                               tokenizer):
    ids = direct_greedy(model_dir, tokenizer.encode(PROMPT), 12)
    text = tokenizer.decode(ids)
    stop = text[4:7]
    out = greedy(client, server, stop=[stop])
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].text == text[:text.index(stop)]
    k = 5
    out = greedy(client, server, extra_body={"ignore_eos": True, "stop_token_ids": [ids[k]]})
    first = ids.index(ids[k])
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens == first + 1  # the stop token counts, unseen
    assert out.choices[0].text == tokenizer.decode(ids[:first])
    assert wait_until(lambda: idle(server))


def test_priority_and_slo_reach_the_control_plane(server, client):
    greedy(client, server, max_tokens=2,
           extra_body={"ignore_eos": True, "priority": "priority",
                       "slo": {"ttft_s": 5.0, "tpot_s": 1.0}})
    request = server.coordinator.control.requests[-1]
    assert request.request_class == "priority"
    row = request.record("executor")
    assert (row["ttft_slo_s"], row["tpot_slo_s"], row["slo_met"]) == (5.0, 1.0, True)


# --- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("body, param", [
    ({"max_tokens": 0}, "max_tokens"), ({"temperature": -1}, "temperature"),
    ({"top_p": 2}, "top_p"), ({"n": 3}, "n"), ({"max_tokens": 10**6}, "max_tokens"),
    ({"prompt": "word " * 600}, "prompt"), ({"prompt": [10**6]}, "prompt"),
])
def test_bad_requests_are_400_in_openai_shape(server, body, param):
    status, answer = http(server, "/v1/completions",
                          {"model": server.model_name, "prompt": PROMPT, **body})
    assert status == 400, answer
    assert answer["error"]["param"] == param and answer["error"]["type"] == \
        "invalid_request_error"


def test_invalid_json_unknown_model_and_unknown_route(server, client):
    status, answer = http(server, "/v1/completions", raw=b"{not json")
    assert status == 400 and "not valid JSON" in answer["error"]["message"]
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-nope", prompt="x", max_tokens=1)
    assert info.value.body["code"] == "model_not_found"
    status, answer = http(server, "/v1/nowhere")
    assert status == 404 and set(answer["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError):  # the official client sees a 400 too
        client.completions.create(model=server.model_name, prompt=PROMPT, max_tokens=0)


def test_api_key_guards_the_api_but_not_health_or_metrics(server):
    wrong = server.client(api_key="wrong")
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert http(server, "/v1/models", key=None)[0] == 401
    assert http(server, "/health", key=None)[0] == 200
    assert http(server, "/metrics", key=None)[0] == 200
    models = server.client().models.list()
    assert [m.id for m in models.data] == [server.model_name]


# --- observation and disconnects ------------------------------------------------------------
def test_metrics_expose_latency_queue_and_kv(server, client):
    greedy(client, server, max_tokens=3)
    status, text = http(server, "/metrics", key=None)
    for name in ("flying_time_to_first_token_seconds_bucket",
                 "flying_time_per_output_token_seconds_bucket",
                 "flying_e2e_request_latency_seconds_count", "flying_num_requests_waiting",
                 "flying_num_requests_running", "flying_kv_cache_usage_ratio",
                 "flying_generation_tokens_total", "flying_healthy"):
        assert name in text, name
    assert 'flying_healthy{model_name="' + server.model_name + '"} 1.0' in text


def test_a_client_that_goes_away_frees_its_request(server, client):
    long = dict(max_tokens=400, extra_body={"ignore_eos": True})
    stream = greedy(client, server, stream=True, **long)
    next(iter(stream))
    assert not idle(server)
    stream.close()  # streaming client disconnects mid-answer
    assert wait_until(lambda: idle(server)), "the aborted stream still holds KV"
    impatient = server.client(timeout=0.3)
    with pytest.raises(openai.APITimeoutError):  # non-streaming client gives up
        greedy(impatient, server, **long)
    assert wait_until(lambda: idle(server)), "the abandoned request still holds KV"
    assert server.coordinator.requests == {}
    aborted = f'flying_request_failure_total{{model_name="{server.model_name}",reason="abort"}}'
    assert f"{aborted} 2.0" in http(server, "/metrics")[1]  # both were aborted, not finished
    assert greedy(client, server, max_tokens=2).usage.completion_tokens == 2  # still serving
