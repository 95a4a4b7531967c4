"""OpenAI request bodies -> (prompt ids, ``GenerationParams``), and OpenAI-shaped errors.

Parsing is pydantic; every refusal is an ``ApiError`` that the server turns into
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status, never a traceback.
Options that would change the answer and are not implemented (n > 1, logprobs, echo,
penalties, tools, ...) are refused rather than ignored. vLLM-style extras: ``top_k``,
``ignore_eos``, ``stop_token_ids``; Flying Serving extras: ``priority`` (an int, vLLM's
meaning: lower is more urgent, negative = the priority class; or the class name "priority" /
"normal") and ``slo`` (``{"ttft_s": ..., "tpot_s": ...}``, recorded per request).
"""
from __future__ import annotations

import json

import math
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from executor.sampling_params import SamplingParams
from executor.serving_request import GenerationParams
from executor.tokenizer import Tokenizer, TokenizerError

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's legacy completions default


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 type: str = "invalid_request_error", code: str | int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, \
            type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def json_body(raw: bytes) -> object:
    """A request body as JSON, or a 400 saying why not (never a 500: a body nested deeper
    than the parser goes raises RecursionError)."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise bad_request("the request body is not valid JSON: nested too deeply") from None


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


# --- request bodies --------------------------------------------------------------------------
class StreamOptions(BaseModel):
    include_usage: bool = False


class Slo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttft_s: float | None = Field(default=None, gt=0)
    tpot_s: float | None = Field(default=None, gt=0)


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    priority: Union[int, str, None] = None
    slo: Slo | None = None


class CompletionRequest(_Common):
    prompt: Union[str, list[int], list[str], list[list[int]]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Union[str, list[dict[str, Any]], None] = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


def parse_body(cls: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise bad_request(f"{param}: {first['msg']}" if param else first["msg"], param) from None


# --- prompts ---------------------------------------------------------------------------------
def completion_prompt_ids(req: CompletionRequest, tokenizer: Tokenizer) -> list[int]:
    prompt = req.prompt
    if isinstance(prompt, list):
        if not prompt:
            raise bad_request("prompt is empty", "prompt")
        if isinstance(prompt[0], (str, list)):
            if len(prompt) > 1:
                raise bad_request("one prompt per request (batched prompts are not supported)",
                                  "prompt")
            prompt = prompt[0]
    if isinstance(prompt, str):
        return encode_text(tokenizer, prompt, "prompt", add_special_tokens=True)
    return list(prompt)


def chat_prompt_ids(req: ChatRequest, tokenizer: Tokenizer) -> list[int]:
    messages = [{"role": m.role, "content": _message_text(m, i)}
                for i, m in enumerate(req.messages)]
    try:
        text = tokenizer.render_chat(messages)
    except TokenizerError as e:
        raise bad_request(str(e), "messages") from None
    # The template writes the special tokens itself (BOS included), as transformers'
    # apply_chat_template(tokenize=True) assumes.
    return encode_text(tokenizer, text, "messages", add_special_tokens=False)


def encode_text(tokenizer: Tokenizer, text: str, param: str, *,
                add_special_tokens: bool) -> list[int]:
    """Token ids of ``text``; a 400 for text that is not valid Unicode. JSON may carry a
    lone surrogate ("\\ud800"), which no tokenizer can encode (found by the schemathesis
    fuzz: it was a 500)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad_request(f"{param} is not valid Unicode text: {e.reason} at character "
                          f"{e.start}", param) from None
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


def _message_text(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise bad_request(f"messages[{index}]: only text content parts are supported, got "
                              f"type {part.get('type')!r}", f"messages.{index}.content")
        parts.append(part["text"])
    return "".join(parts)


# --- generation parameters -------------------------------------------------------------------
def generation_params(req: _Common, *, max_tokens: int | None, default_max_tokens: int,
                      vocab_size: int) -> GenerationParams:
    _refuse_unsupported(req)
    if max_tokens is None:
        max_tokens = default_max_tokens
    if max_tokens < 1:
        raise bad_request(f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
    temperature = 1.0 if req.temperature is None else req.temperature
    if not math.isfinite(temperature) or temperature < 0:
        raise bad_request(f"temperature must be a finite number >= 0, got {temperature}",
                          "temperature")
    top_p = 1.0 if req.top_p is None else req.top_p
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise bad_request(f"top_p must be in (0, 1], got {top_p}", "top_p")
    top_k = 0 if req.top_k in (None, -1) else req.top_k  # vLLM: -1 disables top-k
    if top_k < 0:
        raise bad_request(f"top_k must be -1, 0 (disabled) or positive, got {req.top_k}",
                          "top_k")
    # Keeping the whole vocabulary is no top-k; and a k beyond int64 used to crash the
    # worker that sampled it, taking the server down (found by the schemathesis fuzz).
    top_k = 0 if top_k >= vocab_size else top_k
    stop_ids = frozenset(req.stop_token_ids or ())
    if any(not 0 <= t < vocab_size for t in stop_ids):
        raise bad_request(f"stop_token_ids must be in [0, {vocab_size})", "stop_token_ids")
    slo = req.slo or Slo()
    return GenerationParams(
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k,
                                seed=req.seed),
        stop=(req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ()),
        stop_token_ids=stop_ids, ignore_eos=req.ignore_eos,
        request_class=request_class(req.priority), ttft_slo_s=slo.ttft_s,
        tpot_slo_s=slo.tpot_s)


def request_class(priority: int | str | None) -> str:
    if priority is None:
        return "normal"
    if isinstance(priority, str):
        if priority not in ("normal", "priority"):
            raise bad_request(f"priority must be an integer, 'normal' or 'priority', got "
                              f"{priority!r}", "priority")
        return priority
    return "priority" if priority < 0 else "normal"  # vLLM: lower is more urgent


def _refuse_unsupported(req: _Common) -> None:
    def refuse(param: str, what: str) -> None:
        raise bad_request(f"{what} is not supported by this server", param)

    if req.n != 1:
        refuse("n", "n != 1")
    if req.presence_penalty not in (None, 0):
        refuse("presence_penalty", "a presence penalty")
    if req.frequency_penalty not in (None, 0):
        refuse("frequency_penalty", "a frequency penalty")
    if req.logit_bias:
        refuse("logit_bias", "logit_bias")
    if isinstance(req, CompletionRequest):
        if req.echo:
            refuse("echo", "echo")
        if req.suffix:
            refuse("suffix", "suffix")
        if req.best_of not in (None, 1):
            refuse("best_of", "best_of != 1")
        if req.logprobs:
            refuse("logprobs", "logprobs")
    if isinstance(req, ChatRequest):
        if req.logprobs or req.top_logprobs:
            refuse("logprobs", "logprobs")
        if req.tools:
            refuse("tools", "tool calling")
        if req.response_format and req.response_format.get("type") not in (None, "text"):
            refuse("response_format", "a structured response_format")

