"""Step costs measured live: the cost model a predictive policy (``slo_aware``) prices
layouts with in the executor, where the simulator hands it its predictor.

Every step an engine loop runs is one sample: its ``StepShape`` and its round trip (plan
out, forward and sampling on every member, tokens back). Per TP width, a least-squares fit
over the latest samples::

    step_s = a_w + b_w * num_tokens + c_w * attn_pairs + d_w * num_seqs

with the coefficients clipped at 0 (a cost never falls with more work). A width not
measured yet is priced from the nearest measured width with its work terms split the
Megatron way (``m / w``) and its fixed cost kept, and no all-reduce: an optimistic guess,
so a predictive policy may try a layout the node has not run, and that layout's measured
steps price it from then on.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from policies.plan import StepShape

WINDOW_STEPS = 512  # latest samples per width: the fit follows the machine's current state
MIN_FIT_STEPS = 8  # fewer samples at a width: it counts as not measured yet


class MeasuredStepCosts:
    """``policies.policy.StepCostModel`` from the executor's own steps."""

    def __init__(self, window_steps: int = WINDOW_STEPS, refit_every: int = 16) -> None:
        self.window_steps = window_steps
        self.refit_every = refit_every
        self._samples: dict[int, deque] = {}
        self._fits: dict[int, np.ndarray] = {}
        self._since_fit: dict[int, int] = {}

    @staticmethod
    def _features(shape: StepShape) -> list[float]:
        return [1.0, shape.num_tokens, shape.attn_pairs, shape.num_seqs]

    def record(self, shape: StepShape, seconds: float) -> None:
        w = shape.tp_gpus
        samples = self._samples.setdefault(w, deque(maxlen=self.window_steps))
        samples.append((self._features(shape), seconds))
        self._since_fit[w] = self._since_fit.get(w, 0) + 1
        if len(samples) >= MIN_FIT_STEPS and (w not in self._fits or
                                              self._since_fit[w] >= self.refit_every):
            self._fit(w)

    def _fit(self, width: int) -> None:
        x = np.array([f for f, _ in self._samples[width]], dtype=np.float64)
        y = np.array([t for _, t in self._samples[width]], dtype=np.float64)
        scale = np.maximum(np.abs(x).max(axis=0), 1.0)  # columns of very different sizes
        coef, *_ = np.linalg.lstsq(x / scale, y, rcond=None)
        self._fits[width] = np.clip(coef / scale, 0.0, None)
        self._since_fit[width] = 0

    @property
    def measured_widths(self) -> list[int]:
        return sorted(self._fits)

    def step_time_s(self, shape: StepShape) -> float:
        if shape.num_tokens == 0 or not self._fits:
            return 0.0
        w = shape.tp_gpus
        x = np.array(self._features(shape), dtype=np.float64)
        if w in self._fits:
            return float(x @ self._fits[w])
        m = min(self._fits, key=lambda k: (abs(np.log2(k / w)), k))  # nearest measured width
        coef = self._fits[m]
        return float(coef[0] + (x[1:] @ coef[1:]) * m / w)
