"""Fit and check the roofline predictor against measured H100 profiles (Vidur, MIT).

    python -m sim.calibrate [--profiles-dir DIR] [--output docs/predictor_validation.md] [--no-write]

Reads ``mlp.csv`` (per-operator times of the Llama-2-7B shape at TP 1/2/4/8) and
``all_reduce.csv`` (NCCL on a DGX H100), fits the efficiency factors, kernel latency and the
all-reduce α / bus bandwidth by least squares on relative error (a pattern search for the
GEMM roofline, closed form for the linear models), compares every row, prints the report and
writes it as markdown. The fitted numbers are the defaults of ``RooflineConfig`` and
``conf/predictor/roofline.yaml`` (copied by hand; the report says whether they still agree).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from policies.plan import StepShape
from policies.specs import GpuSpec, ModelSpec
from sim.predictor import (GEMMS, RooflineConfig, RooflinePredictor, elementwise_bytes_per_token,
                           gemm_time_s, layer_gemm_shapes)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROFILES_DIR = REPO_ROOT.parent / "shared" / "profiles" / "vidur_h100_dgx"
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "predictor_validation.md"

H100 = GpuSpec(name="H100-SXM", memory_gib=80, hbm_bandwidth_bytes_per_s=3.35e12,
               dense_bf16_flops=989e12, interconnect="nvlink", interconnect_bandwidth_bytes_per_s=450e9)
LLAMA3_8B = ModelSpec(name="llama-3-8b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                      intermediate_size=14336, vocab_size=128256)
# The profiled small ops of one layer; `add` is profiled once and a layer has two residual adds.
SMALL_OPS = {"input_layernorm": 1, "post_attention_layernorm": 1, "attn_rope": 1, "mlp_act": 1, "add": 2}
SMALL_TOKENS = 128  # regime split: num_tokens < 128 (decode-like) vs >= 128 (prefill-like)


# --- loading ---------------------------------------------------------------------------------
def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"profile {path} not found: pass --profiles-dir pointing at a copy of "
                                f"vidur_h100_dgx (default {DEFAULT_PROFILES_DIR})")
    return path


def load_operator_profile(profiles_dir: Path) -> tuple[ModelSpec, pd.DataFrame]:
    """The profiled model shape and one row per (tp, num_tokens): the median time (s) of each op
    (duplicate rows of the CSV are merged by their median)."""
    raw = pd.read_csv(_require(profiles_dir / "mlp.csv"))
    shape_cols = ["n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp"]
    shapes = raw[shape_cols].drop_duplicates()
    if len(shapes) != 1 or not bool(shapes.use_gated_mlp.iloc[0]):
        raise ValueError(f"expected one gated-MLP model shape in mlp.csv, found {shapes.to_dict('records')}")
    s = shapes.iloc[0]
    model = ModelSpec(name="llama-2-7b (profiled shape)", num_layers=32, hidden_size=int(s.n_embd),
                      num_heads=int(s.n_head), num_kv_heads=int(s.n_kv_head),
                      intermediate_size=int(s.n_expanded_embd), vocab_size=int(s.vocab_size))
    ops = list(GEMMS) + list(SMALL_OPS)
    cols = {f"time_stats.{op}.median": op for op in ops}
    df = (raw.rename(columns={"num_tensor_parallel_workers": "tp"})
          .rename(columns=cols)[["tp", "num_tokens", *ops]]
          .groupby(["tp", "num_tokens"], as_index=False).median())
    df[ops] = df[ops] * 1e-3  # ms -> s
    df["elementwise"] = sum(w * df[op] for op, w in SMALL_OPS.items())
    return model, df


def load_allreduce_profile(profiles_dir: Path) -> pd.DataFrame:
    raw = pd.read_csv(_require(profiles_dir / "all_reduce.csv"))
    df = (raw.groupby(["num_workers", "size"], as_index=False)["time_stats.all_reduce.median"].median()
          .rename(columns={"num_workers": "width", "size": "bytes", "time_stats.all_reduce.median": "time_s"}))
    df["time_s"] *= 1e-3
    return df


# --- fitting ---------------------------------------------------------------------------------
def _gemm_rows(model: ModelSpec, ops: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per (op, tp, num_tokens) with its FLOPs, bytes and measured time."""
    parts = []
    for tp, group in ops.groupby("tp"):
        rows = group.num_tokens.to_numpy(dtype=np.float64)
        for name, (k, n) in layer_gemm_shapes(model, int(tp)).items():
            parts.append(pd.DataFrame({"op": name, "tp": int(tp), "num_tokens": group.num_tokens.to_numpy(),
                                       "flops": 2.0 * rows * k * n,
                                       "bytes": (k * n + rows * (k + n)) * model.dtype_bytes,
                                       "measured_s": group[name].to_numpy()}))
    return pd.concat(parts, ignore_index=True)


def _pattern_search(loss, starts, steps, lower, upper, free, min_step_ratio=1e-3):
    """Derivative-free coordinate pattern search (scipy is not available); best of several starts."""
    best_x, best_l = None, math.inf
    for x0 in starts:
        x, step = np.array(x0, dtype=np.float64), np.array(steps, dtype=np.float64)
        cur = loss(x)
        while np.any(step[free] > np.asarray(steps)[free] * min_step_ratio):
            improved = False
            for i in np.flatnonzero(free):
                for sign in (1.0, -1.0):
                    y = x.copy()
                    y[i] = min(max(y[i] + sign * step[i], lower[i]), upper[i])
                    ly = loss(y)
                    if ly < cur:
                        x, cur, improved = y, ly, True
            if not improved:
                step = step / 2
        if cur < best_l:
            best_x, best_l = x, cur
    return best_x, best_l


def fit_gemms(rows: pd.DataFrame, gpu: GpuSpec, p: float, fit_latency: bool = True) -> dict:
    """Least squares on relative error of (gemm_eff, hbm_eff, floor_s, latency_s) at norm p."""
    flops, bytes_, meas = rows.flops.to_numpy(), rows.bytes.to_numpy(), rows.measured_s.to_numpy()

    def loss(x):
        pred = gemm_time_s(flops, bytes_, gpu.dense_bf16_flops, gpu.hbm_bandwidth_bytes_per_s,
                           x[0], x[1], p, x[2], x[3])
        return float(np.mean((pred / meas - 1.0) ** 2))

    free = np.array([True, True, True, fit_latency])
    starts = [s for s in itertools.product([0.5, 0.8], [0.5, 0.8], [0.0, 5e-6], [0.0, 5e-6] if fit_latency else [0.0])]
    x, _ = _pattern_search(loss, starts, steps=[0.1, 0.1, 2e-6, 2e-6], lower=[0.05, 0.05, 0.0, 0.0],
                           upper=[1.0, 1.0, 1e-4, 1e-4], free=free)
    return {"gemm_flops_efficiency": x[0], "hbm_efficiency": x[1], "kernel_floor_s": x[2],
            "kernel_latency_s": x[3], "roofline_p": p}


def _relative_lstsq(features: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Coefficients c minimising sum((features @ c / measured - 1)^2)."""
    coef, *_ = np.linalg.lstsq(features / measured[:, None], np.ones_like(measured), rcond=None)
    return coef


def fit_elementwise(model: ModelSpec, ops: pd.DataFrame, gpu: GpuSpec) -> dict:
    """elementwise(T) = latency + T * bytes_per_token(tp) / (hbm * eff): linear in (latency, 1/eff)."""
    moved = ops.num_tokens * ops.tp.map(lambda tp: elementwise_bytes_per_token(model, int(tp)))
    latency_s, inv_eff = _relative_lstsq(np.column_stack([np.ones(len(ops)), moved / gpu.hbm_bandwidth_bytes_per_s]),
                                         ops.elementwise.to_numpy())
    return {"elementwise_efficiency": 1.0 / inv_eff, "elementwise_latency_s": latency_s}


def fit_allreduce(ar: pd.DataFrame) -> dict:
    """α + 2(w−1)/w · S/B_bus per width 2/4/8, and jointly over the widths (the fallback)."""
    def fit(d):
        alpha, inv_bw = _relative_lstsq(np.column_stack([np.ones(len(d)), 2 * (d.width - 1) / d.width * d.bytes]),
                                        d.time_s.to_numpy())
        return alpha, 1.0 / inv_bw
    alpha, bw = fit(ar)
    params = {"allreduce_alpha_s": alpha, "allreduce_bus_bandwidth_bytes_per_s": bw}
    for w, d in ar.groupby("width"):
        params[f"allreduce_alpha_w{w}_s"], params[f"allreduce_bus_bandwidth_w{w}_bytes_per_s"] = fit(d)
    return params


def _round_sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}") if x else 0.0


def fit_all(model: ModelSpec, ops: pd.DataFrame, ar: pd.DataFrame, gpu: GpuSpec, p: float) -> tuple[RooflineConfig, dict]:
    rows = _gemm_rows(model, ops)
    params = {**fit_gemms(rows, gpu, p), **fit_elementwise(model, ops, gpu)}
    params.update(fit_allreduce(ar))
    cfg = dataclasses.replace(RooflineConfig(), **{k: (v if k == "roofline_p" else _round_sig(v)) for k, v in params.items()})
    variants = {}
    for label, vp, lat in [("max (plain roofline), floor only", math.inf, False),
                           ("max + kernel latency", math.inf, True), ("p = 1 (sum) + latency", 1.0, True),
                           ("p = 2 + latency", 2.0, True), ("p = 4 + latency", 4.0, True)]:
        fit = fit_gemms(rows, gpu, vp, fit_latency=lat)
        variants[label] = (fit, ape_stats(_ape(_predict_gemm_rows(rows, gpu, fit), rows.measured_s)))
    return cfg, {"rows": rows, "variants": variants}


# --- evaluation ------------------------------------------------------------------------------
def _predict_gemm_rows(rows: pd.DataFrame, gpu: GpuSpec, fit: dict) -> np.ndarray:
    return gemm_time_s(rows.flops.to_numpy(), rows.bytes.to_numpy(), gpu.dense_bf16_flops, gpu.hbm_bandwidth_bytes_per_s,
                       fit["gemm_flops_efficiency"], fit["hbm_efficiency"], fit["roofline_p"],
                       fit["kernel_floor_s"], fit["kernel_latency_s"])


def _ape(pred, meas) -> np.ndarray:
    pred, meas = np.asarray(pred, dtype=np.float64), np.asarray(meas, dtype=np.float64)
    return np.abs(pred - meas) / meas


def ape_stats(ape) -> dict:
    ape = np.asarray(ape)
    return {"n": len(ape), "MAPE %": 100 * ape.mean(), "median APE %": 100 * np.median(ape),
            "P90 APE %": 100 * np.quantile(ape, 0.9), "max APE %": 100 * ape.max()}


def compare_operators(predictor: RooflinePredictor, ops: pd.DataFrame) -> pd.DataFrame:
    """Long table (op, tp, num_tokens, measured_s, predicted_s, ape) for the 4 GEMMs, the
    elementwise group and the whole layer's linear time (sum of the 4 GEMMs)."""
    parts = []
    for tp, group in ops.groupby("tp"):
        pred = predictor.operator_times_s(int(tp), group.num_tokens.to_numpy())
        pred["layer_linear"] = sum(pred[g] for g in GEMMS)
        meas = {name: group[name].to_numpy() for name in (*GEMMS, "elementwise")}
        meas["layer_linear"] = sum(meas[g] for g in GEMMS)
        for name, m in meas.items():
            parts.append(pd.DataFrame({"op": name, "tp": int(tp), "num_tokens": group.num_tokens.to_numpy(),
                                       "measured_s": m, "predicted_s": pred[name]}))
    out = pd.concat(parts, ignore_index=True)
    out["ape"] = _ape(out.predicted_s, out.measured_s)
    return out


def gemm_mape_by_tp(predictor: RooflinePredictor, ops: pd.DataFrame) -> dict[int, float]:
    """Overall MAPE (%) of the 4 GEMMs at each TP width: the regression check."""
    cmp = compare_operators(predictor, ops)
    g = cmp[cmp.op.isin(GEMMS)]
    return {int(tp): 100 * float(d.ape.mean()) for tp, d in g.groupby("tp")}


def compare_allreduce(cfg: RooflineConfig, ar: pd.DataFrame) -> pd.DataFrame:
    """Every all-reduce row priced per width (what the predictor uses) and by the joint fallback."""
    pred = RooflinePredictor(LLAMA3_8B, H100, cfg)
    joint = dataclasses.replace(cfg, **{f"allreduce_{k}_w{w}_{u}": getattr(cfg, f"allreduce_{k}_{u}")
                                        for w in (2, 4, 8) for k, u in (("alpha", "s"), ("bus_bandwidth", "bytes_per_s"))})
    pred_joint = RooflinePredictor(LLAMA3_8B, H100, joint)
    parts = []
    for label, p in (("per width", pred), ("joint", pred_joint)):
        parts.append(ar.assign(fit=label, predicted_s=[p.allreduce_time_s(b, int(w)) for b, w in zip(ar.bytes, ar.width)]))
    out = pd.concat(parts, ignore_index=True)
    out["ape"] = _ape(out.predicted_s, out.time_s)
    return out


def error_table(cmp: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{**dict(zip(by, key if isinstance(key, tuple) else (key,))), **ape_stats(d.ape)}
                         for key, d in cmp.groupby(by, sort=False)])


def decode_anchor(cfg: RooflineConfig, gpu: GpuSpec = H100, model: ModelSpec = LLAMA3_8B,
                  context_tokens: int = 1) -> pd.DataFrame:
    """Batch-1 decode step of Llama-3-8B on H100 at each TP width, with its parts."""
    pred = RooflinePredictor(model, gpu, cfg)
    rows = []
    for tp in (1, 2, 4, 8):
        ops = pred.operator_times_s(tp, 1)
        gemm_s = model.num_layers * sum(float(ops[g]) for g in GEMMS)
        step = pred.step_time_s(StepShape(tp, 1, 1, 1, context_tokens, context_tokens))
        rows.append({"tp": tp, "weights floor ms": 1e3 * model.weight_bytes / tp / gpu.hbm_bandwidth_bytes_per_s,
                     "layer GEMMs ms": 1e3 * gemm_s,
                     "small ops ms": 1e3 * model.num_layers * float(ops["elementwise"]),
                     "all-reduce ms": 1e3 * 2 * model.num_layers * pred.allreduce_time_s(model.hidden_size * model.dtype_bytes, tp),
                     "LM head ms": 1e3 * pred._logits_part_s(tp, 1),
                     "attention ms": 1e3 * float(pred._attention_s(tp, context_tokens, context_tokens)),
                     "overhead ms": 1e3 * cfg.step_overhead_s, "step ms": 1e3 * step})
    return pd.DataFrame(rows)


# --- report ----------------------------------------------------------------------------------
def _md(df: pd.DataFrame, floatfmt: str = ".1f") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_report(profiles_dir: Path, p: float, command: str) -> tuple[str, RooflineConfig, dict]:
    model, ops = load_operator_profile(profiles_dir)
    ar = load_allreduce_profile(profiles_dir)
    cfg, extra = fit_all(model, ops, ar, H100, p)
    pred = RooflinePredictor(model, H100, cfg)
    cmp = compare_operators(pred, ops)
    cmp["regime"] = np.where(cmp.num_tokens < SMALL_TOKENS, f"T<{SMALL_TOKENS}", f"T>={SMALL_TOKENS}")

    defaults = RooflineConfig()
    fitted_fields = [f for f in dataclasses.asdict(cfg) if f not in ("kind", "attention_flops_efficiency", "step_overhead_s")]
    drift = {f: (getattr(defaults, f), getattr(cfg, f)) for f in fitted_fields
             if not math.isclose(getattr(defaults, f), getattr(cfg, f), rel_tol=1e-3, abs_tol=1e-12)}

    big = ops[ops.num_tokens >= 2048]
    up_down_ratio = float((big.mlp_up_proj / big.mlp_down_proj).median())

    ar_cmp = compare_allreduce(cfg, ar)
    ar_table = pd.concat([error_table(ar_cmp, ["width", "fit"]),
                          error_table(ar_cmp[ar_cmp.bytes >= 1 << 20], ["width", "fit"]).assign(sizes=">= 1 MiB")])
    ar_table["sizes"] = ar_table["sizes"].fillna("all")
    params = cfg.allreduce_params()
    ar_table.insert(2, "alpha µs", [1e6 * params[w if f == "per width" else None][0] for w, f in zip(ar_table.width, ar_table.fit)])
    ar_table.insert(3, "bus GB/s", [1e-9 * params[w if f == "per width" else None][1] for w, f in zip(ar_table.width, ar_table.fit)])
    ar_table = ar_table[["width", "fit", "sizes", "alpha µs", "bus GB/s", "n", "MAPE %", "median APE %", "P90 APE %", "max APE %"]]

    variants = pd.DataFrame([{"GEMM cost model": k, "gemm eff": f["gemm_flops_efficiency"], "hbm eff": f["hbm_efficiency"],
                              "floor µs": 1e6 * f["kernel_floor_s"], "latency µs": 1e6 * f["kernel_latency_s"],
                              "MAPE %": s["MAPE %"], "P90 APE %": s["P90 APE %"], "max APE %": s["max APE %"]}
                             for k, (f, s) in extra["variants"].items()])
    gemm_cmp = cmp[cmp.op.isin(GEMMS)]
    per_op_tp = error_table(cmp[cmp.op.isin([*GEMMS, "elementwise"])], ["op", "tp"])
    per_regime = error_table(gemm_cmp, ["tp", "regime"]).sort_values(["tp", "regime"])
    per_op_regime = error_table(gemm_cmp, ["op", "regime"]).sort_values(["op", "regime"])
    layer = error_table(cmp[cmp.op == "layer_linear"], ["tp", "regime"]).sort_values(["tp", "regime"])
    layer_all = error_table(cmp[cmp.op == "layer_linear"], ["tp"])
    gemm_by_tp = error_table(gemm_cmp, ["tp"])
    worst = gemm_cmp.sort_values("ape", ascending=False).head(8)[["op", "tp", "num_tokens", "measured_s", "predicted_s", "ape"]].copy()
    worst[["measured_s", "predicted_s"]] *= 1e6
    worst["ape"] *= 100
    worst = worst.rename(columns={"measured_s": "measured µs", "predicted_s": "predicted µs", "ape": "APE %"})
    anchor1 = decode_anchor(cfg)
    anchor4k = decode_anchor(cfg, context_tokens=4096)

    cfg_lines = "\n".join(f"| `{k}` | {v:.4g} |" if isinstance(v, float) else f"| `{k}` | {v} |"
                          for k, v in dataclasses.asdict(cfg).items())
    anchor_tp1, anchor_tp8 = anchor1.set_index("tp").loc[1], anchor1.set_index("tp").loc[8]
    text = f"""# Roofline predictor validation

Produced by `{command}` (from the repository root); do not edit by hand.

Data: `../shared/profiles/vidur_h100_dgx/` (Vidur, MIT): `mlp.csv`, per-operator median times on one
H100 of the {model.name} (hidden {model.hidden_size}, {model.num_heads} heads, {model.num_kv_heads} KV heads,
intermediate {model.intermediate_size}, gated MLP) at num_tokens 1..4096 ({ops.num_tokens.nunique()} values) and
TP 1, 2, 4, 8 (each operator at its TP shard's shape); `all_reduce.csv`, NCCL all-reduce on an 8×H100 DGX,
2/4/8 GPUs, 2 KiB..64 MiB. Duplicate CSV rows are merged by their median. Peak numbers: H100
{H100.dense_bf16_flops / 1e12:.0f} TFLOP/s dense bf16, {H100.hbm_bandwidth_bytes_per_s / 1e12:.2f} TB/s HBM.

## Method

* Each GEMM of a layer at width tp is priced on its per-GPU shard (QKV and gate/up column-parallel,
  O and down row-parallel): FLOPs `2·T·K·N`, bytes `(K·N + T·(K+N))·2` (weight shard + activations),
  cost `max(‖(FLOPs/(peak·gemm_eff), bytes/(HBM·hbm_eff))‖_p, floor) + latency`. `p = ∞` is the plain
  roofline `max`, `p = 1` is compute + memory with no overlap.
* `mlp_up_proj` is the fused gate+up GEMM (N = 2·{model.intermediate_size}): at num_tokens ≥ 2048 (compute-bound)
  its median time is {up_down_ratio:.2f}× that of `mlp_down_proj` (2× the FLOPs; an up-only GEMM would be ~1×).
* Fit: least squares on relative error `(pred/meas − 1)²` over all {len(extra['rows'])} GEMM rows (4 ops × 4 TP × all
  token counts), by a coordinate pattern search from 16 starts (scipy is not installed). The norm `p` is chosen,
  not fit (table below): `p = {p:g}`.
* Small ops (RMSNorm ×2, RoPE, SiLU·mul, residual add ×2 — `add` is profiled once per layer and counted twice)
  are modelled as one per-layer bandwidth term: `latency + T · bytes_per_token(tp) / (HBM · eff)`, where
  bytes/token = 2·2h + 2·3h (norms, adds: not split by TP) + 2·(q+k)/tp (RoPE) + 3·I/tp (SiLU·mul). Linear in
  (latency, 1/eff): closed-form least squares on relative error. They matter: at T = 4096, TP1 they are ~16 %
  of a layer's measured linear+small-op time, and at T = 1, TP8 their ~13 µs per layer is ~30 %.
* All-reduce: `α + 2(w−1)/w · S/B_bus`, closed-form least squares on relative error, jointly over widths
  (used) and per width (reported).
* Not calibrated by this data: attention (`attention.csv` is not in the copy), the LM head (no profile; priced
  by the GEMM model), `step_overhead_s` (CPU cost per step; an assumption) — see the config comments.

## Fitted parameters (= `RooflineConfig` defaults and `conf/predictor/roofline.yaml`)

| field | value |
|---|---|
{cfg_lines}

Defaults in `sim/predictor.py` {"agree with this fit (within 0.1 %)." if not drift else "DIFFER from this fit: " + ", ".join(f"`{k}` default {a:.4g} vs fit {b:.4g}" for k, (a, b) in drift.items()) + " — update the defaults and the YAML."}

### GEMM cost model variants (each fitted the same way)

{_md(variants, ".3g")}

The plain roofline `max(compute, memory, floor)` is poor at small and medium token counts: a kernel's fixed
cost and the compute/memory transition are not a max. An additive per-kernel latency fixes most of the
small-token error; a smooth norm (p ≈ 1–2) fixes much of the transition. `p = 1` fits best but drives
`hbm_efficiency` to its bound of 1.0 (which the predictor also uses for KV streaming), so the default is `p = 2`.

## GEMM error, per operator × TP (all token counts)

{_md(per_op_tp)}

## GEMM error (4 GEMMs pooled) per TP — the regression check in `tests/sim/test_calibrate.py`

{_md(gemm_by_tp)}

## GEMM error per TP and regime (T = num_tokens)

{_md(per_regime)}

## GEMM error per operator and regime

{_md(per_op_regime)}

## Whole-layer linear time (sum of the 4 GEMMs) per TP

{_md(layer_all)}

{_md(layer)}

## Worst GEMM rows

{_md(worst)}

Where the roofline is poor: (1) the 128–512-token range, where cuBLAS tile/wave quantisation makes the measured
time jump in steps (e.g. TP1 `mlp_up_proj` nearly doubles from 128 to 256 tokens) that a smooth model cannot
follow; (2) TP8 shards at small T (a few µs per kernel), where launch/timer jitter of ±1–2 µs is 20–50 %;
(3) the O projection (`attn_post_proj`, the smallest GEMM), which reaches a lower share of peak than the others.
Errors on the whole layer are smaller than per operator because they partly cancel.

## All-reduce

{_md(ar_table)}

The predictor uses the per-width fit (widths 2, 4, 8) and the joint fit for any other width. Per width roughly
halves the error at 4 and 8 GPUs. Below ~1 MiB the measured times jump between ~7 and ~45 µs from one size to the
next (launch and timer noise in the profile, not a trend), so no α fits them well — that is where the large
maximum errors are, especially at 2 GPUs. NCCL α here is a pessimistic bound for small decode batches: vLLM's
custom all-reduce under CUDA graphs is faster for messages of a few KiB.

## Llama-3-8B batch-1 decode on H100 vs the DESIGN.md weights-only floor

DESIGN.md §3: weights stream in 4.8 ms at TP1 and 0.6 ms at TP8 at peak HBM bandwidth. Predicted step
(context 1 token) and its parts:

{_md(anchor1, ".3f")}

The same at 4096 tokens of context:

{_md(anchor4k, ".3f")}

At TP1 the step is {anchor_tp1['step ms']:.2f} ms = {anchor_tp1['step ms'] / anchor_tp1['weights floor ms']:.2f}× the floor
(1/hbm_eff on the weights, plus {32 * 4} GEMM latencies, {32} small-op groups and the step overhead). At TP8 it is
{anchor_tp8['step ms']:.2f} ms = {anchor_tp8['step ms'] / anchor_tp8['weights floor ms']:.1f}× the floor: the per-kernel fixed costs do not
shrink with TP and 64 NCCL all-reduces cost ~{anchor_tp8['all-reduce ms']:.1f} ms, so TP8 decode is
{anchor_tp1['step ms'] / anchor_tp8['step ms']:.1f}× faster than TP1, not 8×.
"""
    return text, cfg, {"cmp": cmp, "ops": ops, "model": model, **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--profiles-dir", type=Path, default=DEFAULT_PROFILES_DIR)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown report to write")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--roofline-p", type=float, default=RooflineConfig.roofline_p,
                        help="compute/memory norm of the GEMM model (inf = max)")
    args = parser.parse_args(argv)
    command = "python -m sim.calibrate" + (f" --roofline-p {args.roofline_p:g}" if args.roofline_p != RooflineConfig.roofline_p else "")
    try:
        text, _, _ = build_report(args.profiles_dir, args.roofline_p, command)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    if not args.no_write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
