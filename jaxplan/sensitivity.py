"""Which number limits a deployment: elasticities of the served metrics with respect to every
hardware number, the workload and the fitted efficiency parameters, from exact derivatives of the
cost model; what-if scaling of hardware numbers.

The best throughput at an SLA is a maximum over discrete layouts. At the chosen layout its
derivative is the chosen layout's own (envelope theorem) as long as a small change does not make
another layout the best, so the elasticities are taken at fixed layouts (``jax.jacrev`` through
``serving.evaluate``), and re-sweeps at +-10% report where the best layout switches.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .serving import CHEAP_COMPILER_OPTIONS, Layout, evaluator_for
from .specs import HARDWARE_KEYS, Experiment, Hardware, Model, Precision, SpecError, Workload

# Continuous hardware numbers: name -> (Hardware field, YAML key, label). The scale-up domain
# size is a whole number of GPUs and is left to ``hardware_overrides``.
HARDWARE_NUMBERS: dict[str, tuple[str, str, str]] = {
    "bf16_flops": ("bf16_flops", "bf16_dense_tflops", "BF16 FLOP/s"),
    "fp8_flops": ("fp8_flops", "fp8_dense_tflops", "FP8 FLOP/s"),
    "fp4_flops": ("fp4_flops", "fp4_dense_tflops", "FP4 FLOP/s"),
    "hbm_bandwidth": ("hbm_bandwidth", "hbm_bandwidth_tb_s", "HBM bandwidth"),
    "hbm_capacity": ("hbm_capacity", "hbm_capacity_gb", "HBM capacity"),
    "scale_up_bandwidth": ("scaleup_bandwidth", "scaleup_bandwidth_gb_s", "scale-up (NVLink) bandwidth"),
    "scale_up_latency": ("scaleup_latency", "scaleup_latency_us", "scale-up (NVLink) latency"),
    "scale_out_bandwidth": ("scaleout_bandwidth", "scaleout_bandwidth_gb_s", "scale-out bandwidth"),
    "scale_out_latency": ("scaleout_latency", "scaleout_latency_us", "scale-out latency"),
}
WORKLOAD_NUMBERS = {"isl": "input length (ISL)", "osl": "output length (OSL)",
                    "acceptance": "speculative acceptance rate", "prefix_hit": "prefix-cache hit share"}


def workload_inputs(wl: Workload) -> tuple[str, ...]:
    """The workload numbers an experiment's elasticities cover: ISL and OSL, the acceptance rate
    where speculative decoding is on, the prefix-cache share where some prompt is cached."""
    return ("isl", "osl") + (("acceptance",) if wl.draft_tokens else ()) \
        + (("prefix_hit",) if float(wl.prefix_hit) > 0 else ())
METRICS = ("tokens_per_s_per_gpu", "tokens_per_s_per_user", "ttft_s")
SWITCH_FACTORS = (0.9, 1.1)
ROW_BUCKET = 128          # layouts per Jacobian call are padded to a multiple of this


def _aliases() -> dict[str, str]:
    out = {}
    for name, (field, key, _) in HARDWARE_NUMBERS.items():
        for a in (name, field, key):
            out[a] = name
    return out


def hardware_number(name: str, where: str = "--scale") -> str:
    """Canonical name of a hardware number given by its name, Hardware field or YAML key."""
    canon = _aliases().get(name)
    if canon is None:
        raise SpecError(f"{where}: unknown hardware number '{name}'; allowed: {', '.join(HARDWARE_NUMBERS)}"
                        f" (or their hardware YAML keys, e.g. hbm_bandwidth_tb_s)")
    return canon


def parse_scales(items: Sequence[str] | None, where: str = "--scale") -> dict[str, float]:
    """``["hbm_bandwidth=2", "scale_out_bandwidth=0.5"]`` -> {name: factor}; factors must be > 0."""
    out: dict[str, float] = {}
    for item in items or ():
        name, sep, val = item.partition("=")
        if not sep:
            raise SpecError(f"{where} '{item}': expected NAME=FACTOR, e.g. hbm_bandwidth=2")
        canon = hardware_number(name.strip(), f"{where} '{item}'")
        try:
            f = float(val)
        except ValueError:
            raise SpecError(f"{where} '{item}': factor '{val}' is not a number") from None
        if not (f > 0 and math.isfinite(f)):
            raise SpecError(f"{where} '{item}': factor must be a positive number, got {val}")
        if canon in out:
            raise SpecError(f"{where}: '{canon}' is scaled twice")
        out[canon] = f
    return out


def scale_hardware(hw: Hardware, scales: Mapping[str, float]) -> Hardware:
    """The hardware with each named number multiplied by its factor."""
    if not scales:
        return hw
    # name, rates and source are static (pytree metadata): leaving them unchanged lets the
    # compiled sweep run the scaled hardware without recompiling; ``scaled_label`` names it.
    kw = {HARDWARE_NUMBERS[k][0]: getattr(hw, HARDWARE_NUMBERS[k][0]) * float(f) for k, f in scales.items()}
    return dataclasses.replace(hw, **kw)


def yaml_scale(name: str) -> float:
    """SI units per unit of a hardware number's YAML key (e.g. 1e12 for hbm_bandwidth_tb_s)."""
    return HARDWARE_KEYS[HARDWARE_NUMBERS[name][1]][1]


def yaml_value(hw: Hardware, name: str) -> float:
    """A hardware number in the units of its YAML key."""
    return float(getattr(hw, HARDWARE_NUMBERS[name][0])) / yaml_scale(name)


def scaled_label(hw_name: str, scales: Mapping[str, float]) -> str:
    return hw_name + (" (" + ", ".join(f"{k} x{f:g}" for k, f in scales.items()) + ")" if scales else "")


# ----------------------------------------------------------------------------- elasticities

def used_params(p: Mapping) -> list[str]:
    """Parameters a sweep reads (backend-specific copies and fit-only terms are not inputs here)."""
    from .params import BACKENDS
    skip = {f"{k}_overhead_{b}_s" for k in ("step", "layer", "disagg", "request") for b in BACKENDS}
    skip |= {k for k in p if k.startswith(("moe_imbalance_powerlaw", "nccl_"))}
    return [k for k in p if k not in skip]


# Disaggregated rows of a sweep: the two worker layouts and their counts (``sweep.run_disagg_sweep``).
DISAGG_FIELDS = {"pre": {"tp": "prefill_tp", "pp": "prefill_pp", "ep": "prefill_ep", "adp": "prefill_adp",
                         "batch": "prefill_batch", "chunk": "prefill_chunk"},
                 "dec": {"tp": "decode_tp", "pp": "decode_pp", "ep": "decode_ep", "adp": "decode_adp",
                         "batch": "decode_batch"}}
DISAGG_KEY = tuple(DISAGG_FIELDS["pre"].values()) + tuple(DISAGG_FIELDS["dec"].values()) + (
    "prefill_workers", "decode_workers")


def _serving_metrics(model: Model, prec: Precision, backend: str, serving: str):
    """``f(p, hw, wl, args) -> metrics`` for one row: the aggregated evaluator of ``backend``'s
    default scheduler, or of the scheduler ``backend`` names (``serving.evaluator_for``; args: a
    Layout), or the disaggregated deployment (args: prefill Layout, decode
    Layout, x, y, cross-network flag)."""
    if serving == "agg":
        metric_fn = evaluator_for(backend)
        return lambda p, hw, wl, lay: metric_fn(p, hw, model, prec, wl, lay)
    if serving == "disagg":
        from .serving import disagg_deployment
        return lambda p, hw, wl, a: disagg_deployment(p, hw, model, prec, wl, *a)
    raise SpecError(f"serving mode '{serving}' is unknown; allowed: agg, disagg")


@functools.lru_cache(maxsize=None)
def _jacobian(model: Model, prec: Precision, scheduler_backend: str, param_names: tuple[str, ...],
              serving: str = "agg", workload_names: tuple[str, ...] = ("isl", "osl")):
    """``f(p, hw, wl, rows) -> {metric: {group: {name: elasticity per row}}}``, compiled once per
    (model, precision, backend, serving mode). Each input is multiplied by exp(delta) and the
    Jacobian is taken at delta = 0: d log(metric) / d log(x), finite also where x = 0 (it is then 0)."""
    metric_fn = _serving_metrics(model, prec, scheduler_backend, serving)
    fields = tuple(v[0] for v in HARDWARE_NUMBERS.values())

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
    opts = CHEAP_COMPILER_OPTIONS if "acceptance" in workload_names else None
    return jax.jit(jax.vmap(one, in_axes=(None, None, None, 0)), compiler_options=opts)


def row_args(columns: Mapping, rows: np.ndarray, hw: Hardware, serving: str):
    """The per-row arguments of :func:`_serving_metrics` for ``rows`` of a sweep's columns."""
    f32 = lambda k: jnp.asarray(np.asarray(columns[k])[rows], jnp.float32)  # noqa: E731
    if serving == "agg":
        return Layout(*(f32(f) for f in Layout._fields))

    def lay(pool):
        cols = DISAGG_FIELDS[pool]
        v = {f: f32(cols[f]) if f in cols else None for f in Layout._fields}
        v["dp"] = jnp.ones(len(rows), jnp.float32)
        if v["chunk"] is None:
            v["chunk"] = jnp.zeros(len(rows), jnp.float32)
        return Layout(**v)
    cross = jnp.asarray(np.asarray(columns["gpus_used"])[rows] > hw.scaleup_domain)
    return (lay("pre"), lay("dec"), f32("prefill_workers"), f32("decode_workers"), cross)


def elasticities(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, columns: Mapping,
                 rows: np.ndarray, backend: str = "trtllm", serving: str = "agg") -> list[dict]:
    """Elasticities at the rows ``rows`` of a sweep's ``columns`` (``serving``: "agg" rows of
    ``sweep.run_sweep``, "disagg" rows of ``sweep.run_disagg_sweep``, at fixed layouts and worker
    counts). Returns one record per (row, input): kind (hardware / workload / param), name, value,
    and the elasticity of each metric in ``METRICS``. Hardware names are those of
    ``HARDWARE_NUMBERS``."""
    rows = np.asarray(rows, np.int64)
    if rows.size == 0:
        return []
    names = tuple(used_params(p))
    wl_names = workload_inputs(wl)
    fn = _jacobian(model, prec, backend, names, serving, wl_names)
    # pad to a multiple of ROW_BUCKET by repeating the last row: one compile for most frontiers
    padded = np.concatenate([rows, np.full(-len(rows) % ROW_BUCKET, rows[-1])])
    jac = jax.device_get(fn(p, hw, wl, row_args(columns, padded, hw, serving)))
    field_to_name = {v[0]: k for k, v in HARDWARE_NUMBERS.items()}
    out = []
    for j, r in enumerate(rows):
        for kind, group, values in (
                ("hardware", "hardware", {field_to_name[f]: float(getattr(hw, f)) for f in field_to_name}),
                ("workload", "workload", {n: float(getattr(wl, n)) for n in wl_names}),
                ("param", "params", {k: float(p[k]) for k in names})):
            for name, value in values.items():
                key = HARDWARE_NUMBERS[name][0] if kind == "hardware" else name
                rec = {"row": int(r), "kind": kind, "name": name, "value": value}
                for m in METRICS:
                    rec[f"elasticity_{m}"] = float(np.asarray(jac[m][group][key])[j])
                out.append(rec)
    return out


# ----------------------------------------------------------------------------- re-sweeps

def perturbed(exp: Experiment, p: Mapping, kind: str, name: str, factor: float):
    """(experiment, params) with one input multiplied by ``factor``."""
    if kind == "hardware":
        return dataclasses.replace(exp, hardware=scale_hardware(exp.hardware, {name: factor})), p
    if kind == "workload":
        wl = exp.workload
        return dataclasses.replace(exp, workload=Workload(**{**dataclasses.asdict(wl), name: getattr(wl, name) * factor})), p
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
    from .sweep import run_disagg_sweep, run_sweep
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
    both worker pools and their counts)."""
    from .report import label as layout_label
    from .sweep import meets_sla

    sweep = serving_sweep(serving, attention_dp)
    res = sweep(exp, p, params_source)
    rows = list(res.frontier)
    if res.best is not None and res.best not in rows:
        rows.append(res.best)
    records = elasticities(p, exp.hardware, exp.model, exp.precision, exp.workload, res.columns,
                           np.asarray(rows), exp.scheduler_key, serving) if rows else []
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
                    "new_layout": layout_label(r2.row(r2.best)) if r2.best is not None else "none meets the SLA",
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


def label_of(kind: str, name: str) -> str:
    if kind == "hardware":
        return HARDWARE_NUMBERS[name][2]
    if kind == "workload":
        return WORKLOAD_NUMBERS[name]
    return name


def ranked(records: list[dict], row: int, metric: str = "tokens_per_s_per_gpu",
           kinds: Sequence[str] = ("hardware", "workload", "param"), min_abs: float = 0.0) -> list[dict]:
    """The records of one layout, by decreasing |elasticity| of ``metric``."""
    sel = [r for r in records if r["row"] == row and r["kind"] in kinds
           and abs(r[f"elasticity_{metric}"]) >= min_abs]
    return sorted(sel, key=lambda r: -abs(r[f"elasticity_{metric}"]))
