"""Streamed sweeps: design spaces of any size in bounded memory.

A materialized sweep (:func:`sweep.run_sweep`) builds every layout as host arrays and copies every
result back, so its memory grows with the space. A streamed sweep never holds the space:

- The aggregated space is ``parallel configs x batches (adp ... memory limit) x chunk sizes``, in
  the order of :func:`layouts.expand`. Layout ``i`` is decoded on the device from its flat index: the
  config is the last one whose first row is at or before ``i`` (a search in the small table of
  per-config row offsets), the rest a mixed-radix decode into (batch slot, chunk). Legality lives in
  the config table; the memory limit in each config's batch count.
- Fixed-size chunks of indices are evaluated (``vmap`` of the serving model) and reduced as they
  go, inside one compiled loop over many chunks: the exact Pareto frontier (a running frontier of
  at most ``capacity`` rows merged with each chunk), the best ``top_k`` layouts at the SLA, counts
  (evaluated, feasible, meeting the SLA) and a 2-D histogram of (tokens/s/user, tokens/s/GPU) for the
  plot. Ties break by flat index, as in the materialized sweep, so both give the same frontier and pick.
- Several processes (``jax.distributed``) each take a contiguous share of the index space; their
  reductions are gathered and merged, which is exact because the frontier of a union is the frontier
  of its parts' frontiers.
- A hardware grid (:func:`explore`) evaluates each chunk for every hardware point at once (``vmap``
  over the hardware pytree) on the union of the points' spaces; a layout beyond one point's memory
  is infeasible there, so each point's frontier and pick are its own sweep's.

Search layer: no I/O and no wording (``report`` writes, ``cli`` parses).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from . import layouts as L
from .energy import Costs, load_costs
from .layouts import Layout
from .serving import evaluator
from .specs import HARDWARE_BY_KEY, HARDWARE_NUMBERS, Experiment, Hardware, SpecError
from .sweep import (
    PREFILL_UTILIZATIONS,
    SweepResult,
    cost_column,
    disagg_pools,
    disagg_rows,
    evaluate_layouts,
    experiment_params,
    max_batch,
    meets_sla,
    pareto_mask,
    run_disagg_sweep,
    run_sweep,
)
from .sweep import plan as sweep_plan

# A sweep larger than this many layouts is streamed by default (and writes its frontier, not every layout).
STREAM_THRESHOLD = 1_000_000
CHUNK = 65536                 # layouts per evaluated chunk
CHUNKS_PER_CALL = 16          # chunks per compiled call (the host reports progress between calls)
FRONTIER_CAPACITY = 1024      # rows of the running frontier (doubled and rerun if a frontier is longer)
TOP_K = 16                    # best layouts at the SLA kept
# Density plot: log10 ranges of tokens/s/user and tokens/s/GPU, clipped to the edge bins.
HIST_BINS = 160
HIST_RANGE = ((-1.0, 4.0), (-1.0, 5.0))
# Before the exact merge, candidates below a better point in a higher bin of this many (log10
# tokens/s/user over HIST_RANGE) are dropped; the merge sorts at most PREFILTER_SIZE survivors.
PREFILTER_BINS = 1024
PREFILTER_SIZE = 4096
# Flat indices are int32 on the device: a space longer than this is streamed in segments of configs.
SEGMENT_ROWS = 2 ** 30


# ----------------------------------------------------------------------------- the space

@dataclasses.dataclass(frozen=True)
class Space:
    """The aggregated design space of one budget as a table of parallel configs: config ``c`` owns
    ``rows[c] = nb[c] * len(chunks)`` consecutive flat indices from ``starts[c]``; its batches are
    ``grid[bfirst[c] : bfirst[c] + nb[c]]``, or the single batch ``adp`` when even the weights do not
    fit (``fallback``; :func:`layouts.expand` keeps that row so the output says why)."""
    configs: np.ndarray     # [n, 5] tp, pp, ep, dp, adp
    bfirst: np.ndarray
    nb: np.ndarray
    fallback: np.ndarray
    chunks: np.ndarray
    grid: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return self.nb.astype(np.int64) * len(self.chunks)

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.rows)[:-1]]).astype(np.int64)

    @property
    def total(self) -> int:
        return int(self.rows.sum())

    def decode(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Host decode of flat indices into layout columns (float32, as :func:`layouts.expand`)."""
        idx = np.asarray(idx, np.int64)
        c = np.searchsorted(self.starts, idx, side="right") - 1
        r = idx - self.starts[c]
        nch = len(self.chunks)
        j = r // nch
        cols = {k: self.configs[c, i].astype(np.float32) for i, k in enumerate(L.PARALLEL_FIELDS)}
        gi = np.minimum(self.bfirst[c] + j, len(self.grid) - 1)
        cols["batch"] = np.where(self.fallback[c], np.maximum(cols["adp"], 1), self.grid[gi]).astype(np.float32)
        cols["chunk"] = self.chunks[r % nch].astype(np.float32)
        return cols

    def padded(self, n: int) -> Space:
        """The same space with config rows appended that own no layouts (fixed shapes: one compile)."""
        k = n - len(self.configs)
        if k <= 0:
            return self
        z = np.zeros(k, np.int64)
        return Space(np.concatenate([self.configs, np.ones((k, 5), np.int64)]), np.concatenate([self.bfirst, z]),
                     np.concatenate([self.nb, z]), np.concatenate([self.fallback, z.astype(bool)]), self.chunks,
                     self.grid)


def space_of(configs: np.ndarray, bmax: np.ndarray, chunks: Sequence[int], grid=L.BATCH_GRID) -> Space:
    """The space :func:`layouts.expand` would build from the same arguments, as a config table."""
    grid = np.asarray(grid, np.int64)
    configs = np.asarray(configs, np.int64).reshape(-1, 5)
    adp = configs[:, 4]
    lo = np.searchsorted(grid, adp, side="left")
    hi = np.searchsorted(grid, np.asarray(bmax), side="right")
    nb = np.maximum(hi - lo, 0)
    fallback = nb == 0
    return Space(configs, lo.astype(np.int64), np.where(fallback, 1, nb).astype(np.int64), fallback,
                 np.asarray(sorted({int(c) for c in chunks}), np.int64), grid)


def aggregated_space(exp: Experiment, p, attention_dp: str = "ep", hardware: Sequence[Hardware] = ()) -> Space:
    """``exp``'s aggregated space (``run_sweep``'s, in its order). With ``hardware`` (a grid), the
    union of those points' spaces: each config's batches up to the largest memory limit among them."""
    model, prec, wl = exp.model, exp.precision, exp.workload
    configs = L.parallel_configs(model, exp.gpus, attention_dp)
    if len(configs) == 0:
        raise ValueError(f"no legal (tp, pp, ep, dp) for {model.name} on {exp.gpus} GPUs")
    bmax = np.zeros(len(configs), np.int64)
    for hw in hardware or (exp.hardware,):
        bmax = np.maximum(bmax, max_batch(p, hw, model, prec, wl, configs, float(max(exp.chunk_sizes)),
                                          exp.max_batch))
    return space_of(configs, bmax, exp.chunk_sizes)


def segments(space: Space, limit: int = SEGMENT_ROWS) -> list[tuple[int, int]]:
    """Contiguous config ranges ``[c0, c1)`` owning at most ``limit`` rows each (one range if it fits)."""
    out, c0, acc = [], 0, 0
    for c, r in enumerate(space.rows):
        if acc + r > limit and c > c0:
            out.append((c0, c))
            c0, acc = c, 0
        acc += int(r)
    out.append((c0, len(space.rows)))
    return out


# ----------------------------------------------------------------------------- the reductions

def _empty_rows(n: int, names: Sequence[str]) -> dict:
    rows = {k: jnp.zeros(n, jnp.float32) for k in names}
    rows["idx"] = jnp.zeros(n, jnp.int32)
    rows["valid"] = jnp.zeros(n, bool)
    return rows


def init_state(names: Sequence[str], capacity: int, top_k: int) -> dict:
    return {"front": _empty_rows(capacity, names), "top": _empty_rows(top_k, names),
            "overflow": jnp.zeros((), bool)}


def _take(rows: dict, order) -> dict:
    return {k: v[order] for k, v in rows.items()}


def prefilter_frontier(front: dict, cand: dict, capacity: int, size: int, bins: int = PREFILTER_BINS):
    """:func:`merge_frontier` after dropping the candidates surely dominated: a point whose
    tokens/s/GPU is below that of some point (kept or candidate) in a strictly higher bin of
    tokens/s/user (so strictly more tokens/s/user) is off the frontier. The survivors (usually a
    few per bin) are merged when at most ``size`` are left, else all candidates are: exact either way."""
    (u0, u1), _ = HIST_RANGE

    def user_bin(u):
        return jnp.clip(jnp.floor((jnp.log10(jnp.maximum(u, 1e-30)) - u0) / (u1 - u0) * bins), 0,
                        bins - 1).astype(jnp.int32)

    fu = jnp.where(front["valid"], front["tokens_per_s_per_user"], 0.0)
    fg = jnp.where(front["valid"], front["tokens_per_s_per_gpu"], -jnp.inf)
    cu = jnp.where(cand["valid"], cand["tokens_per_s_per_user"], 0.0)
    cg = jnp.where(cand["valid"], cand["tokens_per_s_per_gpu"], -jnp.inf)
    cb = user_bin(cu)
    best = jnp.full(bins, -jnp.inf, cg.dtype).at[user_bin(fu)].max(fg).at[cb].max(cg)
    above = jnp.concatenate([jax.lax.cummax(best[::-1])[::-1][1:], jnp.full(1, -jnp.inf, cg.dtype)])
    keep = cand["valid"] & (cg >= above[cb])
    count = keep.sum()

    def few(_):
        sel = jnp.nonzero(keep, size=size, fill_value=0)[0]
        sub = _take(cand, sel)
        sub["valid"] = keep[sel] & (jnp.arange(size) < count)
        return merge_frontier(front, sub, capacity)

    return jax.lax.cond(count <= size, few, lambda _: merge_frontier(front, cand, capacity), None)


def merge_frontier(front: dict, cand: dict, capacity: int):
    """Running frontier + candidates -> the frontier of both (``capacity`` rows, valid first) and
    whether it was longer than ``capacity``. Order: tokens/s/user descending, then tokens/s/GPU
    descending, then flat index; a point is on the frontier when its tokens/s/GPU beats every point
    before it (as :func:`sweep.pareto_mask`)."""
    rows = {k: jnp.concatenate([front[k], cand[k]]) for k in front}
    u = jnp.where(rows["valid"], rows["tokens_per_s_per_user"], -jnp.inf)
    g = jnp.where(rows["valid"], rows["tokens_per_s_per_gpu"], -jnp.inf)
    order = jnp.lexsort((rows["idx"], -g, -u))
    gs = g[order]
    before = jnp.concatenate([jnp.full(1, -jnp.inf, gs.dtype), jax.lax.cummax(gs)[:-1]])
    on = rows["valid"][order] & (gs > before)
    keep = jnp.argsort(~on, stable=True)[:capacity]
    out = _take(rows, order[keep])
    out["valid"] = on[keep]
    return out, on.sum() > capacity


def merge_top(top: dict, cand: dict, ok, k: int) -> dict:
    """Best ``k`` by tokens/s/GPU among the kept rows and the candidates meeting the SLA (``ok``);
    equal values keep the lower flat index (the kept rows precede the chunk)."""
    rows = {key: jnp.concatenate([top[key], cand[key]]) for key in top}
    valid = jnp.concatenate([top["valid"], ok])
    score = jnp.where(valid, rows["tokens_per_s_per_gpu"], -jnp.inf)
    _, pos = jax.lax.top_k(score, k)
    out = _take(rows, pos)
    out["valid"] = valid[pos]
    return out


def histogram(user, gpu, feasible, bins: int = HIST_BINS):
    """Counts of feasible points on a log10 grid of (tokens/s/user, tokens/s/GPU), int32 [bins, bins]."""
    (u0, u1), (g0, g1) = HIST_RANGE
    lu = jnp.log10(jnp.maximum(user, 1e-30))
    lg = jnp.log10(jnp.maximum(gpu, 1e-30))
    iu = jnp.clip(jnp.floor((lu - u0) / (u1 - u0) * bins), 0, bins - 1).astype(jnp.int32)
    ig = jnp.clip(jnp.floor((lg - g0) / (g1 - g0) * bins), 0, bins - 1).astype(jnp.int32)
    ok = feasible & jnp.isfinite(user) & jnp.isfinite(gpu)
    return jnp.zeros(bins * bins, jnp.int32).at[iu * bins + ig].add(ok.astype(jnp.int32)).reshape(bins, bins)


def reduce_chunk(state: dict, res: dict, idx, valid, sla, capacity: int, top_k: int, with_frontier: bool = True):
    """Fold one chunk's metrics into the running reductions; returns (state, counts int32[3], hist)."""
    feasible = valid & res["feasible"].astype(bool) & jnp.isfinite(res["tokens_per_s_per_gpu"])
    names = [k for k in state["front"] if k not in ("idx", "valid")]
    cand = {k: res[k].astype(jnp.float32) for k in names}
    cand["idx"] = idx
    cand["valid"] = feasible & jnp.isfinite(res["tokens_per_s_per_user"])
    min_user, max_ttft = sla
    ok = feasible & (res["tokens_per_s_per_user"] >= min_user) & (res["ttft_s"] <= max_ttft)
    state = dict(state)
    if with_frontier:
        size = min(PREFILTER_SIZE, len(idx) // 4)
        state["front"], over = (prefilter_frontier(state["front"], cand, capacity, size) if size >= 16 else
                                merge_frontier(state["front"], cand, capacity))
        state["overflow"] = state["overflow"] | over
    state["top"] = merge_top(state["top"], cand, ok, top_k)
    counts = jnp.stack([valid.sum(), feasible.sum(), ok.sum()]).astype(jnp.int32)
    hist = histogram(res["tokens_per_s_per_user"], res["tokens_per_s_per_gpu"], feasible)
    return state, counts, hist


# ----------------------------------------------------------------------------- the compiled stream

def _device_decode(tab: dict, idx, nch: int) -> Layout:
    c = jnp.searchsorted(tab["starts"], idx, side="right") - 1
    r = idx - tab["starts"][c]
    j = r // nch
    cfg = tab["configs"][c]
    gi = jnp.minimum(tab["bfirst"][c] + j, tab["grid"].shape[0] - 1)
    batch = jnp.where(tab["fallback"][c], jnp.maximum(cfg[:, 4], 1.0), tab["grid"][gi])
    return Layout(tp=cfg[:, 0], pp=cfg[:, 1], ep=cfg[:, 2], dp=cfg[:, 3], batch=batch,
                  chunk=tab["chunks"][r % nch], adp=cfg[:, 4])


def _table(space: Space, c0: int, c1: int) -> dict:
    """The space as device arrays; configs outside ``[c0, c1)`` own no index (their offsets are
    clipped to the ends of the segment's int32 index range)."""
    starts = space.starts - (space.starts[c0] if c0 < len(space.starts) else 0)
    starts = np.where(np.arange(len(starts)) < c0, 0, starts)
    starts = np.where(np.arange(len(starts)) >= c1, np.iinfo(np.int32).max, starts)
    return {"starts": jnp.asarray(starts.astype(np.int32)), "configs": jnp.asarray(space.configs, jnp.float32),
            "bfirst": jnp.asarray(space.bfirst, jnp.int32), "fallback": jnp.asarray(space.fallback),
            "chunks": jnp.asarray(space.chunks, jnp.float32), "grid": jnp.asarray(space.grid, jnp.float32)}


@functools.cache
def stream_fn(model, prec, metric_fn: Callable, nch: int, chunk: int, steps: int, capacity: int, top_k: int,
              hw_batched: bool, with_frontier: bool):
    """``f(state, params, hw, wl, table, sla, start, end) -> (state, counts, hist)``: ``steps`` chunks
    of ``chunk`` flat indices from ``start`` (those at or past ``end`` are masked), decoded, evaluated
    and reduced in one compiled loop. With ``hw_batched`` the hardware and the state carry a leading
    grid axis (one reduction per hardware point, the layouts shared)."""
    mesh = None
    if len(jax.local_devices()) > 1:
        mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), ("layouts",))

    def one(p, hw, wl, lay):
        return metric_fn(p, hw, model, prec, wl, lay)

    per_layout = jax.vmap(one, in_axes=(None, None, None, 0))

    def body(s, carry, p, hw, wl, tab, sla, start, end):
        state, counts, hist = carry
        idx = start + s * chunk + jnp.arange(chunk, dtype=jnp.int32)
        if mesh is not None:      # split each chunk over this process's devices
            idx = jax.lax.with_sharding_constraint(
                idx, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("layouts")))
        valid = idx < end
        lay = _device_decode(tab, jnp.minimum(idx, jnp.maximum(end - 1, 0)), nch)

        def red(st, h):
            res = per_layout(p, h, wl, lay)
            return reduce_chunk(st, res, idx, valid, sla, capacity, top_k, with_frontier)

        if hw_batched:
            state, c, hh = jax.vmap(red)(state, hw)
        else:
            state, c, hh = red(state, hw)
        return state, counts + c, hist + hh

    def run(state, p, hw, wl, tab, sla, start, end):
        lead = (jax.tree.leaves(hw)[0].shape[0],) if hw_batched else ()
        zero = (jnp.zeros(lead + (3,), jnp.int32), jnp.zeros(lead + (HIST_BINS, HIST_BINS), jnp.int32))
        return jax.lax.fori_loop(0, steps, lambda s, c: body(s, c, p, hw, wl, tab, sla, start, end),
                                 (state,) + zero)

    return jax.jit(run)


def metric_names(model, prec, metric_fn, p, hw, wl) -> list[str]:
    lay = Layout(*(jnp.ones((), jnp.float32) for _ in Layout._fields))
    shapes = jax.eval_shape(lambda: metric_fn(p, hw, model, prec, wl, lay))
    return sorted(shapes)


# ----------------------------------------------------------------------------- results

@dataclasses.dataclass
class StreamResult(SweepResult):
    """A streamed aggregated sweep: ``columns`` hold only the kept rows (the frontier, the best
    ``top_k`` at the SLA, any sample), ``frontier`` and ``best`` index them; ``counts`` and the
    density ``hist`` cover every layout of the space."""
    total: int = 0
    counts: dict = dataclasses.field(default_factory=dict)
    hist: np.ndarray | None = None
    hist_range: tuple = HIST_RANGE
    top: np.ndarray | None = None            # indices into columns of the best at the SLA, best first
    flat_index: np.ndarray | None = None     # each kept row's flat index in the space

    @property
    def n(self) -> int:
        return self.total

    @property
    def kept(self) -> int:
        return len(self.columns.get("tp", ()))

    def count(self, what: str, sla: tuple[float, float] = (0.0, 0.0)) -> int:
        """Over every layout of the space (``sla`` is the one the sweep ran with)."""
        return self.counts[what]


def _np_rows(state_part: dict) -> dict:
    return {k: np.asarray(v) for k, v in state_part.items()}


def finish(parts: Sequence[dict]) -> tuple[dict, dict, bool]:
    """Merge reductions of several segments or processes (numpy, in index order): (frontier rows by
    tokens/s/user ascending, top rows best first, overflow). Each part: {"front", "top", "overflow",
    "offset"} where offset (a Python int) is added to its flat indices."""
    def cat(key):
        rows = [_np_rows(pt[key]) for pt in parts]
        out = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        out["idx"] = np.concatenate([r["idx"].astype(np.int64) + pt["offset"] for r, pt in zip(rows, parts)])
        keep = out["valid"]
        out = {k: v[keep] for k, v in out.items()}
        order = np.argsort(out["idx"], kind="stable")
        return {k: v[order] for k, v in out.items()}

    front = cat("front")
    on = pareto_mask(front["tokens_per_s_per_user"], front["tokens_per_s_per_gpu"], np.ones(len(front["idx"]), bool))
    front = {k: v[on] for k, v in front.items()}
    order = np.argsort(front["tokens_per_s_per_user"], kind="stable")
    front = {k: v[order] for k, v in front.items()}
    top = cat("top")
    order = np.lexsort((top["idx"], -top["tokens_per_s_per_gpu"]))
    top = {k: v[order] for k, v in top.items()}
    return front, top, any(bool(np.asarray(pt["overflow"])) for pt in parts)


def process_share(total: int, index: int, count: int) -> tuple[int, int]:
    """Process ``index`` of ``count`` evaluates flat indices ``[lo, hi)``: contiguous, near-equal."""
    return total * index // count, total * (index + 1) // count


def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> tuple[int, int]:
    """Join a ``jax.distributed`` run (before any JAX computation): with no arguments the cluster
    (Slurm, Open MPI, TPU) says who is who; on CPUs the processes talk through Gloo. Returns
    (this process's index, the number of processes)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")    # CPU devices only; GPUs use NCCL
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return jax.process_index(), jax.process_count()


def _gather(tree):
    """All processes' copies of a host pytree, stacked on a new leading axis (one process: as is).
    Integers travel as two int32 halves (JAX without x64 has no int64), so counts stay exact."""
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: np.asarray(x)[None], tree)
    base = 1 << 30

    def split(x):
        x = np.asarray(x)
        return (x // base, x % base) if x.dtype.kind in "iu" else x

    def join(orig, got):
        if np.asarray(orig).dtype.kind in "iu":
            hi, lo = got
            return np.asarray(hi).astype(np.int64) * base + np.asarray(lo).astype(np.int64)
        return np.asarray(got)

    got = multihost_utils.process_allgather(jax.tree.map(split, tree))
    return jax.tree.map(join, tree, got, is_leaf=lambda x: isinstance(x, tuple))


_COMPILED: dict = {}


def _compiled(fn, *args):
    """``fn`` compiled ahead of time for these argument shapes, once per process (so the compile
    time is reported apart from the evaluation's)."""
    leaves, tree = jax.tree.flatten(args)
    key = (fn, tree, tuple((np.shape(x), str(getattr(x, "dtype", type(x).__name__)), getattr(x, "weak_type", None))
                           for x in leaves))
    if key not in _COMPILED:
        _COMPILED[key] = fn.lower(*args).compile()
    return _COMPILED[key]


def stream_space(space: Space, model, prec, metric_fn, p, hw, wl, sla: tuple[float, float], *,
                 chunk: int = CHUNK, steps: int = CHUNKS_PER_CALL, capacity: int = FRONTIER_CAPACITY,
                 top_k: int = TOP_K, hw_batched: bool = False, with_frontier: bool = True,
                 distributed: bool = False, progress: Callable | None = None, names: Sequence[str] | None = None,
                 segment_rows: int = SEGMENT_ROWS, pad_configs: int = 0):
    """Stream the whole ``space``; returns (parts for :func:`finish`, counts int64, hist int64,
    compile_s, evaluate_s). With ``distributed`` each process streams its share and the reductions
    of every process come back to each. ``progress(done, total, seconds)`` is called between calls."""
    names = list(names or metric_names(model, prec, metric_fn, p, jax.tree.map(lambda x: x[0], hw)
                                       if hw_batched else hw, wl))
    nproc, me = (jax.process_count(), jax.process_index()) if distributed else (1, 0)
    ndev = len(jax.local_devices())
    chunk = max(ndev, int(math.ceil(chunk / ndev)) * ndev)
    # small spaces: fewer, smaller calls (same shapes across the calls of one sweep)
    if not pad_configs:       # sized to this space; explore passes sizes shared by its budgets
        per_proc = max(1, -(-space.total // nproc))
        chunk = min(chunk, max(ndev, int(math.ceil(per_proc / ndev)) * ndev))
        steps = max(1, min(steps, -(-per_proc // chunk)))
    padded = space.padded(max(pad_configs, 1 << max(0, int(math.ceil(math.log2(max(len(space.configs), 1)))))))
    fn = stream_fn(model, prec, metric_fn, len(space.chunks), chunk, steps, capacity, top_k, hw_batched,
                   with_frontier)
    lead = (jax.tree.leaves(hw)[0].shape[0],) if hw_batched else ()
    sla_arr = (jnp.float32(sla[0]), jnp.float32(sla[1]))
    counts = np.zeros(lead + (3,), np.int64)
    hist = np.zeros(lead + (HIST_BINS, HIST_BINS), np.int64)
    parts, compile_s, t_eval, done, compiled = [], 0.0, 0.0, 0, None
    for c0, c1 in segments(space, segment_rows):
        offset = int(space.starts[c0])
        seg_total = int(space.rows[c0:c1].sum())
        lo, hi = process_share(seg_total, me, nproc)
        tab = _table(padded, c0, c1)
        state = init_state(names, capacity, top_k)
        if hw_batched:
            state = jax.tree.map(lambda x: jnp.broadcast_to(x, lead + x.shape), state)
        step = chunk * steps
        if compiled is None:
            t0 = time.perf_counter()
            compiled = _compiled(fn, state, p, hw, wl, tab, sla_arr, jnp.int32(0), jnp.int32(0))
            compile_s = time.perf_counter() - t0
        for s in range(lo, hi, step):
            t0 = time.perf_counter()
            state, c, h = compiled(state, p, hw, wl, tab, sla_arr, jnp.int32(s), jnp.int32(hi))
            c, h = np.asarray(c), np.asarray(h)     # waits for the call
            t_eval += time.perf_counter() - t0
            counts += c
            hist += h
            done += min(step, hi - s)
            if progress is not None:
                progress(min(done * nproc, space.total), space.total, t_eval)
        host = jax.tree.map(np.asarray, state)
        if distributed and nproc > 1:
            allst = _gather(host)
            for i in range(nproc):
                pt = jax.tree.map(lambda x, i=i: x[i], allst)
                parts.append({**pt, "offset": offset})
        else:
            parts.append({**host, "offset": offset})
    if distributed and nproc > 1:
        allc = _gather({"counts": counts, "hist": hist})
        counts, hist = allc["counts"].sum(0), allc["hist"].sum(0)
    return parts, counts, hist, compile_s, t_eval


def run_streamed(exp: Experiment, p=None, params_source: str = "", *, attention_dp: str = "ep",
                 chunk: int = CHUNK, capacity: int = FRONTIER_CAPACITY, top_k: int = TOP_K,
                 sample: int = 0, seed: int = 0, distributed: bool = False,
                 progress: Callable | None = None, segment_rows: int = SEGMENT_ROWS,
                 space: Space | None = None) -> StreamResult:
    """:func:`sweep.run_sweep` streamed: the same frontier and SLA pick in memory that does not grow
    with the space. ``columns`` hold the frontier rows, the best ``top_k`` at the SLA and, with
    ``sample``, that many layouts drawn uniformly (with replacement) from the space."""
    p, params_source = experiment_params(exp, p, params_source)
    model, hw, prec, wl = exp.model, exp.hardware, exp.precision, exp.workload
    space = space or aggregated_space(exp, p, attention_dp)
    fn = evaluator(exp.scheduler_name)
    sla = (exp.sla.min_tokens_per_user, exp.sla.max_ttft_s)
    while True:
        parts, counts, hist, compile_s, eval_s = stream_space(space, model, prec, fn, p, hw, wl, sla, chunk=chunk,
                                                              capacity=capacity, top_k=top_k,
                                                              distributed=distributed, progress=progress,
                                                              segment_rows=segment_rows)
        front, top, overflow = finish(parts)
        if not overflow:
            break
        capacity *= 4             # a frontier longer than the buffer: rerun exactly with a larger one
    rows = [front, top]
    if sample:
        idx = np.sort(np.random.default_rng(seed).integers(0, space.total, sample))
        cols = space.decode(idx)
        res = evaluate_layouts(p, hw, model, prec, wl, cols, metric_fn=fn)
        srows = {k: np.asarray(res[k], np.float32) for k in front if k in res}
        srows.update({k: cols[k] for k in Layout._fields})
        srows["idx"] = idx
        srows["valid"] = np.ones(len(idx), bool)
        rows.append(srows)
    return _result(space, rows, counts, hist, compile_s, eval_s, params_source, sla)


def _result(space: Space, rows: list[dict], counts, hist, compile_s, eval_s, params_source, sla) -> StreamResult:
    """Kept rows (deduplicated by flat index) as sweep columns; their frontier and pick indices."""
    idx = np.concatenate([r["idx"] for r in rows]).astype(np.int64)
    uniq, first = np.unique(idx, return_index=True)
    names = [k for k in rows[0] if k not in ("idx", "valid")]
    allrows = {k: np.concatenate([np.asarray(r[k]) for r in rows]) for k in names}
    cols = {k: v[first] for k, v in allrows.items()}
    lay = space.decode(uniq)
    columns = {k: lay[k].astype(np.int64) for k in Layout._fields}
    for k, v in cols.items():
        columns[k] = v.astype(bool) if k in ("feasible", "prefill_saturated") else v
    # only rows with a finite tokens/s/GPU count as feasible (as run_sweep)
    columns["feasible"] = columns["feasible"] & np.isfinite(columns["tokens_per_s_per_gpu"])
    pos = {int(i): j for j, i in enumerate(uniq)}
    front = np.asarray([pos[int(i)] for i in rows[0]["idx"]], np.int64)
    columns["on_frontier"] = np.isin(np.arange(len(uniq)), front)
    top = np.asarray([pos[int(i)] for i in rows[1]["idx"]], np.int64)
    best = int(top[0]) if len(top) and meets_sla(
        {k: columns[k][top[:1]] for k in ("feasible", "tokens_per_s_per_user", "ttft_s")}, *sla)[0] else None
    cnt = {"layouts": int(counts[0]), "feasible": int(counts[1]), "meeting_sla": int(counts[2]),
           "frontier": len(front), "kept_rows": len(uniq)}
    return StreamResult(columns, front, best, len(space.configs), compile_s, eval_s, params_source,
                        total=space.total, counts=cnt, hist=hist, top=top, flat_index=uniq)


# ----------------------------------------------------------------------------- disaggregated, on the host

class HostReducer:
    """The same reductions as :func:`reduce_chunk` over blocks of host columns (numpy), for spaces
    built on the host (the disaggregated pairing): running frontier, best ``top_k`` at the SLA,
    counts and the density histogram. Rows are numbered in the order they are added."""

    def __init__(self, sla: tuple[float, float], top_k: int = TOP_K):
        self.sla, self.top_k = sla, top_k
        self.front: dict | None = None
        self.top: dict | None = None
        self.counts = np.zeros(3, np.int64)
        self.hist = np.zeros((HIST_BINS, HIST_BINS), np.int64)
        self.n = 0

    def add(self, cols: dict[str, np.ndarray]) -> None:
        n = len(cols["tokens_per_s_per_gpu"])
        u, g = np.asarray(cols["tokens_per_s_per_user"], float), np.asarray(cols["tokens_per_s_per_gpu"], float)
        feas = np.asarray(cols["feasible"], bool) & np.isfinite(g)
        ok = meets_sla({**cols, "feasible": feas}, *self.sla)
        self.counts += [n, feas.sum(), ok.sum()]
        self.hist += np.asarray(histogram(u, g, feas))
        rows = {**cols, "idx": self.n + np.arange(n)}
        self.n += n
        cand = {k: v[feas & np.isfinite(u)] for k, v in rows.items()}
        both = cand if self.front is None else {k: np.concatenate([self.front[k], cand[k]]) for k in cand}
        keep = pareto_mask(both["tokens_per_s_per_user"], both["tokens_per_s_per_gpu"], np.ones(len(both["idx"]), bool))
        self.front = {k: v[keep] for k, v in both.items()}
        cand = {k: v[ok] for k, v in rows.items()}
        both = cand if self.top is None else {k: np.concatenate([self.top[k], cand[k]]) for k in cand}
        order = np.lexsort((both["idx"], -np.asarray(both["tokens_per_s_per_gpu"], float)))[: self.top_k]
        self.top = {k: v[order] for k, v in both.items()}


def run_disagg_streamed(exp: Experiment, p=None, params_source: str = "", *, block_rows: int = 1 << 22,
                        top_k: int = TOP_K, progress: Callable | None = None,
                        costs: Costs | None = None) -> StreamResult:
    """:func:`sweep.run_disagg_sweep` with the pairing streamed in blocks of worker pairs (at most
    about ``block_rows`` candidate deployments each) and reduced as it goes: the same frontier and
    pick, the deployments never all held. ``columns`` hold the frontier and the best ``top_k``."""
    p, params_source = experiment_params(exp, p, params_source)
    t0 = time.perf_counter()
    pools = disagg_pools(exp, p)
    red = HostReducer((exp.sla.min_tokens_per_user, exp.sla.max_ttft_s), top_k)
    npairs = len(pools.pairs)
    block = max(1, block_rows // (exp.gpus * len(PREFILL_UTILIZATIONS)))
    for s in range(0, npairs, block):
        red.add(disagg_rows(pools, slice(s, s + block), costs))
        if progress is not None:
            progress(min(s + block, npairs), npairs, time.perf_counter() - t0)
    if red.front is None or red.top is None:          # no pair at all: empty columns of the right names
        empty = {**disagg_rows(pools, slice(0, 0), costs), "idx": np.zeros(0, np.int64)}
        red.front = red.front if red.front is not None else empty
        red.top = red.top if red.top is not None else empty
    front, top = red.front, red.top
    keys = list(front)
    idx = np.concatenate([front.get("idx", np.zeros(0, int)), top.get("idx", np.zeros(0, int))])
    uniq, first = np.unique(idx, return_index=True)
    cols = {k: np.concatenate([front[k], top[k]])[first] for k in keys if k != "idx"} if keys else {}
    pos = {int(i): j for j, i in enumerate(uniq)}
    forder = np.argsort(front["tokens_per_s_per_user"], kind="stable") if keys else np.zeros(0, int)
    fpos = np.asarray([pos[int(i)] for i in front.get("idx", np.zeros(0, int))[forder]], np.int64)
    tpos = np.asarray([pos[int(i)] for i in top.get("idx", np.zeros(0, int))], np.int64)
    if cols:
        cols["on_frontier"] = np.isin(np.arange(len(uniq)), fpos)
    cnt = {"layouts": int(red.counts[0]), "feasible": int(red.counts[1]), "meeting_sla": int(red.counts[2]),
           "frontier": len(fpos), "kept_rows": len(uniq)}
    return StreamResult(cols, fpos, int(tpos[0]) if len(tpos) else None, len(pools.cfg), 0.0,
                        time.perf_counter() - t0, params_source, total=red.n, counts=cnt, hist=red.hist, top=tpos,
                        flat_index=uniq)


# ----------------------------------------------------------------------------- hardware grids

GRID_AXES = tuple(HARDWARE_NUMBERS) + ("gpus",)


def grid_axis(name: str) -> str | None:
    """The field of a grid axis given by field or hardware YAML key (``gpus`` as is), else None."""
    if name == "gpus":
        return name
    h = HARDWARE_NUMBERS.get(name) or HARDWARE_BY_KEY.get(name)
    return h.field if h else None


def parse_grid(items: Sequence[str] | Mapping[str, Sequence[float]], where: str = "--grid") -> dict[str, list]:
    """``NAME=V1,V2,...`` or ``NAME=START:STOP:COUNT`` (geometric from START to STOP, COUNT values)
    per axis; NAME is a hardware number (its field or YAML key, in the YAML key's units) or ``gpus``.
    Returns {field: values in YAML units}. A bad axis raises SpecError naming it."""
    out: dict[str, list] = {}
    pairs = items.items() if isinstance(items, Mapping) else [tuple(s.partition("=")[::2]) for s in items]
    for name, spec in pairs:
        h = HARDWARE_NUMBERS.get(name) or HARDWARE_BY_KEY.get(name)
        field = "gpus" if name == "gpus" else (h.field if h else None)
        if field is None:
            raise SpecError(f"{where}: unknown axis '{name}'; allowed: gpus, {', '.join(HARDWARE_NUMBERS)} "
                            f"(or their hardware YAML keys)")
        if field in out:
            raise SpecError(f"{where}: axis '{name}' given twice")
        try:
            rng = isinstance(spec, str) and ":" in spec
            if rng:
                a, b, n = spec.split(":")
                a, b, n = float(a), float(b), int(n)
            else:
                vals = [float(v) for v in (spec.split(",") if isinstance(spec, str) else spec) if str(v).strip()]
        except ValueError:
            raise SpecError(f"{where}: axis '{name}': '{spec}' is not V1,V2,... or START:STOP:COUNT") from None
        if rng:
            if n < 1:
                raise SpecError(f"{where}: axis '{name}': empty range '{spec}' (COUNT must be at least 1)")
            if a <= 0 or b <= 0:
                raise SpecError(f"{where}: axis '{name}': range '{spec}' must be positive")
            vals = list(np.geomspace(a, b, n)) if n > 1 else [a]
        if not vals:
            raise SpecError(f"{where}: axis '{name}': empty list of values")
        bad = [v for v in vals if not np.isfinite(v) or v <= 0]
        if bad:
            raise SpecError(f"{where}: axis '{name}': values must be positive, got {bad[0]:g}")
        integer = field == "gpus" or (h is not None and h.integer)
        if integer:
            if any(v != round(v) for v in vals):
                raise SpecError(f"{where}: axis '{name}': values must be whole numbers, got {spec}")
            vals = [int(round(v)) for v in vals]
        out[field] = vals
    if not out:
        raise SpecError(f"{where}: no axis given; e.g. hbm_bandwidth=4,8,16 gpus=64,128")
    return out


@dataclasses.dataclass
class ExploreResult:
    axes: dict[str, list]                # field -> values (YAML units; gpus as given)
    rows: list[dict]                     # one per grid point: its coordinates, counts, best at the SLA
    layouts: int                         # evaluated over the whole grid
    compile_s: float
    evaluate_s: float
    params_source: str


def explore(exp: Experiment, grid: Mapping[str, Sequence], p=None, params_source: str = "", *,
            attention_dp: str = "ep", chunk: int = CHUNK, distributed: bool = False,
            progress: Callable | None = None) -> ExploreResult:
    """Best tokens/s/GPU at the SLA, and its layout, for every point of ``grid`` (field -> values;
    hardware numbers in their YAML units, ``gpus`` a list of budgets): per budget one streamed sweep
    of the union space, every hardware point evaluated at once (``vmap`` over the hardware)."""
    p, params_source = experiment_params(exp, p, params_source)
    model, prec, wl = exp.model, exp.precision, exp.workload
    hw_axes = {k: v for k, v in grid.items() if k != "gpus"}
    budgets = list(grid.get("gpus", [exp.gpus]))
    combos = list(itertools.product(*hw_axes.values())) or [()]
    hws = [exp.hardware.replace(**{k: float(v) * HARDWARE_NUMBERS[k].scale for k, v in zip(hw_axes, c)})
           for c in combos]
    hw_b = jax.tree.map(lambda *xs: jnp.asarray(np.asarray(xs, np.float32)), *hws)
    fn = evaluator(exp.scheduler_name)
    sla = (exp.sla.min_tokens_per_user, exp.sla.max_ttft_s)
    rows, total, compile_s, eval_s = [], 0, 0.0, 0.0
    spaces = {}
    for g in budgets:
        try:
            spaces[g] = aggregated_space(dataclasses.replace(exp, gpus=int(g)), p, attention_dp, hws)
        except ValueError:
            spaces[g] = None
    # one compiled stream for every budget: shared chunk size, chunks per call and config table length
    sizes = [s.total for s in spaces.values() if s is not None] or [1]
    ndev = len(jax.local_devices())
    chunk = min(chunk, max(ndev, int(math.ceil(max(sizes) / ndev)) * ndev))
    steps = max(1, min(CHUNKS_PER_CALL, -(-max(sizes) // chunk)))
    pad = 1 << max(0, int(math.ceil(math.log2(max([len(s.configs) for s in spaces.values() if s is not None]
                                                      or [1])))))
    for g in budgets:
        space = spaces[g]
        if space is None:
            for c in combos:
                rows.append({**dict(zip(hw_axes, c)), "gpus": int(g), "layouts": 0, "feasible": 0,
                             "meeting_sla": 0, "best": None})
            continue
        parts, counts, _, cs, es = stream_space(space, model, prec, fn, p, hw_b, wl, sla, chunk=chunk, top_k=1,
                                                hw_batched=True, with_frontier=False, distributed=distributed,
                                                progress=progress, capacity=1, steps=steps, pad_configs=pad)
        compile_s, eval_s, total = compile_s + cs, eval_s + es, total + space.total * len(combos)
        for h, c in enumerate(combos):
            one = [{**{k: jax.tree.map(lambda x, h=h: x[h], pt[k]) for k in ("front", "top")},
                    "overflow": False, "offset": pt["offset"]} for pt in parts]
            _, top, _ = finish(one)
            best = None
            if len(top["idx"]):
                i = int(top["idx"][0])
                lay = space.decode(np.asarray([i]))
                best = {**{k: int(lay[k][0]) for k in Layout._fields},
                        **{k: float(top[k][0]) for k in top if k not in ("idx", "valid")}}
            rows.append({**dict(zip(hw_axes, c)), "gpus": int(g), "layouts": int(counts[h, 0]),
                         "feasible": int(counts[h, 1]), "meeting_sla": int(counts[h, 2]), "best": best})
    return ExploreResult({**hw_axes, "gpus": budgets}, rows, total, compile_s, eval_s, params_source)


# ----------------------------------------------------------------------------- what `jaxplan sweep` runs

WRITE_LAYOUTS = ("auto", "all", "frontier", "sample:N")


def parse_write_layouts(spec: str) -> tuple[str, int]:
    """``auto`` (every layout up to :data:`STREAM_THRESHOLD`, else streamed), ``all`` (materialized:
    every layout, whatever the size), ``frontier`` (streamed: the frontier and the best at the SLA)
    or ``sample:N`` (streamed, plus N layouts drawn uniformly). Returns (kind, N)."""
    kind, _, n = str(spec).partition(":")
    if kind in ("auto", "all", "frontier") and not n:
        return kind, 0
    if kind == "sample" and n.isdigit() and int(n) > 0:
        return kind, int(n)
    raise SpecError(f"--write-layouts '{spec}' is unknown; allowed: {', '.join(WRITE_LAYOUTS)} (N a positive "
                    f"whole number)")


def plan(exp: Experiment, p=None, params_source: str | None = None, *, serving: str = "agg",
         attention_dp: str = "ep", scales: dict[str, float] | None = None, compare: bool = False,
         write_layouts: str = "auto", distributed: bool = False, progress: bool | Callable | None = None,
         threshold: int = STREAM_THRESHOLD, objective: str = "throughput", costs=None):
    """:func:`sweep.plan` that streams where ``write_layouts`` asks for it (see
    :func:`parse_write_layouts`; ``auto`` streams a space above ``threshold`` layouts, and a
    disaggregated pairing above that many candidate deployments). ``distributed``: every process of
    a ``jax.distributed`` run streams its share (streamed sweeps only). ``progress``: a callback
    ``f(done, total, seconds)`` (``report.progress_printer``), or True for the materialized sweeps'
    own lines only. ``objective``, ``costs``: as :func:`sweep.plan`; a streamed sweep keeps its best
    layouts at the SLA by throughput, so it takes ``objective="throughput"`` only."""
    kind, n_sample = parse_write_layouts(write_layouts)
    p, params_source = experiment_params(exp, p, params_source)
    costs = load_costs(costs) if not isinstance(costs, Costs) else costs

    def streamed(what):
        if objective != "throughput":
            raise SpecError(f"--objective {objective}: {what} is streamed (more than {threshold:,} layouts, or "
                            f"--write-layouts frontier/sample, or --distributed), and a streamed sweep keeps its best "
                            f"layouts by throughput only; use --objective throughput, a smaller space, or "
                            f"--write-layouts all")
    tell = progress if callable(progress) else None
    said = bool(progress)

    def agg(e, q, src):
        space = aggregated_space(e, q, attention_dp) if kind != "all" else None
        if kind == "all" or (kind == "auto" and not distributed and space.total <= threshold):
            return run_sweep(e, q, params_source=src, attention_dp=attention_dp, progress=said, objective=objective,
                             costs=costs)
        streamed("the aggregated space")
        r = run_streamed(e, q, src, attention_dp=attention_dp, sample=n_sample, distributed=distributed,
                         progress=tell, space=space)
        if "busy_share" in r.columns:         # the kept rows priced like a materialized sweep's
            r.columns["usd_per_mtoken"] = cost_column(e.hardware, costs, r.columns["busy_share"],
                                                      r.columns["tokens_per_s_per_gpu"])
        return r

    def disagg(e, q, src):
        if kind == "all" or (kind == "auto" and e.gpus * len(PREFILL_UTILIZATIONS) * 64 <= threshold):
            return run_disagg_sweep(e, q, params_source=src, progress=said, objective=objective, costs=costs)
        streamed("the disaggregated pairing")
        return run_disagg_streamed(e, q, src, progress=tell, costs=costs)

    return sweep_plan(exp, p, params_source, serving=serving, attention_dp=attention_dp, scales=scales,
                             compare=compare, progress=said, runners={"agg": agg, "disagg": disagg},
                             objective=objective, costs=costs)
