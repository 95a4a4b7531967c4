"""The intermediate form every source produces before windowing, and seeded RNG streams."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Independent random streams per purpose, so that e.g. changing priority_fraction
# does not move arrivals, and changing the rate does not change the lengths.
ARRIVALS_STREAM = 1
LENGTHS_STREAM = 2
CLASSES_STREAM = 3
BUCKETS_STREAM = 4


def stream_rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


@dataclass
class RawTrace:
    times_s: np.ndarray  # float64, non-decreasing, in the source's own time base
    prompt_tokens: np.ndarray  # int64, >= 1
    output_tokens: np.ndarray  # int64, >= 1
    origin_s: float  # time zero of the trace: first timestamp (real) or 0 (synthetic)
    hash_ids: list[tuple[int, ...] | None] | None = None  # per request, Mooncake only
    path: str | None = None  # file it came from, for error messages

    def __len__(self) -> int:
        return len(self.times_s)
