"""Command line: parse, call the library, print and write. Bad input exits with code 2 and a
message naming the file, the key and what is allowed; never a traceback."""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from .specs import SpecError, config_root

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


def _nonneg_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


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


def _load(args):
    from .params import for_backend, params_for
    from .specs import load_experiment
    exp = load_experiment(_experiment_path(args.experiment), model=args.model, hardware=args.hardware,
                          gpus=args.gpus, isl=args.isl, osl=args.osl, precision=args.precision,
                          min_tokens_per_user=args.min_tokens_per_user, max_ttft=args.max_ttft)
    p, source = params_for(exp.hardware.name, args.params or exp.params_file)
    return exp, for_backend(p, exp.backend), source


def _title(exp) -> str:
    return (f"{exp.model.name} on {exp.gpus} × {exp.hardware.name}, {exp.precision.name}, "
            f"ISL {int(exp.workload.isl)} / OSL {int(exp.workload.osl)}")


# ----------------------------------------------------------------------------- sweep

def _sla_text(exp) -> str:
    return f"≥ {exp.sla.min_tokens_per_user:g} tokens/s/user, TTFT ≤ {exp.sla.max_ttft_s:g} s"


def _meeting_sla(cols, exp) -> int:
    return int((cols["feasible"] & (cols["tokens_per_s_per_user"] >= exp.sla.min_tokens_per_user)
                & (cols["ttft_s"] <= exp.sla.max_ttft_s)).sum())


def cmd_sweep(args) -> int:
    from . import report
    from .sweep import run_disagg_sweep, run_sweep

    exp, p, source = _load(args)
    out = Path(args.out or Path("out") / exp.name)
    out.mkdir(parents=True, exist_ok=True)
    print(f"jaxplan sweep: {_title(exp)}; serving: {args.serving}; parameters: {source}", file=sys.stderr)
    results = {}
    if args.serving in ("agg", "both"):
        results["agg"] = run_sweep(exp, p, params_source=source, progress=True, attention_dp=args.attention_dp)
    if args.serving in ("disagg", "both"):
        results["disagg"] = run_disagg_sweep(exp, p, params_source=source, progress=True)
    cols, front, best = report.merge_results(results)
    names = report.LAYOUT_CSV_COLUMNS if args.serving == "agg" else report.MODE_CSV_COLUMNS
    report.write_csv(out / "layouts.csv", cols, names)
    report.write_csv(out / "frontier.csv", cols, names, rows=front)
    extra = {}
    if len(results) > 1:
        for mode, r in results.items():
            fi = r.frontier
            extra[f"{mode} frontier"] = (r.columns["tokens_per_s_per_user"][fi], r.columns["tokens_per_s_per_gpu"][fi])
    report.plot_frontier(out / "frontier.png", cols, [] if extra else front, best, _title(exp),
                         exp.sla.min_tokens_per_user, extra=extra, max_ttft_s=exp.sla.max_ttft_s)
    best_row = report.row(cols, best) if best is not None else None
    summary = {
        "experiment": exp.name, "model": exp.model.name, "hardware": exp.hardware.name, "gpus": exp.gpus,
        "precision": exp.precision.name, "backend": exp.backend, "isl": exp.workload.isl, "osl": exp.workload.osl,
        "serving": args.serving,
        "sla": {"min_tokens_per_s_per_user": exp.sla.min_tokens_per_user, "max_ttft_s": exp.sla.max_ttft_s},
        "params_source": source,
        "counts": {"layouts": int(len(cols["tokens_per_s_per_gpu"])), "feasible": int(cols["feasible"].sum()),
                   "frontier": int(len(front)), "meeting_sla": _meeting_sla(cols, exp)},
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
    from .serving import Layout, explain, sensitivities

    exp, p, source = _load(args)
    given = [args.tp, args.pp, args.ep, args.dp, args.batch, args.chunk]
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
    ex = explain(p, exp.hardware, exp.model, exp.precision, exp.workload, lay)
    sens = sensitivities(p, exp.hardware, exp.model, exp.precision, exp.workload, lay)
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
                                                "metrics": ex["metrics"], "memory_gb": ex["memory_gb"],
                                                "ops_s": groups, "elasticities": sens}))
        return 0
    m = ex["metrics"]
    print(f"{_title(exp)}\nlayout {label} (from {origin}); parameters: {source}\n")
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
        total = groups[phase]["TOTAL"]["total"]
        rows = []
        for k, v in sorted(((k, v) for k, v in groups[phase].items() if k != "TOTAL"),
                           key=lambda kv: -kv[1]["total"]):
            rows.append({"op": k, "ms": f"{1e3 * v['total']:.3f}", "share": f"{100 * v['total'] / total:.1f}%",
                         "bound": max(("compute", "memory", "comm_tp", "comm_ep", "comm_pp", "overhead"),
                                      key=lambda f: v[f])})
        print(f"\n  {title}: {1e3 * total:.2f} ms")
        print("  " + report.table(rows, (("op", "op", ""), ("ms", "ms", ""), ("share", "share", ""),
                                         ("bound", "mostly", ""))).replace("\n", "\n  "))
    names = {"hbm_bandwidth": "HBM bandwidth", "bf16_flops": "BF16 FLOP/s", "fp8_flops": "FP8 FLOP/s",
             "fp4_flops": "FP4 FLOP/s", "scaleup_bandwidth": "NVLink bandwidth",
             "scaleout_bandwidth": "scale-out bandwidth", "hbm_capacity": "HBM capacity",
             "isl": "input length", "osl": "output length"}
    rows = [{"x": names.get(k, k), **{m: f"{sens[m][k]:+.3f}" for m in sens}} for k in sens["ttft_s"]]
    print("\n  elasticities: % change of each metric per +1% of the input (exact derivatives of the model):")
    print("  " + report.table(rows, (("x", "input", ""), ("tokens_per_s_per_gpu", "tok/s/GPU", ""),
                                     ("tokens_per_s_per_user", "tok/s/user", ""),
                                     ("ttft_s", "TTFT", ""))).replace("\n", "\n  "))
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
    sp.set_defaults(fn=cmd_sweep)
    ep = sub.add_parser("explain", help="one layout's metrics and per-op time breakdown")
    _add_experiment_args(ep)
    for k in ("tp", "pp", "ep", "dp", "adp", "batch", "chunk"):
        ep.add_argument(f"--{k}", type=_positive(int), help="attention-DP groups (default: ep)" if k == "adp" else None)
    ep.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ep.set_defaults(fn=cmd_explain)
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
