"""How fast are exact elasticities, compared with finite differences by re-sweeping?

For the default study (GPT-1.8T-MoE on 64 GB200, FP4) times:
- the Jacobian of (tokens/s/GPU, tokens/s/user, TTFT) with respect to every hardware number, ISL,
  OSL and every fitted parameter (~80 inputs), at N layouts at once (compile apart);
- one full re-sweep, the unit of a finite difference (a central difference of every input costs
  two of them per input; the +-10% switch report costs the same);
- the whole `run_sensitivity` (sweep + frontier Jacobian + 22 re-sweeps).

Run by hand:  python benchmarks/sensitivity_speed.py [--rows 128 1024 4096]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from jaxplan.params import for_backend, params_for
from jaxplan.sensitivity import elasticities, run_sensitivity, used_params
from jaxplan.specs import config_root, load_experiment
from jaxplan.sweep import run_disagg_sweep, run_sweep


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[128, 1024, 4096])
    args = ap.parse_args(argv)
    exp = load_experiment(config_root() / "experiments" / "gpt-1.8t-moe-64gpu.yaml")
    p = for_backend(params_for(exp.hardware.name)[0], exp.backend)
    res = run_sweep(exp, p)
    t0 = time.perf_counter()
    res = run_sweep(exp, p)
    sweep_s = time.perf_counter() - t0
    n_inputs = 9 + 2 + len(used_params(p))
    feas = np.flatnonzero(res.columns["feasible"])
    args_ = (p, exp.hardware, exp.model, exp.precision, exp.workload, res.columns)
    t0 = time.perf_counter()
    elasticities(*args_, feas[:1], exp.backend)
    print(f"Jacobian compile (first call): {time.perf_counter() - t0:.1f} s; {n_inputs} inputs x 3 metrics")
    for n in args.rows:
        rows = np.resize(feas, n)
        elasticities(*args_, rows, exp.backend)                     # compile this bucket
        t0 = time.perf_counter()
        elasticities(*args_, rows, exp.backend)
        dt = time.perf_counter() - t0
        print(f"  {n:>6} layouts: {dt:.3f} s = {n / dt:,.0f} layouts/s ({n * n_inputs / dt:,.0f} elasticities/s, "
              f"3 metrics each)")
    print(f"one full re-sweep of {res.n:,} layouts: {1e3 * sweep_s:.1f} ms; central differences of all "
          f"{n_inputs} inputs at the best layout would need {2 * n_inputs} re-sweeps = {2 * n_inputs * sweep_s:.2f} s "
          f"(and give them for the best layout only)")
    t0 = time.perf_counter()
    s = run_sensitivity(exp, p)
    print(f"run_sensitivity (sweep, {len(s.sweep.frontier)} frontier points + best, {len(s.switches)} re-sweeps): "
          f"{time.perf_counter() - t0:.2f} s warm")

    # disaggregated: pairs of prefill and decode workers with their counts
    run_disagg_sweep(exp, p)
    t0 = time.perf_counter()
    dres = run_disagg_sweep(exp, p)
    dsweep_s = time.perf_counter() - t0
    dargs = (p, exp.hardware, exp.model, exp.precision, exp.workload, dres.columns)
    t0 = time.perf_counter()
    elasticities(*dargs, np.asarray([dres.best]), exp.backend, "disagg")
    print(f"\ndisaggregated: {len(dres.columns['tp']):,} deployments, one disagg sweep {dsweep_s:.2f} s warm; "
          f"Jacobian compile (first call) {time.perf_counter() - t0:.1f} s")
    rows = np.resize(np.arange(len(dres.columns["tp"])), 1024)
    elasticities(*dargs, rows, exp.backend, "disagg")
    t0 = time.perf_counter()
    elasticities(*dargs, rows, exp.backend, "disagg")
    dt = time.perf_counter() - t0
    print(f"  1024 deployments: {dt:.3f} s = {1024 / dt:,.0f} deployments/s")
    t0 = time.perf_counter()
    s = run_sensitivity(exp, p, serving="disagg")
    print(f"run_sensitivity(serving='disagg') ({len(s.sweep.frontier)} frontier points + best, {len(s.switches)} "
          f"re-sweeps): {time.perf_counter() - t0:.2f} s warm")


if __name__ == "__main__":
    main()
