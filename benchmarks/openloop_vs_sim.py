"""How close are the open-loop model's TTFT and TPOT percentiles to an iteration-level simulation?

Llama-3.1-8B at FP8 on H100-SXM with the shipped fitted profile (TensorRT-LLM front end), a grid of
aggregated layouts (tensor parallelism, batch, chunk size; the mixed and prefill-first schedulers)
and of loads (a share of each layout's sustainable rate, the closed-loop evaluator's request rate
at its full batch), under two traffics: fixed 2048/256 lengths, and lognormal prompts (mean 2048,
spread 0.5) with uniform outputs (128-384). Poisson arrivals. For every point it reports the
analytical (``jaxplan.openloop.evaluate_open``) and simulated (``jaxplan.simulate.simulate``, 1500
requests, the first 10% left out) mean and P50/P90/P99 TTFT and TPOT and their relative error, then
the median and worst error per quantity.

Run by hand:  python benchmarks/openloop_vs_sim.py [--requests N] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxplan import openloop as O
from jaxplan.layouts import Layout
from jaxplan.serving import evaluate
from jaxplan.simulate import simulate
from jaxplan.specs import experiment
from jaxplan.sweep import experiment_params

LAYOUTS = (  # (tp, batch, chunk, scheduler)
    (1, 64, 2048, "mixed"), (2, 64, 2048, "mixed"), (2, 128, 1024, "mixed"), (2, 64, 2048, "prefill_first"))
LOADS = (0.3, 0.6, 0.8, 0.9)
TRAFFICS = {"fixed 2048/256": None,
            "lognormal ISL, uniform OSL": {"isl": {"distribution": "lognormal", "mean": 2048, "spread": 0.5},
                                           "osl": {"distribution": "uniform", "low": 128, "high": 384}}}
KEYS = ("ttft_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_s", "tpot_p90_s", "tpot_p99_s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    lines = ["| traffic | layout | sched | load | " + " | ".join(f"{k} ana / sim (err)" for k in KEYS) + " |",
             "|---|---|---|---|" + "---|" * len(KEYS)]
    errs = {k: [] for k in KEYS}
    f_closed = jax.jit(evaluate, static_argnums=(2, 3, 6))
    f_open = jax.jit(O.evaluate_open, static_argnums=(2, 3, 7))
    for tname, tr in TRAFFICS.items():
        e = experiment("llama-3.1-8b", "h100-sxm", 2, precision="fp8", isl=2048, osl=256, traffic=tr)
        p, source = experiment_params(e)
        for tp, batch, chunk, sched in LAYOUTS:
            lay = Layout(*(jnp.float32(v) for v in (tp, 1, 1, 2 // tp, batch, chunk, 1)))
            X = float(f_closed(p, e.hardware, e.model, e.precision, e.workload, lay, sched)["requests_per_s"])
            for frac in LOADS:
                ex = dataclasses.replace(e, traffic=e.load.with_rate(frac * X))
                m = f_open(p, e.hardware, e.model, e.precision, e.workload, O.load_of(ex.load), lay, sched)
                s = simulate(ex, lay, p, n_requests=args.requests, scheduler=sched).summary
                cells = []
                for k in KEYS:
                    a, b = float(m[k]), s[k]
                    err = a / b - 1.0
                    errs[k].append(err)
                    unit = 1e3 if k.startswith("tpot") else 1.0
                    cells.append(f"{a * unit:.4g} / {b * unit:.4g} ({100 * err:+.0f}%)")
                lines.append(f"| {tname} | TP{tp}x{2 // tp} B{batch} C{chunk} | {sched} | {frac:.2f} | "
                             + " | ".join(cells) + " |")
                print(lines[-1], file=sys.stderr)
    summary = ["| quantity | median abs error | worst error |", "|---|---|---|"]
    for k in KEYS:
        v = np.asarray(errs[k])
        summary.append(f"| {k} | {100 * np.median(np.abs(v)):.0f}% | {100 * v[np.argmax(np.abs(v))]:+.0f}% |")
    text = ("Open-loop model vs iteration-level simulation: Llama-3.1-8B FP8 on 2 x H100-SXM, Poisson arrivals, "
            f"{args.requests} requests per point (10% warm-up), parameters {source}. TTFT in s, TPOT in ms; "
            "error = analytical / simulated - 1.\n\n" + "\n".join(summary) + "\n\n" + "\n".join(lines) + "\n")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
