"""A request's generated text, one token at a time: incremental detokenization and stops.

Detokenizing token by token is not decoding each token alone: byte-level BPE splits a
character over several tokens, and SentencePiece's leading-space rule depends on the token
before. As in vLLM, a short window (a few tokens of context plus the new ones) is decoded,
and only text beyond the context that ends in a complete character is released.

Stops: an EOS id (unless ``ignore_eos``) or a ``stop_token_ids`` id ends the request with
that token counted but not shown; a stop string ends it with the text cut before the string.
While streaming, the last ``len(longest stop string) - 1`` characters are held back, since
they might begin a stop string the next token completes.
"""
from __future__ import annotations

from typing import Sequence

from executor.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"  # what a decoder writes for an incomplete UTF-8 sequence


class IncrementalDetokenizer:
    CONTEXT_TOKENS = 5  # prompt tokens decoded with the first new ones (leading-space rules)

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-self.CONTEXT_TOKENS:])
        if tokenizer.decode(self.ids).endswith(REPLACEMENT_CHAR):
            # The prompt ends inside a character: its bytes would merge with the first
            # generated ones and the output would not be decode(generated ids).
            self.ids = []
        self.prefix_offset = 0  # window start: context for the tokens after read_offset
        self.read_offset = len(self.ids)  # tokens before this are already released as text

    def push(self, token_id: int) -> str:
        """New complete text once ``token_id`` is appended ('' while a character is split)."""
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is still held (an incomplete character comes out as U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset:self.read_offset])
        full = decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or (full.endswith(REPLACEMENT_CHAR) and not final):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        # Drop what the window no longer needs, so each step decodes a few tokens only.
        del self.ids[:self.prefix_offset]
        self.read_offset -= self.prefix_offset
        self.prefix_offset = 0
        return full[len(prefix):]


class OutputText:
    """Turns sampled tokens into released text and a finish reason (stop | length)."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], *, max_tokens: int,
                 stop: Sequence[str] = (), stop_token_ids: frozenset[int] = frozenset()) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.max_tokens = max_tokens
        self.stop = tuple(s for s in stop if s)
        self.stop_token_ids = stop_token_ids
        self.hold_back = max((len(s) for s in self.stop), default=1) - 1
        self.num_tokens = 0
        self.pending = ""  # decoded, not yet released
        self.text = ""  # released so far

    def add(self, token_id: int) -> tuple[str, str | None]:
        """(text released by this token, finish reason or None)."""
        self.num_tokens += 1
        stop_token = token_id in self.stop_token_ids
        at_length = self.num_tokens >= self.max_tokens
        if not stop_token:
            self.pending += self.detokenizer.push(token_id)
        if stop_token or at_length:
            self.pending += self.detokenizer.flush()
        reason = "stop" if stop_token else None
        cut = self._first_stop_string()
        if cut is not None:
            self.pending, reason = self.pending[:cut], "stop"
        if reason is None and at_length:
            reason = "length"
        keep = 0 if reason else self.hold_back
        release = self.pending[:max(0, len(self.pending) - keep)]
        self.pending = self.pending[len(release):]
        self.text += release
        return release, reason

    def _first_stop_string(self) -> int | None:
        """Index in ``pending`` where the earliest stop string starts (held-back text keeps
        every occurrence that overlaps released text inside ``pending``)."""
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None
