"""The design space: every legal (TP, PP, EP, DP) for a GPU budget, times batch and chunk sizes,
held as one struct of arrays.

Legality (a layout that breaks one of these is never generated, and an explicit one is refused):
- ``tp * pp * ep * dp == gpus``;
- TP divides the query heads (KV heads are replicated once TP exceeds them);
- a dense model has EP 1; an MoE model's EP divides its routed experts;
- PP is at most the number of layers.
Batches run from EP (one request per attention-DP group) up to the largest that fits in memory.
"""
from __future__ import annotations

import numpy as np

from .serving import Layout
from .specs import Model, SpecError

# Requests in flight per replica: powers of two and the midpoints between them.
BATCH_GRID = tuple(sorted({2 ** i for i in range(14)} | {3 * 2 ** i for i in range(13)}))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_parallel(model: Model, gpus: int, tp: int, pp: int, ep: int, dp: int | None = None,
                   where: str = "layout") -> int:
    """Raise SpecError naming the offending value; return dp."""
    if gpus < 1:
        raise SpecError(f"{where}: gpus must be at least 1, got {gpus}")
    for name, v in (("tp", tp), ("pp", pp), ("ep", ep)):
        if v < 1:
            raise SpecError(f"{where}: {name} must be at least 1, got {v}")
    if model.num_heads % tp:
        ok = [t for t in divisors(model.num_heads) if t <= gpus]
        raise SpecError(f"{where}: tp={tp} does not divide the {model.num_heads} attention heads of "
                        f"{model.name}; allowed tp: {ok}")
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


def parallel_configs(model: Model, gpus: int) -> np.ndarray:
    """All legal (tp, pp, ep, dp) rows whose product is ``gpus``, as an int array [n, 4]."""
    if gpus < 1:
        raise SpecError(f"gpus must be at least 1, got {gpus}")
    rows = []
    for tp in divisors(gpus):
        if model.num_heads % tp:
            continue
        for ep in divisors(gpus // tp):
            if (not model.is_moe and ep > 1) or (model.is_moe and model.num_experts % ep):
                continue
            for pp in divisors(gpus // (tp * ep)):
                if pp <= model.num_layers:
                    rows.append((tp, pp, ep, gpus // (tp * ep * pp)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


def to_layout(columns: dict[str, np.ndarray]) -> Layout:
    return Layout(*(np.asarray(columns[f], np.float32) for f in Layout._fields))


def expand(configs: np.ndarray, max_batch_per_config: np.ndarray, chunks, isl: float,
           grid=BATCH_GRID) -> dict[str, np.ndarray]:
    """Cross each parallel config with the batch grid (EP ... its memory limit) and the chunk sizes.

    A config whose weights do not fit even at the smallest batch keeps one row, marked infeasible
    by the evaluator, so that the output says why it is absent from the frontier. Chunks longer than
    the prompt act as the whole prompt and are folded into it."""
    chunks = sorted({int(min(c, isl)) for c in chunks})
    grid = np.asarray(grid)
    cols = {k: [] for k in Layout._fields}
    for (tp, pp, ep, dp), bmax in zip(configs, max_batch_per_config):
        bs = grid[(grid >= ep) & (grid <= bmax)]
        if bs.size == 0:
            bs = np.asarray([max(ep, 1)])
        n = bs.size * len(chunks)
        for k, v in (("tp", tp), ("pp", pp), ("ep", ep), ("dp", dp)):
            cols[k].append(np.full(n, v))
        cols["batch"].append(np.repeat(bs, len(chunks)))
        cols["chunk"].append(np.tile(chunks, bs.size))
    return {k: np.concatenate(v).astype(np.float32) if v else np.zeros(0, np.float32) for k, v in cols.items()}
