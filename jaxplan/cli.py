"""Command line: parse, call the library, print and write. Bad input exits with code 2 and a
message naming the file, the key and what is allowed; never a traceback."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from .sensitivity import parse_scales, scale_hardware, scaled_label
from .specs import SCHEDULER_NAMES, SpecError, config_root

DEFAULT_EXPERIMENT = "gpt-1.8t-moe-64gpu"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"jaxplan: error: {message}", file=sys.stderr)
        sys.exit(2)


def _positive(kind):
    def conv(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {s!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {s}")
        return v
    return conv


def _nonneg(kind, what):
    def conv(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
        return v
    return conv


_nonneg_int = _nonneg(int, "a whole number")
_nonneg_float = _nonneg(float, "a number")


def _experiment_path(arg: str | None) -> Path:
    if arg is None:
        return config_root() / "experiments" / f"{DEFAULT_EXPERIMENT}.yaml"
    p = Path(arg)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    preset = config_root() / "experiments" / f"{arg}.yaml"
    if preset.is_file():
        return preset
    names = sorted(x.stem for x in (config_root() / "experiments").glob("*.yaml"))
    raise SpecError(f"experiment '{arg}' is neither a file nor a preset; presets: {', '.join(names)}")


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
                         "bf16_flops, fp8_flops, fp4_flops, hbm_bandwidth, hbm_capacity, scale_up_bandwidth, "
                         "scale_up_latency, scale_out_bandwidth, scale_out_latency")


def _load(args):
    """(experiment with any --scale applied, params for its backend, where the params came from)."""
    exp, p, source = _load_base(args)
    scales = parse_scales(getattr(args, "scale", None))
    return (dataclasses.replace(exp, hardware=scale_hardware(exp.hardware, scales)) if scales else exp), p, source


def _load_base(args):
    from .params import for_backend, params_for
    from .specs import load_experiment
    exp = load_experiment(_experiment_path(args.experiment), model=args.model, hardware=args.hardware,
                          gpus=args.gpus, isl=args.isl, osl=args.osl, precision=args.precision,
                          min_tokens_per_user=args.min_tokens_per_user, max_ttft=args.max_ttft,
                          scheduler=getattr(args, "scheduler", None),
                          draft_tokens=getattr(args, "draft_tokens", None),
                          acceptance=getattr(args, "acceptance", None),
                          prefix_hit=getattr(args, "prefix_hit", None))
    p, source = params_for(exp.hardware.name, args.params or exp.params_file)
    return exp, for_backend(p, exp.backend), source


def _title(exp, scales=None) -> str:
    wl = exp.workload
    spec = (f", speculative {wl.draft_tokens} draft tokens at {100 * wl.acceptance:.0f}% acceptance "
            f"({float(wl.tokens_per_step):.2f} tokens/step)" if wl.draft_tokens else "")
    if wl.prefix_hit:
        spec += f", {100 * wl.prefix_hit:.0f}% of each prompt cached"
    return (f"{exp.model.name} on {exp.gpus} × {scaled_label(exp.hardware.name, scales or {})}, "
            f"{exp.precision.name}, ISL {int(wl.isl)} / OSL {int(wl.osl)}{spec}")


# ----------------------------------------------------------------------------- sweep

def _sla_text(exp) -> str:
    return f"≥ {exp.sla.min_tokens_per_user:g} tokens/s/user, TTFT ≤ {exp.sla.max_ttft_s:g} s"


def _sla_dict(exp) -> dict:
    return {"min_tokens_per_s_per_user": exp.sla.min_tokens_per_user, "max_ttft_s": exp.sla.max_ttft_s}


def cmd_sweep(args) -> int:
    from . import report
    from .serving import scheduler_name
    from .sweep import meets_sla, run_disagg_sweep, run_sweep

    base_exp, p, source = _load_base(args)
    scales = parse_scales(args.scale)
    if args.compare and not scales:
        raise SpecError("--compare draws the baseline and the what-if frontiers: give at least one "
                        "--scale NAME=FACTOR, e.g. --scale hbm_bandwidth=2")
    exp = dataclasses.replace(base_exp, hardware=scale_hardware(base_exp.hardware, scales)) if scales else base_exp
    out = Path(args.out or Path("out") / exp.name)
    out.mkdir(parents=True, exist_ok=True)
    print(f"jaxplan sweep: {_title(exp, scales)}; serving: {args.serving}; parameters: {source}", file=sys.stderr)

    def sweeps(e):
        r = {}
        if args.serving in ("agg", "both"):
            r["agg"] = run_sweep(e, p, params_source=source, progress=True, attention_dp=args.attention_dp)
        if args.serving in ("disagg", "both"):
            r["disagg"] = run_disagg_sweep(e, p, params_source=source, progress=True)
        return r

    results = sweeps(exp)
    baseline = sweeps(base_exp) if args.compare else {}
    cols, front, best = report.merge_results(results)
    names = report.LAYOUT_CSV_COLUMNS if args.serving == "agg" else report.MODE_CSV_COLUMNS
    report.write_csv(out / "layouts.csv", cols, names)
    report.write_csv(out / "frontier.csv", cols, names, rows=front)
    extra = {}
    if len(results) > 1 or baseline:
        tag = " (what-if)" if baseline else ""
        for mode, r in results.items():
            fi = r.frontier
            extra[f"{mode} frontier{tag}"] = (r.columns["tokens_per_s_per_user"][fi], r.columns["tokens_per_s_per_gpu"][fi])
        for mode, r in baseline.items():
            fi = r.frontier
            extra[f"{mode} frontier, {base_exp.hardware.name} as shipped"] = (
                r.columns["tokens_per_s_per_user"][fi], r.columns["tokens_per_s_per_gpu"][fi])
    report.plot_frontier(out / "frontier.png", cols, [] if extra else front, best, _title(exp, scales),
                         exp.sla.min_tokens_per_user, extra=extra, max_ttft_s=exp.sla.max_ttft_s)
    best_row = report.row(cols, best) if best is not None else None
    summary = {
        "experiment": exp.name, "model": exp.model.name, "hardware": exp.hardware.name, "gpus": exp.gpus,
        "precision": exp.precision.name, "backend": exp.backend,
        "scheduler": scheduler_name(exp.scheduler_key),
        "speculative": {"draft_tokens": exp.workload.draft_tokens, "acceptance": exp.workload.acceptance},
        "prefix_hit": exp.workload.prefix_hit, "isl": exp.workload.isl, "osl": exp.workload.osl,
        "serving": args.serving, "hardware_scales": scales,
        "sla": _sla_dict(exp),
        "params_source": source,
        "counts": {"layouts": int(len(cols["tokens_per_s_per_gpu"])), "feasible": int(cols["feasible"].sum()),
                   "frontier": int(len(front)), "meeting_sla": int(meets_sla(cols, exp.sla.min_tokens_per_user, exp.sla.max_ttft_s).sum())},
        "best_at_sla": best_row,
        "seconds": {"compile": sum(r.compile_s for r in results.values()),
                    "evaluate": sum(r.evaluate_s for r in results.values())},
        "layouts_per_second": sum(r.n for r in results.values()) / max(sum(r.evaluate_s for r in results.values()), 1e-9),
        "by_mode": {m: {"layouts": r.n, "parallel_layouts": r.num_parallel_configs,
                        "best_at_sla": r.row(r.best) if r.best is not None else None,
                        "seconds": {"compile": r.compile_s, "evaluate": r.evaluate_s}} for m, r in results.items()},
    }
    if "agg" in results:
        summary["counts"]["parallel_layouts"] = results["agg"].num_parallel_configs
    if len(results) == 2 and all(r.best is not None for r in results.values()):
        summary["disagg_over_agg_at_sla"] = (results["disagg"].row(results["disagg"].best)["tokens_per_s_per_gpu"]
                                             / results["agg"].row(results["agg"].best)["tokens_per_s_per_gpu"])
    if baseline:
        bcols, _, base_best = report.merge_results(baseline)
        summary["baseline_best_at_sla"] = report.row(bcols, base_best) if base_best is not None else None
        if base_best is not None and best_row is not None:
            summary["whatif_over_baseline_at_sla"] = (best_row["tokens_per_s_per_gpu"]
                                                      / float(bcols["tokens_per_s_per_gpu"][base_best]))
    report.write_json(out / "summary.json", summary)
    for mode, r in results.items():
        table = report.FRONTIER_TABLE if mode == "agg" else report.DISAGG_TABLE
        print(f"\n{mode} Pareto frontier ({len(r.frontier)} of {r.n:,} layouts, {int(r.columns['feasible'].sum()):,} feasible):")
        print(report.table(report.frontier_rows(r.columns, r.frontier, table), table))
    if best_row is None:
        print(f"\nNo feasible layout meets the SLA ({_sla_text(exp)}).")
    else:
        print(f"\nBest at SLA ({_sla_text(exp)}): {report.label(best_row)}: "
              f"{best_row['tokens_per_s_per_gpu']:.1f} tokens/s/GPU, {best_row['tokens_per_s_per_user']:.1f} tokens/s/user, "
              f"TTFT {best_row['ttft_s']:.2f} s, {best_row['memory_per_gpu_gb']:.0f} GB/GPU")
    if baseline:
        b = summary["baseline_best_at_sla"]
        print(f"Baseline ({base_exp.hardware.name} as shipped): "
              + (f"{report.label(b)}: {b['tokens_per_s_per_gpu']:.1f} tokens/s/GPU" if b else "no layout meets the SLA")
              + (f"; what-if / baseline at the SLA: {summary['whatif_over_baseline_at_sla']:.2f}x"
                 if "whatif_over_baseline_at_sla" in summary else ""))
    if "disagg_over_agg_at_sla" in summary:
        print(f"Disaggregated / aggregated tokens/s/GPU at the SLA: {summary['disagg_over_agg_at_sla']:.2f}x")
    print(f"compiled in {summary['seconds']['compile']:.1f} s, evaluated {summary['counts']['layouts']:,} layouts in "
          f"{summary['seconds']['evaluate']:.3f} s; wrote {out}/layouts.csv, frontier.csv, summary.json, frontier.png")
    return 0


# ----------------------------------------------------------------------------- explain

def cmd_explain(args) -> int:
    import jax.numpy as jnp

    from . import report
    from .cost import sum_costs
    from .layouts import check_parallel
    from .sensitivity import METRICS, elasticities, label_of
    from .serving import Layout, explain, scheduler_name

    exp, p, source = _load(args)
    given = [args.tp, args.pp, args.ep, args.dp, args.batch, args.chunk]
    if getattr(args, "serving", "agg") == "disagg":
        if any(v is not None for v in given + [args.adp]):
            raise SpecError("--serving disagg explains the disaggregated sweep's best deployment at the SLA; "
                            "--tp/--pp/--ep/--dp/--adp/--batch/--chunk describe one aggregated layout and cannot "
                            "be combined with it")
        return _explain_disagg(args, exp, p, source)
    if all(v is None for v in given):
        from .sweep import run_sweep
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
    ex = explain(p, exp.hardware, exp.model, exp.precision, exp.workload, lay,
                 scheduler=scheduler_name(exp.scheduler_key))
    one = {f: [v] for f, v in zip(Layout._fields, (tp, pp, ep, dp, batch, chunk, adp))}
    recs = [r for r in elasticities(p, exp.hardware, exp.model, exp.precision, exp.workload, one, [0],
                                    exp.scheduler_key) if r["kind"] != "param"]
    sens = {m: {r["name"]: r[f"elasticity_{m}"] for r in recs} for m in METRICS}
    label = report.layout_label(dict(tp=tp, pp=pp, ep=ep, dp=dp, adp=adp, batch=batch, chunk=chunk))
    groups = {}
    for phase in ("chunk_iteration", "decode_iteration"):
        groups[phase] = {k: {f: float(getattr(c, f)) for f in ("compute", "memory", "comm_tp", "comm_ep",
                                                                "comm_pp", "overhead")} | {"total": float(c.total())}
                         for k, c in ex[phase].items()}
        groups[phase]["TOTAL"] = {"total": float(sum_costs(ex[phase].values()).total())}
    if args.json:
        sys.stdout.write(report.to_json({"layout": dict(tp=tp, pp=pp, ep=ep, dp=dp, adp=adp, batch=batch,
                                                               chunk=chunk),
                                                "experiment": exp.name, "params_source": source,
                                                "scheduler": scheduler_name(exp.scheduler_key),
                                                "tokens_per_step": float(exp.workload.tokens_per_step),
        "speculative": {"draft_tokens": exp.workload.draft_tokens, "acceptance": exp.workload.acceptance},
        "prefix_hit": exp.workload.prefix_hit,
                                                "metrics": ex["metrics"], "memory_gb": ex["memory_gb"],
                                                "ops_s": groups, "elasticities": sens}))
        return 0
    m = ex["metrics"]
    print(f"{_title(exp, parse_scales(args.scale))}\nlayout {label} (from {origin}); parameters: {source}; "
          f"scheduler: {scheduler_name(exp.scheduler_key)}\n")
    print(f"  TTFT {m['ttft_s']:.3f} s   TPOT {1e3 * m['tpot_s']:.2f} ms   "
          f"{m['tokens_per_s_per_user']:.1f} tokens/s/user   {m['tokens_per_s_per_gpu']:.1f} tokens/s/GPU   "
          f"decoding {m['decoding_requests']:.1f} of {batch} requests"
          + ("   (prefill saturated: requests queue for prefill)" if m["prefill_saturated"] > 0.5 else ""))
    mem = ex["memory_gb"]
    print(f"  memory per GPU: {mem['total']:.1f} GB of {mem['capacity']:.1f} usable "
          f"(weights {mem['weights']:.1f}, KV {mem['kv_cache']:.1f}, activations {mem['activations']:.1f}, "
          f"reserve {mem['reserve']:.1f})" + ("" if m["feasible"] > 0.5 else "  ** DOES NOT FIT **"))
    for phase, title in (("chunk_iteration", "iteration with a prefill chunk"),
                         ("decode_iteration", "decode-only iteration")):
        rows, total = _op_rows(ex[phase])
        print(f"\n  {title}: {1e3 * total:.2f} ms")
        print("  " + report.table(rows, OP_TABLE).replace("\n", "\n  "))
    kinds = {r["name"]: r["kind"] for r in recs}
    rows = [{"x": label_of(kinds[k], k), **{m: f"{sens[m][k]:+.3f}" for m in sens}} for k in sens["ttft_s"]]
    print("\n  elasticities: % change of each metric per +1% of the input (exact derivatives of the model; "
          "`jaxplan sensitivity` adds the fitted parameters and the frontier):")
    print("  " + report.table(rows, (("x", "input", ""), ("tokens_per_s_per_gpu", "tok/s/GPU", ""),
                                     ("tokens_per_s_per_user", "tok/s/user", ""),
                                     ("ttft_s", "TTFT", ""))).replace("\n", "\n  "))
    return 0


OP_TABLE = (("op", "op", ""), ("ms", "ms", ""), ("share", "share", ""), ("bound", "mostly", ""))


def _op_rows(ops: dict) -> tuple[list[dict], float]:
    """Table rows of an iteration's op breakdown (op -> Cost), longest first, and the total."""
    from .cost import sum_costs
    total = float(sum_costs(ops.values()).total())
    fields = ("compute", "memory", "comm_tp", "comm_ep", "comm_pp", "overhead")
    rows = [{"op": k, "ms": f"{1e3 * float(c.total()):.3f}", "share": f"{100 * float(c.total()) / total:.1f}%",
             "bound": max(fields, key=lambda f: float(getattr(c, f))) if float(c.total()) > 0 else "-"}
            for k, c in sorted(ops.items(), key=lambda kv: -float(kv[1].total()))]
    return rows, total


def _explain_disagg(args, exp, p, source) -> int:
    import jax
    import numpy as np

    from . import report
    from .sensitivity import METRICS, row_args, elasticities, label_of
    from .serving import explain_disagg
    from .sweep import run_disagg_sweep

    res = run_disagg_sweep(exp, p, params_source=source)
    if res.best is None:
        raise SpecError(f"no disaggregated deployment meets the SLA ({_sla_text(exp)})")
    row = res.row(res.best)
    args_ = jax.tree_util.tree_map(lambda v: v[0], row_args(res.columns, np.asarray([res.best]), exp.hardware,
                                                             "disagg"))
    ex = explain_disagg(p, exp.hardware, exp.model, exp.precision, exp.workload, *args_)
    recs = [r for r in elasticities(p, exp.hardware, exp.model, exp.precision, exp.workload, res.columns,
                                    [res.best], exp.backend, "disagg") if r["kind"] != "param"]
    sens = {m: {r["name"]: r[f"elasticity_{m}"] for r in recs} for m in METRICS}
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
    print(f"{_title(exp, parse_scales(args.scale))}, disaggregated\n{label} (the disaggregated sweep's best at the "
          f"SLA); parameters: {source}\n")
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
    for title, rows, total in (("prefill worker iteration", pre_rows, pre_total), (dec_title, dec_rows, dec_total)):
        print(f"\n  {title}: {1e3 * total:.2f} ms")
        print("  " + report.table(rows, OP_TABLE).replace("\n", "\n  "))
    kinds = {r["name"]: r["kind"] for r in recs}
    rows = [{"x": label_of(kinds[k], k), **{mm: f"{sens[mm][k]:+.3f}" for mm in sens}} for k in sens["ttft_s"]]
    print("\n  elasticities at these worker layouts and counts (% change per +1% of the input):")
    print("  " + report.table(rows, (("x", "input", ""), ("tokens_per_s_per_gpu", "tok/s/GPU", ""),
                                     ("tokens_per_s_per_user", "tok/s/user", ""),
                                     ("ttft_s", "TTFT", ""))).replace("\n", "\n  "))
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
    return text + f" -> {sw['new_layout']}" + ("" if sw["old_layout_meets_sla"] else " (old misses SLA)")


def cmd_sensitivity(args) -> int:
    from . import report
    from .sensitivity import DISAGG_KEY, label_of, ranked, run_sensitivity

    exp, p, source = _load(args)
    scales = parse_scales(args.scale)
    out = Path(args.out or Path("out") / f"{exp.name}-sensitivity")
    out.mkdir(parents=True, exist_ok=True)
    title = _title(exp, scales)
    print(f"jaxplan sensitivity: {title}; SLA {_sla_text(exp)}; parameters: {source}", file=sys.stderr)
    t0 = time.perf_counter()
    kinds = ("hardware", "workload", "param") if args.switch_params else ("hardware", "workload")
    serving = getattr(args, "serving", "agg") or "agg"
    res = run_sensitivity(exp, p, params_source=source, attention_dp=args.attention_dp, switch_kinds=kinds,
                          progress=True, serving=serving)
    dt = time.perf_counter() - t0
    cols, best = res.sweep.columns, res.best
    on_front = set(int(i) for i in res.sweep.frontier)
    rows_csv = []
    for r in res.records:
        i = r["row"]
        rows_csv.append({"layout": report.label(report.row(cols, i)), "is_best_at_sla": int(i == best),
                         "on_frontier": int(i in on_front),
                         **{k: cols[k][i] for k in ("tp", "pp", "ep", "dp", "adp", "batch", "chunk")
                            + (DISAGG_KEY if serving == "disagg" else ())
                            + ("tokens_per_s_per_user", "tokens_per_s_per_gpu", "ttft_s")},
                         **{k: r[k] for k in ("kind", "name", "value")},
                         **{k: r[k] for k in r if k.startswith("elasticity_")}})
    names = list(rows_csv[0]) if rows_csv else ["layout"]
    report.write_csv(out / "sensitivity.csv", {k: [x[k] for x in rows_csv] for k in names}, names)
    summary = {"experiment": exp.name, "hardware": exp.hardware.name, "hardware_scales": scales,
               "serving": serving, "params_source": source, "sla": _sla_dict(exp),
               "frontier_points": len(res.sweep.frontier), "seconds": dt, "switches_at_plus_minus_10pct": res.switches}
    if best is None:
        report.write_json(out / "sensitivity.json", summary | {"best_at_sla": None})
        report.plot_sensitivity_frontier(out / "sensitivity_frontier.png", res.records, cols, res.sweep.frontier,
                                         f"elasticities along the frontier: {title}")
        print(f"\nNo feasible layout meets the SLA ({_sla_text(exp)}); elasticities along the frontier are in "
              f"{out}/sensitivity.csv and sensitivity_frontier.png.")
        return 0
    best_row = report.row(cols, best)
    at_best = [r for r in res.records if r["row"] == best]
    sw = {(s["kind"], s["name"], s["factor"]): s for s in res.switches}
    summary["best_at_sla"] = best_row
    summary["elasticities_at_best"] = {f"{r['kind']}:{r['name']}": {k: r[k] for k in r if k.startswith("elasticity_")}
                                       for r in at_best}
    report.write_json(out / "sensitivity.json", summary)
    report.plot_sensitivity(out / "sensitivity.png", at_best,
                            f"d log(tokens/s/GPU) / d log(x) at {report.label(best_row)} — {title}")
    report.plot_sensitivity_frontier(out / "sensitivity_frontier.png", res.records, cols, res.sweep.frontier,
                                     f"elasticities along the frontier: {title}", best=best)

    def table_rows(recs):
        return [{"input": label_of(r["kind"], r["name"]), "value": report.display_value(r["kind"], r["name"], r["value"]),
                 **{m: f"{r['elasticity_' + m]:+.3f}" for m in ("tokens_per_s_per_gpu", "tokens_per_s_per_user",
                                                                 "ttft_s")},
                 "minus": _switch_text(sw.get((r["kind"], r["name"], 0.9))),
                 "plus": _switch_text(sw.get((r["kind"], r["name"], 1.1)))} for r in recs]

    print(f"\n{title}, {'disaggregated' if serving == 'disagg' else 'aggregated'} serving\n"
          f"best at SLA ({_sla_text(exp)}): {report.label(best_row)}: "
          f"{best_row['tokens_per_s_per_gpu']:.1f} tokens/s/GPU, {best_row['tokens_per_s_per_user']:.1f} tokens/s/user, "
          f"TTFT {best_row['ttft_s']:.2f} s; parameters: {source}")
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
    from . import report
    from .codesign import hardware_yaml, load_prices, run_codesign
    from .sensitivity import HARDWARE_NUMBERS

    exp, p, source = _load(args)
    prices_path = Path(args.prices) if args.prices else config_root() / "prices" / "default.yaml"
    prices = load_prices(prices_path)
    out = Path(args.out or Path("out") / f"{exp.name}-codesign")
    out.mkdir(parents=True, exist_ok=True)
    print(f"jaxplan codesign: {_title(exp, parse_scales(args.scale))}; SLA {_sla_text(exp)}; prices: {prices_path}; "
          f"parameters: {source}", file=sys.stderr)
    t0 = time.perf_counter()
    serving = getattr(args, "serving", "agg") or "agg"
    res = run_codesign(exp, p, prices, budget=args.budget, steps=args.steps, lr=args.lr,
                       attention_dp=args.attention_dp, progress=True, serving=serving)
    dt = time.perf_counter() - t0
    cur = f" {prices.currency}" if prices.currency else ""
    traj_cols = {"step": [], "tokens_per_s_per_gpu": [], "tokens_per_s_per_user": [], "ttft_s": [], "layout": []}
    for n in res.names:
        traj_cols[HARDWARE_NUMBERS[n][1]] = []
        traj_cols[f"share_{n}"] = []
        traj_cols[f"elasticity_{n}"] = []
    for r in res.trajectory:
        for k in ("step", "tokens_per_s_per_gpu", "tokens_per_s_per_user", "ttft_s", "layout"):
            traj_cols[k].append(r.get(k))
        for n in res.names:
            traj_cols[HARDWARE_NUMBERS[n][1]].append(r["values"][n])
            traj_cols[f"share_{n}"].append(r["shares"][n])
            traj_cols[f"elasticity_{n}"].append(r["elasticities"].get(n))
    report.write_csv(out / "trajectory.csv", traj_cols, list(traj_cols))
    (out / "codesign_hardware.yaml").write_text(
        f"# jaxplan codesign of {exp.hardware.name} for {exp.name}: best of {len(res.trajectory)} steps "
        f"(step {res.best_step}); budget {res.budget:,.0f}{cur} per GPU over {', '.join(res.names)}\n"
        + hardware_yaml(res.final_hardware, f"jaxplan codesign from {exp.hardware.name}, prices {prices_path}"))
    report.plot_codesign(out / "codesign.png", res, f"codesign: {_title(exp)}, SLA {_sla_text(exp)}")
    s, f = res.start, res.final
    summary = {"experiment": exp.name, "hardware": exp.hardware.name, "serving": serving, "prices": str(prices_path),
               "budget": res.budget, "currency": prices.currency, "steps": len(res.trajectory),
               "best_step": res.best_step, "seconds": dt, "start": s, "final": f,
               "gain": f["tokens_per_s_per_gpu"] / s["tokens_per_s_per_gpu"] if s["tokens_per_s_per_gpu"] else None}
    report.write_json(out / "codesign.json", summary)
    rows = [{"number": HARDWARE_NUMBERS[n][2], "price": f"{res.prices[n]:g}{cur} per {report.unit_of(n)}",
             "start": f"{s['values'][n]:g} {report.unit_of(n)}",
             "final": f"{f['values'][n]:g} {report.unit_of(n)}",
             "share": f"{100 * s['shares'][n]:.0f}% -> {100 * f['shares'][n]:.0f}%",
             "elasticity": f"{s['elasticities'].get(n, float('nan')):+.3f} -> {f['elasticities'].get(n, float('nan')):+.3f}"}
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


# ----------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="jaxplan", description="Plan LLM inference deployments with a JAX cost model.")
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
    sp.set_defaults(fn=cmd_sweep)
    ep = sub.add_parser("explain", help="one layout's metrics and per-op time breakdown")
    _add_experiment_args(ep)
    for k in ("tp", "pp", "ep", "dp", "adp", "batch", "chunk"):
        ep.add_argument(f"--{k}", type=_positive(int), help="attention-DP groups (default: ep)" if k == "adp" else None)
    ep.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ep.add_argument("--serving", choices=("agg", "disagg"), default="agg",
                    help="disagg: explain the disaggregated sweep's best deployment (where its TTFT goes, both "
                         "workers' iterations) instead of one aggregated layout")
    ep.set_defaults(fn=cmd_explain)
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
    from .fit import register as register_fit
    register_fit(sub)
    from .bench import add_bench_args, bench_command
    bp = sub.add_parser("bench", help="measure this machine's devices into the kernel-table format `fit` reads")
    add_bench_args(bp)
    bp.set_defaults(fn=bench_command)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "fn", None):
        ap.print_help()
        return 2
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
