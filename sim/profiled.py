"""Step-time predictor fitted to a measured profile (``python -m executor profile``).

Per TP width the profile's steps are fitted, by non-negative least squares on relative error,
to::

    step_s = f_tp(num_tokens) + a_tp * num_logits + b_tp * attn_pairs + c_tp * kv_tokens_read

``f_tp`` is piecewise linear in ``num_tokens`` with a knot at every profiled token count (at
most ``MAX_KNOTS``, at quantiles, for a profile of thousands of served steps), so
the fixed cost of a step and the GEMMs' memory-bound floor and compute-bound slope are all
read off the measurements rather than assumed; the other three terms are what the sampler
and attention add. The fit then drops stalls (steps over ``STALL_RATIO`` times their fitted
cost) and is scaled once so that it adds up to the measured total of the rest: a run's mean
TPOT and throughput sum every step, not the typical one. A step outside the profiled region (an unprofiled width, or more tokens,
logits, attention pairs or KV than any profiled step) is priced by the roofline predictor
instead and counted in ``fallbacks`` (the run reports it).

``decode_run_times_s`` is bit-identical to calling ``step_time_s`` once per step: both evaluate
``(f(T) + a*L) + (b*P + c*K)`` with the same IEEE operations in the same order, on Python
floats or on a numpy array.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.plan import StepShape
from policies.specs import ModelSpec
from sim.predictor import RooflinePredictor

log = logging.getLogger(__name__)

PROFILE_FORMAT = "flying-serving-step-profile/1"  # executor.profile writes it
REPO_ROOT = Path(__file__).resolve().parents[1]
# ModelSpec fields that change step cost: a profile of another shape cannot price this one.
MAX_KNOTS = 24
STALL_RATIO = 3.0  # a step this many times its fitted cost is a stall, not a cost
CONTENTION_ROUNDS = 4  # alternations of the cost fit and the contention factor
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size",
                "vocab_size", "dtype")


class ProfileError(ValueError):
    """The profile file is missing, malformed, or of another model."""


def resolve_profile_path(path: str) -> Path:
    """As given (absolute or from the working directory), else from the repository root."""
    given = Path(path).expanduser()
    for candidate in (given, REPO_ROOT / given):
        if candidate.is_file():
            return candidate
    raise ProfileError(f"predictor.profile_path={path}: no such file (looked in the working "
                       f"directory and in {REPO_ROOT}); make one with `python -m executor "
                       f"profile --model NAME -o PATH`")


def load_profile(path: str | Path) -> dict:
    path = resolve_profile_path(str(path))
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ProfileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"{path}: not a step profile (expected \"format\": "
                           f"\"{PROFILE_FORMAT}\")")
    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ProfileError(f"{path}: no measured steps")
    needed = ("tp_gpus", "num_tokens", "num_logits", "attn_pairs", "kv_tokens_read", "step_s")
    for i, row in enumerate(steps):
        missing = [k for k in needed if k not in row]
        if missing:
            raise ProfileError(f"{path}: steps[{i}] lacks {', '.join(missing)}")
        if not row["step_s"] > 0:
            raise ProfileError(f"{path}: steps[{i}] has step_s={row['step_s']} (must be > 0)")
    doc["path"] = str(path)
    return doc


def check_model(doc: dict, model: ModelSpec) -> None:
    prof = doc.get("model", {})
    diffs = [f"{k}: profile {prof.get(k)!r} vs config {getattr(model, k)!r}"
             for k in SHAPE_FIELDS if prof.get(k) != getattr(model, k)]
    if diffs:
        raise ProfileError(f"{doc['path']} was measured on another model shape ("
                           + "; ".join(diffs) + "); profile this model, or pick model="
                           + str(prof.get("name")))


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """min ||a x - b|| subject to x >= 0 (Lawson and Hanson's active-set method)."""
    n = a.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    for _ in range(max_iter):
        grad = a.T @ (b - a @ x)
        free = ~passive & (grad > 1e-12 * max(1.0, np.abs(grad).max()))
        if not free.any():
            break
        passive[np.argmax(np.where(free, grad, -np.inf))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
    return x


@dataclass
class WidthFit:
    """The fitted step model of one TP width, and the region it was fitted on."""

    knots_tokens: np.ndarray  # sorted profiled num_tokens values
    knot_s: np.ndarray  # f at each knot
    per_logit_s: float
    per_pair_s: float
    per_kv_token_s: float
    max_logits: int
    max_pairs: int
    max_kv_tokens: int
    mape: float  # in-sample mean absolute percentage error, for the report
    # Host contention: a step costs (1 + contention * n) times its fitted cost while n other
    # engine groups compute (a served profile's ``others_busy``); 0 without that measure.
    contention: float = 0.0

    def factor(self, others_busy: int) -> float:
        return 1.0 + self.contention * others_busy

    def tokens_s(self, num_tokens: int) -> float:
        return float(np.interp(num_tokens, self.knots_tokens, self.knot_s))

    def covers(self, shape: StepShape) -> str | None:
        """None when the shape lies in the fitted region, else which bound it passes."""
        if shape.num_tokens > self.knots_tokens[-1]:
            return "num_tokens"
        if shape.num_logits > self.max_logits:
            return "num_logits"
        if shape.attn_pairs > self.max_pairs:
            return "attn_pairs"
        if shape.kv_tokens_read > self.max_kv_tokens:
            return "kv_tokens_read"
        return None


def hat_basis(tokens: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Columns j: the piecewise-linear 'hat' that is 1 at knot j and 0 at the others, so a
    linear combination with coefficients c is the interpolant through (knots, c)."""
    eye = np.eye(len(knots))
    return np.stack([np.interp(tokens, knots, eye[j]) for j in range(len(knots))], axis=1)


def _weighted_nnls(design: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """NNLS of weights * (design @ x - y); columns scaled to unit norm for the solver's
    conditioning, then scaled back."""
    a = design * weights[:, None]
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    return nnls(a / scale, y * weights) / scale


def token_knots(tokens: np.ndarray) -> np.ndarray:
    """Every profiled token count for a grid; for a profile of served steps (thousands of
    distinct counts) MAX_KNOTS quantiles, so each piece is fitted on many steps."""
    knots = np.unique(tokens)
    if len(knots) <= MAX_KNOTS:
        return knots
    return np.unique(np.round(np.quantile(tokens, np.linspace(0.0, 1.0, MAX_KNOTS))))


def fit_width(rows: list[dict]) -> WidthFit:
    tokens = np.array([r["num_tokens"] for r in rows], dtype=np.float64)
    extra = np.array([[r["num_logits"], r["attn_pairs"], r["kv_tokens_read"]] for r in rows],
                     dtype=np.float64)
    y = np.array([r["step_s"] for r in rows], dtype=np.float64)
    others = np.array([r.get("others_busy", 0.0) for r in rows], dtype=np.float64)
    knots = token_knots(tokens)
    design = np.hstack([hat_basis(tokens, knots), extra])
    # Served steps are a sample of the workload: absolute error fits the mean cost of each
    # kind of step, which is what mean TTFT and TPOT add up. A grid spans orders of magnitude
    # with one averaged point each: relative error gives a 1 ms decode the say of a 100 ms
    # prefill.
    relative = not all(r.get("kind") == "served" for r in rows)
    coef, contention = _fit_cost(design, y, others, relative)
    # Stalls (steps over STALL_RATIO times the fit: lazy initialisation, a descheduled rank)
    # are not costs: refit without them, then one scale factor matches the kept steps' total
    # (a relative fit lands on the typical step; a run's mean TPOT adds up the mean one).
    pred = (design @ coef) * (1.0 + contention * others)
    kept = y / np.maximum(pred, 1e-12) < STALL_RATIO
    if not kept.all() and kept.sum() > design.shape[1]:
        coef, contention = _fit_cost(design[kept], y[kept], others[kept], relative)
        pred = (design @ coef) * (1.0 + contention * others)
    coef *= y[kept].sum() / max(pred[kept].sum(), 1e-12)
    pred = (design @ coef) * (1.0 + contention * others)
    k = len(knots)
    return WidthFit(knots, coef[:k], float(coef[k]), float(coef[k + 1]), float(coef[k + 2]),
                    int(extra[:, 0].max()), int(extra[:, 1].max()), int(extra[:, 2].max()),
                    float(np.mean(np.abs(pred - y) / y)), contention)


def _fit_cost(design: np.ndarray, y: np.ndarray, others: np.ndarray, relative: bool
              ) -> tuple[np.ndarray, float]:
    """``y ~ (design @ coef) * (1 + contention * others)``: NNLS (on relative or absolute
    error) for the cost of the step's own work, alternated with a line ``ratio = a + b * others`` through
    the steps' ratios to it (stalls left out; contention = b / a, as the fit's scale a is
    set by the steps themselves). Without ``others`` one plain fit."""
    contention = 0.0
    for _ in range(CONTENTION_ROUNDS if others.any() else 1):
        target = y / (1.0 + contention * others)
        coef = _weighted_nnls(design, target,
                              1.0 / target if relative else np.ones_like(target))
        if not others.any():
            break
        ratio = y / np.maximum(design @ coef, 1e-12)
        kept = ratio < STALL_RATIO * (1.0 + contention * others)
        if np.ptp(others[kept]) == 0:
            break  # every kept step at one load: nothing to tell the factor from the scale
        line = np.stack([np.ones(int(kept.sum())), others[kept]], axis=1)
        (a, b), *_ = np.linalg.lstsq(line, ratio[kept], rcond=None)
        contention = max(0.0, b / a) if a > 0 else 0.0
    return coef, contention


class ProfiledPredictor:
    def __init__(self, profile: dict, model: ModelSpec, fallback: RooflinePredictor) -> None:
        check_model(profile, model)
        self.profile = profile
        self.fallback = fallback
        by_width: dict[int, list[dict]] = {}
        for row in profile["steps"]:
            by_width.setdefault(int(row["tp_gpus"]), []).append(row)
        self.fits = {w: fit_width(rows) for w, rows in sorted(by_width.items())}
        self._client_overhead_s = self._read_client_overhead()  # a bad entry fails here
        self._tokens_s: dict[tuple[int, int], float] = {}
        self.fallbacks: Counter[str] = Counter()  # reason -> steps priced by the roofline

    @property
    def num_fallbacks(self) -> int:
        return sum(self.fallbacks.values())

    def flip_s(self) -> float | None:
        """The measured DP<->TP flip (p50), when the profile has one."""
        switch = self.profile.get("switch") or {}
        return switch.get("flip_s_p50") if switch.get("flips") else None

    def client_overhead_s(self) -> dict[int, float]:
        """Mean client TTFT - server TTFT per TP width, when the profile measured it (a
        served profile with its replays); empty otherwise."""
        return dict(self._client_overhead_s)

    def _read_client_overhead(self) -> dict[int, float]:
        measured = (self.profile.get("serving") or {}).get("client_overhead_s") or {}
        try:
            out = {int(w): float(o["mean_s"]) for w, o in measured.items()}
        except (TypeError, ValueError, KeyError):
            raise ProfileError(f"{self.profile['path']}: serving.client_overhead_s must map a "
                               "TP width to {\"mean_s\": seconds, ...}") from None
        bad = [w for w, o in out.items() if w < 1 or not math.isfinite(o)]
        if bad:
            raise ProfileError(f"{self.profile['path']}: serving.client_overhead_s has a bad "
                               f"entry at width {bad[0]}")
        return out

    def _fit_for(self, shape: StepShape) -> WidthFit | None:
        fit = self.fits.get(shape.tp_gpus)
        if fit is None:
            self.fallbacks[f"width {shape.tp_gpus} not profiled"] += 1
            return None
        reason = fit.covers(shape)
        if reason is not None:
            self.fallbacks[f"{reason} beyond the profile at width {shape.tp_gpus}"] += 1
            return None
        return fit

    def _tokens_part_s(self, fit: WidthFit, tp: int, num_tokens: int) -> float:
        key = (tp, num_tokens)
        t = self._tokens_s.get(key)
        if t is None:
            t = self._tokens_s[key] = fit.tokens_s(num_tokens)
        return t

    @property
    def has_contention(self) -> bool:
        """Whether a step's cost depends on the other groups' load (``others_busy``)."""
        return any(f.contention > 0 for f in self.fits.values())

    def step_time_s(self, shape: StepShape, others_busy: int = 0) -> float:
        """One step; ``others_busy`` other engine groups compute meanwhile."""
        if shape.num_tokens == 0:
            return 0.0
        fit = self._fit_for(shape)
        if fit is None:
            return self.fallback.step_time_s(shape)
        t = (self._tokens_part_s(fit, shape.tp_gpus, shape.num_tokens)
             + fit.per_logit_s * shape.num_logits) \
            + (fit.per_pair_s * shape.attn_pairs + fit.per_kv_token_s * shape.kv_tokens_read)
        return t * fit.factor(others_busy) if others_busy else t

    def decode_run_times_s(self, tp_gpus: int, batch: int, kv_tokens_read: int, k: int,
                           others_busy: int = 0) -> np.ndarray:
        """k consecutive pure-decode steps; step j reads ``kv_tokens_read + j * batch`` KV
        tokens (as many attention pairs). Steps past the profile fall back one by one."""
        if batch == 0 or k <= 0:
            return np.zeros(max(k, 0), dtype=np.float64)
        kv = kv_tokens_read + batch * np.arange(k, dtype=np.int64)
        last = StepShape(tp_gpus, batch, batch, batch, int(kv[-1]), int(kv[-1]))
        fit = self.fits.get(tp_gpus)
        if fit is None or fit.covers(last) is not None:
            return np.array([self.step_time_s(StepShape(tp_gpus, batch, batch, batch, int(c),
                                                        int(c)), others_busy) for c in kv],
                            dtype=np.float64)
        head = self._tokens_part_s(fit, tp_gpus, batch) + fit.per_logit_s * batch
        times = head + (fit.per_pair_s * kv + fit.per_kv_token_s * kv)
        return times * fit.factor(others_busy) if others_busy else times

    def report(self) -> dict:
        """Fit quality and fallbacks, for summary.json."""
        return {"profile": self.profile["path"],
                "fit_mape_by_width": {str(w): f.mape for w, f in self.fits.items()},
                "contention_by_width": {str(w): f.contention for w, f in self.fits.items()},
                "fallback_steps": self.num_fallbacks,
                "fallback_reasons": dict(self.fallbacks)}
