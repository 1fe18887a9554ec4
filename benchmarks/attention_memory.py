"""KV cache or recurrent state per request, and the batch that fits, against context length.

Four attention designs on B200 at FP8 (KV cache and weights in FP8; Qwen3.5's linear-attention
state in float32, as its config's ``mamba_ssm_dtype`` says):
- Llama-3.1-70B: GQA, 80 layers x 8 KV heads x 128 x (K and V) per token;
- DeepSeek-V3: MLA, 61 layers x a 576-element latent per token;
- GLM-5: MLA with DeepSeek Sparse Attention, 78 layers x (576-element latent + the indexer's
  132-byte FP8 key) per token: sparse attention reads fewer keys but keeps every one;
- Qwen3.5-397B-A17B: hybrid, 15 full-attention layers x 2 KV heads x 256 x 2 per token plus 45
  Gated DeltaNet layers x a fixed 4.3 MB state per request, whatever the context.

Columns: bytes per request at ``context`` tokens for the whole model (``serving.kv_cache_bytes``,
what a disaggregated deployment moves per prompt), the requests one B200's usable HBM holds for
cache alone (weights elsewhere: a bound that shows the shape of each curve), and the largest batch
an 8 x B200 node at TP8 holds beside the weights (``cost.max_batch_that_fits``, the sweep's batch
limit; 0 where the weights alone do not fit).

Run by hand:  python benchmarks/attention_memory.py [--out FILE.md]
(no timings: pure arithmetic of the cost model, the same on any machine)
"""
from __future__ import annotations

import argparse
import sys

import jax.numpy as jnp

from jaxplan.cost import max_batch_that_fits, memory_per_gpu
from jaxplan.params import params_for
from jaxplan.serving import kv_cache_bytes
from jaxplan.specs import get_precision, load_hardware, load_model

MODELS = ("llama-3.1-70b", "deepseek-v3", "glm-5", "qwen3.5-397b-a17b")
CONTEXTS = (4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576)
NODE_TP = 8


def table(hw_name: str = "b200", precision: str = "fp8") -> list[dict]:
    hw, prec = load_hardware(hw_name), get_precision(precision)
    p, _ = params_for(hw_name)
    usable = float(hw.hbm_capacity * p["mem_usable_frac"]) - float(p["mem_reserve_gb"]) * 1e9
    rows = []
    for name in MODELS:
        m = load_model(name)
        for ctx in CONTEXTS:
            per_req = float(kv_cache_bytes(m, prec, float(ctx)))
            tp = jnp.float32(NODE_TP)
            one = jnp.float32(1.0)
            node = float(max_batch_that_fits(p, hw, m, prec, float(ctx), 0.0, tp, one, one, one, 1024.0))
            weights = float(memory_per_gpu(p, hw, m, prec, float(ctx), 0.0, tp, one, one, one, 0.0,
                                           1024.0)["weights"])
            rows.append({"model": name, "context": ctx, "per_request_gb": per_req / 1e9,
                         "one_gpu_cache_batch": usable / per_req, "node_batch": max(node, 0.0),
                         "weights_per_gpu_gb": weights / 1e9})
    return rows


def crossings(rows) -> list[str]:
    """Where a pair of models' per-request curves cross (linear interpolation in log context)."""
    by = {}
    for r in rows:
        by.setdefault(r["model"], []).append((r["context"], r["per_request_gb"]))
    out = []
    names = list(by)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for (c0, a0), (c1, a1), (_, b0), (_, b1) in zip(by[a], by[a][1:], by[b], by[b][1:]):
                if (a0 - b0) * (a1 - b1) < 0:
                    t = (a0 - b0) / ((a0 - b0) - (a1 - b1))
                    out.append(f"{a} and {b} cross between {c0:,} and {c1:,} tokens (~{c0 + t * (c1 - c0):,.0f})")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="also write the tables to this markdown file")
    args = ap.parse_args(argv)
    rows = table()
    lines = ["Per request, whole model, FP8 KV (GB) | requests one B200's usable HBM holds as cache | "
             f"max batch on 8 x B200 at TP{NODE_TP} beside FP8 weights", ""]
    lines.append("| model | " + " | ".join(f"{c // 1024}k" for c in CONTEXTS) + " |")
    lines.append("|---|" + "---|" * len(CONTEXTS))
    for name in MODELS:
        rs = [r for r in rows if r["model"] == name]
        lines.append(f"| {name} GB/request | " + " | ".join(f"{r['per_request_gb']:.3g}" for r in rs) + " |")
    for name in MODELS:
        rs = [r for r in rows if r["model"] == name]
        lines.append(f"| {name} requests/B200 | " + " | ".join(f"{r['one_gpu_cache_batch']:,.0f}" for r in rs) + " |")
    for name in MODELS:
        rs = [r for r in rows if r["model"] == name]
        lines.append(f"| {name} batch 8xB200 | " + " | ".join(f"{r['node_batch']:,.0f}" for r in rs) + " |")
    lines += [""] + [f"- {c}" for c in crossings(rows)]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
