"""An iteration-level discrete-event simulator of one aggregated deployment: the referee for
:mod:`jaxplan.openloop`'s analytical percentiles.

Requests arrive by the traffic (Poisson at a rate, a trace's timestamps, or a closed loop of
``batch`` clients per replica), with lengths drawn from it; the rate splits evenly over the ``dp``
replicas (each one simulated alone, every ``dp``-th request of the stream) and the attention-DP
groups of a replica are one engine. Each iteration of the engine:

- **KV admission**: a waiting request joins the running set while the set holds fewer than
  ``batch`` requests and the KV cache has room for its reservation of ``isl + osl / 2`` tokens
  (what ``serving.admitted_batch`` prices), out of ``admitted_batch * (E[isl] + E[osl] / 2)``.
- **Scheduling**: ``mixed``: every decoding request advances one token and up to ``chunk`` prompt
  tokens ride along (chunked prefill, FIFO over the prompts); ``prefill_first``: while prompt
  tokens wait, an iteration carries up to ``chunk`` of them and nothing else; ``wave``: a new wave
  is admitted only when the last has finished, prefilled first, then decoded together.
- **Step time**: the cost model's round time (``serving.round_time``) at that iteration's decoders
  and prompt tokens, evaluated once on a grid (every decode batch up to ``batch``, prompt tokens
  on a grid up to ``chunk``, linear between) and then looked up: the simulation is plain numpy.

A request's TTFT runs from its arrival to the end of the iteration that finishes its prompt, plus
the front end's ``request_overhead_s``; it then needs ``osl`` decode steps (speculative decoding:
``osl / tokens_per_step``), and its TPOT is their mean. The first ``WARMUP`` share of requests is
left out of the statistics (the queue starts empty).
"""
from __future__ import annotations

import dataclasses
import functools
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np

from .layouts import Layout
from .serving import admitted_batch, kv_transfer_time, round_time
from .specs import Experiment, SpecError
from .sweep import experiment_params

WARMUP = 0.1
PROMPT_GRID = 33                    # prompt-token levels of the step-time table (0 ... chunk)
MAX_ITERATIONS = 20_000_000


@dataclasses.dataclass
class SimResult:
    """Per-request columns (``arrival_s, isl, osl, queue_s, ttft_s, tpot_s, e2e_s``, after the
    warm-up) and a summary (means, P50/P90/P99, throughput)."""
    requests: dict[str, np.ndarray]
    summary: dict


@functools.cache
def _table_fn(model, prec):
    def one(p, hw, wl, lay, d, t):
        return round_time(p, hw, model, prec, wl, lay, d, t)
    return jax.jit(jax.vmap(one, in_axes=(None, None, None, None, 0, 0)))


def step_table(p, exp: Experiment, lay: Layout, max_dec: int):
    """(decoders grid, prompt-token grid, table[dec, tokens]) of round times of one replica."""
    dec = np.arange(max_dec + 1, dtype=np.float32)
    pre = np.linspace(0.0, float(lay.chunk) * float(lay.adp), PROMPT_GRID).astype(np.float32)
    D, P = np.meshgrid(dec, pre, indexing="ij")
    lay_j = Layout(*(jnp.float32(v) for v in lay))
    f = _table_fn(exp.model, exp.precision)
    tab = np.asarray(f(p, exp.hardware, exp.workload, lay_j, jnp.asarray(D.ravel()), jnp.asarray(P.ravel())))
    return dec, pre, tab.reshape(D.shape)


def _lookup(tab, pre_grid, d: int, tokens: float) -> float:
    if tokens <= 0:
        return float(tab[d, 0])
    step = pre_grid[1] - pre_grid[0]
    x = min(tokens / step, len(pre_grid) - 1.0)
    i = min(int(x), len(pre_grid) - 2)
    w = x - i
    row = tab[d]
    if tokens > 0 and i == 0 and w < 1.0:
        # below the first grid step: interpolate from a prompt of one grid step down to the
        # fixed cost of having any prompt tokens at all (launches), not to the decode-only time
        return float(row[1])
    return float(row[i] * (1 - w) + row[i + 1] * w)


def simulate(exp: Experiment, lay, p=None, *, n_requests: int = 2000, seed: int = 0, rate: float | None = None,
             scheduler: str | None = None) -> SimResult:
    """Simulate ``exp`` (its traffic, or Poisson at ``rate``) on the aggregated layout ``lay`` (a
    :class:`Layout` or a mapping of its fields) for ``n_requests`` requests per replica."""
    lay = Layout(*(float(v) for v in lay)) if isinstance(lay, Layout) else Layout(*(float(lay[f])
                                                                                     for f in Layout._fields))
    p, _ = experiment_params(exp, p)
    sched = scheduler or exp.scheduler_name
    if sched not in ("mixed", "prefill_first", "wave"):
        raise SpecError(f"scheduler '{sched}' is unknown; allowed: mixed, prefill_first, wave")
    traffic = exp.load if rate is None else exp.load.with_rate(rate)
    wl = exp.workload
    per_step = float(wl.tokens_per_step)
    batch = int(round(lay.batch))
    adm = float(admitted_batch(p, exp.hardware, exp.model, exp.precision, wl,
                               Layout(*(jnp.float32(v) for v in lay)))) * lay.adp
    kv_capacity = max(adm, 1.0) * (float(wl.isl) + float(wl.osl) / 2.0)
    _, pre_grid, tab = step_table(p, exp, lay, batch)
    rng = np.random.default_rng(seed)
    isl, osl = traffic.sample_lengths(rng, n_requests)
    hit = float(wl.prefix_hit)
    computed = np.maximum(np.round(isl * (1.0 - hit)), 1.0)          # prompt tokens prefill computes
    steps = np.maximum(np.round(osl / per_step), 1.0).astype(np.int64)
    closed = not traffic.open_loop
    if closed:
        arrivals = np.full(n_requests, np.inf)
        arrivals[:batch] = 0.0
    else:
        arrivals = traffic.arrival_times(rng, n_requests * int(lay.dp))[::int(lay.dp)][:n_requests]
    overhead = float(p["request_overhead_s"])
    chunk = float(lay.chunk) * float(lay.adp)
    start, prompt_end, end, arrivals = _engine(arrivals, computed, steps, isl + osl / 2.0, kv_capacity, batch, chunk,
                                               tab, pre_grid, sched, overhead if closed else None)
    first, done = prompt_end + overhead, end + overhead
    return _summary(arrivals, first, done, steps, per_step, start, isl, osl,
                    {"mode": "agg", "scheduler": sched, "load": traffic.describe(),
                     "rate_rps_per_replica": float(traffic.rate / lay.dp) if traffic.open_loop else None})


def _engine(arrivals, computed, steps, kv_need, kv_capacity, batch: int, chunk: float, tab, pre_grid, sched: str,
            reissue: float | None = None):
    """One engine, iteration by iteration (module docstring). ``computed``: prompt tokens per request
    (0: decode only, its KV cache arrives with it); ``steps``: decode steps (0: prefill only).
    ``reissue``: a closed loop, each completion sends the next request (the next entry of
    ``arrivals``, whose values are then overwritten) that many seconds later. Returns, per request,
    when its first prompt iteration started, when its prompt finished and when it finished, and
    the arrival times (a closed loop's as they happened)."""
    n = len(arrivals)
    arrivals = np.array(arrivals, np.float64)
    start, prompt_end, end = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    waiting: deque[int] = deque()
    prompts: deque[int] = deque()               # admitted, prompt not finished (FIFO)
    left = np.array(computed, np.float64)       # prompt tokens still to compute
    togo = np.array(steps, np.int64)
    decoding: list[int] = []
    kv_used = 0.0
    nxt, finished, t, it = 0, 0, 0.0, 0

    def finish(r, when):
        nonlocal kv_used, finished
        end[r] = when
        kv_used -= kv_need[r]
        finished += 1
        if reissue is not None and finished + batch <= n:
            arrivals[finished + batch - 1] = when + reissue

    def prompt_done(r, when):
        prompt_end[r] = when
        if togo[r] <= 0:
            finish(r, when)
        else:
            decoding.append(r)

    while finished < n:
        it += 1
        if it > MAX_ITERATIONS:
            raise SpecError("simulate: too many iterations; fewer requests (--requests) or a higher rate")
        while nxt < n and arrivals[nxt] <= t:
            waiting.append(nxt)
            nxt += 1
        running = len(prompts) + len(decoding)
        if sched != "wave" or running == 0:
            while waiting and running < batch:
                r = waiting[0]
                if kv_used + kv_need[r] > kv_capacity and running > 0:
                    break
                waiting.popleft()
                kv_used += kv_need[r]
                running += 1
                if left[r] <= 0:
                    start[r] = t
                    prompt_done(r, t)
                else:
                    prompts.append(r)
        if not prompts and not decoding:
            if nxt >= n or not np.isfinite(arrivals[nxt]):
                if finished >= n:
                    break
                raise SpecError("simulate: the engine stalled (a request larger than the KV cache?)")
            t = max(t, arrivals[nxt])
            continue
        budget, chunk_of = chunk, []
        for r in prompts:
            if budget <= 0:
                break
            take = min(left[r], budget)
            chunk_of.append((r, take))
            budget -= take
        tokens = chunk - budget
        dec_now = decoding if (sched == "mixed" or not chunk_of) else []
        dt = _lookup(tab, pre_grid, min(len(dec_now), tab.shape[0] - 1), tokens)
        for r, _ in chunk_of:
            if np.isnan(start[r]):
                start[r] = t
        t += dt
        for r, take in chunk_of:
            left[r] -= take
        for r in [r for r in prompts if left[r] <= 0]:
            prompts.remove(r)
            prompt_done(r, t)
        still = []
        for r in dec_now:
            togo[r] -= 1
            if togo[r] <= 0:
                finish(r, t)
            else:
                still.append(r)
        if dec_now:
            gone = set(dec_now)
            decoding[:] = still + [r for r in decoding if r not in gone]
    return start, prompt_end, end, arrivals


def _summary(arrivals, first, done, steps, per_step, start, isl, osl, extra: dict) -> SimResult:
    n = len(arrivals)
    lo = int(WARMUP * n)
    sel = slice(lo, n)
    ttft = first[sel] - arrivals[sel]
    tpot = (done[sel] - first[sel]) / np.maximum(steps[sel], 1) / per_step
    cols = {"arrival_s": arrivals[sel], "isl": isl[sel], "osl": osl[sel], "queue_s": start[sel] - arrivals[sel],
            "ttft_s": ttft, "tpot_s": tpot, "e2e_s": done[sel] - arrivals[sel]}
    span = np.nanmax(done[sel]) - np.nanmin(arrivals[sel])
    summary = dict(extra) | {"requests": int(n - lo), "ttft_s": float(np.mean(ttft)), "tpot_s": float(np.mean(tpot))}
    summary["throughput_rps"] = float((n - lo) / span) if span > 0 else None
    for q in (50, 90, 99):
        summary[f"ttft_p{q}_s"] = float(np.percentile(ttft, q))
        summary[f"tpot_p{q}_s"] = float(np.percentile(tpot, q))
    summary["queue_s"] = float(np.mean(cols["queue_s"]))
    return SimResult(cols, summary)


def simulate_disagg(exp: Experiment, pre, dec, x: int, y: int, p=None, *, n_requests: int = 2000, seed: int = 0,
                    rate: float | None = None, cross_network: bool | None = None) -> SimResult:
    """Simulate ``x`` prefill workers (layout ``pre``) and ``y`` decode workers (``dec``) under the
    traffic (or Poisson at ``rate``), ``n_requests`` requests in all. Each request goes to a prefill
    worker and a decode worker at random (what the analytical model's split of the rate assumes);
    a prefill worker packs waiting prompts up to its chunk per iteration, its step time the cost
    model's prompt-only round; the request's KV cache then moves to its decode worker
    (``serving.kv_transfer_time`` at its own prompt length, over the network when the deployment
    spans more than one scale-up domain unless ``cross_network`` says), which admits it when a
    slot and KV room are free and decodes it with the others. TTFT = arrival to the prompt's end
    + the transfer + the disaggregation and front-end overheads + any wait for a decode slot;
    TPOT = the decode time over the decode steps."""
    def as_layout(v):
        return Layout(*(float(t) for t in v)) if isinstance(v, Layout) else Layout(*(float(v[f])
                                                                                      for f in Layout._fields))
    pre, dec = as_layout(pre), as_layout(dec)
    p, _ = experiment_params(exp, p)
    traffic = exp.load if rate is None else exp.load.with_rate(rate)
    if not traffic.open_loop:
        raise SpecError("simulate_disagg needs an open loop: a rate (--rate R) or a trace")
    hw, model, prec, wl = exp.hardware, exp.model, exp.precision, exp.workload
    per_step = float(wl.tokens_per_step)
    rng = np.random.default_rng(seed)
    isl, osl = traffic.sample_lengths(rng, n_requests)
    computed = np.maximum(np.round(isl * (1.0 - float(wl.prefix_hit))), 1.0)
    steps = np.maximum(np.round(osl / per_step), 1.0).astype(np.int64)
    arrivals = traffic.arrival_times(rng, n_requests)
    to_pre, to_dec = rng.integers(0, x, n_requests), rng.integers(0, y, n_requests)
    gpus = x * pre.tp * pre.ep * pre.pp + y * dec.tp * dec.ep * dec.pp
    cross = gpus > hw.scale_up_domain if cross_network is None else cross_network
    pre_j, dec_j = Layout(*(jnp.float32(v) for v in pre)), Layout(*(jnp.float32(v) for v in dec))
    t_kv = np.asarray(jax.vmap(lambda s: kv_transfer_time(p, hw, model, prec, s, pre_j, dec_j, cross))(
        jnp.asarray(isl, jnp.float32)), np.float64)
    _, pre_grid, tab_p = step_table(p, exp, pre, 0)
    start, prompt_end = np.full(n_requests, np.nan), np.full(n_requests, np.nan)
    chunk = pre.chunk * pre.adp
    for w in range(x):
        idx = np.flatnonzero(to_pre == w)
        if idx.size:
            st, pe, _, _ = _engine(arrivals[idx], computed[idx], np.zeros(idx.size, np.int64), np.zeros(idx.size),
                                   np.inf, max(int(round(pre.batch)), 1), chunk, tab_p, pre_grid, "prefill_first")
            start[idx], prompt_end[idx] = st, pe
    ready = prompt_end + t_kv
    batch = int(round(dec.batch))
    adm = float(admitted_batch(p, hw, model, prec, wl, dec_j)) * dec.adp
    kv_capacity = max(adm, 1.0) * (float(wl.isl) + float(wl.osl) / 2.0)
    dec0 = dec._replace(chunk=1.0)
    _, dgrid, tab_d = step_table(p, exp, dec0, batch)
    admitted, end = np.full(n_requests, np.nan), np.full(n_requests, np.nan)
    for w in range(y):
        idx = np.flatnonzero(to_dec == w)
        if idx.size:
            order = idx[np.argsort(ready[idx], kind="stable")]
            _, pe, en, _ = _engine(ready[order], np.zeros(order.size), steps[order], (isl + osl / 2.0)[order],
                                   kv_capacity, batch, 0.0, tab_d, dgrid, "mixed")
            admitted[order], end[order] = pe, en
    fixed = float(p["disagg_overhead_s"]) + float(p["request_overhead_s"])
    first = admitted + fixed
    done = end + fixed
    return _summary(arrivals, first, done, steps, per_step, start, isl, osl,
                    {"mode": "disagg", "load": traffic.describe(), "prefill_workers": x, "decode_workers": y})

