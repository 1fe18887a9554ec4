"""Predicted TTFT and TPOT of measured serving deployments (:class:`~.serving_data.ServingCase`),
and their errors.

Each case is predicted with :func:`jaxplan.serving.evaluate` (aggregated rows, under its backend's
scheduling policy) or :func:`jaxplan.serving.evaluate_disagg` (disaggregated rows). The cases are
grouped by (model architecture, precision, mode, scheduler); each group's function is
``jit(vmap(...))`` over rows, compiled once for a fixed padded size, and called once per
(hardware, backend) with ``params.for_backend(params, backend)``.

Benchmark TTFT (both modes): the rows are short closed-loop runs, so each client's first request
belongs to a cold-start wave (:func:`benchmark_ttft`; ``serving.cold_start_ttft`` aggregated,
``serving.disagg_cold_start_ttft`` disaggregated), mixed in for
:data:`BENCHMARK_REQUESTS_PER_CLIENT` requests per client. ``steady_ttft_s`` is the steady state.

Speculative decoding the CSV does not record (:func:`speculation_rule`): a row measured below its
layout's one-request decode step is predicted with speculative decoding.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..cost import max_batch_that_fits
from ..layouts import Layout
from ..params import for_backend, params_for
from ..serving import (
    CHEAP_COMPILER_OPTIONS,
    cold_start_ttft,
    disagg_cold_start_ttft,
    evaluate_disagg,
    evaluator,
    round_time,
)
from ..specs import Hardware, Model, Precision, Workload, scheduler_for
from .serving_data import MS, SPECULATION_NOTE, ServingCase, Unmapped, unique_mask
from .stats import ape, error_stats

PAD_MULTIPLE = 16


# ----------------------------------------------------------------------------- prediction

class Compiled:
    """A jit-compiled batched evaluator and the row count it is called with: groups pad up to the
    largest size seen so far, so a later, smaller set of cases (a subsample, a holdout) reuses the
    compiled executable instead of compiling a new shape."""

    def __init__(self, fn):
        self.fn, self.size = fn, 0

    def pad_to(self, size: int) -> int:
        self.size = max(self.size, size)
        return self.size


def _arch_key(model: Model) -> Model:
    """Models that differ only in name/source share one compiled function (DeepSeek-V3 and -R1)."""
    return dataclasses.replace(model, name="", source="")


OUT_KEYS_AGG = ("ttft_s", "tpot_s", "requests_per_s", "decode_batch", "prefill_saturated", "memory_per_gpu_gb",
                "feasible", "steady_ttft_s", "fixed_overhead_s")
OUT_KEYS_DISAGG = ("ttft_s", "tpot_s", "requests_per_s", "decode_batch", "kv_transfer_s", "prefill_latency_s",
                   "prefill_utilization", "steady_ttft_s", "prefill_workers", "decode_workers", "fixed_overhead_s")
# evaluate() names the solved number of decoding requests "decoding_requests" (older: "decode_batch").
_ALIASES = {"decode_batch": ("decode_batch", "decoding_requests")}


def _pick(m: Mapping, keys) -> dict:
    out = {}
    for k in keys:
        for name in _ALIASES.get(k, (k,)):
            if name in m:
                out[k] = jnp.asarray(m[name], jnp.float32)
                break
        else:
            out[k] = jnp.full(jnp.shape(m["ttft_s"]), jnp.nan, jnp.float32)
    return out


def scheduler_of(backend: str, schedulers: Mapping[str, str] | None = None) -> str:
    """The aggregated scheduling policy a backend's rows are predicted with: ``schedulers[backend]``
    where given, else the backend's default (``specs.DEFAULT_SCHEDULER``: mixed prefill/decode
    batches for TensorRT-LLM and vLLM, lock-step prefill-first waves for SGLang)."""
    return scheduler_for((schedulers or {}).get(backend, backend))


def one_request_step(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, lay: Layout):
    """The shortest decode step ``lay`` can run without speculation: one decoding request per
    attention group, no prompt tokens. A measured TPOT below it needs more than one token per
    step (:func:`speculation_rule`)."""
    plain = Workload(wl.isl, wl.osl)
    return round_time(p, hw, model, prec, plain, lay._replace(batch=lay.adp), lay.adp, jnp.float32(0.0))


@functools.cache
def agg_evaluator(model: Model, prec: Precision, scheduler: str = "mixed", draft_tokens: int = 0) -> Compiled:
    """``f(params, hardware, isl[n], osl[n], acceptance[n], Layout[n]) -> dict of [n]``:
    jit(vmap(evaluate)) with the serving model's scheduling policy ``scheduler`` (see
    :func:`scheduler_of`), decoding with ``draft_tokens`` speculative tokens per step (0: off)."""
    metric_fn = evaluator(scheduler)

    def one(p, hw, isl, osl, acc, lay):
        wl = Workload(isl, osl, acc, draft_tokens)
        m = metric_fn(p, hw, model, prec, wl, lay)
        out = _pick(m, OUT_KEYS_AGG)
        out["steady_ttft_s"] = out["ttft_s"]
        cold = cold_start_ttft(p, hw, model, prec, wl, lay, m, scheduler)
        out["ttft_s"] = benchmark_ttft({**m, "cold_start_ttft_s": cold})
        out["fixed_overhead_s"] = jnp.broadcast_to(p["request_overhead_s"], jnp.shape(out["ttft_s"]))
        out["one_request_step_s"] = one_request_step(p, hw, model, prec, wl, lay)
        return out
    return Compiled(jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0)), compiler_options=CHEAP_COMPILER_OPTIONS))


# The measured rows are short closed-loop benchmarks: N clients start at once, so the first of the
# few requests each client sends arrive together (a cold-start wave whose prompts queue), and the
# later ones arrive staggered (steady state). Their mean TTFT mixes the two. The number of
# requests per client is not in the CSV; 4 was chosen on the aggregated H100 rows (the grid and
# the H200 holdout: benchmarks/serving_validation.md, "Decisions and their evidence"). Planning (``sweep``)
# reports the steady state; this applies to validation only.
BENCHMARK_REQUESTS_PER_CLIENT = 4.0


def benchmark_ttft(m: Mapping, requests_per_client: float = BENCHMARK_REQUESTS_PER_CLIENT):
    """Mean TTFT of a closed-loop benchmark whose clients each send ``requests_per_client``
    requests: one cold-start wave, the rest in steady state. Where ``m`` flags the prefill as
    saturated (aggregated rows) the queue (Little's law) already sets TTFT."""
    ttft, cold = m["ttft_s"], m["cold_start_ttft_s"]
    mixed = ttft + jnp.maximum(cold - ttft, 0.0) / requests_per_client
    return jnp.where(m["prefill_saturated"], ttft, mixed) if "prefill_saturated" in m else mixed


@functools.cache
def disagg_evaluator(model: Model, prec: Precision, draft_tokens: int = 0) -> Compiled:
    """``f(params, hardware, isl, osl, acceptance, prefill Layout, decode Layout, x, y, N, cross) ->
    dict``, all per-row arrays: jit(vmap(evaluate_disagg)), decoding with ``draft_tokens``
    speculative tokens per step (0: off)."""
    def one(p, hw, isl, osl, acc, pre, dec, x, y, n, cross):
        wl = Workload(isl, osl, acc, draft_tokens)
        m = evaluate_disagg(p, hw, model, prec, wl, pre, dec, x, y, n, cross)
        out = _pick(m, OUT_KEYS_DISAGG)
        out["steady_ttft_s"] = out["ttft_s"]
        # Same benchmark as the aggregated rows: one cold-start wave per client, the rest steady.
        # No switch at prefill saturation: the wave only counts where it exceeds the steady
        # state's own queue (what switches were tried: benchmarks/serving_validation.md, "Decisions and
        # their evidence").
        out["ttft_s"] = benchmark_ttft({**m, "cold_start_ttft_s": disagg_cold_start_ttft(m, n)})
        out["fixed_overhead_s"] = jnp.broadcast_to(p["request_overhead_s"] + p["disagg_overhead_s"],
                                                   jnp.shape(out["ttft_s"]))
        out["one_request_step_s"] = one_request_step(p, hw, model, prec, wl, dec)
        return out
    return Compiled(jax.jit(jax.vmap(one, in_axes=(None, None) + (0,) * 9), compiler_options=CHEAP_COMPILER_OPTIONS))


@dataclasses.dataclass
class _Group:
    """Cases sharing one compiled function and one (hardware, backend): one call."""
    fn_key: tuple            # (arch model, precision, mode, scheduler, draft tokens)
    hardware: Hardware
    backend: str
    idx: np.ndarray          # indices into the case list
    args: tuple              # padded per-row arrays


def _stack_layouts(lays: Sequence[Layout]) -> Layout:
    return Layout(*(np.asarray([float(getattr(lay, f)) for lay in lays], np.float32) for f in Layout._fields))


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    idx = np.minimum(np.arange(size), len(a) - 1)
    return np.asarray(a)[idx]


def build_groups(cases: Sequence[ServingCase], pad_multiple: int = PAD_MULTIPLE,
                 schedulers: Mapping[str, str] | None = None) -> list[_Group]:
    """Group cases by (architecture, precision, mode, scheduler) x (hardware, backend) and pad every group of
    one function to the same size (a multiple of ``pad_multiple``, at least the size this function
    was compiled for before), so each function compiles once. ``schedulers``: backend -> scheduler
    for the aggregated rows (:func:`scheduler_of`)."""
    by_fn: dict[tuple, dict[tuple, list[int]]] = {}
    for i, c in enumerate(cases):
        fk = (_arch_key(c.model), c.precision, c.mode, scheduler_of(c.backend, schedulers) if c.mode == "agg" else "",
              int(c.draft_tokens))
        by_fn.setdefault(fk, {}).setdefault((c.hardware.name, c.backend), []).append(i)
    groups = []
    for fk, subs in by_fn.items():
        size = max(len(v) for v in subs.values())
        size = compiled_for(fk).pad_to(int(math.ceil(size / pad_multiple) * pad_multiple))
        for (_, backend), idx in subs.items():
            idx = np.asarray(idx)
            cs = [cases[i] for i in idx]
            isl = _pad(np.asarray([c.isl for c in cs], np.float32), size)
            osl = _pad(np.asarray([c.osl for c in cs], np.float32), size)
            acc = _pad(np.asarray([c.acceptance for c in cs], np.float32), size)
            if fk[2] == "agg":
                lay = _stack_layouts([c.layout for c in cs])
                args = (isl, osl, acc, Layout(*(_pad(v, size) for v in lay)))
            else:
                pre = _stack_layouts([c.prefill for c in cs])
                dec = _stack_layouts([c.decode for c in cs])
                f32 = lambda vals: _pad(np.asarray(vals, np.float32), size)  # noqa: E731
                args = (isl, osl, acc, Layout(*(_pad(v, size) for v in pre)), Layout(*(_pad(v, size) for v in dec)),
                        f32([c.prefill_workers for c in cs]), f32([c.decode_workers for c in cs]),
                        f32([c.concurrency for c in cs]), _pad(np.asarray([c.cross_network for c in cs]), size))
            groups.append(_Group(fk, cs[0].hardware, backend, idx, args))
    return groups


def _traced_hardware(hw: Hardware) -> Hardware:
    """``hw`` with its static name and source blanked: they are pytree metadata, so H100 and H200
    would otherwise compile separately although only their (traced) numbers differ. The cost model
    never reads them; ``rates`` (which selects code paths) is kept."""
    return dataclasses.replace(hw, name="", source="")


def compiled_for(fn_key: tuple) -> Compiled:
    """The compiled evaluator of a group key (architecture, precision, mode, scheduler, draft tokens)."""
    model, prec, mode, scheduler, draft = fn_key
    return agg_evaluator(model, prec, scheduler, draft) if mode == "agg" else disagg_evaluator(model, prec, draft)


def call_group(group: _Group, p) -> dict[str, np.ndarray]:
    out = jax.device_get(compiled_for(group.fn_key).fn(p, _traced_hardware(group.hardware), *group.args))
    n = len(group.idx)
    return {k: np.asarray(v)[:n] for k, v in out.items()}


def resolve_params(cases: Sequence[ServingCase], params=None, override=None) -> dict[str, tuple[dict, str]]:
    """hardware name -> (params, source). ``params`` (a dict) is used for every hardware; else
    ``params_for(hardware, override)``: the override file, the shipped profile, or the defaults."""
    out = {}
    for hw_name in sorted({c.hardware.name for c in cases}):
        out[hw_name] = (dict(params), "given") if params is not None else params_for(hw_name, override)
    return out


def predict(cases: Sequence[ServingCase], params=None, override=None, groups=None,
            schedulers: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """Predicted metrics for every case (arrays aligned with ``cases``; seconds).

    ``params``: one params dict for all hardware, or None for ``params_for`` per hardware (see
    :func:`resolve_params`); or a mapping hardware name -> params dict. ``schedulers``: backend ->
    scheduler of its aggregated rows, where not the backend's default (ignored with ``groups``)."""
    if params is not None and all(isinstance(v, Mapping) for v in params.values()):
        by_hw = {k: dict(v) for k, v in params.items()}
    else:
        by_hw = {k: v[0] for k, v in resolve_params(cases, params, override).items()}
    groups = build_groups(cases, schedulers=schedulers) if groups is None else groups
    keys = sorted(set(OUT_KEYS_AGG) | set(OUT_KEYS_DISAGG) | {"one_request_step_s"})
    out = {k: np.full(len(cases), np.nan, np.float64) for k in keys}
    for g in groups:
        p = for_backend(by_hw[g.hardware.name], g.backend)
        for k, v in call_group(g, p).items():
            out[k][g.idx] = v
    return out




# ----------------------------------------------------------------------------- error tables

def prediction_table(cases: Sequence[ServingCase], pred: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-row columns (measured, predicted, APE, signed log error) for reports and CSV."""
    c = cases
    t_meas = np.asarray([x.ttft_ms for x in c])
    p_meas = np.asarray([x.tpot_ms for x in c])
    t_pred = np.asarray(pred["ttft_s"]) / MS
    p_pred = np.asarray(pred["tpot_s"]) / MS
    return {"id": np.asarray([x.id for x in c], object),
            "model": np.asarray([x.model_path.split("/")[-1] for x in c], object),
            "system": np.asarray([x.system for x in c], object),
            "backend": np.asarray([x.backend for x in c], object),
            "mode": np.asarray([x.mode for x in c], object),
            "described": np.asarray(["derived" if "blank *_num_workers" in x.note else "given" for x in c], object),
            "unique": unique_mask(c),
            "isl": np.asarray([x.isl for x in c]), "osl": np.asarray([x.osl for x in c]),
            "concurrency": np.asarray([x.concurrency for x in c]),
            "measured_ttft_ms": t_meas, "predicted_ttft_ms": t_pred, "ttft_ape": ape(t_pred, t_meas),
            "measured_tpot_ms": p_meas, "predicted_tpot_ms": p_pred, "tpot_ape": ape(p_pred, p_meas),
            "far_off": far_off_reasons(c, pred, t_pred, t_meas, p_pred, p_meas)}


# A prediction more than FAR_OFF times (or less than 1/FAR_OFF of) the measurement gets a reason.
FAR_OFF = 3.0


def far_off_reasons(cases: Sequence[ServingCase], pred: Mapping[str, np.ndarray], t_pred, t_meas, p_pred,
                    p_meas) -> np.ndarray:
    """Why a prediction is more than :data:`FAR_OFF` x off, from named quantities of the row and the
    model ('' where it is within). The first that applies:

    * ``batch above the KV cache``: the memory model holds fewer of the replica's requests than
      its batch (the rest queue for admission; a TTFT error here is the admission model's);
    * ``speculative decoding assumed``: the row was measured below its one-request step
      (:func:`speculation_rule`) and is predicted with an assumed draft length and acceptance;
    * ``derived workers``: a disaggregated row without worker counts (derived; the campaign's
      fixed pools are not recorded);
    * ``TTFT beyond serial prefill``: the measured TTFT exceeds N times the predicted TTFT, more
      than prefilling all N prompts one after another would take: a wait outside the engine's
      compute (benchmark ramp-up, warm-up, an admission limit the row does not record);
    * ``fixed overhead above the measured TTFT``: the backend's fitted per-request overheads
      (``request_overhead_s``, plus ``disagg_overhead_s`` disaggregated) alone exceed the measured
      TTFT: overheads fitted to another campaign's protocol that do not carry over;
    * ``TTFT under-predicted``, ``TTFT over-predicted``, ``TPOT under-predicted``,
      ``TPOT over-predicted``: the model's own error, for the benchmark notes to explain."""
    out = np.full(len(cases), "", object)
    feasible = np.asarray(pred.get("feasible", np.ones(len(cases))), float)
    overhead = np.asarray(pred.get("fixed_overhead_s", np.zeros(len(cases))), float) / MS
    for i, c in enumerate(cases):
        rt, rp = t_pred[i] / t_meas[i], p_pred[i] / p_meas[i]
        if max(rt, 1 / rt, rp, 1 / rp) <= FAR_OFF:
            continue
        if c.mode == "agg" and feasible[i] == 0:
            out[i] = "batch above the KV cache"
        elif c.draft_tokens:
            out[i] = "speculative decoding assumed"
        elif c.mode == "disagg" and "blank *_num_workers" in c.note:
            out[i] = "derived workers"
        elif rt > FAR_OFF and t_meas[i] < overhead[i]:
            out[i] = "fixed overhead above the measured TTFT"
        elif rt < 1 / FAR_OFF and t_meas[i] > c.concurrency * t_pred[i]:
            out[i] = "TTFT beyond serial prefill"
        elif rt < 1 / FAR_OFF:
            out[i] = "TTFT under-predicted"
        elif rt > FAR_OFF:
            out[i] = "TTFT over-predicted"
        else:
            out[i] = "TPOT under-predicted" if rp < 1 else "TPOT over-predicted"
    return out


def summarize(table: Mapping[str, np.ndarray], by: Sequence[str] = ("system", "backend", "mode"),
              mask: np.ndarray | None = None) -> list[dict]:
    """Error statistics of TTFT and TPOT per group of ``by`` columns, then 'overall'."""
    n = len(table["id"])
    mask = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
    keys = [tuple(table[k][i] for k in by) for i in range(n)]
    rows = []
    for key in sorted({k for k, m in zip(keys, mask) if m}):
        sel = mask & np.asarray([k == key for k in keys])
        rows.append(_stat_row(dict(zip(by, key)), table, sel))
    rows.append(_stat_row({k: ("overall" if i == 0 else "") for i, k in enumerate(by)}, table, mask))
    return rows


def _stat_row(label: dict, table, sel) -> dict:
    t = error_stats(table["predicted_ttft_ms"][sel], table["measured_ttft_ms"][sel])
    p = error_stats(table["predicted_tpot_ms"][sel], table["measured_tpot_ms"][sel])
    return {**label, "n": t["n"], **{f"ttft_{k}": v for k, v in t.items() if k != "n"},
            **{f"tpot_{k}": v for k, v in p.items() if k != "n"}}


@dataclasses.dataclass
class Validation:
    cases: list
    unmapped: list
    pred: dict
    table: dict
    summary: list
    params_source: dict


# Speculative decoding the CSV does not record. No decoder that emits one token per step can beat
# the step of its layout with a single request per attention group (a step only grows with the
# batch and with prompt chunks), so a row measured well below that step ran speculation (DeepSeek's
# multi-token prediction, EAGLE): its tokens came several per step. The rule: a measured TPOT below
# SPECULATION_MARGIN x the predicted one-request step marks the row, which is then predicted with
# SPECULATION_DRAFT_TOKENS drafted tokens accepted with probability SPECULATION_ACCEPTANCE each.
# - margin 0.8: the cost model's own error at batch 1 (DeepSeek-R1 FP8 on 8 B200, one request:
#   measured 7.3 ms, predicted 6.6 ms) must not mark a row by itself;
# - 3 drafted tokens: the multi-token-prediction setting of the published DeepSeek-R1 recipes of
#   TensorRT-LLM (``num_nextn_predict_layers: 3``) and SGLang (``--speculative-num-steps 3``);
# - acceptance 0.7 per drafted token (2.5 tokens per step): below DeepSeek-V3's 85-90% for its
#   first drafted token (DeepSeek-V3 technical report, on multi-token prediction), because the later ones re-use the one
#   MTP module and the benchmarks send random prompts. An assumption, not fitted: the sensitivity
#   is in benchmarks/serving_validation.md.
# The rule reads the measured TPOT only to decide whether the row ran speculation, never how
# fast; rows that ran it at a large batch (above the one-request step) stay unmarked.
SPECULATION_MARGIN = 0.8
SPECULATION_DRAFT_TOKENS = 3
SPECULATION_ACCEPTANCE = 0.7


def speculation_rule(cases: Sequence[ServingCase], one_request_step_s, margin: float = SPECULATION_MARGIN,
                     draft_tokens: int = SPECULATION_DRAFT_TOKENS,
                     acceptance: float = SPECULATION_ACCEPTANCE) -> tuple[list[ServingCase], np.ndarray]:
    """``(cases, marked)``: the cases with those whose measured TPOT is below ``margin`` x their
    one-request step (seconds, per case; :func:`one_request_step`) set to speculative decoding
    (``draft_tokens``, ``acceptance``, a note saying why), and the boolean mask of those."""
    step = np.asarray(one_request_step_s, np.float64)
    meas = np.asarray([c.tpot_ms for c in cases]) * MS
    marked = np.isfinite(step) & (meas < margin * step)
    out = list(cases)
    for i in np.flatnonzero(marked):
        c = cases[i]
        why = (f"{SPECULATION_NOTE}: measured TPOT {c.tpot_ms:.2f} ms < {margin:g} x the one-request "
               f"step {step[i] / MS:.2f} ms, so {draft_tokens} drafted tokens at acceptance {acceptance:g}")
        out[i] = dataclasses.replace(c, draft_tokens=int(draft_tokens), acceptance=float(acceptance),
                                     note="; ".join(x for x in (c.note, why) if x))
    return out, marked


def validate(cases: Sequence[ServingCase], unmapped: Sequence[Unmapped] = (), params=None,
             override=None, schedulers: Mapping[str, str] | None = None, speculation: bool = True) -> Validation:
    """Predict every case and tabulate the errors. ``speculation``: apply :func:`speculation_rule`
    (rows measured below their one-request step are re-predicted with speculative decoding)."""
    srcs = {k: v[1] for k, v in resolve_params(cases, params, override).items()} if params is None else \
        {c.hardware.name: "given" for c in cases}
    pred = predict(cases, params, override, schedulers=schedulers)
    if speculation:
        cases, marked = speculation_rule(cases, pred["one_request_step_s"])
        idx = np.flatnonzero(marked)
        if len(idx):
            again = predict([cases[i] for i in idx], params, override, schedulers=schedulers)
            for k, v in again.items():
                pred[k][idx] = v
    table = prediction_table(cases, pred)
    return Validation(list(cases), list(unmapped), pred, table, summarize(table), srcs)



# ----------------------------------------------------------------------------- memory

def memory_batch_cap(cases: Sequence[ServingCase], params=None, override=None) -> np.ndarray:
    """Most requests per replica whose KV cache fits beside the weights (``cost.max_batch_that_fits``
    at full context, as the sweep's batch limit). NaN for disagg rows; 0 where even the weights do
    not fit."""
    by_hw = {k: v[0] for k, v in resolve_params(cases, params, override).items()}
    out = np.full(len(cases), np.nan)
    grp: dict[tuple, list[int]] = collections.defaultdict(list)
    for i, c in enumerate(cases):
        if c.mode == "agg":
            grp[(_arch_key(c.model), c.precision, c.hardware.name)].append(i)
    for (model, prec, hw_name), idx in grp.items():
        cs = [cases[i] for i in idx]
        col = lambda f: np.asarray([float(getattr(c.layout, f)) for c in cs], np.float32)  # noqa: E731
        isl = np.asarray([c.isl for c in cs], np.float32)
        osl = np.asarray([c.osl for c in cs], np.float32)
        p = by_hw[hw_name]

        b = max_batch_that_fits(p, cs[0].hardware, model, prec, isl, osl, col("tp"), col("ep"), col("adp"),
                                col("pp"), col("chunk"))
        out[idx] = np.maximum(np.floor(np.asarray(b, np.float64)), 0.0)
    return out
