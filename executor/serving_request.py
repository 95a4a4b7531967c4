"""One request as the coordinator serves it: the control plane's ``Request`` (counts, times,
blocks) plus what only the executor keeps (token ids, sampling, output text, the stream to
the HTTP handler)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator

from executor.output_text import OutputText
from executor.sampling_params import SamplingParams
from executor.tokenizer import Tokenizer
from policies.request import Request


@dataclass(frozen=True)
class GenerationParams:
    """Everything about a request that is not its prompt (validated by the server)."""

    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    request_class: str = "normal"  # normal | priority (routing and scheduling class)
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None


# --- what the handler receives -----------------------------------------------------------
@dataclass(frozen=True)
class Delta:
    text: str
    token_id: int


@dataclass(frozen=True)
class Finished:
    reason: str  # stop | length
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str


class ServingRequest:
    def __init__(self, request: Request, prompt_ids: list[int], params: GenerationParams,
                 tokenizer: Tokenizer) -> None:
        self.request = request
        self.request_id = request.request_id
        self.prompt_ids = list(prompt_ids)
        self.token_ids = list(prompt_ids)  # prompt + generated: what the KV is computed from
        self.params = params
        stop_ids = params.stop_token_ids if params.ignore_eos else \
            params.stop_token_ids | tokenizer.eos_token_ids
        self.output = OutputText(tokenizer, prompt_ids, max_tokens=params.max_tokens,
                                 stop=params.stop, stop_token_ids=frozenset(stop_ids))
        self.events: asyncio.Queue = asyncio.Queue()
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.aborted = False

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - len(self.prompt_ids)

    def add_token(self, token_id: int) -> str | None:
        """Record a sampled token and stream its text; the finish reason if it ends here."""
        self.token_ids.append(token_id)
        text, reason = self.output.add(token_id)
        self.events.put_nowait(Delta(text, token_id))
        return reason

    def finish(self, reason: str) -> None:
        self.finish_reason = reason
        self.events.put_nowait(Finished(reason, len(self.prompt_ids), self.num_generated))

    def abort(self) -> None:
        """The client went away; end the stream (a handler may still be reading it)."""
        self.aborted = True
        self.fail("aborted: the client closed the request")

    def fail(self, message: str) -> None:
        if self.done:
            return
        self.error = message
        self.events.put_nowait(Failed(message))

    async def stream(self) -> AsyncIterator[Delta | Finished | Failed]:
        """Events until the request finishes or fails (the last event says which)."""
        while True:
            event = await self.events.get()
            yield event
            if not isinstance(event, Delta):
                return
