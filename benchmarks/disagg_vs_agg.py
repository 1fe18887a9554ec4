"""Where does disaggregated serving beat aggregated serving, and by how much?

DeepSeek-V3 on 64 GPUs: GB200-NVL72 at FP4 and H100-SXM at FP8 (8-GPU NVLink domains joined by
InfiniBand), 8192 input / 1024 output tokens, plus 4400/1200 on GB200 (the case TensorRT-LLM
published: 1.4-1.8x for DeepSeek-R1, ~1.7x at 50 tokens/s/user). For each interactivity target
it compares the best tokens/s/GPU of the two frontiers (aggregated with every attention-DP choice).

Run by hand:  python benchmarks/disagg_vs_agg.py [--max-ttft S] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import math
import sys
import time

from jaxplan.params import for_backend, params_for
from jaxplan.specs import config_root, load_experiment
from jaxplan.sweep import run_disagg_sweep, run_sweep

CASES = (("gb200-nvl72", "fp4", 8192, 1024), ("h100-sxm", "fp8", 8192, 1024), ("gb200-nvl72", "fp4", 4400, 1200))
TARGETS = (10, 20, 30, 50, 75, 100)


def best_at(res, user, max_ttft):
    c = res.columns
    ok = c["feasible"] & (c["tokens_per_s_per_user"] >= user) & (c["ttft_s"] <= max_ttft)
    return float(c["tokens_per_s_per_gpu"][ok].max()) if ok.any() else 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-ttft", type=float, default=math.inf, help="TTFT limit in seconds (default: none)")
    ap.add_argument("--gpus", type=int, default=64)
    ap.add_argument("--out", help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    lines = [f"DeepSeek-V3, {args.gpus} GPUs, TTFT <= {args.max_ttft:g} s: best tokens/s/GPU "
             f"(aggregated | disaggregated | ratio) at each tokens/s/user target", ""]
    lines.append("| hardware | ISL/OSL | " + " | ".join(f"{u} tok/s/user" for u in TARGETS) + " | params |")
    lines.append("|---|---|" + "---|" * (len(TARGETS) + 1))
    for hw, prec, isl, osl in CASES:
        exp = load_experiment(config_root() / "experiments" / "gpt-1.8t-moe-64gpu.yaml", model="deepseek-v3",
                              hardware=hw, precision=prec, gpus=args.gpus, isl=isl, osl=osl)
        p, src = params_for(hw)
        p = for_backend(p, exp.backend)
        t0 = time.perf_counter()
        agg = run_sweep(exp, p, attention_dp="all")
        dis = run_disagg_sweep(exp, p)
        cells = []
        for u in TARGETS:
            a, d = best_at(agg, u, args.max_ttft), best_at(dis, u, args.max_ttft)
            cells.append(f"{a:.0f} \\| {d:.0f} \\| {d / a:.2f}x" if a > 0 and d > 0 else f"{a:.0f} \\| {d:.0f}")
        lines.append(f"| {hw} {prec} | {isl}/{osl} | " + " | ".join(cells) + f" | {src.split('/')[-1]} |")
        print(f"{hw} {isl}/{osl}: {agg.n + dis.n:,} layouts in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    text = "\n".join(lines)
    print(text)
    if args.out:
        open(args.out, "w").write(text + "\n")


if __name__ == "__main__":
    main()
