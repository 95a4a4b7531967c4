"""Prompts with a given token count, for replaying traces that carry only lengths.

A ``TokenCounter`` says how many tokens the server will see for a text (special tokens
included, as a completions request tokenizes it): a local Hugging Face tokenizer folder,
UTF-8 bytes (our server's byte tokenizer), the server's own ``/tokenize`` endpoint (vLLM
has one), or an estimate from the text's length when none of these is available.

``PromptSynthesizer`` draws random English words (seeded per request, so no two requests
share a prefix a prefix cache could reuse), predicts the count from each word's own token
cost, then counts the real text and corrects it word by word and with one-token fillers.
With a real tokenizer the result is exact or the achieved count is reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

# Common short English words: cheap to tokenize, one or two tokens each in most
# vocabularies, and short ones ("a", "I") make good fillers.
WORDS = tuple("""
the of and a to in is you that it he was for on are as with his they I at be this have
from or one had by word but not what all were we when your can said there use an each
which she do how their if will up other about out many then them these so some her would
make like him into time has look two more write go see number no way could people my than
first water been call who oil its now find long down day did get come made may part over
new sound take only little work know place year live me back give most very after thing our
just name good sentence man think say great where help through much before line right too
mean old any same tell boy follow came want show also around form three small set put end
does another well large must big even such because turn here why ask went men read need
land different home us move try kind hand picture again change off play spell air away
animal house point page letter mother answer found study still learn should world
""".split())
# Appended when the words alone land a few tokens short; each is one token almost anywhere.
FILLERS = (".", ",", "!", "?", " a", "a", "-", ":", ";", " I")
MAX_FIX_COUNTS = 64  # counting calls spent correcting one prompt before giving up
# Above this gap, words are added in bulk by their predicted costs; below, one piece per count.
BIG_GAP_TOKENS = 8


class TokenCounter(Protocol):
    name: str  # how counts are made, for the summary: 'PATH', 'bytes', 'server', 'approx'
    exact: bool  # False: count() is an estimate

    def count(self, text: str) -> int: ...


class LocalCounter:
    """A tokenizer in this process (``executor.tokenizer``: HF folder or bytes)."""

    exact = True

    def __init__(self, tokenizer, name: str) -> None:
        self.tokenizer = tokenizer
        self.name = name

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=True))


class ApproxCounter:
    """No tokenizer: about ``chars_per_token`` characters per token."""

    exact = False
    name = "approx"

    def __init__(self, chars_per_token: float) -> None:
        self.chars_per_token = chars_per_token

    def count(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)


def hf_counter(folder: str | Path) -> LocalCounter:
    from executor.tokenizer import HFTokenizer

    return LocalCounter(HFTokenizer(folder), str(folder))


def byte_counter() -> LocalCounter:
    from executor.tokenizer import ByteTokenizer

    return LocalCounter(ByteTokenizer(), "bytes")


@dataclass(frozen=True)
class Prompt:
    text: str
    tokens: int  # as counted (an estimate when the counter is not exact)
    exact: bool  # tokens == the target, counted by a real tokenizer


class PromptSynthesizer:
    def __init__(self, counter: TokenCounter, seed: int = 0) -> None:
        self.counter = counter
        self.seed = seed
        self.base_tokens = counter.count("")  # what the server adds to any text (BOS, ...)
        # Predicted cost of a word opening the text, and of " word" after another word.
        self.first_cost = np.array([max(counter.count(w) - self.base_tokens, 1) for w in WORDS])
        self.tail_cost = np.array([max(counter.count(" " + w) - self.base_tokens, 1)
                                   for w in WORDS])

    def synthesize(self, request_id: int, target_tokens: int) -> Prompt:
        rng = np.random.default_rng([self.seed, request_id])
        if isinstance(self.counter, ApproxCounter):
            text = self._by_length(rng, target_tokens)
            return Prompt(text, self.counter.count(text), exact=False)
        pieces: list[str] = []
        self._extend(pieces, rng, target_tokens - self.base_tokens)
        tokens = self._correct(pieces, rng, target_tokens)
        return Prompt("".join(pieces), tokens, tokens == target_tokens)

    def _by_length(self, rng: np.random.Generator, target_tokens: int) -> str:
        """Words cut to the character length the estimate maps to ``target_tokens``."""
        chars = math.floor(target_tokens * self.counter.chars_per_token)
        pieces: list[str] = []
        while sum(map(len, pieces)) < chars:
            self._extend(pieces, rng, max(chars // 4, 8))
        return "".join(pieces)[:chars]

    def _extend(self, pieces: list[str], rng: np.random.Generator, budget_tokens: int) -> None:
        """Append random words whose predicted costs add up to at most ``budget_tokens``."""
        if budget_tokens <= 0:
            return
        n = budget_tokens // int(self.tail_cost.min()) + 1  # enough even if all are cheapest
        picks = rng.integers(len(WORDS), size=n)
        cost = self.tail_cost[picks]
        if not pieces:
            cost[0] = self.first_cost[picks[0]]
        fits = int(np.searchsorted(np.cumsum(cost), budget_tokens, side="right"))
        opening = not pieces
        pieces += [WORDS[i] if opening and k == 0 else " " + WORDS[i]
                   for k, i in enumerate(picks[:fits])]

    def _correct(self, pieces: list[str], rng: np.random.Generator, target_tokens: int) -> int:
        """Count the text; drop words while over, add words and fillers while under.
        Returns the count reached (``target_tokens`` unless the tokenizer made it
        impossible within ``MAX_FIX_COUNTS`` counts)."""
        tokens = self.counter.count("".join(pieces))
        overshot = False
        for _ in range(MAX_FIX_COUNTS):
            gap = target_tokens - tokens
            if gap == 0 or (gap < 0 and not pieces):
                break
            if gap <= BIG_GAP_TOKENS and gap > 0:
                grown = self._grow(pieces, tokens, target_tokens)
                if grown is None:
                    break
                tokens = grown
                continue
            if gap < 0:
                overshot = True
                self._drop(pieces, -gap)
            else:
                # The predicted costs were low: add words in bulk, more carefully after an
                # overshoot so that the two moves cannot see-saw.
                self._extend(pieces, rng, gap // 2 if overshot else gap)
            tokens = self.counter.count("".join(pieces))
        return tokens

    def _drop(self, pieces: list[str], excess_tokens: int) -> None:
        """Pop trailing pieces predicted to cost at least ``excess_tokens`` (one at least)."""
        dropped = 0
        while pieces and dropped < excess_tokens:
            piece = pieces.pop()
            word = piece.lstrip()
            dropped += int(self.tail_cost[WORDS.index(word)]) if word in WORDS else 1

    def _grow(self, pieces: list[str], tokens: int, target_tokens: int) -> int | None:
        """Append the biggest candidate that adds 1..gap tokens and return the new count;
        None when none does."""
        text = "".join(pieces)
        for piece in self._candidates(target_tokens - tokens, opening=not pieces):
            grown = self.counter.count(text + piece)
            if tokens < grown <= target_tokens:
                pieces.append(piece)
                return grown
        return None

    def _candidates(self, gap_tokens: int, opening: bool) -> list[str]:
        cost = self.first_cost if opening else self.tail_cost
        fitting = sorted({(int(c), i) for i, c in enumerate(cost) if c <= gap_tokens},
                         reverse=True)
        words = [WORDS[i] if opening else " " + WORDS[i] for _, i in fitting[:3]]
        return words + list(FILLERS)
