"""How many layouts per second does the batched evaluator score, how much work is one layout, and
what share of the device's peak is that?

1. Materialized: a synthetic design space of legal layouts for a model (all parallel configs x
   batches x chunks, tiled to ``--n`` with varied batches so no two chunks are alike) through
   ``sweep.evaluate_layouts`` for several chunk sizes (results copied back to the host).
2. XLA's cost analysis of the compiled evaluator, with the closed-loop fixed point unrolled (XLA
   counts a while loop's body once, whatever its trip count): FLOPs and bytes per layout, and the
   share of the device's FP32 peak and memory bandwidth the measured rate implies.
3. Streamed: ``stream.run_streamed`` on a real space (``--gpus-stream``, attention-DP all): layouts
   decoded on the device, evaluated and reduced (frontier, SLA top-k, counts, density) per chunk.

Ends with ``layouts_per_s=<n>``: the streamed sweep's rate (what a large sweep runs at).
Compile time is reported apart. Run by hand, on an idle machine:

    python benchmarks/layouts_per_second.py [--model M] [--hardware H] [--n N] [--chunks ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxplan import layouts as L
from jaxplan import stream as T
from jaxplan.layouts import Layout
from jaxplan.params import default_params
from jaxplan.serving import evaluate
from jaxplan.specs import Workload, get_precision, load_experiment, load_hardware, load_model
from jaxplan.sweep import batched_evaluator, evaluate_layouts

# FP32 (non-tensor-core) peak and HBM bandwidth per device kind, from the vendors' datasheets:
# H100 SXM 67 TFLOP/s, 3.35 TB/s; H200 67 TFLOP/s, 4.8 TB/s (NVIDIA H100 / H200 datasheets).
# A CPU's peak is the user's to give (--peak-flops, --peak-bytes).
PEAKS = {"H100": (67e12, 3.35e12), "H200": (67e12, 4.8e12)}


def synthetic(model, gpus, n, seed=0):
    cfg = L.parallel_configs(model, gpus, "all")
    rng = np.random.default_rng(seed)
    pick = cfg[rng.integers(0, len(cfg), n)]
    cols = {k: pick[:, i].astype(np.float32) for i, k in enumerate(L.PARALLEL_FIELDS)}
    cols["batch"] = np.maximum(cols["adp"], rng.integers(1, 1024, n)).astype(np.float32)
    cols["chunk"] = rng.choice([256, 512, 1024, 2048, 4096, 8192], n).astype(np.float32)
    return cols


def cost_per_layout(p, hw, model, prec, wl, cols, n=4096):
    """(FLOPs, bytes accessed, transcendentals) per layout from XLA's cost analysis of the evaluator compiled for
    ``n`` layouts with every ``fori_loop`` unrolled."""
    orig = jax.lax.fori_loop
    jax.lax.fori_loop = functools.partial(orig, unroll=True)
    try:
        fn = jax.jit(jax.vmap(lambda q, h, w, lay: evaluate(q, h, model, prec, w, lay), in_axes=(None, None, None, 0)))
        lay = Layout(*(jnp.asarray(cols[f][:n]) for f in Layout._fields))
        ca = fn.lower(p, hw, wl, lay).compile().cost_analysis()
    finally:
        jax.lax.fori_loop = orig
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return (float(ca.get("flops", 0.0)) / n, float(ca.get("bytes accessed", 0.0)) / n,
            float(ca.get("transcendentals", 0.0)) / n)


def device_peaks(args):
    kind = jax.devices()[0].device_kind
    for k, v in PEAKS.items():
        if k in kind:
            return kind, v
    return kind, (args.peak_flops, args.peak_bytes)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt-1.8t-moe")
    ap.add_argument("--hardware", default="gb200-nvl72")
    ap.add_argument("--precision", default="fp4")
    ap.add_argument("--gpus", type=int, default=64)
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--chunks", type=int, nargs="+", default=[4096, 65536, 262144])
    ap.add_argument("--experiment", default="gpt-1.8t-moe-64gpu", help="the streamed sweep's experiment")
    ap.add_argument("--gpus-stream", type=int, default=8648640,
                    help="the streamed sweep's GPU budget (8648640: about 7.2 million layouts with attention-DP all)")
    ap.add_argument("--stream-chunk", type=int, default=T.CHUNK)
    ap.add_argument("--peak-flops", type=float, default=float("nan"), help="this device's FP32 FLOP/s (CPU)")
    ap.add_argument("--peak-bytes", type=float, default=float("nan"), help="this device's memory bytes/s (CPU)")
    args = ap.parse_args(argv)
    model, hw, prec = load_model(args.model), load_hardware(args.hardware), get_precision(args.precision)
    p, wl = default_params(), Workload(8192.0, 1024.0)
    cols = synthetic(model, args.gpus, args.n)
    kind, (peak_f, peak_b) = device_peaks(args)
    print(f"jax {jax.__version__} on {len(jax.devices())} x {kind}; {args.model} / {args.hardware} / {args.precision}")

    flops, nbytes, trans = cost_per_layout(p, hw, model, prec, wl, cols)
    print(f"XLA cost analysis (fixed point unrolled): {flops:,.0f} FLOPs, {trans:,.0f} transcendentals (exp, log, "
          f"pow) and {nbytes:,.0f} bytes per layout")

    def share(rate):
        return (f"{rate * flops / peak_f:.2%} of FP32 peak, {rate * nbytes / peak_b:.2%} of memory bandwidth"
                if np.isfinite(peak_f) else "peak unknown (--peak-flops, --peak-bytes)")

    print(f"materialized ({args.n:,} layouts, results copied to the host):")
    for chunk in args.chunks:
        batched_evaluator.cache_clear()
        t0 = time.perf_counter()
        evaluate_layouts(p, hw, model, prec, wl, {k: v[:chunk] for k, v in cols.items()}, chunk=chunk)
        t1 = time.perf_counter()
        out = evaluate_layouts(p, hw, model, prec, wl, cols, chunk=chunk)
        t2 = time.perf_counter()
        assert np.isfinite(out["tokens_per_s_per_gpu"]).all()
        rate = args.n / (t2 - t1)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(f"  chunk {chunk:>8,}: compile+first {t1 - t0:6.2f} s, {t2 - t1:6.2f} s = {rate:>12,.0f} layouts/s "
              f"({share(rate)}); peak RSS {rss:.2f} GB")

    exp = load_experiment(args.experiment)
    exp = dataclasses.replace(exp, gpus=args.gpus_stream)
    res = T.run_streamed(exp, attention_dp="all", chunk=args.stream_chunk)
    rate = res.n / max(res.evaluate_s, 1e-9)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"streamed ({args.experiment} on {args.gpus_stream:,} GPUs, attention-DP all, chunks of "
          f"{args.stream_chunk:,}): {res.n:,} layouts, compile {res.compile_s:.1f} s, {res.evaluate_s:.2f} s = "
          f"{rate:,.0f} layouts/s ({share(rate)}); frontier {len(res.frontier)}, rows kept {res.kept}; "
          f"peak RSS {rss:.2f} GB")
    print(f"layouts_per_s={rate:.0f}")


if __name__ == "__main__":
    main()
