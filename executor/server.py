"""The OpenAI-compatible HTTP server (FastAPI) in front of the coordinator.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (SSE streaming or one JSON
answer, both with ``usage``), ``GET /v1/models``, ``GET /health`` (503 once a worker died),
``GET /metrics`` (Prometheus), and the admin API (``executor.admin``): ``GET /admin/layout``
(layout, switch under way, workers, start-up costs), ``GET /admin/switches`` (the switch
history), ``POST /admin/switch`` (ask for a live switch).
With an API key (``--api-key`` or ``$FLYING_API_KEY``) the ``/v1`` and ``/admin`` routes
need ``Authorization: Bearer KEY``. The coordinator starts with the app (lifespan) and
stops with it, workers included.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from executor.admin import SwitchRequest, add_admin_routes
from executor.coordinator import Coordinator, Rejected, Unavailable
from executor.openai_protocol import (COMPLETION_DEFAULT_MAX_TOKENS, ApiError, ChatRequest,
                                      CompletionRequest, bad_request, chat_prompt_ids,
                                      completion_prompt_ids, generation_params, json_body,
                                      parse_body)
from executor.serve_config import ResolvedModel, ServeConfig
from executor.serving_request import Delta, Failed, Finished, ServingRequest
from executor.tokenizer import Tokenizer

OWNER = "flying-serving"


def create_app(cfg: ServeConfig, model: ResolvedModel, tokenizer: Tokenizer) -> FastAPI:
    coordinator = Coordinator(cfg, model, tokenizer)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await coordinator.start()
        try:
            yield
        finally:
            await coordinator.shutdown()

    app = FastAPI(title="Flying Serving", lifespan=lifespan)
    app.state.coordinator = coordinator
    api = OpenAIApi(coordinator, cfg.api_key)
    auth = [Depends(api.check_api_key)]
    app.add_api_route("/v1/completions", api.completions, methods=["POST"], dependencies=auth)
    app.add_api_route("/v1/chat/completions", api.chat, methods=["POST"], dependencies=auth)
    app.add_api_route("/v1/models", api.models, methods=["GET"], dependencies=auth)
    add_admin_routes(app, coordinator, auth)
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/metrics", api.metrics, methods=["GET"])
    _install_error_handlers(app)
    _document_bodies(app, {"/v1/completions": CompletionRequest,
                           "/v1/chat/completions": ChatRequest,
                           "/admin/switch": SwitchRequest})
    return app


def _document_bodies(app: FastAPI, bodies: dict[str, type[BaseModel]]) -> None:
    """The OpenAI routes and ``POST /admin/switch`` parse their JSON bodies by hand (to
    answer errors in OpenAI's shape, 400 rather than FastAPI's 422), so FastAPI cannot see
    them: add each body's JSON schema to ``/openapi.json``, for clients and for the
    schemathesis fuzz (tests/executor/test_fuzz.py)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()  # FastAPI's, cached in app.openapi_schema
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for path, model in bodies.items():
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
                ref = {"$ref": f"#/components/schemas/{model.__name__}"}
                schema["paths"][path]["post"]["requestBody"] = {
                    "required": True, "content": {"application/json": {"schema": ref}}}
        return app.openapi_schema

    app.openapi = openapi


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        error = ApiError(e.status_code, str(e.detail), code=e.status_code)
        return JSONResponse(error.body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        error = ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")
        return JSONResponse(error.body(), status_code=500)


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class OpenAIApi:
    def __init__(self, coordinator: Coordinator, api_key: str | None) -> None:
        self.c = coordinator
        self.api_key = api_key
        self.model_name = coordinator.model.served_name
        self.created = int(time.time())

    # --- auth and common checks ----------------------------------------------------------
    async def check_api_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(),
                                                                     self.api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def _body(self, request: Request) -> object:
        return json_body(await request.body())

    def _check_model(self, name: str) -> None:
        if name != self.model_name:
            raise ApiError(404, f"The model `{name}` does not exist; this server serves "
                           f"`{self.model_name}`.", param="model", code="model_not_found")

    def _check_prompt_fits(self, prompt_ids: list[int], param: str) -> None:
        if len(prompt_ids) >= self.c.max_model_len:
            raise bad_request(f"the prompt has {len(prompt_ids)} tokens; this model's maximum "
                              f"context length is {self.c.max_model_len} tokens, prompt and "
                              f"completion together", param)

    def _submit(self, prompt_ids: list[int], params) -> ServingRequest:
        try:
            return self.c.submit(prompt_ids, params)
        except Rejected as e:
            raise bad_request(str(e), e.param) from None
        except Unavailable as e:
            raise ApiError(503, f"the server cannot take requests: {e}",
                           type="service_unavailable", code=503) from None

    # --- routes --------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        req = parse_body(CompletionRequest, await self._body(request))
        self._check_model(req.model)
        prompt_ids = completion_prompt_ids(req, self.c.tokenizer)
        self._check_prompt_fits(prompt_ids, "prompt")
        params = generation_params(req, max_tokens=req.max_tokens,
                                   default_max_tokens=COMPLETION_DEFAULT_MAX_TOKENS,
                                   vocab_size=self.c.model.config.vocab_size)
        sr = self._submit(prompt_ids, params)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": self.model_name}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._sse(self._completion_chunks(sr, head, include_usage), sr, request)
        end = await self._result_or_abort(request, sr)
        choice = {"index": 0, "text": sr.output.text, "logprobs": None,
                  "finish_reason": end.reason}
        return JSONResponse({**head, "object": "text_completion", "choices": [choice],
                             "usage": usage(end.prompt_tokens, end.completion_tokens)})

    async def chat(self, request: Request) -> Response:
        req = parse_body(ChatRequest, await self._body(request))
        self._check_model(req.model)
        prompt_ids = chat_prompt_ids(req, self.c.tokenizer)
        self._check_prompt_fits(prompt_ids, "messages")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None \
            else req.max_tokens
        params = generation_params(req, max_tokens=max_tokens,
                                   default_max_tokens=self.c.max_model_len - len(prompt_ids),
                                   vocab_size=self.c.model.config.vocab_size)
        sr = self._submit(prompt_ids, params)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": self.model_name}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._sse(self._chat_chunks(sr, head, include_usage), sr, request)
        end = await self._result_or_abort(request, sr)
        choice = {"index": 0, "message": {"role": "assistant", "content": sr.output.text},
                  "logprobs": None, "finish_reason": end.reason}
        return JSONResponse({**head, "object": "chat.completion", "choices": [choice],
                             "usage": usage(end.prompt_tokens, end.completion_tokens)})

    async def models(self) -> dict:
        card = {"id": self.model_name, "object": "model", "created": self.created,
                "owned_by": OWNER, "max_model_len": self.c.max_model_len}
        return {"object": "list", "data": [card]}

    async def health(self) -> JSONResponse:
        report = self.c.health()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    async def metrics(self) -> Response:
        return Response(generate_latest(self.c.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # --- answers -------------------------------------------------------------------------
    async def _result_or_abort(self, request: Request, sr: ServingRequest) -> Finished:
        """Wait for the end of ``sr``; abort it if the client disconnects first."""
        result = asyncio.ensure_future(_last_event(sr))
        gone = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not result.done():
            result.cancel()
            self.c.abort(sr.request_id)
            raise ApiError(499, "client closed the request")
        end = result.result()
        if isinstance(end, Failed):
            raise ApiError(500, end.message, type="server_error", code=500)
        return end

    def _sse(self, chunks: AsyncIterator[str], sr: ServingRequest,
             request: Request) -> StreamingResponse:
        async def watch() -> None:
            await _disconnected(request)
            self.c.abort(sr.request_id)  # ends the stream below too

        async def body() -> AsyncIterator[str]:
            # A disconnect is noticed by watching the connection, not only when a write
            # fails: a queued request writes nothing for a while.
            watcher = asyncio.ensure_future(watch())
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                watcher.cancel()
                if not sr.done:
                    self.c.abort(sr.request_id)

        return StreamingResponse(body(), media_type="text/event-stream")

    async def _completion_chunks(self, sr: ServingRequest, head: dict,
                                 include_usage: bool) -> AsyncIterator[str]:
        head = {**head, "object": "text_completion"}

        def chunk(text: str, reason: str | None) -> str:
            return sse({**head, "choices": [{"index": 0, "text": text, "logprobs": None,
                                             "finish_reason": reason}]})

        async for event in sr.stream():
            if isinstance(event, Delta):
                # One chunk per token, as vLLM does, even when its text is still empty (held
                # back by a possible stop string, or a token that decodes to nothing): a
                # client timestamps tokens, not text.
                yield chunk(event.text, None)
            elif isinstance(event, Finished):
                yield chunk("", event.reason)
                if include_usage:
                    yield sse({**head, "choices": [],
                               "usage": usage(event.prompt_tokens, event.completion_tokens)})
            else:
                yield sse(ApiError(500, event.message, type="server_error", code=500).body())
        yield sse("[DONE]")

    async def _chat_chunks(self, sr: ServingRequest, head: dict,
                           include_usage: bool) -> AsyncIterator[str]:
        head = {**head, "object": "chat.completion.chunk"}

        def chunk(delta: dict, reason: str | None) -> str:
            return sse({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": reason}]})

        yield chunk({"role": "assistant", "content": ""}, None)
        async for event in sr.stream():
            if isinstance(event, Delta):
                yield chunk({"content": event.text}, None)  # one per token, as above
            elif isinstance(event, Finished):
                yield chunk({}, event.reason)
                if include_usage:
                    yield sse({**head, "choices": [],
                               "usage": usage(event.prompt_tokens, event.completion_tokens)})
            else:
                yield sse(ApiError(500, event.message, type="server_error", code=500).body())
        yield sse("[DONE]")


async def _last_event(sr: ServingRequest) -> Finished | Failed:
    async for event in sr.stream():
        if not isinstance(event, Delta):
            return event
    raise RuntimeError("a request stream ended without finishing")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
