"""OpenAI request parsing and validation: bad input is an ApiError with a 4xx status."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without the extra)

import pytest

from executor.openai_protocol import (ApiError, ChatRequest, CompletionRequest,
                                      chat_prompt_ids, completion_prompt_ids,
                                      generation_params, parse_body, request_class)
from executor.tokenizer import ByteTokenizer

VOCAB = 256


def params(body: dict, cls=CompletionRequest):
    req = parse_body(cls, {"model": "m", "prompt": "x", **body})
    return generation_params(req, max_tokens=req.max_tokens, default_max_tokens=16,
                             vocab_size=VOCAB)


def refused(body: dict, cls=CompletionRequest) -> ApiError:
    with pytest.raises(ApiError) as info:
        params(body, cls)
    assert 400 <= info.value.status < 500
    return info.value


def test_defaults_follow_openai():
    p = params({})
    assert p.max_tokens == 16 and p.sampling.temperature == 1.0 and p.sampling.top_p == 1.0
    assert p.request_class == "normal" and p.stop == ()


def test_extras_map_to_generation_params():
    p = params({"temperature": 0, "top_k": -1, "seed": 7, "stop": "END", "ignore_eos": True,
                "stop_token_ids": [3], "priority": -1, "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
                "max_tokens": 4})
    assert p.sampling.is_greedy and p.sampling.top_k == 0 and p.sampling.seed == 7
    assert (p.stop, p.stop_token_ids, p.ignore_eos) == (("END",), frozenset({3}), True)
    assert (p.request_class, p.ttft_slo_s, p.tpot_slo_s, p.max_tokens) == \
        ("priority", 0.5, 0.05, 4)


@pytest.mark.parametrize("body, param", [
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": -3}, "max_tokens"),
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"), ({"n": 2}, "n"), ({"logprobs": 1}, "logprobs"),
    ({"echo": True}, "echo"), ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"stop_token_ids": [VOCAB]}, "stop_token_ids"), ({"priority": "urgent"}, "priority"),
    ({"slo": {"ttft_s": -1}}, "slo.ttft_s"), ({"temperature": "hot"}, "temperature"),
])
def test_bad_values_name_their_parameter(body, param):
    error = refused(body)
    assert error.status == 400 and error.param == param
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


def test_body_must_be_an_object_with_a_model():
    with pytest.raises(ApiError, match="JSON object"):
        parse_body(CompletionRequest, ["not", "an", "object"])
    with pytest.raises(ApiError) as info:
        parse_body(CompletionRequest, {"prompt": "x"})
    assert info.value.param == "model"


def test_prompt_forms():
    tok = ByteTokenizer()

    def ids(prompt):
        return completion_prompt_ids(parse_body(CompletionRequest, {"model": "m",
                                                                    "prompt": prompt}), tok)

    assert ids("hi") == [104, 105] == ids(["hi"]) == ids([104, 105]) == ids([[104, 105]])
    with pytest.raises(ApiError, match="one prompt"):
        ids(["a", "b"])
    with pytest.raises(ApiError, match="empty"):
        ids([])


def test_chat_messages_render_through_the_template():
    req = parse_body(ChatRequest, {"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    text = bytes(chat_prompt_ids(req, ByteTokenizer())).decode()
    assert text == "system: be brief\nuser: hi\nassistant:"
    image = {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
    with pytest.raises(ApiError, match="only text"):
        chat_prompt_ids(parse_body(ChatRequest, image), ByteTokenizer())
    with pytest.raises(ApiError):
        parse_body(ChatRequest, {"model": "m", "messages": []})


def test_priority_classes():
    assert [request_class(p) for p in (None, 0, 5, -1, "priority", "normal")] == \
        ["normal", "normal", "normal", "priority", "priority", "normal"]
