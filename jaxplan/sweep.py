"""The batched evaluator: ``jit(vmap(evaluate))`` over fixed-size chunks of layouts, sharded over
all local devices; the Pareto frontier and the SLA pick."""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import layouts as L
from .cost import memory_per_gpu
from .serving import Layout, draft_layers, evaluate, evaluator_for
from .specs import Experiment, Hardware, Model, Precision, Workload

DEFAULT_CHUNK = 4096


@functools.lru_cache(maxsize=None)
def batched_evaluator(model: Model, prec: Precision, metric_fn: Callable = evaluate):
    """``f(params, hardware, workload, layouts) -> dict of arrays``, compiled once per array shape.

    Model and precision select code paths, so they are part of the cache key; params, hardware
    and workload are traced and can change without recompiling."""
    def one(p, hw, wl, lay):
        return metric_fn(p, hw, model, prec, wl, lay)
    return jax.jit(jax.vmap(one, in_axes=(None, None, None, 0)))


def _mesh():
    devs = jax.devices()
    return (Mesh(np.asarray(devs), ("layouts",)), len(devs)) if len(devs) > 1 else (None, 1)


def evaluate_layouts(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, cols: dict[str, np.ndarray],
                     chunk: int = DEFAULT_CHUNK, progress: bool = False, metric_fn=evaluate) -> dict[str, np.ndarray]:
    """Evaluate every layout in ``cols`` in fixed-size chunks; return numpy columns.

    The last chunk is padded by repeating its final layout, so every call has the same shape and
    the function compiles once. With several devices each chunk is split across them."""
    n = len(cols["tp"])
    fn = batched_evaluator(model, prec, metric_fn)
    mesh, ndev = _mesh()
    chunk = max(ndev, int(math.ceil(min(chunk, max(n, 1)) / ndev) * ndev))
    sharding = NamedSharding(mesh, PartitionSpec("layouts")) if mesh is not None else None
    out: dict[str, list] = {}
    starts = range(0, n, chunk)
    t0 = time.perf_counter()
    for i, s in enumerate(starts):
        idx = np.minimum(np.arange(s, s + chunk), n - 1)
        lay = Layout(*(jnp.asarray(cols[f][idx]) for f in Layout._fields))
        if sharding is not None:
            lay = jax.device_put(lay, sharding)
        res = jax.device_get(fn(p, hw, wl, lay))
        take = min(chunk, n - s)
        for k, v in res.items():
            out.setdefault(k, []).append(np.asarray(v)[:take])
        if progress and len(starts) > 1 and sys.stderr.isatty():
            done = min(n, s + chunk)
            rate = done / max(time.perf_counter() - t0, 1e-9)
            print(f"\r  evaluated {done:,}/{n:,} layouts ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)
    if progress and len(starts) > 1:
        dt = time.perf_counter() - t0
        print(f"\r  evaluated {n:,} layouts in {dt:.2f} s ({n / max(dt, 1e-9):,.0f}/s)", file=sys.stderr)
    return {k: np.concatenate(v) for k, v in out.items()}


def max_batch(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, configs: np.ndarray,
              chunk: float, cap: int) -> np.ndarray:
    """Largest batch per (tp, pp, ep, dp) whose memory fits: memory is affine in the batch, so two
    evaluations give the slope. Returns 0 where even the weights do not fit."""
    tp, pp, ep, adp = (jnp.asarray(configs[:, i], jnp.float32) for i in (0, 1, 2, 4))

    def mem(b):
        m = memory_per_gpu(p, hw, model, prec, wl.isl, wl.osl, tp, ep, adp, pp, b, chunk, draft_layers(wl))
        return np.asarray(m["total"]), float(m["capacity"])

    m0, cap_bytes = mem(0.0)
    m1, _ = mem(1.0)
    slope = np.maximum(m1 - m0, 1e-9)
    b = np.floor((cap_bytes - m0) / slope)
    return np.clip(b, 0, cap).astype(np.int64)


# ----------------------------------------------------------------------------- frontier and SLA

def pareto_mask(user: np.ndarray, gpu: np.ndarray, feasible: np.ndarray) -> np.ndarray:
    """Feasible points no other feasible point beats on both tokens/s/user and tokens/s/GPU."""
    mask = np.zeros(len(user), bool)
    idx = np.flatnonzero(feasible & np.isfinite(user) & np.isfinite(gpu))
    if idx.size == 0:
        return mask
    order = idx[np.lexsort((-gpu[idx], -user[idx]))]   # by user desc, then gpu desc
    best = -np.inf
    for i in order:
        if gpu[i] > best:
            mask[i] = True
            best = gpu[i]
    return mask


def meets_sla(res: dict[str, np.ndarray], min_tokens_per_user: float, max_ttft_s: float) -> np.ndarray:
    """Feasible layouts at or above the tokens/s/user floor and within the TTFT limit."""
    return (np.asarray(res["feasible"], bool) & (res["tokens_per_s_per_user"] >= min_tokens_per_user)
            & (res["ttft_s"] <= max_ttft_s))


def sla_pick(res: dict[str, np.ndarray], min_tokens_per_user: float, max_ttft_s: float) -> int | None:
    """Index of the highest tokens/s/GPU among feasible layouts meeting the SLA, or None."""
    ok = meets_sla(res, min_tokens_per_user, max_ttft_s)
    if not ok.any():
        return None
    gpu = np.where(ok, res["tokens_per_s_per_gpu"], -np.inf)
    return int(np.argmax(gpu))


# ----------------------------------------------------------------------------- a whole sweep

@dataclasses.dataclass
class SweepResult:
    columns: dict[str, np.ndarray]      # layout fields + metrics + on_frontier, one entry per layout
    frontier: np.ndarray                # indices on the frontier, by tokens/s/user ascending
    best: int | None                    # SLA pick
    num_parallel_configs: int
    compile_s: float
    evaluate_s: float
    params_source: str

    @property
    def n(self) -> int:
        return len(self.columns["tp"])

    def row(self, i: int) -> dict:
        return {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in self.columns.items()}


def run_sweep(exp: Experiment, p, params_source: str = "", chunk: int = DEFAULT_CHUNK,
              progress: bool = False, attention_dp: str = "ep") -> SweepResult:
    model, hw, prec, wl = exp.model, exp.hardware, exp.precision, exp.workload
    configs = L.parallel_configs(model, exp.gpus, attention_dp)
    if len(configs) == 0:
        raise ValueError(f"no legal (tp, pp, ep, dp) for {model.name} on {exp.gpus} GPUs")
    bmax = max_batch(p, hw, model, prec, wl, configs, float(max(exp.chunk_sizes)), exp.max_batch)
    cols = L.expand(configs, bmax, exp.chunk_sizes)
    n = len(cols["tp"])
    if progress:
        print(f"jaxplan: {len(configs)} parallel layouts x batches x {len(exp.chunk_sizes)}"
              f" chunk sizes = {n:,} layouts of {model.name} on {exp.gpus} x {hw.name}", file=sys.stderr)
    # Compile on one chunk first so the compile and evaluate times are reported apart.
    size = max(1, min(chunk, n))
    t0 = time.perf_counter()
    fn = evaluator_for(exp.scheduler_key)
    evaluate_layouts(p, hw, model, prec, wl, {k: v[:size] for k, v in cols.items()}, chunk=size, metric_fn=fn)
    t1 = time.perf_counter()
    res = evaluate_layouts(p, hw, model, prec, wl, cols, chunk=size, progress=progress, metric_fn=fn)
    t2 = time.perf_counter()
    res = {k: np.asarray(v) for k, v in res.items()}
    res["feasible"] = res["feasible"].astype(bool) & np.isfinite(res["tokens_per_s_per_gpu"])
    on = pareto_mask(res["tokens_per_s_per_user"], res["tokens_per_s_per_gpu"], res["feasible"])
    columns = {**{k: cols[k].astype(np.int64) for k in Layout._fields}, **res, "on_frontier": on}
    front = np.flatnonzero(on)
    front = front[np.argsort(res["tokens_per_s_per_user"][front])]
    best = sla_pick(res, exp.sla.min_tokens_per_user, exp.sla.max_ttft_s)
    return SweepResult(columns, front, best, len(configs), t1 - t0, t2 - t1, params_source)


def family_frontier(columns: dict[str, np.ndarray], **fixed) -> np.ndarray:
    """Frontier indices (by tokens/s/user ascending) among feasible layouts whose fields equal
    ``fixed`` (e.g. ``tp=4, ep=4, pp=4``): one parallel layout's best batch/chunk choices."""
    m = np.asarray(columns["feasible"], bool).copy()
    for k, v in fixed.items():
        m &= columns[k] == v
    u, g = columns["tokens_per_s_per_user"], columns["tokens_per_s_per_gpu"]
    idx = np.flatnonzero(pareto_mask(u, g, m))
    return idx[np.argsort(u[idx])]


def throughput_at(columns: dict[str, np.ndarray], frontier_idx: np.ndarray, tokens_per_user: float) -> float:
    """Best tokens/s/GPU on a frontier among points at or above ``tokens_per_user`` (0 if none)."""
    u, g = columns["tokens_per_s_per_user"][frontier_idx], columns["tokens_per_s_per_gpu"][frontier_idx]
    ok = u >= tokens_per_user
    return float(g[ok].max()) if ok.any() else 0.0


def interactivity_at(columns: dict[str, np.ndarray], frontier_idx: np.ndarray, tokens_per_gpu: float) -> float:
    """Best tokens/s/user on a frontier among points at or above ``tokens_per_gpu`` (0 if none)."""
    u, g = columns["tokens_per_s_per_user"][frontier_idx], columns["tokens_per_s_per_gpu"][frontier_idx]
    ok = g >= tokens_per_gpu
    return float(u[ok].max()) if ok.any() else 0.0


# ----------------------------------------------------------------------------- disaggregated sweep

PREFILL_UTILIZATIONS = (0.5, 0.7, 0.85, 0.95)   # prefill pool sizing targets tried per pairing


def _worker_configs(model: Model, gpus: int) -> np.ndarray:
    """Every legal single-worker layout (dp = 1) of any width that divides the budget."""
    rows = [L.parallel_configs(model, n, "all") for n in L.divisors(gpus)]
    rows = np.concatenate([r[r[:, 3] == 1] for r in rows if len(r)])
    return rows


def _pool_eval(fn, p, hw, model, prec, wl, cols, chunk=DEFAULT_CHUNK):
    return evaluate_layouts(p, hw, model, prec, wl, cols, chunk=chunk, metric_fn=fn)


def _pareto_by_size(a: np.ndarray, b: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Indices not dominated (both a and b maximized) among workers of the same GPU count: a wider
    worker may dominate per GPU yet not fit beside the other pool, so each width keeps its own."""
    keep = np.zeros(len(a), bool)
    for s in np.unique(size):
        m = size == s
        keep |= pareto_mask(a, b, m)
    return np.flatnonzero(keep)


def run_disagg_sweep(exp: Experiment, p, params_source: str = "", progress: bool = False) -> SweepResult:
    """Search prefill-pool and decode-pool layouts and their worker counts x:y within the budget.

    Each pool is evaluated on its own (vmapped); only Pareto-optimal workers go on to pairing
    (prefill: request rate per GPU vs prompt latency; decode: tokens/s/GPU vs tokens/s/user), which
    is exact for rate matching. For each pair and each decode worker count y, the prefill pool is
    sized to a target utilization, x = ceil(y * decode rate / (rho * prefill rate)), and kept if
    x and y workers fit the budget. Throughput per GPU counts the GPUs the deployment uses."""
    from .serving import decode_worker, disagg_pair, kv_transfer_time, prefill_worker, prefill_workers_needed

    model, hw, prec, wl, G = exp.model, exp.hardware, exp.precision, exp.workload, exp.gpus
    t0 = time.perf_counter()
    cfg = _worker_configs(model, G)
    # prefill candidates: configs x chunk sizes
    chunks = sorted({int(c) for c in exp.chunk_sizes})
    # each chunk twice: one prompt per iteration (latency) or as many as the chunk holds (throughput)
    pc = {k: np.repeat(cfg[:, i], 2 * len(chunks)).astype(np.float32) for i, k in enumerate(L.PARALLEL_FIELDS)}
    pc["chunk"] = np.tile(np.repeat(np.asarray(chunks, np.float32), 2), len(cfg))
    packed = np.tile(np.asarray([False, True]), len(cfg) * len(chunks))
    pc["batch"] = pc["adp"] * np.where(packed, np.maximum(1.0, np.floor(pc["chunk"] / float(wl.prompt_tokens))), 1.0)
    pres = _pool_eval(prefill_worker, p, hw, model, prec, wl, pc)
    gp = pc["tp"] * pc["ep"] * pc["pp"]
    ok = pres["feasible"].astype(bool)
    keep_p = np.flatnonzero(ok)[_pareto_by_size(pres["rate"][ok] / gp[ok], -pres["latency_s"][ok], gp[ok])]
    # decode candidates: configs x batches up to memory
    bmax = max_batch(p, hw, model, prec, wl, cfg, 0.0, exp.max_batch)
    dc = L.expand(cfg, bmax, [1])
    dc["chunk"] = np.zeros_like(dc["chunk"])
    dres = _pool_eval(decode_worker, p, hw, model, prec, wl, dc)
    gd = dc["tp"] * dc["ep"] * dc["pp"]
    ok = dres["feasible"].astype(bool)
    keep_d = np.flatnonzero(ok)[_pareto_by_size(dres["rate"][ok] * wl.osl / gd[ok], 1.0 / dres["tpot_s"][ok], gd[ok])]
    t1 = time.perf_counter()
    if progress:
        print(f"jaxplan: disaggregated: {len(pc['tp']):,} prefill and {len(dc['tp']):,} decode worker layouts; "
              f"pairing {len(keep_p)} x {len(keep_d)} Pareto-optimal workers", file=sys.stderr)
    # all pairs (i, j)
    I, J = np.meshgrid(keep_p, keep_d, indexing="ij")
    I, J = I.ravel(), J.ravel()
    pre_lay = Layout(*(jnp.asarray(pc[f][I]) for f in Layout._fields))
    dec_lay = Layout(*(jnp.asarray(dc[f][J]) for f in Layout._fields))
    kv = jax.jit(jax.vmap(lambda a, b, cross: kv_transfer_time(p, hw, model, prec, wl.isl, a, b, cross),
                          in_axes=(0, 0, None)))
    t_kv_nv, t_kv_net = np.asarray(kv(pre_lay, dec_lay, False)), np.asarray(kv(pre_lay, dec_lay, True))
    r_p, r_d = pres["rate"][I], dres["rate"][J]
    g_p, g_d = gp[I], gd[J]
    ys = np.arange(1, G + 1, dtype=np.float32)
    rhos = np.asarray(PREFILL_UTILIZATIONS, np.float32)
    pair, yy, rr = np.meshgrid(np.arange(len(I)), ys, rhos, indexing="ij")
    pair, yy, rr = pair.ravel(), yy.ravel(), rr.ravel()
    xx = prefill_workers_needed(yy, r_d[pair], r_p[pair], rr)
    used = xx * g_p[pair] + yy * g_d[pair]
    fit = used <= G
    pair, yy, xx, used = pair[fit], yy[fit], xx[fit], used[fit]
    # distinct (pair, x, y) only: several utilization targets can round to the same x
    uniq = np.unique(np.stack([pair, xx, yy], 1), axis=0)
    pair, xx, yy = uniq[:, 0].astype(np.int64), uniq[:, 1], uniq[:, 2]
    used = xx * g_p[pair] + yy * g_d[pair]
    cross = used > hw.scaleup_domain
    t_kv = np.where(cross, t_kv_net[pair], t_kv_nv[pair])
    i_p, i_d = I[pair], J[pair]
    m = {k: np.asarray(v) for k, v in disagg_pair(p, wl.osl, r_p[pair], pres["latency_s"][i_p], r_d[pair],
                                                   dres["tpot_s"][i_d], xx, yy, t_kv, used).items()}
    X, rho, ttft, tpot = m["requests_per_s"], m["prefill_utilization"], m["ttft_s"], m["tpot_s"]
    cols = {"mode": np.full(len(pair), "disagg", dtype=object),
            "tp": dc["tp"][i_d], "pp": dc["pp"][i_d], "ep": dc["ep"][i_d], "dp": yy, "adp": dc["adp"][i_d],
            "batch": dc["batch"][i_d], "chunk": pc["chunk"][i_p],
            "prefill_tp": pc["tp"][i_p], "prefill_pp": pc["pp"][i_p], "prefill_ep": pc["ep"][i_p],
            "prefill_adp": pc["adp"][i_p], "prefill_chunk": pc["chunk"][i_p], "prefill_batch": pc["batch"][i_p],
            "prefill_workers": xx,
            "decode_tp": dc["tp"][i_d], "decode_pp": dc["pp"][i_d], "decode_ep": dc["ep"][i_d],
            "decode_adp": dc["adp"][i_d], "decode_batch": dc["batch"][i_d], "decode_workers": yy,
            "gpus_used": used, "feasible": np.ones(len(pair), bool),
            "ttft_s": ttft, "tpot_s": tpot, "tokens_per_s_per_user": 1.0 / tpot,
            "tokens_per_s_per_gpu": m["tokens_per_s_per_gpu"], "requests_per_s": X,
            "memory_per_gpu_gb": np.maximum(pres["memory_per_gpu_gb"][i_p], dres["memory_per_gpu_gb"][i_d]),
            "kv_transfer_s": t_kv, "prefill_utilization": rho, "prefill_latency_s": pres["latency_s"][i_p]}
    for k in ("tp", "pp", "ep", "dp", "adp", "batch", "chunk", "prefill_tp", "prefill_pp", "prefill_ep",
              "prefill_adp", "prefill_chunk", "prefill_batch", "prefill_workers", "decode_tp", "decode_pp", "decode_ep",
              "decode_adp", "decode_batch", "decode_workers", "gpus_used"):
        cols[k] = np.asarray(cols[k]).astype(np.int64)
    on = pareto_mask(cols["tokens_per_s_per_user"], cols["tokens_per_s_per_gpu"], cols["feasible"])
    cols["on_frontier"] = on
    front = np.flatnonzero(on)
    front = front[np.argsort(cols["tokens_per_s_per_user"][front])]
    best = sla_pick(cols, exp.sla.min_tokens_per_user, exp.sla.max_ttft_s)
    t2 = time.perf_counter()
    return SweepResult(cols, front, best, len(cfg), 0.0, (t1 - t0) + (t2 - t1), params_source)
