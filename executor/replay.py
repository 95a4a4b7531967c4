"""``python -m executor replay +trace=NAME [key=value ...]``: replay a trace against any
OpenAI-compatible server (ours, ``python -m executor serve``, or vLLM's api_server).

Open loop: request i is sent at its trace arrival time (window, ``rate_scale`` and caps
applied exactly as the simulator applies them: ``traces.load_trace``), whether or not
earlier answers have come back; ``max_concurrency`` optionally caps the requests in flight.
Each request is a streamed ``/v1/completions`` call with a synthesized prompt of the trace's
prompt length (``executor.replay_prompts``), ``max_tokens`` = the trace's output length and
``ignore_eos``, both clipped to the server's context (and counted). Every SSE chunk is
timestamped on the client.

The run directory holds what the simulator writes, so ``analysis.load_run`` reads it
unchanged: ``requests.parquet`` (``policies.records`` columns, backend ``replay``) and
``summary.json`` (``run`` metadata, ``metrics`` per class, and ``replay`` counts), plus
``replay.parquet`` (per request: schedule, send lag, trace and sent lengths, HTTP status,
error, chunk timestamps). Times count from the start of the replay; a request's
``arrival_s`` is when it was sent (its scheduled time is in replay.parquet).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from analysis.metrics import format_summary, summarize, summary_dict
from executor.replay_config import (TOKENIZER_APPROX, TOKENIZER_AUTO, TOKENIZER_BYTES,
                                    TOKENIZER_SERVER, PromptConfig, ReplayConfig,
                                    ReplayConfigError, ServerConfig, api_key, load_config,
                                    register_schema, trace_options)
from executor.replay_prompts import (ApproxCounter, PromptSynthesizer, TokenCounter,
                                     byte_counter, hf_counter)
from policies.records import RECORD_COLUMNS
from policies.request import slo_met
from traces import RequestSpec, TraceError, load_trace

log = logging.getLogger(__name__)
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
OUR_OWNER = "flying-serving"  # /v1/models owned_by of our server (executor.server.OWNER)
DETAIL_COLUMNS: dict[str, str] = {
    "request_id": "int: id from the trace",
    "scheduled_s": "float: when the trace says to send it (replay time)",
    "send_s": "float or NaN: when it was sent (NaN: never sent)",
    "send_lag_s": "float or NaN: send_s - scheduled_s (client load, or max_concurrency)",
    "trace_prompt_tokens": "int: the trace's prompt length",
    "trace_output_tokens": "int: the trace's output length",
    "prompt_tokens_sent": "int: the synthesized prompt's count (an estimate unless exact)",
    "prompt_exact": "bool: prompt_tokens_sent is an exact count equal to the (clipped) target",
    "prompt_tokens_server": "int or NaN: the prompt length the server reported (usage)",
    "max_tokens": "int: output tokens asked for (the trace's, clipped)",
    "clipped": "bool: prompt or output shortened to fit max_model_len",
    "http_status": "int or NaN",
    "finish_reason": "str or None",
    "error": "str or None: why it failed",
    "token_chunks": "int: SSE chunks that carried a token",
    "chunk_times_s": "list[float]: arrival time of each token chunk",
}


class ReplayError(RuntimeError):
    """The replay cannot start or go on (server unreachable, wrong model, ...)."""


# --- the server -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerInfo:
    base_url: str
    model: str
    owned_by: str | None
    max_model_len: int | None
    max_model_len_source: str  # config | server | unknown
    layout: str | None = None  # ours only (/admin/layout)

    @property
    def target(self) -> str:
        """What served the requests, for analysis: 'executor' for ours, else owned_by."""
        if self.owned_by == OUR_OWNER:
            return "executor"
        return self.owned_by or "unknown"


def root_url(base_url: str) -> str:
    """The server root: base_url without its trailing /v1 (where /tokenize and /admin are)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _error_text(response: httpx.Response) -> str:
    """The message of an OpenAI-shaped error body, else the body itself (shortened)."""
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", error) if isinstance(error, dict) else error
        if isinstance(message, str):
            return message
        return json.dumps(message)[:300]
    except (ValueError, UnicodeDecodeError):
        return response.text[:300]


def _get_json(client: httpx.Client, url: str, what: str) -> Any:
    try:
        response = client.get(url)
    except httpx.TransportError as e:
        raise ReplayError(
            f"cannot reach the server at {url} ({type(e).__name__}: {e}). Is it running, and "
            f"is server.base_url right? (ours: python -m executor serve --model ... --port "
            f"8000)") from None
    if response.status_code in (401, 403):
        raise ReplayError(f"the server refused the API key on {url} (HTTP "
                          f"{response.status_code}: {_error_text(response)}); set "
                          f"server.api_key, or $FLYING_API_KEY / $OPENAI_API_KEY")
    if response.status_code != 200:
        raise ReplayError(f"{what}: HTTP {response.status_code} from {url} "
                          f"({_error_text(response)}); is server.base_url the API root "
                          f"(ending in /v1)?")
    try:
        return response.json()
    except ValueError:
        raise ReplayError(f"{what}: {url} did not answer JSON; is server.base_url an "
                          f"OpenAI-compatible API root?") from None


def probe_server(server: ServerConfig, client: httpx.Client) -> ServerInfo:
    """GET /v1/models: the model to ask for and its context length; clear errors if not."""
    url = server.base_url.rstrip("/") + "/models"
    cards = _get_json(client, url, "listing the models")
    cards = cards.get("data") if isinstance(cards, dict) else None
    if not isinstance(cards, list) or not cards:
        raise ReplayError(f"{url} lists no models")
    by_name = {c.get("id"): c for c in cards if isinstance(c, dict)}
    if server.model is None:
        if len(by_name) != 1:
            raise ReplayError(f"the server serves {len(by_name)} models "
                              f"({', '.join(map(str, by_name))}); pick one with "
                              f"server.model=NAME")
        name = next(iter(by_name))
    elif server.model not in by_name:
        raise ReplayError(f"the server does not serve model '{server.model}'; it serves: "
                          f"{', '.join(map(str, by_name))}")
    else:
        name = server.model
    card = by_name[name]
    served_len = card.get("max_model_len")
    if server.max_model_len is not None:
        max_len, source = server.max_model_len, "config"
    elif isinstance(served_len, int) and served_len > 0:
        max_len, source = served_len, "server"
    else:
        max_len, source = None, "unknown"
    owner = card.get("owned_by")
    return ServerInfo(server.base_url, name, owner, max_len, source,
                      _our_layout(client, server.base_url) if owner == OUR_OWNER else None)


def _our_layout(client: httpx.Client, base_url: str) -> str | None:
    """Our server's layout (GET /admin/layout), recorded in the summary; None if refused."""
    try:
        response = client.get(root_url(base_url) + "/admin/layout")
        return response.json().get("layout") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


# --- token counts -----------------------------------------------------------------------------
class ServerCounter:
    """The server's ``/tokenize`` (vLLM: POST {model, prompt, add_special_tokens} -> count)."""

    exact = True
    name = "server"

    def __init__(self, client: httpx.Client, url: str, model: str) -> None:
        self.client, self.url, self.model = client, url, model

    def count(self, text: str) -> int:
        body = {"model": self.model, "prompt": text, "add_special_tokens": True}
        try:
            response = self.client.post(self.url, json=body)
        except httpx.TransportError as e:
            raise ReplayError(f"{self.url}: {type(e).__name__}: {e}") from None
        if response.status_code != 200:
            raise ReplayError(f"{self.url}: HTTP {response.status_code} "
                              f"({_error_text(response)})")
        try:
            count = response.json().get("count")
        except (ValueError, AttributeError):
            count = None
        if not isinstance(count, int):
            raise ReplayError(f"{self.url} answered without an integer 'count'")
        return count


def _server_counter(prompt: PromptConfig, info: ServerInfo,
                    client: httpx.Client) -> ServerCounter | None:
    """A counter on the server's /tokenize if that answers a probe, else None."""
    url = prompt.tokenize_url or root_url(info.base_url) + "/tokenize"
    counter = ServerCounter(client, url, info.model)
    try:
        counter.count("hello")
    except (ReplayError, ValueError):
        return None
    return counter


def make_counter(prompt: PromptConfig, info: ServerInfo, client: httpx.Client) -> TokenCounter:
    choice = prompt.tokenizer
    if choice == TOKENIZER_BYTES:
        return byte_counter()
    if choice == TOKENIZER_APPROX:
        return ApproxCounter(prompt.chars_per_token)
    if choice in (TOKENIZER_AUTO, TOKENIZER_SERVER):
        counter = _server_counter(prompt, info, client)
        if counter is not None:
            return counter
        if choice == TOKENIZER_SERVER:
            raise ReplayError(f"prompt.tokenizer=server, but the server has no working "
                              f"/tokenize at {prompt.tokenize_url or root_url(info.base_url)}"
                              f"/tokenize; pass prompt.tokenizer=PATH (the model's folder)")
        log.warning("the server has no /tokenize: prompt lengths are approximate (about %g "
                    "characters per token; the server's usage gives the real counts). Pass "
                    "prompt.tokenizer=PATH (or bytes) for exact prompts.", prompt.chars_per_token)
        return ApproxCounter(prompt.chars_per_token)
    try:
        return hf_counter(choice)
    except ValueError as e:  # executor.tokenizer.TokenizerError
        raise ReplayConfigError(f"prompt.tokenizer: {e}") from None


# --- the plan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedRequest:
    spec: RequestSpec
    prompt: str
    prompt_tokens: int  # as counted (an estimate when not exact)
    prompt_exact: bool
    prompt_target_tokens: int  # the trace's, clipped
    max_tokens: int
    clipped: bool


def clip_lengths(prompt_tokens: int, output_tokens: int,
                 max_model_len: int | None) -> tuple[int, int, bool]:
    """(prompt, output, clipped) with prompt + output <= max_model_len. The output keeps its
    length when it can (it sets the decode work and the E2E time; it is clipped only to
    leave one prompt token) and the prompt takes what is left. At least one token each (a
    trace row may say 0)."""
    prompt, output = max(prompt_tokens, 1), max(output_tokens, 1)
    if max_model_len is None:
        return prompt, output, False
    clipped_output = min(output, max_model_len - 1)
    clipped_prompt = min(prompt, max_model_len - clipped_output)
    return clipped_prompt, clipped_output, (clipped_prompt, clipped_output) != (prompt, output)


def select_requests(specs: list[RequestSpec], duration_s: float | None) -> list[RequestSpec]:
    if duration_s is None:
        return specs
    return [s for s in specs if s.arrival_s < duration_s]


def plan_requests(specs: list[RequestSpec], synthesizer: PromptSynthesizer,
                  max_model_len: int | None) -> list[PlannedRequest]:
    planned = []
    for spec in specs:
        prompt_target, max_tokens, clipped = clip_lengths(spec.prompt_tokens,
                                                          spec.output_tokens, max_model_len)
        prompt = synthesizer.synthesize(spec.request_id, prompt_target)
        planned.append(PlannedRequest(spec, prompt.text, prompt.tokens, prompt.exact,
                                      prompt_target, max_tokens, clipped))
    return planned


def request_body(p: PlannedRequest, model: str, server: ServerConfig) -> dict:
    body: dict[str, Any] = {
        "model": model, "prompt": p.prompt, "max_tokens": p.max_tokens,
        "temperature": 0.0,  # greedy: the cheapest sampler, and the same answer every run
        "stream": True, "stream_options": {"include_usage": True},
    }
    if server.ignore_eos:
        body["ignore_eos"] = True
    if server.send_priority:
        body["priority"] = -1 if p.spec.request_class == "priority" else 0
    return body


# --- one request ------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What the client saw of one request (times in replay seconds)."""

    scheduled_s: float = math.nan
    send_s: float = math.nan
    first_token_s: float = math.nan
    finish_s: float = math.nan
    chunk_times_s: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    usage_prompt_tokens: int | None = None
    usage_completion_tokens: int | None = None
    http_status: int | None = None
    error: str | None = None
    done: bool = False  # the stream ended properly ([DONE])
    cut_off: bool = False  # the client stopped waiting (timeout, drain timeout, Ctrl-C)

    def on_line(self, line: str, now_s: float) -> bool:
        """Take one SSE line; False when the stream is over (or broken)."""
        if not line.startswith("data:"):
            return True  # blank separators, comments, event: lines
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            self.done = True
            return False
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            self.error = f"malformed SSE data: {data[:200]!r}"
            return False
        if not isinstance(chunk, dict):
            self.error = f"malformed SSE data: {data[:200]!r}"
            return False
        if "error" in chunk:
            error = chunk["error"]
            self.error = "error in the stream: " + (error.get("message", str(error))
                                                    if isinstance(error, dict) else str(error))
            return False
        self._take_usage(chunk.get("usage"))
        for choice in chunk.get("choices") or ():
            self._take_choice(choice, now_s)
        return True

    def _take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.usage_prompt_tokens = usage.get("prompt_tokens", self.usage_prompt_tokens)
            self.usage_completion_tokens = usage.get("completion_tokens",
                                                     self.usage_completion_tokens)

    def _take_choice(self, choice: Any, now_s: float) -> None:
        if not isinstance(choice, dict):
            return
        text, reason = choice.get("text"), choice.get("finish_reason")
        # A chunk carries a token when it has text, or when it is not the bare finish chunk
        # (both ours and vLLM send one chunk per token, with empty text for a token that
        # decodes to nothing yet; ours ends with an empty chunk that only says why).
        if text or reason is None:
            self.chunk_times_s.append(now_s)
            if math.isnan(self.first_token_s):
                self.first_token_s = now_s
        if reason is not None:
            self.finish_reason = reason
            self.finish_s = now_s

    @property
    def generated_tokens(self) -> int:
        if self.usage_completion_tokens is not None:
            return int(self.usage_completion_tokens)
        return len(self.chunk_times_s)

    def status(self) -> tuple[str, str | None]:
        """(status, reason) in the records' terms: finished; unfinished (still in flight
        when the client stopped waiting, failed after its first token, or never sent); or
        rejected (failed before any token: an HTTP error, a broken connection)."""
        if math.isnan(self.send_s):
            return "unfinished", self.error or "not sent: the replay stopped first"
        if self.error is None and self.done:
            return "finished", None
        reason = self.error or "the stream ended without [DONE] (disconnected)"
        if self.cut_off or not math.isnan(self.first_token_s):
            return "unfinished", reason
        return "rejected", reason


async def stream_one(client: httpx.AsyncClient, body: dict, out: Outcome, clock) -> None:
    out.send_s = clock()
    try:
        async with client.stream("POST", "completions", json=body) as response:
            out.http_status = response.status_code
            if response.status_code != 200:
                await response.aread()
                out.error = f"HTTP {response.status_code}: {_error_text(response)}"
                return
            async for line in response.aiter_lines():
                if not out.on_line(line, clock()):
                    break
    except httpx.HTTPError as e:
        out.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if out.done and math.isnan(out.finish_s):
        out.finish_s = out.chunk_times_s[-1] if out.chunk_times_s else clock()
    if out.done and math.isnan(out.first_token_s) and out.generated_tokens > 0:
        out.first_token_s = out.finish_s  # no chunk showed a token: the finish bounds it


# --- the replay -------------------------------------------------------------------------------
def _async_client(cfg: ReplayConfig) -> httpx.AsyncClient:
    key = api_key(cfg.server)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=None)
    timeout = httpx.Timeout(None, connect=cfg.server.connect_timeout_s)
    return httpx.AsyncClient(base_url=cfg.server.base_url.rstrip("/") + "/", headers=headers,
                             limits=limits, timeout=timeout)


async def replay(planned: list[PlannedRequest], outcomes: list[Outcome], cfg: ReplayConfig,
                 model: str, on_done=None) -> bool:
    """Send every planned request at its arrival time; fill ``outcomes`` in place.
    Returns True when the replay ran to the end, False when it was interrupted."""
    limit = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
    start = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - start

    async def one(p: PlannedRequest, out: Outcome) -> None:
        try:
            await asyncio.wait_for(stream_one(client, request_body(p, model, cfg.server), out,
                                              clock), cfg.server.request_timeout_s)
        except asyncio.TimeoutError:
            out.cut_off = True
            out.error = f"no complete answer within server.request_timeout_s=" \
                        f"{cfg.server.request_timeout_s} s"
        finally:
            if limit is not None:
                limit.release()
            if on_done is not None:
                on_done()

    tasks: list[asyncio.Task] = []
    async with _async_client(cfg) as client:
        try:
            for p, out in zip(planned, outcomes):
                out.scheduled_s = p.spec.arrival_s
                await asyncio.sleep(max(0.0, p.spec.arrival_s - clock()))
                if limit is not None:
                    await limit.acquire()
                tasks.append(asyncio.create_task(one(p, out)))
            await _drain(tasks, outcomes, cfg.drain_timeout_s)
        except asyncio.CancelledError:  # Ctrl-C: keep what came back, stop the rest
            await _cut_off(tasks, outcomes, "interrupted")
            return False
    return True


async def _drain(tasks: list[asyncio.Task], outcomes: list[Outcome],
                 timeout_s: float | None) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    if pending:
        await _cut_off(tasks, outcomes, f"cut off by drain_timeout_s={timeout_s}")


async def _cut_off(tasks: list[asyncio.Task], outcomes: list[Outcome], why: str) -> None:
    for task, out in zip(tasks, outcomes):
        if not task.done():
            task.cancel()
            out.cut_off = True
            out.error = out.error or why
    await asyncio.gather(*tasks, return_exceptions=True)


# --- records and outputs ----------------------------------------------------------------------
def record(p: PlannedRequest, out: Outcome) -> dict:
    """One row of requests.parquet (``policies.records.RECORD_COLUMNS``), backend 'replay'.
    What a client cannot see (first scheduled step, engine group, TP widths, preemptions)
    is left empty: NaN / None."""
    status, reason = out.status()
    spec, nan = p.spec, math.nan
    arrival = out.send_s if not math.isnan(out.send_s) else out.scheduled_s
    generated = out.generated_tokens
    first_token = out.first_token_s
    finish = out.finish_s if status == "finished" else nan
    ttft, e2e = first_token - arrival, finish - arrival
    tpot = (finish - first_token) / (generated - 1) if generated > 1 else nan
    prompt_tokens = out.usage_prompt_tokens if out.usage_prompt_tokens is not None \
        else p.prompt_tokens
    return {
        "request_id": spec.request_id, "request_class": spec.request_class,
        "status": status, "reject_reason": reason, "arrival_s": arrival,
        "first_scheduled_s": nan, "first_token_s": first_token, "finish_s": finish,
        "prompt_tokens": prompt_tokens, "output_tokens": p.max_tokens,
        "generated_tokens": generated, "engine_group": None, "tp_widths": None,
        "preemptions": None, "recomputed_tokens": None,
        "ttft_slo_s": spec.ttft_slo_s if spec.ttft_slo_s is not None else nan,
        "tpot_slo_s": spec.tpot_slo_s if spec.tpot_slo_s is not None else nan,
        "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e, "queueing_s": nan,
        "slo_met": slo_met(spec, status, ttft, tpot), "backend": "replay",
    }


def detail(p: PlannedRequest, out: Outcome) -> dict:
    """One row of replay.parquet (``DETAIL_COLUMNS``)."""
    return {
        "request_id": p.spec.request_id, "scheduled_s": out.scheduled_s, "send_s": out.send_s,
        "send_lag_s": out.send_s - out.scheduled_s,
        "trace_prompt_tokens": p.spec.prompt_tokens, "trace_output_tokens": p.spec.output_tokens,
        "prompt_tokens_sent": p.prompt_tokens, "prompt_exact": p.prompt_exact,
        "prompt_tokens_server": out.usage_prompt_tokens, "max_tokens": p.max_tokens,
        "clipped": p.clipped, "http_status": out.http_status,
        "finish_reason": out.finish_reason, "error": out.status()[1],
        "token_chunks": len(out.chunk_times_s), "chunk_times_s": list(out.chunk_times_s),
    }


def replay_counts(planned: list[PlannedRequest], outcomes: list[Outcome],
                  requests: pd.DataFrame) -> dict:
    """The replay's own health numbers for summary.json (beside the latency metrics)."""
    finished = requests[requests.status == "finished"]
    lag = np.array([o.send_s - o.scheduled_s for o in outcomes if not math.isnan(o.send_s)])
    served = [(p, o) for p, o in zip(planned, outcomes) if o.usage_prompt_tokens is not None]
    reasons = Counter(requests.reject_reason.dropna().map(_reason_kind))
    return {
        "requests": len(planned),
        "sent": int(sum(not math.isnan(o.send_s) for o in outcomes)),
        "finished": len(finished),
        "rejected": int((requests.status == "rejected").sum()),
        "unfinished": int((requests.status == "unfinished").sum()),
        "clipped": int(sum(p.clipped for p in planned)),
        "prompts_exact": int(sum(p.prompt_exact for p in planned)),
        "prompt_tokens_server_mismatch": int(sum(o.usage_prompt_tokens != p.prompt_target_tokens
                                                 for p, o in served)),
        "short_outputs": int((finished.generated_tokens < finished.output_tokens).sum()),
        "send_lag_mean_s": float(lag.mean()) if lag.size else None,
        "send_lag_max_s": float(lag.max()) if lag.size else None,
        "failure_reasons": dict(reasons.most_common(10)),
    }


def _reason_kind(reason: str) -> str:
    """A failure reason without its per-request numbers (the HTTP status kept), for
    counting alike ones."""
    head, sep, rest = reason.partition(": ") if reason.startswith("HTTP ") else ("", "", reason)
    return (head + sep + re.sub(r"\d+(\.\d+)?", "N", rest))[:120]


def run_metadata(cfg: ReplayConfig, info: ServerInfo, counter: TokenCounter, n: int,
                 wall_s: float, completed: bool) -> dict:
    return {
        "backend": "replay", "target": info.target, "base_url": info.base_url,
        "model": info.model, "layout": info.layout, "policy": cfg.server.policy,
        "trace": cfg.trace.name, "rate_scale": cfg.trace.rate_scale, "seed": cfg.seed,
        "start_s": cfg.trace.start_s, "duration_s": cfg.duration_s,
        "max_concurrency": cfg.max_concurrency, "num_requests": n,
        "max_model_len": info.max_model_len, "max_model_len_source": info.max_model_len_source,
        "tokenizer": counter.name, "prompt_counts_exact": counter.exact,
        "ignore_eos": cfg.server.ignore_eos, "wall_s": wall_s, "completed": completed,
    }


def write_outputs(out_dir: Path, planned: list[PlannedRequest], outcomes: list[Outcome],
                  run: dict) -> tuple[dict, pd.DataFrame]:
    out_dir.mkdir(parents=True, exist_ok=True)
    requests = pd.DataFrame([record(p, o) for p, o in zip(planned, outcomes)],
                            columns=list(RECORD_COLUMNS))
    requests.to_parquet(out_dir / "requests.parquet", index=False)
    details = pd.DataFrame([detail(p, o) for p, o in zip(planned, outcomes)],
                           columns=list(DETAIL_COLUMNS))
    details.to_parquet(out_dir / "replay.parquet", index=False)
    doc = {"run": run, "metrics": summary_dict(summarize(requests)),
           "replay": replay_counts(planned, outcomes, requests)}
    (out_dir / "summary.json").write_text(json.dumps(doc, indent=2, default=str))
    return doc, requests


def format_report(doc: dict, requests: pd.DataFrame, out_dir: Path) -> str:
    run, counts, every = doc["run"], doc["replay"], doc["metrics"].get("all", {})

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{1e3 * v:.1f} ms"

    exact = "exact" if run["prompt_counts_exact"] else "approximate"
    clip = run["max_model_len"] if run["max_model_len"] is not None else "unknown"
    lines = [
        f"\nreplay of {run['trace']} (rate_scale {run['rate_scale']:g}) against "
        f"{run['base_url']} ({run['model']}, {run['target']}): {counts['requests']} requests "
        f"in {run['wall_s']:.1f} s",
        format_summary(summarize(requests)),
        f"\n{counts['finished']} finished, {counts['rejected']} rejected, "
        f"{counts['unfinished']} unfinished; {counts['clipped']} clipped to max_model_len "
        f"{clip}; prompts {exact} (tokenizer: {run['tokenizer']}; "
        f"{counts['prompts_exact']} exact)",
        f"TTFT mean {ms(every.get('ttft_mean_s'))}, P90 {ms(every.get('ttft_p90_s'))}; "
        f"TPOT mean {ms(every.get('tpot_mean_s'))}; "
        f"{every.get('output_tokens_per_s') or 0:.1f} output tok/s, "
        f"{every.get('requests_per_s') or 0:.3f} req/s; "
        f"send lag mean {ms(counts['send_lag_mean_s'])}, max {ms(counts['send_lag_max_s'])}",
    ]
    for reason, n in counts["failure_reasons"].items():
        lines.append(f"  failed x{n}: {reason}")
    if not run["completed"]:
        lines.append("warning: interrupted; requests not answered are recorded 'unfinished'")
    lines.append(f"outputs: {out_dir}")
    return "\n".join(lines)


def run_replay(cfg: ReplayConfig, out_dir: Path) -> dict:
    """Load the trace, check the server, synthesize the prompts, replay, write the run dir.
    Returns the summary.json content."""
    specs = select_requests(load_trace(cfg.trace), cfg.duration_s)
    if not specs:
        raise ReplayError(f"no requests to replay: trace '{cfg.trace.name}' has none in the "
                          f"first duration_s={cfg.duration_s} s")
    key = api_key(cfg.server)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(headers=headers, timeout=httpx.Timeout(
            60.0, connect=cfg.server.connect_timeout_s)) as client:
        info = probe_server(cfg.server, client)
        counter = make_counter(cfg.prompt, info, client)
        log.info("synthesizing %d prompts (tokenizer: %s)", len(specs), counter.name)
        started = time.perf_counter()
        planned = plan_requests(specs, PromptSynthesizer(counter, cfg.seed), info.max_model_len)
        log.info("%d prompts synthesized in %.1f s (tokenizer: %s)", len(planned),
                 time.perf_counter() - started, counter.name)
    if info.max_model_len is None:
        log.warning("the server does not say its max_model_len and server.max_model_len is "
                    "not set: nothing is clipped, and over-long requests will come back "
                    "rejected")
    outcomes = [Outcome() for _ in planned]
    completed, started = False, time.perf_counter()
    bar = _progress(len(planned), cfg)
    try:
        completed = asyncio.run(replay(planned, outcomes, cfg, info.model,
                                       on_done=lambda: bar.update(1)))
    except KeyboardInterrupt:
        pass  # the outcomes filled so far are written below
    finally:
        bar.close()
    run = run_metadata(cfg, info, counter, len(planned), time.perf_counter() - started,
                       completed)
    doc, requests = write_outputs(out_dir, planned, outcomes, run)
    if cfg.output.print_summary:
        print(format_report(doc, requests, out_dir))
    return doc


def _progress(total: int, cfg: ReplayConfig):
    from tqdm import tqdm

    return tqdm(total=total, unit="req", desc=f"replay {cfg.trace.name}", leave=False,
                disable=None if cfg.output.progress else True)


# --- command line -----------------------------------------------------------------------------
def _main_with_hydra() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    register_schema()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one log line per request

    @hydra.main(config_path=CONF_DIR, config_name="replay", version_base="1.3")
    def hydra_main(cfg: DictConfig) -> None:
        try:
            typed = load_config(cfg)
            doc = run_replay(typed, Path(HydraConfig.get().runtime.output_dir))
        except (ReplayConfigError, ReplayError, TraceError) as e:
            # A user error, not a crash: one clear line, non-zero exit, no traceback.
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        if not doc["run"]["completed"]:
            sys.exit(130)

    hydra_main()


def _chooses_trace(argv: list[str]) -> bool:
    """Hydra would fail on a missing trace group deep in its own config; say it plainly."""
    info_flags = ("-h", "--help", "--hydra-help", "--info", "-c", "--cfg", "--shell-completion")
    return any(a.startswith(("+trace=", "trace=")) or a.startswith(info_flags) for a in argv)


def main(argv: list[str]) -> int:
    """``python -m executor replay ARGS``: ARGS are Hydra overrides."""
    if not _chooses_trace(argv):
        print("error: no trace chosen: add +trace=NAME, one of " + ", ".join(trace_options()),
              file=sys.stderr)
        return 2
    sys.argv = [f"{sys.argv[0]} replay", *argv]
    _main_with_hydra()
    return 0
