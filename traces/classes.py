"""Request classes (normal / priority / long_context) and their SLOs."""
from __future__ import annotations

import numpy as np

from traces.config import ClassesConfig


def assign_classes(
    prompt_tokens: np.ndarray, output_tokens: np.ndarray, cfg: ClassesConfig, rng: np.random.Generator
) -> list[str]:
    """Long-context by threshold first; then priority, by a seeded draw, among the rest.

    One uniform draw per request (drawn for every request, long-context or not)
    means a request's class does not depend on how many requests follow it, so
    capping a trace with max_requests keeps the classes of the requests kept.
    """
    draws = rng.random(len(prompt_tokens))
    threshold = cfg.long_context_threshold_tokens
    if threshold is None:
        long_context = np.zeros(len(prompt_tokens), dtype=bool)
    else:
        long_context = prompt_tokens + output_tokens >= threshold
    priority = ~long_context & (draws < cfg.priority_fraction)
    labels = np.where(long_context, "long_context", np.where(priority, "priority", "normal"))
    return labels.tolist()


def slo_targets(cfg: ClassesConfig) -> dict[str, tuple[float | None, float | None]]:
    """class -> (ttft_slo_s, tpot_slo_s)."""
    return {
        name: (getattr(cfg, name).ttft_s, getattr(cfg, name).tpot_s)
        for name in ("normal", "priority", "long_context")
    }
