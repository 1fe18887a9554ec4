"""The batched evaluator: ``jit(vmap(evaluate))`` over fixed-size chunks of layouts, sharded over
all local devices; the Pareto frontier and the SLA pick."""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import energy as E
from . import layouts as L
from .cost import max_batch_that_fits
from .layouts import Layout
from .params import params_for
from .serving import (
    decode_worker,
    disagg_pair,
    draft_layers,
    evaluate,
    evaluator,
    kv_transfer_time,
    prefill_worker,
    prefill_workers_needed,
)
from .specs import Experiment, Hardware, Model, Precision, SpecError, Workload, scale_hardware

DEFAULT_CHUNK = 4096

# ----------------------------------------------------------------------------- the result schema
# Every sweep returns columns (one entry per evaluated layout or deployment) by these names;
# layouts.csv and frontier.csv write them in this order.
METRIC_COLUMNS = ("feasible", "ttft_s", "tpot_s", "tokens_per_s_per_user", "tokens_per_s_per_gpu",
                  "memory_per_gpu_gb", "on_frontier", "requests_per_s", "decoding_requests", "admitted_requests",
                  "prefill_tokens_per_iter", "prefill_saturated", "chunk_iter_s", "decode_iter_s")
# Power, energy and cost per output token (energy.py; NaN where the hardware has no power block or
# the cost file no price for it).
ENERGY_COLUMNS = E.ENERGY_COLUMNS
AGG_COLUMNS = ("tp", "pp", "ep", "dp", "adp", "batch", "chunk") + METRIC_COLUMNS + ENERGY_COLUMNS
# A disaggregated deployment: its two worker layouts (Layout field -> column) and their counts.
PREFILL_COLUMNS = {"tp": "prefill_tp", "pp": "prefill_pp", "ep": "prefill_ep", "adp": "prefill_adp",
                   "chunk": "prefill_chunk", "batch": "prefill_batch"}
DECODE_COLUMNS = {"tp": "decode_tp", "pp": "decode_pp", "ep": "decode_ep", "adp": "decode_adp",
                  "batch": "decode_batch"}
# prefill_load_pct: 100 where the decode pool sets the rate; else the prefill pool does, planned at this load (%)
DISAGG_KEY = (*PREFILL_COLUMNS.values(), *DECODE_COLUMNS.values(), "prefill_workers", "decode_workers",
              "prefill_load_pct")
DISAGG_COLUMNS = ("mode",) + AGG_COLUMNS + (*PREFILL_COLUMNS.values(), "prefill_workers", *DECODE_COLUMNS.values(),
                                             "decode_workers", "gpus_used", "kv_transfer_s", "prefill_utilization",
                                             "prefill_latency_s", "prefill_load_pct")
INT_COLUMNS = frozenset(Layout._fields) | frozenset(DISAGG_KEY) | {"gpus_used"}


@functools.cache
def batched_evaluator(model: Model, prec: Precision, metric_fn: Callable = evaluate):
    """``f(params, hardware, workload, layouts) -> dict of arrays``, compiled once per array shape.

    Model and precision select code paths, so they are part of the cache key; params, hardware
    and workload are traced and can change without recompiling."""
    def one(p, hw, wl, lay):
        return metric_fn(p, hw, model, prec, wl, lay)
    return jax.jit(jax.vmap(one, in_axes=(None, None, None, 0)))


def _mesh():
    devs = jax.local_devices()   # this process's devices (all of them without jax.distributed)
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
    for s in starts:
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
    """Largest batch per (tp, pp, ep, dp) whose memory fits at full context
    (``cost.max_batch_that_fits``), at most ``cap``; 0 where even the weights do not fit."""
    tp, pp, ep, adp = (jnp.asarray(configs[:, i], jnp.float32) for i in (0, 1, 2, 4))
    b = max_batch_that_fits(p, hw, model, prec, wl.isl, wl.osl, tp, ep, adp, pp, chunk, draft_layers(wl))
    return np.clip(np.floor(np.asarray(b)), 0, cap).astype(np.int64)


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


def objective_score(res: dict[str, np.ndarray], objective: str = "throughput") -> np.ndarray:
    """Larger is better: tokens/s/GPU (``throughput``), minus $/Mtoken (``cost``) or minus J/token
    (``energy``); -inf where the value is not finite."""
    if objective not in E.OBJECTIVES:
        raise SpecError(f"--objective '{objective}' is unknown; allowed: {', '.join(E.OBJECTIVES)}")
    col, larger = E.OBJECTIVE_COLUMNS[objective]
    v = np.asarray(res[col], np.float64)
    v = v if larger else -v
    return np.where(np.isfinite(v), v, -np.inf)


def sla_pick(res: dict[str, np.ndarray], min_tokens_per_user: float, max_ttft_s: float,
             objective: str = "throughput") -> int | None:
    """Index of the best layout by ``objective`` (highest tokens/s/GPU, lowest $/Mtoken or lowest
    J/token) among feasible layouts meeting the SLA, or None."""
    ok = meets_sla(res, min_tokens_per_user, max_ttft_s)
    score = np.where(ok, objective_score(res, objective), -np.inf)
    if not ok.any() or not np.isfinite(score).any():
        return None
    return int(np.argmax(score))


def cost_column(hw: Hardware, costs: E.Costs | None, busy, tokens_per_s_per_gpu) -> np.ndarray:
    """$/Mtoken of each layout (``energy.usd_per_mtoken``), NaN where the cost file has no price for
    the hardware (or no cost file is given) or the hardware no power block."""
    n = np.shape(tokens_per_s_per_gpu)
    if costs is None or hw.name not in costs.gpus:
        return np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(E.usd_per_mtoken(costs, hw, np.asarray(busy, np.float64),
                                           np.asarray(tokens_per_s_per_gpu, np.float64)), np.float64)


def check_objective(objective: str, hw: Hardware, costs: E.Costs | None) -> None:
    """Refuse an objective the hardware's power block or the cost file cannot serve."""
    if objective not in E.OBJECTIVES:
        raise SpecError(f"--objective '{objective}' is unknown; allowed: {', '.join(E.OBJECTIVES)}")
    if objective in ("cost", "energy"):
        E.require_power(hw, f"--objective {objective}")
    if objective == "cost":
        if costs is None:
            raise SpecError("--objective cost needs a cost file (--costs FILE; default configs/tco/default.yaml)")
        costs.gpu(hw)



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
        """Layouts (deployments) evaluated."""
        return len(self.columns["tp"])

    @property
    def kept(self) -> int:
        """Rows held in ``columns``: every layout here; a streamed sweep keeps only some."""
        return len(self.columns.get("tp", ()))

    def count(self, what: str, sla: tuple[float, float]) -> int:
        """Layouts that are "feasible" or "meeting_sla" (``sla``: min tokens/s/user, max TTFT)."""
        if not self.kept:
            return 0
        return int(self.columns["feasible"].sum() if what == "feasible" else meets_sla(self.columns, *sla).sum())

    def row(self, i: int) -> dict:
        return {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in self.columns.items()}


def experiment_params(exp: Experiment, p=None, params_source: str | None = None):
    """``(params, source)``: ``p`` as given, else the experiment's (its ``params`` file, else its
    hardware's fitted profile, else the defaults) as its backend sees them: what the CLI uses."""
    if p is not None:
        return p, params_source or ""
    return params_for(exp.hardware.name, exp.params_file, exp.backend)


def aggregated_layouts(exp: Experiment, p, attention_dp: str = "ep") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The aggregated space of ``exp``: its legal (tp, pp, ep, dp, adp) configs and every layout,
    configs x batches up to what fits memory at the largest chunk x chunk sizes (``layouts.expand``)."""
    configs = L.parallel_configs(exp.model, exp.gpus, attention_dp)
    if len(configs) == 0:
        raise ValueError(f"no legal (tp, pp, ep, dp) for {exp.model.name} on {exp.gpus} GPUs")
    bmax = max_batch(p, exp.hardware, exp.model, exp.precision, exp.workload, configs, float(max(exp.chunk_sizes)),
                     exp.max_batch)
    return configs, L.expand(configs, bmax, exp.chunk_sizes)


def run_sweep(exp: Experiment, p=None, params_source: str = "", chunk: int = DEFAULT_CHUNK,
              progress: bool = False, attention_dp: str = "ep", objective: str = "throughput",
              costs: E.Costs | str | None = None) -> SweepResult:
    """Every aggregated layout of ``exp``: parallel configs x batches up to memory x chunk sizes.
    ``p``: parameters (default: :func:`experiment_params`, as the CLI). The SLA pick is the best by
    ``objective`` (``throughput``, ``cost``, ``energy``); ``costs``: a cost file or its path for the
    $/Mtoken column (default: ``configs/tco/default.yaml``)."""
    costs = E.load_costs(costs) if not isinstance(costs, E.Costs) else costs
    check_objective(objective, exp.hardware, costs)
    p, params_source = experiment_params(exp, p, params_source)
    model, hw, prec, wl = exp.model, exp.hardware, exp.precision, exp.workload
    configs, cols = aggregated_layouts(exp, p, attention_dp)
    n = len(cols["tp"])
    if progress:
        print(f"jaxplan: {len(configs)} parallel layouts x batches x {len(exp.chunk_sizes)}"
              f" chunk sizes = {n:,} layouts of {model.name} on {exp.gpus} x {hw.name}", file=sys.stderr)
    # Compile on one chunk first so the compile and evaluate times are reported apart.
    size = max(1, min(chunk, n))
    t0 = time.perf_counter()
    fn = evaluator(exp.scheduler_name)
    evaluate_layouts(p, hw, model, prec, wl, {k: v[:size] for k, v in cols.items()}, chunk=size, metric_fn=fn)
    t1 = time.perf_counter()
    res = evaluate_layouts(p, hw, model, prec, wl, cols, chunk=size, progress=progress, metric_fn=fn)
    t2 = time.perf_counter()
    res = {k: np.asarray(v) for k, v in res.items()}
    res["feasible"] = res["feasible"].astype(bool) & np.isfinite(res["tokens_per_s_per_gpu"])
    res["usd_per_mtoken"] = cost_column(hw, costs, res["busy_share"], res["tokens_per_s_per_gpu"])
    on = pareto_mask(res["tokens_per_s_per_user"], res["tokens_per_s_per_gpu"], res["feasible"])
    columns = {**{k: cols[k].astype(np.int64) for k in Layout._fields}, **res, "on_frontier": on}
    front = np.flatnonzero(on)
    front = front[np.argsort(res["tokens_per_s_per_user"][front])]
    best = sla_pick(res, exp.sla.min_tokens_per_user, exp.sla.max_ttft_s, objective)
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


def run_disagg_sweep(exp: Experiment, p=None, params_source: str = "", progress: bool = False,
                     objective: str = "throughput", costs: E.Costs | str | None = None) -> SweepResult:
    """Search prefill-pool and decode-pool layouts and their worker counts x:y within the budget.

    Each pool is evaluated on its own (vmapped); only Pareto-optimal workers go on to pairing
    (prefill: request rate per GPU vs prompt latency; decode: tokens/s/GPU vs tokens/s/user), which
    is exact for rate matching. For each pair and each decode worker count y, the prefill pool is
    sized to a target utilization, x = ceil(y * decode rate / (rho * prefill rate)), and kept if
    x and y workers fit the budget. Throughput per GPU counts the GPUs the deployment uses.
    ``p``: parameters (default: :func:`experiment_params`, as the CLI); ``objective``, ``costs``: as
    :func:`run_sweep` (power: the GPU-weighted busy share of both pools, ``energy.disagg_busy_share``)."""
    costs = E.load_costs(costs) if not isinstance(costs, E.Costs) else costs
    check_objective(objective, exp.hardware, costs)
    p, params_source = experiment_params(exp, p, params_source)
    t0 = time.perf_counter()
    pools = disagg_pools(exp, p, progress)
    t1 = time.perf_counter()
    cols = disagg_rows(pools, costs=costs)
    on = pareto_mask(cols["tokens_per_s_per_user"], cols["tokens_per_s_per_gpu"], cols["feasible"])
    cols["on_frontier"] = on
    front = np.flatnonzero(on)
    front = front[np.argsort(cols["tokens_per_s_per_user"][front])]
    best = sla_pick(cols, exp.sla.min_tokens_per_user, exp.sla.max_ttft_s, objective)
    t2 = time.perf_counter()
    return SweepResult(cols, front, best, len(pools.cfg), 0.0, (t1 - t0) + (t2 - t1), params_source)


@dataclasses.dataclass
class DisaggPools:
    """The disaggregated search before pairing: both pools' candidate workers, their metrics, and
    the Pareto-optimal (prefill, decode) pairs, ``pairs`` (n, 2) in pairing order."""
    exp: Experiment
    p: object
    cfg: np.ndarray
    pc: dict
    pres: dict
    dc: dict
    dres: dict
    pairs: np.ndarray
    t_kv: np.ndarray        # (n, 2): each pair's KV transfer time on NVLink and across the network


def disagg_pools(exp: Experiment, p, progress: bool = False) -> DisaggPools:
    """Evaluate the prefill and decode pools and keep their Pareto-optimal workers (see
    :func:`run_disagg_sweep`)."""
    model, hw, prec, wl, G = exp.model, exp.hardware, exp.precision, exp.workload, exp.gpus
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
    if progress:
        print(f"jaxplan: disaggregated: {len(pc['tp']):,} prefill and {len(dc['tp']):,} decode worker layouts; "
              f"pairing {len(keep_p)} x {len(keep_d)} Pareto-optimal workers", file=sys.stderr)
    # all pairs (i, j) and the KV transfer of each, within and across the NVLink domain
    pi, pj = np.meshgrid(keep_p, keep_d, indexing="ij")
    pi, pj = pi.ravel(), pj.ravel()
    pre_lay = Layout(*(jnp.asarray(pc[f][pi]) for f in Layout._fields))
    dec_lay = Layout(*(jnp.asarray(dc[f][pj]) for f in Layout._fields))
    kv = jax.jit(jax.vmap(lambda a, b, cross: kv_transfer_time(p, hw, model, prec, wl.isl, a, b, cross),
                          in_axes=(0, 0, None)))
    t_kv = np.stack([np.asarray(kv(pre_lay, dec_lay, False)), np.asarray(kv(pre_lay, dec_lay, True))], 1)
    return DisaggPools(exp, p, cfg, pc, pres, dc, dres, np.stack([pi, pj], 1), t_kv)


def disagg_rows(pools: DisaggPools, which: slice = slice(None), costs: E.Costs | None = None) -> dict[str, np.ndarray]:
    """The deployments of the pairs ``pools.pairs[which]``: for each, every decode worker count y
    with the prefill pool sized to each utilization target, within the budget; distinct (pair, x, y,
    planned prefill load) in that order. Columns as :data:`DISAGG_COLUMNS` less ``on_frontier``;
    ``costs`` prices ``usd_per_mtoken`` (NaN without it)."""
    exp, p, pc, pres, dc, dres = pools.exp, pools.p, pools.pc, pools.pres, pools.dc, pools.dres
    hw, wl, G = exp.hardware, exp.workload, exp.gpus
    gp = pc["tp"] * pc["ep"] * pc["pp"]
    gd = dc["tp"] * dc["ep"] * dc["pp"]
    pi, pj = pools.pairs[which, 0], pools.pairs[which, 1]
    t_kv_nv, t_kv_net = pools.t_kv[which, 0], pools.t_kv[which, 1]
    r_p, r_d = pres["rate"][pi], dres["rate"][pj]
    g_p, g_d = gp[pi], gd[pj]
    ys = np.arange(1, G + 1, dtype=np.float32)
    rhos = np.asarray(PREFILL_UTILIZATIONS, np.float32)
    pair, yy, rr = np.meshgrid(np.arange(len(pi)), ys, rhos, indexing="ij")
    pair, yy, rr = pair.ravel(), yy.ravel(), rr.ravel()
    xx = prefill_workers_needed(yy, r_d[pair], r_p[pair], rr)
    # Where the budget cannot hold the prefill workers rate matching asks for (prefill far slower
    # than decode, e.g. a one-token answer), the prefill pool takes every GPU the decode pool leaves
    # and sets the rate itself, planned at the target utilization (uu); elsewhere uu = 1 and the
    # decode pool sets the rate, as before.
    x_max = np.floor((G - yy * g_d[pair]) / g_p[pair])
    uu = np.where(xx > x_max, rr, np.float32(1.0))
    xx = np.minimum(xx, x_max)
    fit = xx >= 1
    pair, yy, xx, uu = pair[fit], yy[fit], xx[fit], uu[fit]
    # distinct (pair, x, y, u) only: several utilization targets can round to the same x
    uniq = np.unique(np.stack([pair, xx, yy, uu], 1), axis=0)
    pair, xx, yy, uu = uniq[:, 0].astype(np.int64), uniq[:, 1], uniq[:, 2], uniq[:, 3]
    used = xx * g_p[pair] + yy * g_d[pair]
    cross = used > hw.scale_up_domain
    t_kv = np.where(cross, t_kv_net[pair], t_kv_nv[pair])
    i_p, i_d = pi[pair], pj[pair]
    m = {k: np.asarray(v) for k, v in disagg_pair(p, wl.osl, r_p[pair], pres["latency_s"][i_p], r_d[pair],
                                                   dres["tpot_s"][i_d], xx, yy, t_kv, used,
                                                   np.round(100.0 * uu) / 100.0).items()}
    X, rho, ttft, tpot = m["requests_per_s"], m["prefill_utilization"], m["ttft_s"], m["tpot_s"]
    cols = {"mode": np.full(len(pair), "disagg", dtype=object),
            "tp": dc["tp"][i_d], "pp": dc["pp"][i_d], "ep": dc["ep"][i_d], "dp": yy, "adp": dc["adp"][i_d],
            "batch": dc["batch"][i_d], "chunk": pc["chunk"][i_p],
            **{col: pc[f][i_p] for f, col in PREFILL_COLUMNS.items()}, "prefill_workers": xx,
            **{col: dc[f][i_d] for f, col in DECODE_COLUMNS.items()}, "decode_workers": yy,
            "gpus_used": used, "feasible": np.ones(len(pair), bool),
            "ttft_s": ttft, "tpot_s": tpot, "tokens_per_s_per_user": 1.0 / tpot,
            "tokens_per_s_per_gpu": m["tokens_per_s_per_gpu"], "requests_per_s": X,
            "memory_per_gpu_gb": np.maximum(pres["memory_per_gpu_gb"][i_p], dres["memory_per_gpu_gb"][i_d]),
            "kv_transfer_s": t_kv, "prefill_utilization": rho, "prefill_latency_s": pres["latency_s"][i_p],
            "prefill_load_pct": np.round(100.0 * uu)}
    busy = E.disagg_busy_share(xx * g_p[pair], pres["busy_share"][i_p], rho, yy * g_d[pair], dres["busy_share"][i_d])
    cols |= {k: np.asarray(v) for k, v in E.power_metrics(hw, busy, cols["tokens_per_s_per_gpu"]).items()}
    cols["usd_per_mtoken"] = cost_column(hw, costs, busy, cols["tokens_per_s_per_gpu"])
    for k in INT_COLUMNS & set(cols):
        cols[k] = np.asarray(cols[k]).astype(np.int64)
    return cols


# ----------------------------------------------------------------------------- a plan: what `jaxplan sweep` does

SERVING_MODES = ("agg", "disagg", "both")


def merge_results(results: dict, objective: str = "throughput") -> tuple[dict, np.ndarray, int | None]:
    """One table of every mode's layouts (union of columns, None where a column does not apply),
    each mode's frontier, and the overall SLA pick (the best of the modes' picks by ``objective``)."""
    n = {m: r.kept for m, r in results.items()}
    total = sum(n.values())
    keys = []
    for r in results.values():
        keys += [k for k in r.columns if k not in keys]
    cols = {}
    for k in keys:
        parts = []
        for m, r in results.items():
            v = r.columns.get(k)
            parts.append(np.asarray(v, dtype=object) if v is not None else np.full(n[m], None, dtype=object))
        cols[k] = np.concatenate(parts) if parts else np.zeros(0)
    cols["mode"] = np.concatenate([np.full(n[m], m, dtype=object) for m in results])
    for k in ("feasible", "on_frontier"):
        cols[k] = cols[k].astype(bool)
    for k in ("tokens_per_s_per_user", "tokens_per_s_per_gpu", "ttft_s", "tpot_s", "memory_per_gpu_gb",
              *ENERGY_COLUMNS):
        if k in cols:
            cols[k] = cols[k].astype(np.float64)
    offsets = np.cumsum([0] + list(n.values()))[:-1]
    front = np.concatenate([r.frontier + o for r, o in zip(results.values(), offsets)]) if total else np.zeros(0, int)
    picks = [r.best + o for r, o in zip(results.values(), offsets) if r.best is not None]
    best = max(picks, key=lambda i: objective_score(cols, objective)[i]) if picks else None
    return cols, front.astype(int), best


def row(columns: dict, i: int) -> dict:
    """Row ``i`` of a sweep's columns as plain Python values."""
    return {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in columns.items()}


@dataclasses.dataclass
class Plan:
    """What ``jaxplan sweep`` computes: the sweeps of each serving mode, their merged table, the
    frontier and the SLA pick, and (with a what-if) the hardware as shipped for comparison."""
    experiment: Experiment                   # with any hardware scales applied
    base_experiment: Experiment              # as loaded
    serving: str
    params_source: str
    scales: dict[str, float]
    results: dict[str, SweepResult]          # by mode: "agg", "disagg"
    baseline: dict[str, SweepResult]         # the same sweeps on the unscaled hardware (compare)
    objective: str = "throughput"            # what the SLA pick maximizes (throughput) or minimizes
    costs: E.Costs | None = None             # the cost file behind usd_per_mtoken
    notes: dict = dataclasses.field(default_factory=dict)    # more summary.json keys (open loop: SLA, objective)
    extra_columns: tuple[str, ...] = ()      # columns written after the mode's own (open loop)

    def __post_init__(self):
        self.columns, self.frontier, self.best = merge_results(self.results, self.objective)

    @property
    def best_row(self) -> dict | None:
        return row(self.columns, self.best) if self.best is not None else None

    def summary(self) -> dict:
        """``summary.json``: the experiment, the SLA, counts, the pick, timings, per-mode picks."""
        exp, results, cols = self.experiment, self.results, self.columns
        wl = exp.workload
        sla = (exp.sla.min_tokens_per_user, exp.sla.max_ttft_s)
        evaluate_s = sum(r.evaluate_s for r in results.values())
        out = {
            "experiment": exp.name, "model": exp.model.name, "hardware": exp.hardware.name, "gpus": exp.gpus,
            "precision": exp.precision.name, "backend": exp.backend, "scheduler": exp.scheduler_name,
            "speculative": {"draft_tokens": wl.draft_tokens, "acceptance": wl.acceptance},
            "prefix_hit": wl.prefix_hit, "isl": wl.isl, "osl": wl.osl,
            "serving": self.serving, "hardware_scales": self.scales,
            "sla": {"min_tokens_per_s_per_user": exp.sla.min_tokens_per_user, "max_ttft_s": exp.sla.max_ttft_s},
            "load": exp.load.summary(),
            "params_source": self.params_source,
            "objective": self.objective,
            "costs": ({"file": self.costs.source, "currency": self.costs.currency} if self.costs else None),
            "power": {"source": exp.hardware.power_source, "tdp_w": exp.hardware.tdp,
                      "idle_share_of_tdp": exp.hardware.idle_share,
                      "system_power_per_gpu_w": exp.hardware.system_power, "pue": exp.hardware.pue},
            "counts": {"layouts": sum(r.n for r in results.values()),
                       "feasible": sum(r.count("feasible", sla) for r in results.values()),
                       "frontier": int(len(self.frontier)),
                       "meeting_sla": sum(r.count("meeting_sla", sla) for r in results.values()),
                       "rows_kept": int(len(cols.get("tokens_per_s_per_gpu", ())))},
            "best_at_sla": self.best_row,
            "seconds": {"compile": sum(r.compile_s for r in results.values()), "evaluate": evaluate_s},
            "layouts_per_second": sum(r.n for r in results.values()) / max(evaluate_s, 1e-9),
            "by_mode": {m: {"layouts": r.n, "parallel_layouts": r.num_parallel_configs,
                            "best_at_sla": r.row(r.best) if r.best is not None else None,
                            "seconds": {"compile": r.compile_s, "evaluate": r.evaluate_s}}
                        for m, r in results.items()},
        }
        if "agg" in results:
            out["counts"]["parallel_layouts"] = results["agg"].num_parallel_configs
        out.update(self.notes)
        if len(results) == 2 and all(r.best is not None for r in results.values()):
            out["disagg_over_agg_at_sla"] = (results["disagg"].row(results["disagg"].best)["tokens_per_s_per_gpu"]
                                             / results["agg"].row(results["agg"].best)["tokens_per_s_per_gpu"])
        if self.baseline:
            bcols, _, base_best = merge_results(self.baseline, self.objective)
            out["baseline_best_at_sla"] = row(bcols, base_best) if base_best is not None else None
            if base_best is not None and self.best is not None:
                out["whatif_over_baseline_at_sla"] = (self.best_row["tokens_per_s_per_gpu"]
                                                      / float(bcols["tokens_per_s_per_gpu"][base_best]))
        return out


def plan(exp: Experiment, p=None, params_source: str | None = None, *, serving: str = "agg",
         attention_dp: str = "ep", scales: dict[str, float] | None = None, compare: bool = False,
         progress: bool = False, objective: str = "throughput", costs: E.Costs | str | None = None,
         runners: dict[str, Callable] | None = None) -> Plan:
    """``jaxplan sweep`` as a library call: sweep ``exp`` in the serving mode(s) ``serving`` ("agg",
    "disagg" or "both") with its hardware numbers scaled by ``scales`` (a what-if), and, with
    ``compare``, also as shipped. ``p``: parameters (default: the hardware's fitted profile for the
    experiment's backend, as the CLI uses). The SLA pick is the best by ``objective``
    ("throughput": tokens/s/GPU, "cost": $/Mtoken, "energy": J/token); ``costs``: a cost file, its
    path or preset name (default: ``configs/tco/default.yaml``). ``runners``: mode ->
    ``f(exp, p, params_source)`` in place of the materialized sweeps (``stream.plan`` passes
    streamed ones)."""
    costs = E.load_costs(costs) if not isinstance(costs, E.Costs) else costs
    check_objective(objective, exp.hardware, costs)
    if serving not in SERVING_MODES:
        raise SpecError(f"serving mode '{serving}' is unknown; allowed: {', '.join(SERVING_MODES)}")
    scales = dict(scales or {})
    if compare and not scales:
        raise SpecError("--compare draws the baseline and the what-if frontiers: give at least one "
                        "--scale NAME=FACTOR, e.g. --scale hbm_bandwidth=2")
    p, params_source = experiment_params(exp, p, params_source)
    scaled = dataclasses.replace(exp, hardware=scale_hardware(exp.hardware, scales)) if scales else exp

    def sweeps(e):
        r = {}
        if serving in ("agg", "both"):
            r["agg"] = (runners["agg"](e, p, params_source) if runners and "agg" in runners else
                        run_sweep(e, p, params_source=params_source, progress=progress, attention_dp=attention_dp,
                                  objective=objective, costs=costs))
        if serving in ("disagg", "both"):
            r["disagg"] = (runners["disagg"](e, p, params_source) if runners and "disagg" in runners else
                           run_disagg_sweep(e, p, params_source=params_source, progress=progress,
                                            objective=objective, costs=costs))
        return r

    results = sweeps(scaled)
    baseline = sweeps(exp) if compare else {}
    return Plan(scaled, exp, serving, params_source, scales, results, baseline, objective, costs)
