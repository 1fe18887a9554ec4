"""Command line: parse, call the library (the same calls ``jaxplan``'s Python API offers), print
and write through :mod:`jaxplan.report`. Bad input exits with code 2 and a message naming the
file, the key and what is allowed; never a traceback."""
from __future__ import annotations

import argparse
import collections
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import report
from .calibrate import bench, kernel_fit, serving_fit
from .calibrate.kernels import default_kernels_dir
from .calibrate.serving_data import load_serving, unmapped_counts
from .calibrate.serving_predict import scheduler_of, summarize, validate
from .codesign import load_prices, run_codesign
from .cost import sum_costs
from .energy import OBJECTIVES as ENERGY_OBJECTIVES
from .layouts import Layout, check_parallel
from .openloop import PERCENTILES, evaluate_open, load_of, percentile_sla
from .opensweep import OBJECTIVES as OPEN_OBJECTIVES
from .opensweep import plan_open
from .params import derive_profile, params_for
from .sensitivity import METRICS, elasticities, ranked, row_args, run_sensitivity
from .serving import explain, explain_disagg
from .simulate import simulate
from .specs import (
    BACKENDS,
    CONTINUOUS_HARDWARE,
    DEFAULT_EXPERIMENT,
    SCHEDULER_NAMES,
    SpecError,
    config_file,
    hardware_number,
    load_experiment,
    load_hardware,
    scale_hardware,
)
from .stream import explore, grid_axis, init_distributed, parse_grid, parse_write_layouts
from .stream import plan as stream_plan
from .sweep import DISAGG_KEY, run_disagg_sweep, run_sweep


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"jaxplan: error: {message}", file=sys.stderr)
        sys.exit(2)


def _number(kind, what, low, *, strict=True):
    """An argparse type: a finite ``kind`` above ``low`` (at or above it unless ``strict``)."""
    def conv(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {s}")
        if (v <= low) if strict else (v < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {s}")
        return v
    return conv


def _positive(kind):
    return _number(kind, f"a {kind.__name__}", 0)


def _nonneg(kind, what):
    return _number(kind, what, 0, strict=False)


_nonneg_int = _nonneg(int, "a whole number")
_nonneg_float = _nonneg(float, "a number")


def parse_scales(items, where: str = "--scale") -> dict[str, float]:
    """``["hbm_bandwidth=2", "scale_out_bandwidth=0.5"]`` -> {name: factor}; factors must be > 0."""
    out: dict[str, float] = {}
    for item in items or ():
        name, sep, val = item.partition("=")
        if not sep:
            raise SpecError(f"{where} '{item}': expected NAME=FACTOR, e.g. hbm_bandwidth=2")
        canon = hardware_number(name.strip(), f"{where} '{item}'").field
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


def parse_schedulers(items) -> dict[str, str]:
    """``["sglang=prefill_first", ...]`` (``jaxplan validate --scheduler``) -> backend -> scheduler."""
    out = {}
    for item in items or ():
        backend, sep, name = item.partition("=")
        if not sep or backend not in BACKENDS or name not in SCHEDULER_NAMES:
            raise SpecError(f"--scheduler '{item}': expected BACKEND=SCHEDULER with BACKEND one of "
                            f"{', '.join(BACKENDS)} and SCHEDULER one of {', '.join(SCHEDULER_NAMES)}")
        out[backend] = name
    return out


def _add_experiment_args(sp):
    sp.add_argument("experiment", nargs="?", help=f"experiment YAML or preset name (default: {DEFAULT_EXPERIMENT})")
    sp.add_argument("--model", help="model preset name or path to a YAML / Hugging Face config.json")
    sp.add_argument("--hardware", help="hardware preset name or YAML path")
    sp.add_argument("--gpus", type=_positive(int), help="GPU budget")
    sp.add_argument("--isl", type=_positive(int), help="input (prompt) tokens per request")
    sp.add_argument("--osl", type=_positive(int), help="output tokens per request")
    sp.add_argument("--precision", help="bf16, fp8 or fp4")
    sp.add_argument("--min-tokens-per-user", type=_nonneg_float, help="SLA: minimum tokens/s per user")
    sp.add_argument("--max-ttft", type=_positive(float), help="SLA: maximum time to first token, seconds")
    sp.add_argument("--params", help="fitted parameter profile YAML (default: the hardware's shipped profile)")
    sp.add_argument("--prefix-hit", type=_nonneg_float, metavar="H",
                    help="share of each prompt already in the prefix cache, in [0, 1) (prefill computes the rest)")
    sp.add_argument("--draft-tokens", type=_nonneg_int, metavar="K",
                    help="speculative decoding: tokens drafted per decode step (e.g. DeepSeek MTP; 0: off)")
    sp.add_argument("--acceptance", type=_nonneg_float, metavar="A",
                    help="speculative decoding: probability a drafted token is accepted, in [0, 1)")
    sp.add_argument("--scheduler", choices=SCHEDULER_NAMES,
                    help="aggregated scheduling policy (default: the experiment's, else its backend's: "
                         "mixed for trtllm and vllm, wave for sglang)")
    sp.add_argument("--scale", action="append", metavar="NAME=FACTOR",
                    help="what-if: multiply a hardware number, e.g. hbm_bandwidth=2 (repeatable); names: "
                         + ", ".join(CONTINUOUS_HARDWARE))


def _add_distributed_args(sp):
    sp.add_argument("--distributed", nargs="?", const="auto", default=None, metavar="COORDINATOR:PORT",
                    help="stream the sweep over every process of a jax.distributed run (one per node): each takes "
                         "a share of the layouts; process 0 writes. Without an address the cluster (Slurm, Open "
                         "MPI) says who is who")
    sp.add_argument("--num-processes", type=_positive(int), help="with --distributed ADDRESS: processes in the run")
    sp.add_argument("--process-id", type=_nonneg_int, help="with --distributed ADDRESS: this process's index")


def _load_base(args):
    """(experiment as loaded, params for its backend, where the params came from)."""
    exp = load_experiment(args.experiment, model=args.model, hardware=args.hardware,
                          gpus=args.gpus, isl=args.isl, osl=args.osl, precision=args.precision,
                          min_tokens_per_user=args.min_tokens_per_user, max_ttft=args.max_ttft,
                          scheduler=getattr(args, "scheduler", None),
                          draft_tokens=getattr(args, "draft_tokens", None),
                          acceptance=getattr(args, "acceptance", None),
                          prefix_hit=getattr(args, "prefix_hit", None), rate=getattr(args, "rate", None))
    p, source = params_for(exp.hardware.name, args.params or exp.params_file, exp.backend)
    return exp, p, source


def _load(args):
    """(experiment with any --scale applied, params for its backend, where the params came from)."""
    exp, p, source = _load_base(args)
    scales = parse_scales(getattr(args, "scale", None))
    return (exp.__class__(**{**exp.__dict__, "hardware": scale_hardware(exp.hardware, scales)})
            if scales else exp), p, source


# ----------------------------------------------------------------------------- sweep

def _distributed(args) -> bool:
    """Join the jax.distributed run if asked (before any JAX computation); True on the process
    that prints and writes (process 0, or the only one)."""
    if not getattr(args, "distributed", False):
        return True
    coord = args.distributed if isinstance(args.distributed, str) and args.distributed != "auto" else None
    me, n = init_distributed(coord, args.num_processes, args.process_id)
    print(f"jaxplan: process {me} of {n} (jax.distributed), {len(jax.local_devices())} local device(s)",
          file=sys.stderr)
    return me == 0


def _percentile_sla(args):
    """The percentile SLA of ``--sla-ttft-pQ`` / ``--sla-tpot-pQ`` (seconds) and ``--goodput-share``."""
    ttft = {q: getattr(args, f"sla_ttft_p{q:g}") for q in PERCENTILES if getattr(args, f"sla_ttft_p{q:g}", None)}
    tpot = {q: getattr(args, f"sla_tpot_p{q:g}") for q in PERCENTILES if getattr(args, f"sla_tpot_p{q:g}", None)}
    return percentile_sla(ttft=ttft, tpot=tpot, share=args.goodput_share)


def cmd_sweep_open(args, exp0, p, source, scales, out) -> int:
    """``jaxplan sweep`` under an open loop (a rate, a trace) or for goodput."""
    sla = _percentile_sla(args)
    print(f"jaxplan sweep: {report.title(exp0, scales)}; SLA: {sla.describe()}; "
          f"objective: {args.objective}; parameters: {source}", file=sys.stderr)
    pl = plan_open(exp0, p, source, sla=sla, objective=args.objective, serving=args.serving,
                   attention_dp=args.attention_dp, scales=scales, progress=True)
    report.write_plan(pl, out)
    r = pl.results["agg"]
    print(f"\nopen-loop Pareto frontier ({len(r.frontier)} of {r.n:,} layouts, "
          f"{int(r.columns['feasible'].sum()):,} stable and feasible, {pl.notes['meeting_percentile_sla']:,} "
          f"meeting the percentile SLA):")
    print(report.table(report.frontier_rows(r.columns, r.frontier, report.OPEN_TABLE), report.OPEN_TABLE))
    b = pl.best_row
    if b is None:
        print(f"\nNo stable layout meets the SLA ({sla.describe()}; {report.sla_text(pl.experiment)}).")
    else:
        head = (f"goodput {b['goodput_rps']:.2f} requests/s ({b['goodput_rps_per_gpu']:.3f}/GPU) at a "
                f"{100 * sla.share:g}% share meeting the SLOs" if args.objective == "goodput"
                else f"at {b['rate_rps']:g} requests/s, {100 * b['utilization']:.0f}% of its sustainable rate")
        print(f"\nBest ({pl.notes['pick']}): {report.label(b)}: {head}; TTFT p50/p90/p99 "
              f"{b['ttft_p50_s']:.3f}/{b['ttft_p90_s']:.3f}/{b['ttft_p99_s']:.3f} s, TPOT p50/p90/p99 "
              f"{1e3 * b['tpot_p50_s']:.1f}/{1e3 * b['tpot_p90_s']:.1f}/{1e3 * b['tpot_p99_s']:.1f} ms")
    print(f"wrote {out}/layouts.csv, frontier.csv, summary.json, frontier.png")
    return 0


def cmd_sweep(args) -> int:
    lead = _distributed(args)
    parse_write_layouts(args.write_layouts)
    exp0, p, source = _load_base(args)
    scales = parse_scales(args.scale)
    out = report.prepare_out_dir(args.out or Path("out") / exp0.name) if lead else None
    if exp0.load.open_loop or args.objective == "goodput" or not _percentile_sla(args).is_empty():
        if args.compare:
            raise SpecError("--compare is for closed-loop sweeps; drop it with --rate, a trace or --objective goodput")
        if args.objective in ("cost", "energy"):
            raise SpecError(f"--objective {args.objective} is for closed-loop sweeps; under an open loop (--rate, a "
                            f"trace) or percentile SLAs the objectives are throughput and goodput")
        if args.distributed:
            raise SpecError("--distributed is for closed-loop sweeps; drop it with --rate, a trace or percentile SLAs")
        return cmd_sweep_open(args, exp0, p, source, scales, out)
    print(f"jaxplan sweep: {report.title(exp0, scales)}; serving: {args.serving}; parameters: {source}",
          file=sys.stderr)
    pl = stream_plan(exp0, p, source, serving=args.serving, attention_dp=args.attention_dp, scales=scales,
                     compare=args.compare, write_layouts=args.write_layouts, distributed=bool(args.distributed),
                     progress=report.progress_printer() if lead else None, objective=args.objective,
                     costs=args.costs)
    if not lead:
        return 0
    exp = pl.experiment
    report.write_plan(pl, out)
    summary = pl.summary()
    best_row = pl.best_row
    sla = (exp.sla.min_tokens_per_user, exp.sla.max_ttft_s)
    for mode, r in pl.results.items():
        tab = report.FRONTIER_TABLE if mode == "agg" else report.DISAGG_TABLE
        print(f"\n{mode} Pareto frontier ({len(r.frontier)} of {r.n:,} layouts, "
              f"{r.count('feasible', sla):,} feasible):")
        print(report.table(report.frontier_rows(r.columns, r.frontier, tab), tab))
    if best_row is None and not summary["counts"]["feasible"]:
        empty = [m for m, r in pl.results.items() if not r.n]
        why = (" (disaggregated: no prefill worker and decode worker fit the GPU budget together)"
               if "disagg" in empty else "")
        print(f"\nNo feasible layout at all, whatever the SLA: nothing fits the memory or the budget{why}.")
    elif best_row is None:
        print(f"\nNo feasible layout meets the SLA ({report.sla_text(exp)}).")
    else:
        print(f"\nBest at SLA ({report.sla_text(exp)}): {report.label(best_row)}: "
              f"{best_row['tokens_per_s_per_gpu']:.1f} tokens/s/GPU, "
              f"{best_row['tokens_per_s_per_user']:.1f} tokens/s/user, "
              f"TTFT {best_row['ttft_s']:.2f} s, {best_row['memory_per_gpu_gb']:.0f} GB/GPU"
              + (f" (best by {args.objective})" if args.objective != "throughput" else ""))
        print("  " + report.energy_text(best_row, pl.costs))
    if pl.baseline:
        b = summary["baseline_best_at_sla"]
        print(f"Baseline ({pl.base_experiment.hardware.name} as shipped): "
              + (f"{report.label(b)}: {b['tokens_per_s_per_gpu']:.1f} tokens/s/GPU" if b else "no layout meets the SLA")
              + (f"; what-if / baseline at the SLA: {summary['whatif_over_baseline_at_sla']:.2f}x"
                 if "whatif_over_baseline_at_sla" in summary else ""))
    if "disagg_over_agg_at_sla" in summary:
        print(f"Disaggregated / aggregated tokens/s/GPU at the SLA: {summary['disagg_over_agg_at_sla']:.2f}x")
    print(f"compiled in {summary['seconds']['compile']:.1f} s, evaluated {summary['counts']['layouts']:,} layouts in "
          f"{summary['seconds']['evaluate']:.3f} s; wrote {out}/layouts.csv, frontier.csv, summary.json, frontier.png"
          + (", frontier_cost.png" if (out / "frontier_cost.png").exists() else ""))
    kept = report.kept_text(pl)
    if kept:
        print(kept)
    return 0


def cmd_explore(args) -> int:
    lead = _distributed(args)
    grid = parse_grid(args.grid)
    heat = None
    if args.heatmap:
        heat = tuple(grid_axis(a.strip()) or a.strip() for a in args.heatmap.split(","))
        if len(heat) != 2 or any(a not in grid for a in heat):
            raise SpecError(f"--heatmap '{args.heatmap}': expected two of the grid's axes, X,Y; grid axes: "
                            f"{', '.join(grid)}")
    elif len(grid) >= 2:
        heat = tuple(list(grid)[:2])
    exp, p, source = _load(args)
    out = report.prepare_out_dir(args.out or Path("out") / f"{exp.name}-explore") if lead else None
    npts = math.prod(len(v) for v in grid.values())
    shape = " x ".join(f"{k} {len(v)}" for k, v in grid.items())
    name = report.title(exp, gpus="N" if "gpus" in grid else None)
    print(f"jaxplan explore: {name}; {npts} grid points ({shape}); parameters: {source}", file=sys.stderr)
    res = explore(exp, grid, p, source, attention_dp=args.attention_dp, distributed=bool(args.distributed),
                  progress=report.progress_printer("layouts (per hardware point)") if lead else None)
    if not lead:
        return 0
    paths = report.write_explore(res, exp, out, heat)
    print(report.explore_table(res))
    print(f"compiled in {res.compile_s:.1f} s, evaluated {res.layouts:,} layouts in {res.evaluate_s:.2f} s; wrote "
          + ", ".join(str(x) for x in paths))
    return 0


# ----------------------------------------------------------------------------- simulate

def cmd_simulate(args) -> int:
    exp, p, source = _load(args)
    tp, pp, ep = args.tp or 1, args.pp or 1, args.ep or 1
    adp = args.adp or ep
    dp = check_parallel(exp.model, exp.gpus, tp, pp, ep, args.dp, adp, where="--tp/--pp/--ep/--dp/--adp")
    batch, chunk = args.batch or max(adp, 64), args.chunk or max(exp.chunk_sizes)
    if batch < adp:
        raise SpecError(f"--batch {batch} is below the {adp} attention-DP groups: each needs a request")
    out = report.prepare_out_dir(args.out or Path("out") / f"{exp.name}-simulate")
    lay = Layout(*(float(v) for v in (tp, pp, ep, dp, batch, chunk, adp)))
    res = simulate(exp, lay, p, n_requests=args.requests, seed=args.seed)
    analytic = None
    if exp.load.open_loop:
        lay_j = Layout(*(jnp.float32(v) for v in lay))
        m = evaluate_open(p, exp.hardware, exp.model, exp.precision, exp.workload, load_of(exp.load), lay_j,
                          exp.scheduler_name)
        analytic = {k: float(v) for k, v in m.items() if not k.startswith("_")}
    name = f"{report.title(exp)}; {report.layout_label(dict(zip(Layout._fields, lay)))}; {exp.scheduler_name}"
    files = report.write_simulation(res, out, name, analytic)
    s = res.summary
    print(f"jaxplan simulate: {name}; parameters: {source}")
    print(f"{s['requests']:,} requests after the warm-up; throughput {s['throughput_rps']:.2f} requests/s")
    rows = [{"metric": k.upper(), "src": "simulated", **{q: s[f"{k}_{q}_s"] for q in ("p50", "p90", "p99")},
             "mean": s[f"{k}_s"]} for k in ("ttft", "tpot")]
    if analytic:
        rows += [{"metric": k.upper(), "src": "analytical", "mean": analytic[f"{k}_s"],
                  **{q: analytic[f"{k}_{q}_s"] for q in ("p50", "p90", "p99")}} for k in ("ttft", "tpot")]
    print(report.table(rows, (("metric", "", ""), ("src", "", ""), ("mean", "mean s", ".4f"), ("p50", "P50 s", ".4f"),
                              ("p90", "P90 s", ".4f"), ("p99", "P99 s", ".4f"))))
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


# ----------------------------------------------------------------------------- explain

OP_TABLE = (("op", "op", ""), ("ms", "ms", ""), ("share", "share", ""), ("bound", "mostly", ""))
COST_FIELDS = ("compute", "memory", "comm_tp", "comm_ep", "comm_pp", "overhead")
ELASTICITY_TABLE = (("x", "input", ""), ("tokens_per_s_per_gpu", "tok/s/GPU", ""),
                    ("tokens_per_s_per_user", "tok/s/user", ""), ("ttft_s", "TTFT", ""))


def _op_rows(ops: dict) -> tuple[list[dict], float]:
    """Table rows of an iteration's op breakdown (op -> Cost), longest first, and the total."""
    total = float(sum_costs(ops.values()).total())
    rows = [{"op": k, "ms": f"{1e3 * float(c.total()):.3f}", "share": f"{100 * float(c.total()) / total:.1f}%",
             "bound": max(COST_FIELDS, key=lambda f: float(getattr(c, f))) if float(c.total()) > 0 else "-"}
            for k, c in sorted(ops.items(), key=lambda kv: -float(kv[1].total()))]
    return rows, total


def _elasticity_rows(recs: list[dict]) -> tuple[dict, list[dict]]:
    """{metric: {input: elasticity}} and the table rows of hardware and workload elasticities."""
    sens = {m: {r["name"]: r[f"elasticity_{m}"] for r in recs} for m in METRICS}
    kinds = {r["name"]: r["kind"] for r in recs}
    rows = [{"x": report.label_of(kinds[k], k), **{m: f"{sens[m][k]:+.3f}" for m in sens}} for k in sens["ttft_s"]]
    return sens, rows


def cmd_explain(args) -> int:
    exp, p, source = _load(args)
    given = [args.tp, args.pp, args.ep, args.dp, args.batch, args.chunk]
    if getattr(args, "serving", "agg") == "disagg":
        if any(v is not None for v in given + [args.adp]):
            raise SpecError("--serving disagg explains the disaggregated sweep's best deployment at the SLA; "
                            "--tp/--pp/--ep/--dp/--adp/--batch/--chunk describe one aggregated layout and cannot "
                            "be combined with it")
        return _explain_disagg(args, exp, p, source)
    if all(v is None for v in given):
        res = run_sweep(exp, p, params_source=source)
        if res.best is None:
            raise SpecError("no layout meets the SLA; give one with --tp --pp --ep --batch --chunk")
        r = res.row(res.best)
        tp, pp, ep, dp, batch, chunk, adp = (int(r[k]) for k in Layout._fields)
        origin = "the sweep's best layout at the SLA"
    else:
        tp, pp, ep = args.tp or 1, args.pp or 1, args.ep or 1
        adp = args.adp or ep
        dp = check_parallel(exp.model, exp.gpus, tp, pp, ep, args.dp, adp, where="--tp/--pp/--ep/--dp/--adp")
        batch, chunk = args.batch or adp, args.chunk or max(exp.chunk_sizes)
        if batch < adp:
            raise SpecError(f"--batch {batch} is below the {adp} attention-DP groups: each needs a request")
        origin = "the command line"
    lay = Layout(*(jnp.float32(v) for v in (tp, pp, ep, dp, batch, chunk, adp)))
    ex = explain(p, exp.hardware, exp.model, exp.precision, exp.workload, lay, scheduler=exp.scheduler_name)
    one = {f: [v] for f, v in zip(Layout._fields, (tp, pp, ep, dp, batch, chunk, adp))}
    recs = [r for r in elasticities(p, exp.hardware, exp.model, exp.precision, exp.workload, one, [0],
                                    exp.scheduler_name) if r["kind"] != "param"]
    sens, sens_rows = _elasticity_rows(recs)
    layout = dict(tp=tp, pp=pp, ep=ep, dp=dp, adp=adp, batch=batch, chunk=chunk)
    groups = {}
    for phase in ("chunk_iteration", "decode_iteration"):
        groups[phase] = {k: {f: float(getattr(c, f)) for f in COST_FIELDS} | {"total": float(c.total())}
                         for k, c in ex[phase].items()}
        groups[phase]["TOTAL"] = {"total": float(sum_costs(ex[phase].values()).total())}
    if args.json:
        sys.stdout.write(report.to_json({
            "layout": layout, "experiment": exp.name, "params_source": source, "scheduler": exp.scheduler_name,
            "tokens_per_step": float(exp.workload.tokens_per_step),
            "speculative": {"draft_tokens": exp.workload.draft_tokens, "acceptance": exp.workload.acceptance},
            "prefix_hit": exp.workload.prefix_hit, "metrics": ex["metrics"], "memory_gb": ex["memory_gb"],
            "ops_s": groups, "elasticities": sens}))
        return 0
    m = ex["metrics"]
    print(f"{report.title(exp, parse_scales(args.scale))}\nlayout {report.layout_label(layout)} (from {origin}); "
          f"parameters: {source}; scheduler: {exp.scheduler_name}\n")
    print(f"  TTFT {m['ttft_s']:.3f} s   TPOT {1e3 * m['tpot_s']:.2f} ms   "
          f"{m['tokens_per_s_per_user']:.1f} tokens/s/user   {m['tokens_per_s_per_gpu']:.1f} tokens/s/GPU   "
          f"decoding {m['decoding_requests']:.1f} of {batch} requests"
          + ("   (prefill saturated: requests queue for prefill)" if m["prefill_saturated"] > 0.5 else ""))
    mem = ex["memory_gb"]
    print(f"  memory per GPU: {mem['total']:.1f} GB of {mem['capacity']:.1f} usable "
          f"(weights {mem['weights']:.1f}, KV {mem['kv_cache']:.1f}, activations {mem['activations']:.1f}, "
          f"reserve {mem['reserve']:.1f})" + ("" if m["feasible"] > 0.5 else "  ** DOES NOT FIT **"))
    for phase, name in (("chunk_iteration", "iteration with a prefill chunk"),
                        ("decode_iteration", "decode-only iteration")):
        rows, total = _op_rows(ex[phase])
        print(f"\n  {name}: {1e3 * total:.2f} ms")
        print("  " + report.table(rows, OP_TABLE).replace("\n", "\n  "))
    print("\n  elasticities: % change of each metric per +1% of the input (exact derivatives of the model; "
          "`jaxplan sensitivity` adds the fitted parameters and the frontier):")
    print("  " + report.table(sens_rows, ELASTICITY_TABLE).replace("\n", "\n  "))
    return 0


def _explain_disagg(args, exp, p, source) -> int:
    res = run_disagg_sweep(exp, p, params_source=source)
    if res.best is None:
        raise SpecError(f"no disaggregated deployment meets the SLA ({report.sla_text(exp)})")
    row = res.row(res.best)
    args_ = jax.tree_util.tree_map(lambda v: v[0], row_args(res.columns, np.asarray([res.best]), exp.hardware,
                                                             "disagg"))
    ex = explain_disagg(p, exp.hardware, exp.model, exp.precision, exp.workload, *args_)
    recs = [r for r in elasticities(p, exp.hardware, exp.model, exp.precision, exp.workload, res.columns,
                                    [res.best], exp.backend, "disagg") if r["kind"] != "param"]
    sens, sens_rows = _elasticity_rows(recs)
    label = report.label(row)
    pre_rows, pre_total = _op_rows(ex["prefill_iteration"])
    dec_rows, dec_total = _op_rows(ex["decode_iteration"])
    if args.json:
        sys.stdout.write(report.to_json({"deployment": {k: row[k] for k in row if k.startswith(("prefill_", "decode_"))}
                                         | {"label": label}, "experiment": exp.name, "params_source": source,
                                         "metrics": ex["metrics"], "ttft_parts_s": ex["ttft_parts_s"],
                                         "memory_gb": ex["memory_gb"], "elasticities": sens,
                                         "prefill_iteration_ms": {r["op"]: float(r["ms"]) for r in pre_rows},
                                         "decode_iteration_ms": {r["op"]: float(r["ms"]) for r in dec_rows}}))
        return 0
    m = ex["metrics"]
    print(f"{report.title(exp, parse_scales(args.scale))}, disaggregated\n{label} (the disaggregated sweep's best at "
          f"the SLA); parameters: {source}\n")
    print(f"  TTFT {m['ttft_s']:.3f} s   TPOT {1e3 * m['tpot_s']:.2f} ms   {m['tokens_per_s_per_user']:.1f} "
          f"tokens/s/user   {m['tokens_per_s_per_gpu']:.1f} tokens/s/GPU   {m['requests_per_s']:.2f} requests/s, "
          f"prefill workers {100 * m['prefill_utilization']:.0f}% busy")
    print("  TTFT = " + " + ".join(f"{k} {1e3 * v:.1f} ms" for k, v in ex["ttft_parts_s"].items()))
    for pool in ("prefill", "decode"):
        mem = ex["memory_gb"][pool]
        print(f"  {pool} worker memory per GPU: {mem['total']:.1f} GB of {mem['capacity']:.1f} usable (weights "
              f"{mem['weights']:.1f}, KV {mem['kv_cache']:.1f}, activations {mem['activations']:.1f})")
    per_step = float(exp.workload.tokens_per_step)
    dec_title = ("decode worker iteration (= TPOT)" if not exp.workload.draft_tokens else
                 f"decode worker step (yields {per_step:.2f} tokens: TPOT = step / {per_step:.2f})")
    for name, rows, total in (("prefill worker iteration", pre_rows, pre_total), (dec_title, dec_rows, dec_total)):
        print(f"\n  {name}: {1e3 * total:.2f} ms")
        print("  " + report.table(rows, OP_TABLE).replace("\n", "\n  "))
    print("\n  elasticities at these worker layouts and counts (% change per +1% of the input):")
    print("  " + report.table(sens_rows, ELASTICITY_TABLE).replace("\n", "\n  "))
    return 0


# ----------------------------------------------------------------------------- sensitivity

SENSITIVITY_TABLE = (("input", "input", ""), ("value", "value", ""), ("tokens_per_s_per_gpu", "tok/s/GPU", ""),
                     ("tokens_per_s_per_user", "tok/s/user", ""), ("ttft_s", "TTFT", ""),
                     ("minus", "-10%: best tok/s/GPU", ""), ("plus", "+10%: best tok/s/GPU", ""))


def _switch_text(sw: dict | None) -> str:
    if sw is None:
        return ""
    text = f"{sw['change_pct']:+.1f}%"
    if not sw["switched"]:
        return text
    return (text + f" -> {report.row_label(sw['new_layout'])}"
            + ("" if sw["old_layout_meets_sla"] else " (old misses SLA)"))


def cmd_sensitivity(args) -> int:
    exp, p, source = _load(args)
    scales = parse_scales(args.scale)
    out = report.prepare_out_dir(args.out or Path("out") / f"{exp.name}-sensitivity")
    name = report.title(exp, scales)
    print(f"jaxplan sensitivity: {name}; SLA {report.sla_text(exp)}; parameters: {source}", file=sys.stderr)
    t0 = time.perf_counter()
    kinds = ("hardware", "workload", "param") if args.switch_params else ("hardware", "workload")
    serving = getattr(args, "serving", "agg") or "agg"
    res = run_sensitivity(exp, p, params_source=source, attention_dp=args.attention_dp, switch_kinds=kinds,
                          progress=True, serving=serving)
    dt = time.perf_counter() - t0
    report.write_sensitivity(res, exp, out, serving=serving, scales=scales, params_source=source, seconds=dt,
                             disagg_key=DISAGG_KEY if serving == "disagg" else ())
    best = res.best
    if best is None:
        print(f"\nNo feasible layout meets the SLA ({report.sla_text(exp)}); elasticities along the frontier are in "
              f"{out}/sensitivity.csv and sensitivity_frontier.png.")
        return 0
    best_row = res.sweep.row(best)
    at_best = [r for r in res.records if r["row"] == best]
    sw = {(s["kind"], s["name"], s["factor"]): s for s in res.switches}

    def table_rows(recs):
        return [{"input": report.label_of(r["kind"], r["name"]),
                 "value": report.display_value(r["kind"], r["name"], r["value"]),
                 **{m: f"{r['elasticity_' + m]:+.3f}" for m in ("tokens_per_s_per_gpu", "tokens_per_s_per_user",
                                                                 "ttft_s")},
                 "minus": _switch_text(sw.get((r["kind"], r["name"], 0.9))),
                 "plus": _switch_text(sw.get((r["kind"], r["name"], 1.1)))} for r in recs]

    print(f"\n{name}, {'disaggregated' if serving == 'disagg' else 'aggregated'} serving\n"
          f"best at SLA ({report.sla_text(exp)}): {report.label(best_row)}: "
          f"{best_row['tokens_per_s_per_gpu']:.1f} tokens/s/GPU, "
          f"{best_row['tokens_per_s_per_user']:.1f} tokens/s/user, TTFT {best_row['ttft_s']:.2f} s; "
          f"parameters: {source}")
    print("\nelasticities (% change of the metric per +1% of the input; exact derivatives at this layout"
          + (" and these worker counts" if serving == "disagg" else "") + ") and the "
          "best tokens/s/GPU after a full re-sweep with the input at -10% / +10% (-> the layout it switches to):")
    print(report.table(table_rows(ranked(res.records, best, kinds=("hardware", "workload"))), SENSITIVITY_TABLE))
    top = ranked(res.records, best, kinds=("param",), min_abs=1e-3)[:args.top]
    print(f"\nfitted efficiency parameters (largest {len(top)} of {sum(r['kind'] == 'param' for r in at_best)}):")
    print(report.table(table_rows(top), SENSITIVITY_TABLE if args.switch_params else SENSITIVITY_TABLE[:5]))
    n_sw = sum(s["switched"] for s in res.switches)
    print(f"\n{n_sw} of {len(res.switches)} re-sweeps at +-10% switch the best layout. Elasticities at all "
          f"{len(res.sweep.frontier)} frontier points in {out}/sensitivity.csv; wrote sensitivity.png, "
          f"sensitivity_frontier.png, sensitivity.json ({dt:.1f} s)")
    return 0


# ----------------------------------------------------------------------------- codesign

def cmd_codesign(args) -> int:
    exp, p, source = _load(args)
    prices = load_prices(Path(args.prices) if args.prices else config_file("prices", "default"))
    out = report.prepare_out_dir(args.out or Path("out") / f"{exp.name}-codesign")
    print(f"jaxplan codesign: {report.title(exp, parse_scales(args.scale))}; SLA {report.sla_text(exp)}; "
          f"prices: {prices.source}; parameters: {source}", file=sys.stderr)
    t0 = time.perf_counter()
    serving = getattr(args, "serving", "agg") or "agg"
    res = run_codesign(exp, p, prices, budget=args.budget, steps=args.steps, lr=args.lr,
                       attention_dp=args.attention_dp, progress=True, serving=serving)
    dt = time.perf_counter() - t0
    summary = report.write_codesign(res, exp, prices, out, serving=serving, seconds=dt)
    cur = f" {prices.currency}" if prices.currency else ""
    s, f = summary["start"], summary["final"]
    unit = report.unit_of
    rows = [{"number": report.label_of("hardware", n), "price": f"{res.prices[n]:g}{cur} per {unit(n)}",
             "start": f"{s['values'][n]:g} {unit(n)}", "final": f"{f['values'][n]:g} {unit(n)}",
             "share": f"{100 * s['shares'][n]:.0f}% -> {100 * f['shares'][n]:.0f}%",
             "elasticity": f"{s['elasticities'].get(n, float('nan')):+.3f} -> "
                           f"{f['elasticities'].get(n, float('nan')):+.3f}"}
            for n in res.names]
    print(f"\nbudget {res.budget:,.0f}{cur} per GPU over the priced numbers; {len(res.trajectory)} steps "
          f"in {dt:.1f} s")
    print(report.table(rows, (("number", "number", ""), ("price", "price", ""), ("start", "start", ""),
                              ("final", "final", ""), ("share", "budget share", ""),
                              ("elasticity", "elasticity of tok/s/GPU", ""))))
    print(f"\nstart: {s['layout']}: {s['tokens_per_s_per_gpu']:.1f} tokens/s/GPU; best (step {res.best_step}): "
          f"{f['layout']}: {f['tokens_per_s_per_gpu']:.1f} tokens/s/GPU ({summary['gain']:.2f}x)")
    if res.best_step >= len(res.trajectory) - 3:
        print("still improving at the last steps: more --steps (or a larger --lr) may go further")
    print(f"wrote {out}/trajectory.csv, codesign.png, codesign.json, codesign_hardware.yaml "
          f"(use it with --hardware {out}/codesign_hardware.yaml)")
    return 0


# ----------------------------------------------------------------------------- fit, validate, bench

def parse_adjust(items) -> dict[str, float]:
    """``["attn_softmax_dim=0.5", ...]`` (``jaxplan fit --adjust``) -> parameter -> factor."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise SpecError(f"--adjust: '{item}' is not PARAMETER=FACTOR (e.g. attn_softmax_dim=0.5)")
    return out


def cmd_fit_derive(args) -> int:
    if args.kernels or args.serving:
        raise SpecError("fit --derive-from derives a profile without measurements; drop --kernels/--serving")
    params, meta = derive_profile(args.derive_from, args.hardware, parse_adjust(getattr(args, "adjust", None)))
    out = report.save_params(params, args.out, meta=meta)
    print(f"derived {meta['hardware']} from {meta['derived_from']} ({meta['rule']})")
    for key, what in (meta.get("adjusted") or {}).items():
        print(f"  adjusted {key}: {what}")
    print(f"wrote {out}")
    return 0


def cmd_fit(args) -> int:
    report.prepare_out_file(args.out)
    if getattr(args, "derive_from", None):
        return cmd_fit_derive(args)
    if getattr(args, "adjust", None):
        raise SpecError("--adjust goes with --derive-from PROFILE")
    from_hw = load_hardware(args.hardware)
    kernels = Path(args.kernels) if args.kernels else default_kernels_dir(from_hw.name)
    if not kernels.exists():
        raise SpecError(f"--kernels: '{kernels}' does not exist (give a folder of kernel tables or a bench CSV, "
                        f"or derive a profile from a related chip's with --derive-from PROFILE)")
    res = kernel_fit.fit_profile(from_hw.name, kernels, steps=args.steps, seed=args.seed,
                                 max_rows_per_kind=args.max_rows, return_result=True)
    print(report.kernel_error_table(res.report))
    params = res.params
    meta = kernel_fit.profile_meta(res, from_hw.name, kernels, args.steps, args.seed)
    if args.serving:
        if not Path(args.serving).is_file():
            raise SpecError(f"--serving: '{args.serving}' does not exist")
        # Per-backend step/layer overheads, fitted on the TPOT of the training system's rows
        # (why TPOT only: benchmarks/serving_validation.md, "Serving-level fit (issue 3)").
        params, rep = serving_fit.fit_serving(params, args.serving, from_hw.name, metrics=("tpot",))
        print(report.serving_fit_text(rep))
        meta["serving_fit"] = {"source": str(args.serving),
                               "train": f"{serving_fit.TRAIN_SYSTEM} rows: step/layer overheads on TPOT, request "
                                        f"overheads on aggregated TTFT, disaggregation overheads on "
                                        f"disaggregated TTFT",
                               "keys": sorted(rep["fitted_keys"]),
                               **{kind: {b: d["status"] for b, d in fits.items()}
                                  for kind, fits in rep["overhead_fits"].items()}}
    out = report.save_params(params, args.out, meta=meta)
    print(f"wrote {out}")
    return 0


def cmd_validate(args) -> int:
    if not args.kernels and not args.serving:
        raise SpecError("validate needs --kernels FILE (with --hardware) or --serving FILE")
    if args.out:
        report.prepare_out_dir(args.out)
    if args.kernels:
        if not args.hardware:
            raise SpecError("validate --kernels needs --hardware (the GPU the table was measured on)")
        kv = kernel_fit.validate_kernels(args.kernels, args.hardware, args.params)
        print(kv.meas.summary())
        print(f"parameters: {kv.params_source}")
        print(report.kernel_error_table({k: {"all": v["all"]} for k, v in kv.report.items()}))
        print(report.kernel_variant_lines(kv.report))
        if args.out:
            files = report.write_kernel_validation(kv, args.out)
            print(f"wrote {' and '.join(str(f) for f in files)}")
    if args.serving:
        validate_serving_command(args)
    return 0


def validate_serving_command(args) -> int:
    paths = [args.serving] if isinstance(args.serving, str) else list(args.serving)
    override = args.params
    if override and not Path(override).is_file():
        raise SpecError(f"params file '{override}' does not exist")
    for path in paths:
        if not Path(path).is_file():
            raise SpecError(f"serving file '{path}' does not exist")
    out = report.prepare_out_dir(args.out or "out/validate")
    t0 = time.perf_counter()
    cases, unmapped = [], []
    for path in paths:
        c, u = load_serving(path)
        print(f"jaxplan validate: {len(c) + len(u)} rows in {path}: {len(c)} mapped, {len(u)} unmapped",
              file=sys.stderr)
        cases += c
        unmapped += u
    path = " + ".join(paths)
    for reason, n, example in unmapped_counts(unmapped):
        print(f"  unmapped {n:4d}: {reason}  (e.g. {example})", file=sys.stderr)
    if not cases:
        raise SpecError(f"{path}: no row could be mapped; see the reasons above")
    schedulers = parse_schedulers(getattr(args, "scheduler", None))
    v = validate(cases, unmapped, None, override, schedulers, speculation=getattr(args, "speculation", True))
    marked = sum(1 for c in v.cases if c.draft_tokens)
    if marked:
        print(f"  {marked} rows measured below their one-request decode step: predicted with speculative "
              f"decoding (--no-speculation-rule to switch off)", file=sys.stderr)
    for backend, name in sorted(schedulers.items()):
        print(f"  aggregated {backend} rows: scheduler {name} (default {scheduler_of(backend)})", file=sys.stderr)
    for hw, src in sorted(v.params_source.items()):
        print(f"  parameters for {hw}: {src}", file=sys.stderr)
    files = report.write_validation(v, out)
    print(report.serving_error_table(v.summary, ("system", "backend", "mode")))
    print()
    print(report.serving_error_table(summarize(v.table, ("model",)), ("model",)))
    print()
    print(f"unique measurements only ({int(v.table['unique'].sum())} of {len(v.cases)} mapped rows; "
          f"the file repeats some measurements under several ids):")
    print(report.serving_error_table(summarize(v.table, ("system", "backend", "mode"), mask=v.table["unique"]),
                                     ("system", "backend", "mode")))
    print()
    print(report.serving_error_table(summarize(v.table, ("model",), mask=v.table["unique"]), ("model",)))
    print()
    print(report.serving_error_table(summarize(v.table, ("mode",), mask=v.table["unique"]), ("mode",)))
    far = [v.table["far_off"][i] for i in range(len(v.cases)) if v.table["unique"][i] and v.table["far_off"][i]]
    if far:
        print(f"\n{len(far)} unique measurements predicted more than {report.FAR_OFF:g}x off: "
              + ", ".join(f"{n} {r}" for r, n in collections.Counter(far).most_common())
              + " (per row: predictions.csv, column far_off; per model: summary.md)")
    print(f"\nwrote {', '.join(str(p) for p in files.values())} ({time.perf_counter() - t0:.1f} s)",
          file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    report.prepare_out_file(args.out)
    kinds = args.kinds.split(",") if args.kinds else None
    events = bench.measure(quick=args.quick, progress=args.progress, time_budget_s=args.time_budget, kinds=kinds)
    out = report.write_bench(args.out, events, bench.CSV_COLUMNS)
    print(f"wrote {out} and {report.bench_meta_path(out)}")
    return 0


# ----------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="jaxplan", description="Plan LLM inference deployments with a JAX cost model.")
    ap.add_argument("--config-root", metavar="DIR",
                    help="a folder of your own presets (models/, hardware/, experiments/, profiles/, prices/) "
                         "searched before ./configs and the packaged presets (also $JAXPLAN_CONFIGS)")
    ap.add_argument("--data", metavar="DIR",
                    help="the measured data (kernels/, serving/, model_configs/; default: ../shared/data beside "
                         "the repository; also $JAXPLAN_DATA)")
    sub = ap.add_subparsers(dest="command", parser_class=_Parser)
    sp = sub.add_parser("sweep", help="evaluate every layout, draw the Pareto frontier, pick the best at the SLA")
    _add_experiment_args(sp)
    sp.add_argument("--out", help="output folder (default: out/<experiment>)")
    sp.add_argument("--serving", choices=("agg", "disagg", "both"), default="agg",
                    help="aggregated in-flight batching, disaggregated prefill/decode pools, or both (default: agg)")
    sp.add_argument("--attention-dp", choices=("ep", "all"), default="ep",
                    help="aggregated space: attention-DP equal to EP (default), or every divisor of the stage")
    sp.add_argument("--compare", action="store_true",
                    help="with --scale: also sweep the hardware as shipped and draw both frontiers on one chart")
    sp.add_argument("--objective", choices=tuple(dict.fromkeys(ENERGY_OBJECTIVES + OPEN_OBJECTIVES)),
                    default="throughput",
                    help="what the pick optimizes: tokens/s/GPU (default), $/Mtoken or joules/token (cost and energy "
                         "need the hardware's power block), or goodput (open loop: per layout the highest rate at "
                         "which --goodput-share of requests meet both SLOs; the most goodput per GPU)")
    sp.add_argument("--costs", metavar="FILE",
                    help="cost file for $/Mtoken: GPU prices (purchase + years + electricity, or per GPU-hour); "
                         "default configs/tco/default.yaml (illustrative, not quotes)")
    sp.add_argument("--write-layouts", default="auto", metavar="auto|all|frontier|sample:N",
                    help="layouts.csv: auto (default) writes every layout up to 1,000,000 and streams larger "
                         "spaces in bounded memory, writing the frontier and the best at the SLA; all: every "
                         "layout whatever the size; frontier: stream and write those only; sample:N: stream and "
                         "add N layouts drawn at random")
    _add_distributed_args(sp)
    sp.add_argument("--rate", type=_positive(float), metavar="R",
                    help="open loop: Poisson arrivals at R requests/s (default: the experiment's traffic, else a "
                         "closed loop of batch clients)")
    for metric, unit in (("ttft", "time to first token"), ("tpot", "time per output token")):
        for q in PERCENTILES:
            sp.add_argument(f"--sla-{metric}-p{q:g}", type=_positive(float), metavar="S",
                            help=f"SLA: P{q:g} {unit} at most S seconds (open loop)")
    sp.add_argument("--goodput-share", type=_positive(float), default=0.9, metavar="F",
                    help="share of requests that must meet both SLOs for goodput, in (0, 1] (default 0.9)")
    sp.set_defaults(fn=cmd_sweep)
    xp = sub.add_parser("explore", help="best tokens/s/GPU at the SLA over a grid of hardware numbers and GPU budgets")
    _add_experiment_args(xp)
    xp.add_argument("--grid", action="append", required=True, metavar="AXIS=V1,V2,...|AXIS=START:STOP:COUNT",
                    help="a grid axis (repeatable): gpus, or a hardware number by field or YAML key in its YAML "
                         "units (e.g. hbm_bandwidth_tb_s=4,8,16, scaleup_domain_gpus=8,72, hbm_capacity_gb=192,288);"
                         " START:STOP:COUNT spaces COUNT values geometrically")
    xp.add_argument("--heatmap", metavar="X,Y", help="the two axes of explore.png (default: the first two given)")
    xp.add_argument("--attention-dp", choices=("ep", "all"), default="ep", help="layout space, as for sweep")
    xp.add_argument("--out", help="output folder (default: out/<experiment>-explore)")
    _add_distributed_args(xp)
    xp.set_defaults(fn=cmd_explore)
    ep = sub.add_parser("explain", help="one layout's metrics and per-op time breakdown")
    _add_experiment_args(ep)
    for k in ("tp", "pp", "ep", "dp", "adp", "batch", "chunk"):
        ep.add_argument(f"--{k}", type=_positive(int), help="attention-DP groups (default: ep)" if k == "adp" else None)
    ep.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ep.add_argument("--serving", choices=("agg", "disagg"), default="agg",
                    help="disagg: explain the disaggregated sweep's best deployment (where its TTFT goes, both "
                         "workers' iterations) instead of one aggregated layout")
    ep.set_defaults(fn=cmd_explain)

    sm = sub.add_parser("simulate", help="simulate one aggregated layout iteration by iteration under the traffic; "
                                         "per-request TTFT/TPOT and their distributions")
    _add_experiment_args(sm)
    for k in ("tp", "pp", "ep", "dp", "adp", "batch", "chunk"):
        sm.add_argument(f"--{k}", type=_positive(int), help="attention-DP groups (default: ep)" if k == "adp" else None)
    sm.add_argument("--rate", type=_positive(float), metavar="R",
                    help="Poisson arrivals at R requests/s (default: the experiment's traffic; a closed loop of "
                         "batch clients if it has no rate)")
    sm.add_argument("--requests", type=_positive(int), default=2000, metavar="N",
                    help="requests simulated per replica (default 2000; the first 10%% are warm-up)")
    sm.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (lengths, arrivals)")
    sm.add_argument("--out", help="output folder (default: out/<experiment>-simulate)")
    sm.set_defaults(fn=cmd_simulate)
    sn = sub.add_parser("sensitivity", help="elasticities of tokens/s/GPU to every hardware number, the workload "
                                             "and the fitted parameters, at the best layout and along the frontier")
    _add_experiment_args(sn)
    sn.add_argument("--out", help="output folder (default: out/<experiment>-sensitivity)")
    sn.add_argument("--attention-dp", choices=("ep", "all"), default="ep", help="layout space, as for sweep")
    sn.add_argument("--serving", choices=("agg", "disagg"), default="agg",
                    help="aggregated layouts (default) or disaggregated prefill/decode pools with their worker "
                         "counts, as `sweep --serving disagg` chooses them")
    sn.add_argument("--top", type=_positive(int), default=12, help="fitted parameters to list (default 12)")
    sn.add_argument("--switch-params", action="store_true",
                    help="also re-sweep each fitted parameter at +-10%% (hardware and workload always are)")
    sn.set_defaults(fn=cmd_sensitivity)
    cd = sub.add_parser("codesign", help="spend a budget on hardware numbers (Optax gradient ascent) to maximize "
                                          "tokens/s/GPU at the SLA")
    _add_experiment_args(cd)
    cd.add_argument("--prices", help="prices YAML (default: configs/prices/default.yaml, illustrative)")
    cd.add_argument("--budget", type=_positive(float),
                    help="budget per GPU over the priced numbers (default: the prices file's, else what the "
                         "starting hardware's priced numbers cost)")
    cd.add_argument("--steps", type=_positive(int), default=60, help="optimizer steps (default 60)")
    cd.add_argument("--lr", type=_positive(float), default=0.1, help="Adam learning rate on the log budget shares")
    cd.add_argument("--attention-dp", choices=("ep", "all"), default="ep", help="layout space, as for sweep")
    cd.add_argument("--serving", choices=("agg", "disagg"), default="agg",
                    help="optimize for aggregated layouts (default) or disaggregated prefill/decode pools")
    cd.add_argument("--out", help="output folder (default: out/<experiment>-codesign)")
    cd.set_defaults(fn=cmd_codesign)
    fp = sub.add_parser("fit", help="fit the cost model's parameters to measured kernel latencies")
    fp.add_argument("--hardware", required=True, help="hardware preset name or YAML path")
    fp.add_argument("--kernels", help="folder of kernel tables (*.csv.gz) or a `jaxplan bench` CSV "
                                      "(default: <data>/kernels/<gpu>, see --data)")
    fp.add_argument("--serving", help="serving measurements CSV (silicon_hopper.csv format): after the kernels, fit "
                                      "the per-backend step/layer, front-end and disaggregation overheads on its "
                                      "H100 rows (H200 rows: holdout)")
    fp.add_argument("--out", required=True, metavar="PROFILE.yaml", help="where to write the fitted profile")
    fp.add_argument("--steps", type=_positive(int), default=kernel_fit.DEFAULT_STEPS,
                    help=f"optimizer steps (default {kernel_fit.DEFAULT_STEPS})")
    fp.add_argument("--derive-from", dest="derive_from", metavar="PROFILE",
                    help="no kernel tables for --hardware: derive its profile from a fitted one (a YAML file or a "
                         "shipped profile's name, e.g. b200): efficiencies, latencies and shape constants carry "
                         "over, peak rates and bandwidths come from the --hardware preset")
    fp.add_argument("--adjust", action="append", metavar="PARAMETER=FACTOR",
                    help="with --derive-from: multiply a parameter for a documented architectural change "
                         "(repeatable), e.g. attn_softmax_dim=0.5 for Blackwell Ultra's doubled exponential rate")
    fp.add_argument("--seed", type=_nonneg_int, default=0, help="subsample seed (default 0)")
    fp.add_argument("--max-rows", dest="max_rows", type=_positive(int), default=kernel_fit.DEFAULT_MAX_ROWS_PER_KIND,
                    help=f"train rows per kind the optimizer sees (stratified subsample; default "
                         f"{kernel_fit.DEFAULT_MAX_ROWS_PER_KIND})")
    fp.set_defaults(fn=cmd_fit)
    vp = sub.add_parser("validate", help="compare predictions with measured kernels or serving rows")
    vp.add_argument("--kernels", metavar="FILE", help="a kernel table (*.csv.gz) or a `jaxplan bench` CSV")
    vp.add_argument("--serving", metavar="FILE", nargs="+",
                    help="serving measurements CSV(s) (silicon_hopper.csv format); several are validated together "
                         "and reported per (system, backend, mode), per model and on unique measurements")
    vp.add_argument("--hardware", help="hardware preset name or YAML path (required with --kernels)")
    vp.add_argument("--params", help="parameter profile YAML (default: the hardware's shipped profile)")
    vp.add_argument("--out", metavar="DIR", help="folder for predictions.csv and the scatter plot")
    vp.add_argument("--scheduler", action="append", metavar="BACKEND=SCHEDULER",
                    help="predict a backend's aggregated rows with another scheduler (repeatable), e.g. "
                         "sglang=prefill_first; schedulers: " + ", ".join(SCHEDULER_NAMES))
    vp.add_argument("--no-speculation-rule", dest="speculation", action="store_false",
                    help="predict every row without speculative decoding (default: rows measured below their "
                         "layout's one-request decode step are predicted with 3 drafted tokens, acceptance 0.7)")
    vp.set_defaults(fn=cmd_validate)
    bp = sub.add_parser("bench", help="measure this machine's devices into the kernel-table format `fit` reads")
    bp.add_argument("--quick", action="store_true", help="tiny grid that runs in seconds (also on a CPU)")
    bp.add_argument("--out", default="bench.csv", metavar="FILE.csv",
                    help="CSV to write (default: bench.csv); metadata goes to FILE.csv.meta.yaml")
    bp.add_argument("--time-budget", dest="time_budget", type=_positive(float), default=None, metavar="SECONDS",
                    help="cap the measuring time; cases run coarse-to-fine so a cut grid stays even")
    bp.add_argument("--kinds", default=None,
                    help="comma-separated kernel tables to measure (default: all of " + ",".join(bench.KERNEL_TABLES)
                         + ")")
    g = bp.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="always draw the progress bar")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="print one line per benchmark kind only")
    bp.set_defaults(fn=cmd_bench)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "fn", None):
        ap.print_help()
        return 2
    if args.config_root:
        os.environ["JAXPLAN_CONFIGS"] = args.config_root
    if args.data:
        if not Path(args.data).is_dir():
            print(f"jaxplan: error: --data '{args.data}' is not a folder", file=sys.stderr)
            return 2
        os.environ["JAXPLAN_DATA"] = args.data
    try:
        return args.fn(args)
    except SpecError as e:
        print(f"jaxplan: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxplan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
