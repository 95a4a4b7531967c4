"""``slo_aware``: our policy. Choose the uniform layout with the best predicted SLO attainment.

It keeps flying's rules for priority and long-context requests, and replaces the load
thresholds by a prediction: for each uniform layout (groups of 1, 2, 4, ... engines) it
estimates TTFT and TPOT of the current traffic from the backend's step-cost model, scores
them against the SLO targets, and switches when another layout is predicted better by a
margin (hysteresis), no sooner than ``min_interval_s`` after the last switch.

The traffic model per group (arrival rate ``lam``, mean prompt P and output D tokens):
  prefill service  t_p = step(P new tokens)
  decode step      t_d(b) at batch b with mean context P + D/2
  prefill share    rho_p = lam * t_p  (prefill steps interleave with decodes)
  batch (Little)   b = lam * D * TPOT, with TPOT = t_d(b) / (1 - rho_p), solved by iteration
  overload         rho_p >= 1, or b beyond the batch cap (decode cannot keep up)
  TTFT             t_p * (1 + rho_p / (2 (1 - rho_p))) + (queued requests / groups) * t_p
(Decode utilisation is no overload signal: with b from Little's law it is 1 - rho_p by
construction, since a busier engine simply batches more.)
"""
from __future__ import annotations

import math

from policies.flying import FlyingPolicy
from policies.layout import Layout
from policies.plan import StepShape
from policies.policy import Decision, NodeView, PolicyConfig

EVAL_PERIOD_S = 1.0  # predictions are cheap but not free: at most once a simulated second


class SloAwarePolicy(FlyingPolicy):
    def __init__(self, config: PolicyConfig) -> None:
        super().__init__(config)
        self.slo = config.slo_aware
        self._rate_rps = 0.0
        self._last_t: float | None = None
        self._last_arrivals = 0
        self._last_eval_s = -math.inf
        self.last_scores: dict[str, float] = {}
        self._streak_w: int | None = None  # the layout preferred at consecutive evaluations
        self._streak = 0

    def _load(self, view: NodeView) -> Decision | None:
        self._update_rate(view)
        if view.cost_model is None or view.now_s - self._last_eval_s < EVAL_PERIOD_S:
            return None
        self._last_eval_s = view.now_s
        if any(g.role != "any" for g in view.groups):
            return None  # a class group is active: flying's rules own the layout now
        scores = {w: self.score(view, w) for w in _widths(view.num_engines)}
        self.last_scores = {f"{w}": s for w, s in scores.items()}
        current_w = _uniform_width(view)
        best_w = max(scores, key=lambda w: (round(scores[w], 6), -w))
        if current_w is not None and best_w == current_w:
            return None
        current = scores.get(current_w, 0.0) if current_w is not None else 0.0
        if scores[best_w] < current + self.slo.improvement:
            self._streak_w, self._streak = None, 0
            return None
        self._streak = self._streak + 1 if self._streak_w == best_w else 1
        self._streak_w = best_w
        recent = view.now_s - view.last_switch_done_s < self.slo.min_interval_s
        if self._streak < self.slo.confirmations or recent:
            return None
        self._streak_w, self._streak = None, 0
        return Decision(Layout.uniform(view.num_engines, best_w), self.slo.merge_strategy,
                        f"predicted SLO attainment {scores[best_w]:.2f} vs {current:.2f}")

    def _update_rate(self, view: NodeView) -> None:
        if self._last_t is None:
            self._last_t, self._last_arrivals = view.now_s, view.arrivals_total
            return
        dt = view.now_s - self._last_t
        if dt <= 0:
            return
        instant = (view.arrivals_total - self._last_arrivals) / dt
        alpha = 1.0 - math.exp(-dt / self.slo.arrival_window_s)
        self._rate_rps += alpha * (instant - self._rate_rps)
        self._last_t, self._last_arrivals = view.now_s, view.arrivals_total

    def score(self, view: NodeView, engines_per_group: int) -> float:
        """Predicted SLO attainment (0..1) of uniform groups of ``engines_per_group``."""
        groups = view.num_engines // engines_per_group
        gpus_per_engine = view.groups[0].tp_gpus // view.groups[0].group.num_engines
        tp = engines_per_group * gpus_per_engine
        queued = sum(g.waiting for g in view.groups) + view.held_requests
        ttft_s, tpot_s = self.predict(view.cost_model, tp, self._rate_rps / groups,
                                      view.mean_prompt_tokens, view.mean_output_tokens,
                                      queued / groups, self.slo.max_batch)
        return _attainment(ttft_s / self.slo.ttft_slo_s) * _attainment(tpot_s / self.slo.tpot_slo_s)

    @staticmethod
    def predict(cost, tp: int, lam: float, prompt: float, output: float,
                backlog: float, max_batch: int = 256) -> tuple[float, float]:
        p, d = max(1, round(prompt)), max(1.0, output)
        t_p = cost.step_time_s(StepShape(tp, p, 1, 1, p * (p + 1) // 2, p, p))
        ctx = int(prompt + output / 2) + 1

        def t_d(b: int) -> float:
            return cost.step_time_s(StepShape(tp, b, b, b, b * ctx, b * ctx, 0))

        rho_p = lam * t_p
        if rho_p >= 1.0:
            return math.inf, math.inf
        b = 1
        for _ in range(30):
            nb = max(1, math.ceil(lam * d * t_d(b) / (1.0 - rho_p)))
            if nb == b or nb > max_batch:
                b = nb
                break
            b = nb
        if b > max_batch:
            return math.inf, math.inf  # the decode batch outgrows the cap: queues build
        tpot = t_d(b) / (1.0 - rho_p)
        ttft = t_p * (1.0 + rho_p / (2.0 * (1.0 - rho_p))) + backlog * t_p
        return ttft, tpot


def _attainment(ratio: float) -> float:
    """A smooth step: ~1 well inside the target, 0.5 at it, ~0 far beyond."""
    if math.isinf(ratio):
        return 0.0
    return 1.0 / (1.0 + ratio ** 4)


def _widths(num_engines: int) -> list[int]:
    widths, w = [], 1
    while w <= num_engines:
        if num_engines % w == 0:
            widths.append(w)
        w *= 2
    if num_engines not in widths:
        widths.append(num_engines)
    return widths


def _uniform_width(view: NodeView) -> int | None:
    widths = {g.group.num_engines for g in view.groups}
    return widths.pop() if len(widths) == 1 else None
