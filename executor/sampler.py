"""Turns a batch of logits into token ids: greedy, temperature, top-k, top-p, seeds.

Random draws use the exponential race (``argmax(p / E)`` with ``E ~ Exp(1)`` picks token i
with probability ``p_i``), which needs one noise tensor per row and no ``multinomial``.
A request's own seed is mixed with the position of the token being drawn, so its draws
depend only on (seed, position): the same wherever and at whatever width it runs, which a
request that moves between DP and TP layouts needs. Rows without a seed draw from one
generator seeded by the step, so every rank of a TP group samples the same tokens.
"""
from __future__ import annotations

import torch

from executor.sampling_params import SamplingParams

_MASK64 = (1 << 64) - 1


def mix_seed(seed: int, position: int) -> int:
    """A 63-bit generator seed from (seed, position): splitmix64, so nearby pairs differ."""
    x = (seed * 0x9E3779B97F4A7C15 + position) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 1


class Sampler:
    def __call__(self, logits: torch.Tensor, params: list[SamplingParams], positions: list[int],
                 step_seed: int = 0) -> torch.Tensor:
        """Token ids ``[N]`` for ``logits [N, vocab]``; ``positions[i]`` is where row i's token
        will sit in its sequence (mixed into a per-request seed)."""
        if logits.shape[0] != len(params) or len(params) != len(positions):
            raise ValueError(f"{logits.shape[0]} logit rows, {len(params)} sampling params, "
                             f"{len(positions)} positions")
        logits = logits.float()
        tokens = logits.argmax(dim=-1)
        rows = [i for i, p in enumerate(params) if not p.is_greedy]
        if not rows:
            return tokens
        chosen = [params[i] for i in rows]
        index = torch.tensor(rows, device=logits.device)
        probs = self._filtered_probs(logits[index], chosen)
        noise = self._exponential_noise(chosen, [positions[i] for i in rows], step_seed,
                                        probs.shape, probs.device)
        tokens[index] = (probs / noise).argmax(dim=-1)
        return tokens

    @staticmethod
    def _filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """Softmax of ``logits / T`` over the tokens that survive top-k, then top-p."""
        device = logits.device
        vocab = logits.shape[-1]
        temperature = torch.tensor([p.temperature for p in params], device=device)
        top_k = torch.tensor([p.top_k or vocab for p in params], device=device)
        top_p = torch.tensor([p.top_p for p in params], device=device)
        scaled = logits / temperature.unsqueeze(1)
        ordered, order = scaled.sort(dim=-1, descending=True)
        rank = torch.arange(vocab, device=device).unsqueeze(0)
        drop = rank >= top_k.unsqueeze(1)
        ordered = ordered.masked_fill(drop, float("-inf"))
        sorted_probs = ordered.softmax(dim=-1)
        # Drop a token when the more likely ones already reach top_p (the first never drops).
        drop |= (sorted_probs.cumsum(dim=-1) - sorted_probs) > top_p.unsqueeze(1)
        drop_by_token = torch.zeros_like(drop).scatter_(1, order, drop)
        return scaled.masked_fill(drop_by_token, float("-inf")).softmax(dim=-1)

    @staticmethod
    def _exponential_noise(params: list[SamplingParams], positions: list[int], step_seed: int,
                           shape: torch.Size, device: torch.device) -> torch.Tensor:
        noise = torch.empty(shape, device=device)
        unseeded = [i for i, p in enumerate(params) if p.seed is None]
        if unseeded:
            generator = torch.Generator(device=device).manual_seed(mix_seed(step_seed, 0))
            draws = torch.empty(len(unseeded), shape[1], device=device)
            noise[torch.tensor(unseeded, device=device)] = draws.exponential_(generator=generator)
        for i, p in enumerate(params):
            if p.seed is not None:
                generator = torch.Generator(device=device).manual_seed(mix_seed(p.seed,
                                                                                positions[i]))
                noise[i].exponential_(generator=generator)
        # Exp(1) may return exactly 0; keep the race well defined.
        return noise.clamp_min_(torch.finfo(noise.dtype).tiny)
