"""Sweeps under an open loop: every aggregated layout at a request rate (stability, TTFT and TPOT
percentiles, the SLA on percentiles), or every layout's goodput (the highest rate at which a share
of requests meets both SLOs) and the layout with the most goodput per GPU.

The same layout space and the same batched evaluator as :func:`jaxplan.sweep.run_sweep`; the metric
function is :mod:`jaxplan.openloop`'s, with the workload and the load passed as one traced argument.
"""
from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from .layouts import Layout
from .openloop import PercentileSLA, evaluator, goodput_evaluator, load_of, meets
from .specs import Experiment, SpecError, scale_hardware
from .sweep import (
    DEFAULT_CHUNK,
    Plan,
    SweepResult,
    aggregated_layouts,
    evaluate_layouts,
    experiment_params,
    pareto_mask,
)

OBJECTIVES = ("throughput", "goodput")
# open-loop columns written after the closed loop's (layouts.csv, frontier.csv)
OPEN_COLUMNS = ("stable", "rate_rps", "sustainable_rps", "utilization", "capacity_tokens_per_s_per_gpu",
                "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p50_s", "tpot_p90_s", "tpot_p99_s",
                "prefill_utilization", "slot_utilization", "prefill_wait_s", "admission_wait_s",
                "unqueued_ttft_s", "meets_percentile_sla")
GOODPUT_COLUMNS = ("goodput_rps", "goodput_rps_per_gpu")


def run_open_sweep(exp: Experiment, p=None, params_source: str = "", *, sla: PercentileSLA | None = None,
                   objective: str = "throughput", chunk: int = DEFAULT_CHUNK, progress: bool = False,
                   attention_dp: str = "ep") -> SweepResult:
    """Every aggregated layout of ``exp`` under its open-loop traffic (``exp.traffic``: a rate or a
    trace). ``objective="throughput"``: metrics at the traffic's rate; the pick is the stable layout
    meeting both SLAs (``exp.sla`` on the means, ``sla`` on percentiles) with the most headroom (the
    highest sustainable rate per GPU). ``objective="goodput"``: per layout the goodput
    (:func:`jaxplan.openloop.goodput_rate`; the traffic's lengths and arrival variability, any
    rate), metrics at that rate, and the pick is the most goodput per GPU."""
    if objective not in OBJECTIVES:
        raise SpecError(f"objective '{objective}' is unknown; allowed: {', '.join(OBJECTIVES)}")
    sla = sla or PercentileSLA()
    if objective == "goodput" and sla.is_empty() and not np.isfinite(exp.sla.max_ttft_s) \
            and not exp.sla.min_tokens_per_user:
        raise SpecError("--objective goodput needs an SLO to meet: give --sla-ttft-p99 S / --sla-tpot-p90 S "
                        "(or another percentile), or --max-ttft / --min-tokens-per-user")
    if objective == "goodput":
        # the mean-value SLA, if given, counts as a limit on every request (at the goodput share)
        extra_t = ((100.0 * sla.share, exp.sla.max_ttft_s),) if np.isfinite(exp.sla.max_ttft_s) else ()
        extra_p = ((100.0 * sla.share, 1.0 / exp.sla.min_tokens_per_user),) if exp.sla.min_tokens_per_user else ()
        sla = sla._replace(ttft=sla.ttft + extra_t, tpot=sla.tpot + extra_p)
    p, params_source = experiment_params(exp, p, params_source)
    model, hw, prec, wl = exp.model, exp.hardware, exp.precision, exp.workload
    traffic = exp.load
    if objective == "throughput" and not traffic.open_loop:
        raise SpecError("an open-loop sweep needs a request rate: give --rate R (requests/s) or a trace "
                        "(traffic: load: {kind: trace, file: ...})")
    load = load_of(traffic, traffic.rate if traffic.open_loop else 1.0)
    configs, cols = aggregated_layouts(exp, p, attention_dp)
    n = len(cols["tp"])
    if progress:
        what = "goodput" if objective == "goodput" else f"at {traffic.rate:g} requests/s"
        print(f"jaxplan: open loop ({what}): {n:,} layouts of {model.name} on {exp.gpus} x {hw.name}",
              file=sys.stderr)
    fn = goodput_evaluator(exp.scheduler_name, sla) if objective == "goodput" else evaluator(exp.scheduler_name,
                                                                                             sla.percentiles)
    size = max(1, min(chunk, n))
    t0 = time.perf_counter()
    evaluate_layouts(p, hw, model, prec, (wl, load), {k: v[:size] for k, v in cols.items()}, chunk=size,
                     metric_fn=fn)
    t1 = time.perf_counter()
    res = evaluate_layouts(p, hw, model, prec, (wl, load), cols, chunk=size, progress=progress, metric_fn=fn)
    t2 = time.perf_counter()
    res = {k: np.asarray(v) for k, v in res.items()}
    gpus = cols["tp"] * cols["ep"] * cols["pp"] * cols["dp"]
    res["stable"] = res["stable"].astype(bool)
    res["feasible"] = res["feasible"].astype(bool) & res["stable"] & np.isfinite(res["tokens_per_s_per_gpu"])
    res["capacity_tokens_per_s_per_gpu"] = res["sustainable_rps"] * float(wl.osl) / gpus
    ok = np.asarray(meets(res, sla), bool)
    res["meets_percentile_sla"] = ok
    on = pareto_mask(res["tokens_per_s_per_user"], res["tokens_per_s_per_gpu"], res["feasible"])
    columns = {**{k: cols[k].astype(np.int64) for k in Layout._fields}, **res, "on_frontier": on}
    front = np.flatnonzero(on)
    front = front[np.argsort(res["tokens_per_s_per_user"][front])]
    sel = ok & (res["tokens_per_s_per_user"] >= exp.sla.min_tokens_per_user) & (res["ttft_s"] <= exp.sla.max_ttft_s)
    score = res["goodput_rps_per_gpu"] if objective == "goodput" else res["capacity_tokens_per_s_per_gpu"]
    best = int(np.argmax(np.where(sel, score, -np.inf))) if sel.any() else None
    return SweepResult(columns, front, best, len(configs), t1 - t0, t2 - t1, params_source)


def open_columns(objective: str) -> tuple[str, ...]:
    """The columns an open-loop sweep adds to the closed loop's, in the order files write them."""
    return OPEN_COLUMNS + (GOODPUT_COLUMNS if objective == "goodput" else ())


def plan_open(exp: Experiment, p=None, params_source: str | None = None, *, sla: PercentileSLA | None = None,
              objective: str = "throughput", serving: str = "agg", attention_dp: str = "ep",
              scales: dict[str, float] | None = None, progress: bool = False) -> Plan:
    """``jaxplan sweep --rate R`` / ``--objective goodput`` as a library call: a :class:`Plan` of the
    open-loop sweep (:func:`run_open_sweep`) whose summary says the load model, the percentile SLA
    and the objective. Aggregated serving only (disaggregated deployments under an open loop:
    :func:`jaxplan.openloop.evaluate_disagg_open`)."""
    if serving != "agg":
        raise SpecError("open-loop sweeps (--rate, a trace, --objective goodput) cover aggregated serving "
                        "(--serving agg); a disaggregated deployment under an open loop: "
                        "jaxplan.openloop.evaluate_disagg_open")
    sla = sla or PercentileSLA()
    scales = dict(scales or {})
    p, params_source = experiment_params(exp, p, params_source)
    scaled = dataclasses.replace(exp, hardware=scale_hardware(exp.hardware, scales)) if scales else exp
    r = run_open_sweep(scaled, p, params_source, sla=sla, objective=objective, progress=progress,
                       attention_dp=attention_dp)
    notes = {"objective": objective, "percentile_sla": sla.describe(),
             "percentile_sla_limits": {"ttft_s": {f"p{q:g}": s for q, s in sla.ttft},
                                       "tpot_s": {f"p{q:g}": s for q, s in sla.tpot}},
             "goodput_share": sla.share if objective == "goodput" else None,
             "pick": ("the most goodput (requests/s meeting both SLOs) per GPU" if objective == "goodput" else
                      "the stable layout meeting the SLA with the most headroom (sustainable tokens/s/GPU)"),
             "meeting_percentile_sla": int(np.asarray(r.columns["meets_percentile_sla"]).sum())}
    if objective == "goodput" and not exp.load.open_loop:
        t = exp.load
        notes["load"] = t.summary() | {"load": "poisson", "description": "open loop, Poisson arrivals at each "
                                       f"layout's goodput rate; ISL {t.isl.describe()}, OSL {t.osl.describe()}"}
    return Plan(scaled, exp, "agg", params_source, scales, {"agg": r}, {}, notes=notes,
                extra_columns=open_columns(objective))
