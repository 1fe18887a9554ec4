"""The design space: every legal (TP, PP, EP, DP) for a GPU budget, times batch and chunk sizes,
held as one struct of arrays.

Legality (a layout that breaks one of these is never generated, and an explicit one is refused):
- ``tp * pp * ep * dp == gpus``;
- attention-DP ``adp`` divides the stage width ``tp * ep``; the attention TP, ``tp * ep / adp``,
  divides the query heads
  (KV heads are replicated once it exceeds them);
- a dense model has EP 1; an MoE model's EP divides its routed experts;
- PP is at most the number of layers.
Batches run from ``adp`` (one request per attention group) up to the largest that fits in memory.

By default attention-DP equals EP (attention sharded like the experts, replicated over EP), which
is the space of NVIDIA's trillion-parameter study; ``attention_dp="all"`` tries every divisor of
the stage width, from attention sharded over the whole stage (adp = 1) to one GPU per attention
group (adp = tp * ep, DeepSeek-style attention-DP).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .specs import Model, SpecError


class Layout(NamedTuple):
    """One deployment of an aggregated replica set (all fields are float arrays so they vmap).

    ``tp``: tensor parallelism of each expert (and of attention when ``adp == ep``); ``ep``: expert
    parallelism; ``adp``: attention-DP groups per stage (divides ``tp * ep``; attention is sharded
    ``tp * ep / adp`` ways). ``batch``: requests in flight per replica; ``chunk``: prefill tokens
    per iteration of each attention group. GPUs used = tp * ep * pp * dp."""
    tp: object
    pp: object
    ep: object
    dp: object
    batch: object
    chunk: object
    adp: object


# Requests in flight per replica: powers of two and the midpoints between them.
BATCH_GRID = tuple(sorted({2 ** i for i in range(14)} | {3 * 2 ** i for i in range(13)}))


def prime_factors(n: int) -> dict[int, int]:
    """``{prime: exponent}`` of ``n >= 1`` by trial division up to sqrt(n) (n = 1: empty)."""
    out: dict[int, int] = {}
    d = 2
    while d * d <= n:
        while n % d == 0:
            out[d] = out.get(d, 0) + 1
            n //= d
        d += 1 if d == 2 else 2
    if n > 1:
        out[n] = out.get(n, 0) + 1
    return out


def divisors(n: int) -> list[int]:
    """Every divisor of ``n >= 1``, ascending, built from its prime factorization (a budget of
    millions of GPUs has at most a few thousand divisors; trying every integer up to n does not scale)."""
    ds = [1]
    for prime, exp in prime_factors(int(n)).items():
        ds = [d * prime ** k for d in ds for k in range(exp + 1)]
    return sorted(ds)


def check_parallel(model: Model, gpus: int, tp: int, pp: int, ep: int, dp: int | None = None,
                   adp: int | None = None, where: str = "layout", heads: bool = True) -> int:
    """Raise SpecError naming the offending value; return dp. ``adp`` defaults to ``ep``.
    ``heads=False`` accepts an attention TP that does not divide the query heads (what engines
    serve by padding heads, ``cost.heads_per_gpu``; the validator maps such measured rows), which
    sweeps do not search."""
    adp = ep if adp is None else adp
    if gpus < 1:
        raise SpecError(f"{where}: gpus must be at least 1, got {gpus}")
    for name, v in (("tp", tp), ("pp", pp), ("ep", ep), ("adp", adp)):
        if v < 1:
            raise SpecError(f"{where}: {name} must be at least 1, got {v}")
    if (tp * ep) % adp:
        raise SpecError(f"{where}: adp={adp} must divide tp*ep={tp * ep}; allowed adp: {divisors(tp * ep)}")
    tpa = tp * ep // adp
    if heads and model.num_heads % tpa:
        ok = [t for t in divisors(model.num_heads) if t <= gpus]
        raise SpecError(f"{where}: attention tp = tp*ep/adp = {tpa} does not divide the {model.num_heads} "
                        f"attention heads of {model.name}; allowed: {ok}")
    if not model.is_moe and ep != 1:
        raise SpecError(f"{where}: ep={ep} but {model.name} is dense; allowed ep: 1")
    if model.is_moe and (ep > model.num_experts or model.num_experts % ep):
        raise SpecError(f"{where}: ep={ep} must divide the {model.num_experts} experts of {model.name}; "
                        f"allowed ep: {divisors(model.num_experts)}")
    if pp > model.num_layers:
        raise SpecError(f"{where}: pp={pp} exceeds the {model.num_layers} layers of {model.name}")
    if gpus % (tp * pp * ep):
        raise SpecError(f"{where}: tp*pp*ep = {tp * pp * ep} does not divide gpus={gpus}")
    want = gpus // (tp * pp * ep)
    if dp is not None and dp != want:
        raise SpecError(f"{where}: tp*pp*ep*dp = {tp * pp * ep * dp} but gpus={gpus}; dp must be {want}")
    return want


PARALLEL_FIELDS = ("tp", "pp", "ep", "dp", "adp")


def parallel_configs(model: Model, gpus: int, attention_dp: str = "ep") -> np.ndarray:
    """All legal (tp, pp, ep, dp, adp) rows with tp*pp*ep*dp == ``gpus``, as an int array [n, 5].

    ``attention_dp``: "ep" (adp = ep) or "all" (every divisor of tp * ep)."""
    if gpus < 1:
        raise SpecError(f"gpus must be at least 1, got {gpus}")
    if attention_dp not in ("ep", "all"):
        raise SpecError(f"attention_dp is '{attention_dp}'; allowed: ep, all")
    rows = []
    for tp in divisors(gpus):
        for ep in divisors(gpus // tp):
            if (not model.is_moe and ep > 1) or (model.is_moe and model.num_experts % ep):
                continue
            # attention-DP only pays off around experts; for a dense model it is plain DP
            for adp in (divisors(tp * ep) if attention_dp == "all" and model.is_moe else [ep]):
                if model.num_heads % (tp * ep // adp):
                    continue
                for pp in divisors(gpus // (tp * ep)):
                    if pp <= model.num_layers:
                        rows.append((tp, pp, ep, gpus // (tp * ep * pp), adp))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 5)


def to_layout(columns: dict[str, np.ndarray]) -> Layout:
    return Layout(*(np.asarray(columns[f], np.float32) for f in Layout._fields))


def expand(configs: np.ndarray, max_batch_per_config: np.ndarray, chunks, grid=BATCH_GRID) -> dict[str, np.ndarray]:
    """Cross each parallel config with the batch grid (adp ... its memory limit) and the chunk sizes.

    A config whose weights do not fit even at the smallest batch keeps one row, marked infeasible
    by the evaluator, so that the output says why it is absent from the frontier. (A chunk longer
    than the prompt still matters: the iteration packs several prompts.)"""
    chunks = sorted({int(c) for c in chunks})
    grid = np.asarray(grid)
    cols = {k: [] for k in Layout._fields}
    for (tp, pp, ep, dp, adp), bmax in zip(configs, max_batch_per_config):
        bs = grid[(grid >= adp) & (grid <= bmax)]
        if bs.size == 0:
            bs = np.asarray([max(adp, 1)])
        n = bs.size * len(chunks)
        for k, v in (("tp", tp), ("pp", pp), ("ep", ep), ("dp", dp), ("adp", adp)):
            cols[k].append(np.full(n, v))
        cols["batch"].append(np.repeat(bs, len(chunks)))
        cols["chunk"].append(np.tile(chunks, bs.size))
    return {k: np.concatenate(v).astype(np.float32) if v else np.zeros(0, np.float32) for k, v in cols.items()}
