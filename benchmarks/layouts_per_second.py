"""How many layouts per second does the batched evaluator score, and how much memory does it hold?

Builds a synthetic design space of legal layouts for a model (all parallel configs x batches x
chunks, tiled to the requested size with varied batches so no two chunks are alike) and times
``evaluate_layouts`` on it for several chunk sizes. Compile time is reported apart.

Run by hand:  python benchmarks/layouts_per_second.py [--model M] [--hardware H] [--n N] [--chunks ...]
"""
from __future__ import annotations

import argparse
import resource
import time

import jax
import numpy as np

from jaxplan import layouts as L
from jaxplan.params import default_params
from jaxplan.specs import Workload, get_precision, load_hardware, load_model
from jaxplan.sweep import batched_evaluator, evaluate_layouts


def synthetic(model, gpus, n, seed=0):
    cfg = L.parallel_configs(model, gpus, "all")
    rng = np.random.default_rng(seed)
    pick = cfg[rng.integers(0, len(cfg), n)]
    cols = {k: pick[:, i].astype(np.float32) for i, k in enumerate(L.PARALLEL_FIELDS)}
    cols["batch"] = np.maximum(cols["adp"], rng.integers(1, 1024, n)).astype(np.float32)
    cols["chunk"] = rng.choice([256, 512, 1024, 2048, 4096, 8192], n).astype(np.float32)
    return cols


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt-1.8t-moe")
    ap.add_argument("--hardware", default="gb200-nvl72")
    ap.add_argument("--precision", default="fp4")
    ap.add_argument("--gpus", type=int, default=64)
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--chunks", type=int, nargs="+", default=[4096, 65536, 262144])
    args = ap.parse_args(argv)
    model, hw, prec = load_model(args.model), load_hardware(args.hardware), get_precision(args.precision)
    p, wl = default_params(), Workload(8192.0, 1024.0)
    cols = synthetic(model, args.gpus, args.n)
    print(f"jax {jax.__version__} on {jax.devices()}; {args.model} / {args.hardware} / {args.precision}; "
          f"{args.n:,} layouts")
    for chunk in args.chunks:
        batched_evaluator.cache_clear()
        t0 = time.perf_counter()
        evaluate_layouts(p, hw, model, prec, wl, {k: v[:chunk] for k, v in cols.items()}, chunk=chunk)
        t1 = time.perf_counter()
        out = evaluate_layouts(p, hw, model, prec, wl, cols, chunk=chunk)
        t2 = time.perf_counter()
        assert np.isfinite(out["tokens_per_s_per_gpu"]).all()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(f"chunk {chunk:>8,}: compile+first {t1 - t0:6.2f} s, {args.n:,} layouts in {t2 - t1:6.2f} s = "
              f"{args.n / (t2 - t1):>12,.0f} layouts/s; peak RSS {rss:.2f} GB")


if __name__ == "__main__":
    main()
