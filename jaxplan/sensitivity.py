"""Which number limits a deployment: elasticities of the served metrics with respect to every
hardware number, the workload and the fitted efficiency parameters, from exact derivatives of the
cost model.

The best throughput at an SLA is a maximum over discrete layouts. At the chosen layout its
derivative is the chosen layout's own (envelope theorem) as long as a small change does not make
another layout the best, so the elasticities are taken at fixed layouts (``jax.jacrev`` through
``serving.evaluate``), and re-sweeps at +-10% report where the best layout switches.

Inputs and layouts are returned by name and as rows; ``report`` words them.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .layouts import Layout
from .serving import CHEAP_COMPILER_OPTIONS, disagg_deployment, evaluator
from .specs import (
    BACKENDS,
    CONTINUOUS_HARDWARE,
    Experiment,
    Hardware,
    Model,
    Precision,
    SpecError,
    Workload,
    scale_hardware,
)
from .sweep import DECODE_COLUMNS, DISAGG_KEY, PREFILL_COLUMNS, meets_sla, run_disagg_sweep, run_sweep

# Workload numbers an elasticity can be taken with respect to.
WORKLOAD_NUMBERS = ("isl", "osl", "acceptance", "prefix_hit")


def workload_inputs(wl: Workload) -> tuple[str, ...]:
    """The workload numbers an experiment's elasticities cover: ISL and OSL, the acceptance rate
    where speculative decoding is on, the prefix-cache share where some prompt is cached."""
    return ("isl", "osl") + (("acceptance",) if wl.draft_tokens else ()) \
        + (("prefix_hit",) if float(wl.prefix_hit) > 0 else ())


METRICS = ("tokens_per_s_per_gpu", "tokens_per_s_per_user", "ttft_s")
SWITCH_FACTORS = (0.9, 1.1)
ROW_BUCKET = 128          # layouts per Jacobian call are padded to a multiple of this


# ----------------------------------------------------------------------------- elasticities

def used_params(p: Mapping) -> list[str]:
    """Parameters a sweep reads (backend-specific copies and fit-only terms are not inputs here)."""
    skip = {f"{k}_overhead_{b}_s" for k in ("step", "layer", "disagg", "request") for b in BACKENDS}
    skip |= {k for k in p if k.startswith(("moe_imbalance_powerlaw", "nccl_"))}
    return [k for k in p if k not in skip]


def _serving_metrics(model: Model, prec: Precision, scheduler: str, serving: str):
    """``f(p, hw, wl, args) -> metrics`` for one row: the aggregated evaluator under ``scheduler``
    (a policy, or a backend whose default it is; args: a Layout), or the disaggregated deployment
    (args: prefill Layout, decode Layout, x, y, cross-network flag, planned prefill load)."""
    if serving == "agg":
        metric_fn = evaluator(scheduler)
        return lambda p, hw, wl, lay: metric_fn(p, hw, model, prec, wl, lay)
    if serving == "disagg":
        return lambda p, hw, wl, a: disagg_deployment(p, hw, model, prec, wl, *a)
    raise SpecError(f"serving mode '{serving}' is unknown; allowed: agg, disagg")


@functools.cache
def _jacobian(model: Model, prec: Precision, scheduler: str, param_names: tuple[str, ...],
              serving: str = "agg", workload_names: tuple[str, ...] = ("isl", "osl")):
    """``f(p, hw, wl, rows) -> {metric: {group: {name: elasticity per row}}}``, compiled once per
    (model, precision, scheduler, serving mode). Each input is multiplied by exp(delta) and the
    Jacobian is taken at delta = 0: d log(metric) / d log(x), finite also where x = 0 (it is then 0)."""
    metric_fn = _serving_metrics(model, prec, scheduler, serving)
    fields = CONTINUOUS_HARDWARE

    def logs(delta, p, hw, wl, args):
        h = hw.replace(**{f: getattr(hw, f) * jnp.exp(delta["hardware"][f]) for f in fields})
        w = dataclasses.replace(wl, **{n: getattr(wl, n) * jnp.exp(delta["workload"][n]) for n in workload_names})
        q = dict(p)
        q.update({k: p[k] * jnp.exp(delta["params"][k]) for k in param_names})
        m = metric_fn(q, h, w, args)
        return {k: jnp.log(m[k]) for k in METRICS}

    zero = {"hardware": {f: jnp.float32(0) for f in fields},
            "workload": {n: jnp.float32(0) for n in workload_names},
            "params": {k: jnp.float32(0) for k in param_names}}

    def one(p, hw, wl, args):
        return jax.jacrev(logs)(zero, p, hw, wl, args)

    # With the speculative draft head (the acceptance is then an input) the Jacobian only compiles
    # within memory with the cheaper XLA passes (serving.CHEAP_COMPILER_OPTIONS).
    opts = CHEAP_COMPILER_OPTIONS
    return jax.jit(jax.vmap(one, in_axes=(None, None, None, 0)), compiler_options=opts)


def row_args(columns: Mapping, rows: np.ndarray, hw: Hardware, serving: str):
    """The per-row arguments of :func:`_serving_metrics` for ``rows`` of a sweep's columns."""
    f32 = lambda k: jnp.asarray(np.asarray(columns[k])[rows], jnp.float32)  # noqa: E731
    if serving == "agg":
        return Layout(*(f32(f) for f in Layout._fields))

    def lay(cols):
        v = {f: f32(cols[f]) if f in cols else None for f in Layout._fields}
        v["dp"] = jnp.ones(len(rows), jnp.float32)
        if v["chunk"] is None:
            v["chunk"] = jnp.zeros(len(rows), jnp.float32)
        return Layout(**v)
    cross = jnp.asarray(np.asarray(columns["gpus_used"])[rows] > hw.scale_up_domain)
    return (lay(PREFILL_COLUMNS), lay(DECODE_COLUMNS), f32("prefill_workers"), f32("decode_workers"), cross,
            f32("prefill_load_pct") / 100.0)


def elasticities(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, columns: Mapping,
                 rows: np.ndarray, scheduler: str = "trtllm", serving: str = "agg") -> list[dict]:
    """Elasticities at the rows ``rows`` of a sweep's ``columns`` (``serving``: "agg" rows of
    ``sweep.run_sweep``, "disagg" rows of ``sweep.run_disagg_sweep``, at fixed layouts and worker
    counts; ``scheduler``: the aggregated policy, or a backend whose default it is). Returns one
    record per (row, input): kind (hardware / workload / param), name, value, and the elasticity of
    each metric in ``METRICS``. Hardware names are ``specs.CONTINUOUS_HARDWARE``."""
    rows = np.asarray(rows, np.int64)
    if rows.size == 0:
        return []
    names = tuple(used_params(p))
    wl_names = workload_inputs(wl)
    fn = _jacobian(model, prec, scheduler, names, serving, wl_names)
    # pad to a multiple of ROW_BUCKET by repeating the last row: one compile for most frontiers
    padded = np.concatenate([rows, np.full(-len(rows) % ROW_BUCKET, rows[-1])])
    jac = jax.device_get(fn(p, hw, wl, row_args(columns, padded, hw, serving)))
    out = []
    for j, r in enumerate(rows):
        for kind, group, values in (
                ("hardware", "hardware", {f: float(getattr(hw, f)) for f in CONTINUOUS_HARDWARE}),
                ("workload", "workload", {n: float(getattr(wl, n)) for n in wl_names}),
                ("param", "params", {k: float(p[k]) for k in names})):
            for name, value in values.items():
                rec = {"row": int(r), "kind": kind, "name": name, "value": value}
                for m in METRICS:
                    rec[f"elasticity_{m}"] = float(np.asarray(jac[m][group][name])[j])
                out.append(rec)
    return out


# ----------------------------------------------------------------------------- re-sweeps

def perturbed(exp: Experiment, p: Mapping, kind: str, name: str, factor: float):
    """(experiment, params) with one input multiplied by ``factor``."""
    if kind == "hardware":
        return dataclasses.replace(exp, hardware=scale_hardware(exp.hardware, {name: factor})), p
    if kind == "workload":
        wl = exp.workload
        scaled = Workload(**{**dataclasses.asdict(wl), name: getattr(wl, name) * factor})
        return dataclasses.replace(exp, workload=scaled), p
    q = dict(p)
    q[name] = jnp.asarray(float(p[name]) * factor, jnp.float32)
    return exp, q


def _key_fields(columns: Mapping) -> tuple[str, ...]:
    return DISAGG_KEY if "decode_workers" in columns else Layout._fields


def layout_key(columns: Mapping, i: int | None) -> tuple | None:
    """What identifies row ``i``: its layout, or for a disaggregated row both worker layouts and
    their counts."""
    return None if i is None else tuple(int(columns[f][i]) for f in _key_fields(columns))


def find_layout(columns: Mapping, key: tuple | None) -> int | None:
    """Index of the layout with fields ``key`` in a sweep's columns (None if it is not there, e.g.
    its batch no longer fits in memory)."""
    if key is None:
        return None
    m = np.ones(len(columns["tp"]), bool)
    for f, v in zip(_key_fields(columns), key):
        m &= np.asarray(columns[f]) == v
    idx = np.flatnonzero(m)
    return int(idx[0]) if idx.size else None


@dataclasses.dataclass
class SensitivityResult:
    sweep: object                       # the SweepResult at the unperturbed point
    records: list[dict]                 # one per (layout, input): frontier points and the best
    switches: list[dict]                # one per (input, factor) at the best layout

    @property
    def best(self) -> int | None:
        return self.sweep.best


def serving_sweep(serving: str = "agg", attention_dp: str = "ep"):
    """``sweep(exp, params, params_source="") -> SweepResult`` for a serving mode: ``run_sweep``
    (aggregated layouts) or ``run_disagg_sweep`` (prefill and decode pools with worker counts)."""
    if serving == "agg":
        return lambda e, q, source="": run_sweep(e, q, params_source=source, attention_dp=attention_dp)
    if serving == "disagg":
        return lambda e, q, source="": run_disagg_sweep(e, q, params_source=source)
    raise SpecError(f"serving mode '{serving}' is unknown; allowed: agg, disagg")


def run_sensitivity(exp: Experiment, p: Mapping, params_source: str = "", attention_dp: str = "ep",
                    switch_kinds: Sequence[str] = ("hardware", "workload", "param"),
                    progress: bool = False, serving: str = "agg") -> SensitivityResult:
    """Sweep once, take elasticities at the best layout for the SLA and at every frontier point,
    then re-sweep with each input at 0.9x and 1.1x to find where the best layout switches.
    ``serving``: "agg" (``sweep.run_sweep``) or "disagg" (``sweep.run_disagg_sweep``: layouts of
    both worker pools and their counts). Each switch record names the layout the re-sweep picks as
    its row (``new_layout``: a dict of the sweep's columns, None when nothing meets the SLA)."""
    sweep = serving_sweep(serving, attention_dp)
    res = sweep(exp, p, params_source)
    rows = list(res.frontier)
    if res.best is not None and res.best not in rows:
        rows.append(res.best)
    records = elasticities(p, exp.hardware, exp.model, exp.precision, exp.workload, res.columns,
                           np.asarray(rows), exp.scheduler_name, serving) if rows else []
    switches = []
    if res.best is not None:
        base_key = layout_key(res.columns, res.best)
        base_gpu = float(res.columns["tokens_per_s_per_gpu"][res.best])
        at_best = [r for r in records if r["row"] == res.best and r["kind"] in switch_kinds]
        for n, rec in enumerate(at_best):
            if rec["value"] == 0.0:      # nothing to scale (a rate the chip lacks)
                continue
            for factor in SWITCH_FACTORS:
                e2, q = perturbed(exp, p, rec["kind"], rec["name"], factor)
                r2 = sweep(e2, q)
                key = layout_key(r2.columns, r2.best)
                new_gpu = float(r2.columns["tokens_per_s_per_gpu"][r2.best]) if r2.best is not None else 0.0
                old = find_layout(r2.columns, base_key)
                old_ok = old is not None and bool(meets_sla(r2.columns, e2.sla.min_tokens_per_user,
                                                            e2.sla.max_ttft_s)[old])
                switches.append({
                    "old_layout_meets_sla": old_ok,
                    "old_layout_tokens_per_s_per_gpu": (float(r2.columns["tokens_per_s_per_gpu"][old])
                                                        if old is not None else None),
                    "kind": rec["kind"], "name": rec["name"], "factor": factor,
                    "switched": key != base_key,
                    "new_layout": r2.row(r2.best) if r2.best is not None else None,
                    "best_tokens_per_s_per_gpu": new_gpu,
                    "change_pct": 100.0 * (new_gpu / base_gpu - 1.0),
                    "linear_pct": 100.0 * (math.exp(rec["elasticity_tokens_per_s_per_gpu"] * math.log(factor)) - 1.0),
                })
            if progress and sys.stderr.isatty():
                print(f"\r  re-swept {n + 1}/{len(at_best)} inputs at x0.9 and x1.1", end="", file=sys.stderr,
                      flush=True)
        if progress and sys.stderr.isatty():
            print(file=sys.stderr)
    return SensitivityResult(res, records, switches)


def ranked(records: list[dict], row: int, metric: str = "tokens_per_s_per_gpu",
           kinds: Sequence[str] = ("hardware", "workload", "param"), min_abs: float = 0.0) -> list[dict]:
    """The records of one layout, by decreasing |elasticity| of ``metric``."""
    sel = [r for r in records if r["row"] == row and r["kind"] in kinds
           and abs(r[f"elasticity_{metric}"]) >= min_abs]
    return sorted(sel, key=lambda r: -abs(r[f"elasticity_{metric}"]))
