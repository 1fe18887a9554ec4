"""Open-loop serving: one layout at a request rate, its stability, and the distribution of TTFT
and TPOT (mean, P50/P90/P99), from a queueing model of iteration-level scheduling.

The approximation, per attention group of a replica (the rate splits evenly over replicas and
groups), aggregated serving:

- **Decode batch by Little's law.** The mean number of decoding requests is ``d = lambda * osl *
  TPOT(d)`` (a fixed point, unrolled like the closed loop's), so TPOT grows with load. A decoding
  request shares its iterations with ``1 + d`` requests on average (itself and a Poisson number
  of others, as in M/G/inf); an arriving prompt's iteration carries no decoder with probability
  ``exp(-d)``.
- **Iterations.** Prompts arriving during one iteration are packed into the next, ``m = 1 + lambda *
  t_iter`` of them (at most ``floor(chunk / isl)``); ``n_c = lambda * isl / c`` prompt-carrying
  iterations run a second and take a share ``rho = n_c * t_chunk`` of the time: the prefill
  utilization. ``mixed``: every iteration advances the decoders, TPOT = 1 / (iterations per
  second) = ``1 / (n_c + (1 - rho) / t_plain)``; ``prefill_first`` (and ``wave``, which an open
  loop of staggered arrivals turns into prefill-first): the decoders sit out prompt iterations,
  TPOT = ``t_plain / (1 - rho)``.
- **Prefill as a queue.** A prompt's service is its share of prompt-carrying iterations, ``S = isl *
  t_chunk / c``; its wait is Kingman's G/G/1 formula ``W = rho / (1 - rho) * E[S] * (ca^2 + cs^2) /
  2``, with ``ca^2`` the arrivals' squared coefficient of variation (1: Poisson) and ``cs^2`` the
  prompt length's (``Workload.isl_cv2``). For Poisson arrivals this is the Pollaczek-Khinchine
  mean (M/G/1) exactly: M/D/1 for fixed lengths, M/M/1 for exponential ones.
- **Admission.** A request holds one of the ``B`` KV slots of its group (the batch, or what the
  KV cache admits) from arrival of its prompt to its last token; waiting for a slot is M/G/B,
  priced with Sakasegawa's M/M/c approximation ``Lq = u^sqrt(2(B + 1)) / (1 - u)`` scaled by
  Allen-Cunneen's ``(ca^2 + cs^2) / 2`` (``cs^2``: the output length's).
- **The iteration in flight.** An arrival that finds decoders running but no prompt in service
  waits for the iteration in flight to end: half a decode iteration on average, with the
  probability ``1 - exp(-L)`` that its group holds any request (``L`` requests on average, Poisson
  as in M/G/inf) less the ``rho`` already counted in the prefill queue.
- **Distributions.** A wait is 0 with probability ``1 - pi`` and else exponential with mean
  ``W / pi`` (``pi``: the probability of waiting, ``rho`` for the prefill queue): exact for M/M/1,
  and the heavy-traffic limit of G/G/1 (Kingman). TTFT adds the unqueued prefill of a prompt of
  each of the traffic's quantile lengths; its percentiles are found by bisection on that CDF.
  TPOT varies between requests because the decode batch does: over a request's life the number
  of decoders is the time average of an M/G/inf count over one service time, mean ``d`` and
  variance ``2 d / 3``; and because the number of prompt iterations it sits through is a Poisson
  count (mean ``n_c * osl * TPOT``), each adding ``t_chunk - t_plain`` (mixed) or ``t_chunk``
  (prefill-first). Both taken as normal, linearised: TPOT_q = TPOT + z_q * sd.
- **Stability.** Stable when the rate is below what the layout sustains: the closed-loop
  evaluator's request rate at its full batch (``serving.evaluate``) and both queues' utilizations
  below one. Unstable layouts report infinite latencies.

Where it breaks: near saturation (``rho`` or ``u`` above ~0.9) the means follow 1 / (1 - rho) but
the percentiles rest on the exponential tail; with few requests in flight (``d`` below ~2) the
normal TPOT spread is crude; bursty traces (``ca^2`` >> 1) are only as good as Kingman's formula;
one chunk's prompts are priced at the mean chunk iteration whatever their length; attention-DP
groups are assumed to receive equal shares; the wave scheduler's lock step does not survive
staggered arrivals and is priced as prefill-first. :mod:`jaxplan.simulate` is the referee
(``benchmarks/openloop_vs_sim.md``).

Everything is ``jnp`` and traced: vmap over layouts (and rates), differentiate with respect to
params, hardware, workload and the rate.
"""
from __future__ import annotations

import functools
import math
from statistics import NormalDist
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .layouts import Layout
from .serving import (
    FIXED_POINT_STEPS,
    admitted_batch,
    decode_worker,
    evaluate,
    kv_transfer_time,
    prefill_worker,
    prompt_iteration_decoders,
    round_time,
)
from .specs import Hardware, Model, Precision, SpecError, Workload, scheduler_for
from .traffic import QUANTILE_POINTS, Traffic, check_percentile, check_share

PERCENTILES = (50.0, 90.0, 99.0)
BISECTION_STEPS = 40
RHO_MAX = 0.999                 # utilizations are clipped here inside formulas (stability is reported apart)
GOODPUT_STEPS = 14              # bisection steps on the rate for goodput (2^-14 of the sustainable rate)
DEFAULT_GOODPUT_SHARE = 0.9


class Load(NamedTuple):
    """The traced description of an open loop: total ``rate`` (requests/s to the deployment), the
    arrivals' squared coefficient of variation ``arrival_cv2``, the output length's ``osl_cv2``,
    and ``isl_rel``: the prompt length's equal-probability quantile points over its mean."""
    rate: jax.Array
    arrival_cv2: jax.Array
    osl_cv2: jax.Array
    isl_rel: jax.Array


def load_of(traffic: Traffic, rate: float | None = None) -> Load:
    """The :class:`Load` of ``traffic`` at its rate (or ``rate``)."""
    r = traffic.rate if rate is None else rate
    if not r or r <= 0:
        raise SpecError("an open-loop evaluation needs a request rate: give --rate R, or traffic: load: "
                        "{kind: poisson, rate_rps: R} or a trace")
    o1, o2 = traffic.osl.moments()
    q = traffic.isl.quantiles(QUANTILE_POINTS)
    return Load(jnp.float32(r), jnp.float32(traffic.arrival_cv2), jnp.float32(max(o2 / (o1 * o1) - 1.0, 0.0)),
                jnp.asarray(q / traffic.isl.moments()[0], jnp.float32))


def _safe_div(a, b):
    ok = b > 0
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), jnp.inf)


def kingman_wait(rho, mean_service, ca2, cs2):
    """Mean wait in a G/G/1 queue (Kingman): ``rho / (1 - rho) * E[S] * (ca^2 + cs^2) / 2``; exact
    for M/G/1 (``ca^2 = 1``: Pollaczek-Khinchine), so M/D/1 with ``cs^2 = 0``, M/M/1 with 1."""
    r = jnp.clip(rho, 0.0, RHO_MAX)
    return r / (1.0 - r) * mean_service * (ca2 + cs2) / 2.0


def slot_wait(u, servers, holding, ca2, cs2):
    """Mean wait for one of ``servers`` slots each held ``holding`` s at utilization ``u``:
    Sakasegawa's M/M/c queue length ``u^sqrt(2(c + 1)) / (1 - u)`` over the arrival rate, times
    Allen-Cunneen's ``(ca^2 + cs^2) / 2``. Returns (wait, probability of waiting)."""
    u = jnp.clip(u, 1e-9, RHO_MAX)
    p_wait = u ** (jnp.sqrt(2.0 * (servers + 1.0)) - 1.0)
    lq = p_wait * u / (1.0 - u)
    rate = u * servers / holding
    return lq / rate * (ca2 + cs2) / 2.0, p_wait


def wait_quantile_cdf(t, offsets, pi, wait):
    """P(TTFT <= t) when TTFT = offset_k (equally likely) + a wait that is 0 with probability
    ``1 - pi`` and else exponential with mean ``wait / pi``."""
    x = t - offsets
    tail = pi * jnp.exp(-jnp.maximum(x, 0.0) * _safe_div(pi, wait))
    return jnp.mean(jnp.where(x >= 0, 1.0 - tail, 0.0))


def quantile(q, offsets, pi, wait):
    """The ``q`` quantile (0 < q < 1) of :func:`wait_quantile_cdf`, by bisection, with the
    derivative of the root (implicit function theorem; where the quantile sits on an atom,
    the atom's derivative)."""
    sg = jax.lax.stop_gradient
    so, spi, sw = sg(offsets), sg(pi), sg(wait)
    lo = jnp.min(so)
    tail_mean = jnp.where(spi > 0, sw / jnp.maximum(spi, 1e-30), 0.0)
    hi = jnp.max(so) + tail_mean * jnp.log(jnp.maximum(spi / (1.0 - q), 1.0)) + 1e-9

    def body(_, b):
        a, c = b
        mid = 0.5 * (a + c)
        below = wait_quantile_cdf(mid, so, spi, sw) < q
        return jnp.where(below, mid, a), jnp.where(below, c, mid)

    a, c = jax.lax.fori_loop(0, BISECTION_STEPS, body, (lo, hi))
    t0 = c
    # the atom just at or below t0 (an unqueued request of one of the quantile lengths)
    gap = jnp.where(so <= t0, t0 - so, jnp.inf)
    k = jnp.argmin(gap)
    at_atom = gap[k] <= 1e-5 * (hi - lo) + 1e-12
    atom = offsets[k] + (t0 - so[k])
    f = wait_quantile_cdf(t0, offsets, pi, wait)
    dfdt = jnp.mean(jnp.where(t0 >= so, spi * _safe_div(spi, sw) * jnp.exp(-(t0 - so) * _safe_div(spi, sw)), 0.0))
    implicit = t0 - (f - sg(f)) / jnp.where(dfdt > 0, dfdt, 1.0)
    return jnp.where(at_atom, atom, implicit)


def _z(q: float) -> float:
    return NormalDist().inv_cdf(q / 100.0)


def _tpot_spread(tpot_at, d):
    """(mean TPOT, TPOT one standard deviation of the decode batch above ``d``): the decoders a
    request sees over its life average an M/G/inf count over one service time, variance 2d/3."""
    sd = jnp.sqrt(2.0 * jnp.maximum(d, 0.0) / 3.0)
    t = tpot_at(d)
    return t, tpot_at(d + sd) - t


def _distributions(out: dict, offsets, pi, wait, tpot, dtpot, percentiles, stable) -> dict:
    """Mean and percentiles of TTFT and TPOT into ``out`` (infinite where unstable)."""
    inf = jnp.float32(jnp.inf)
    out["ttft_s"] = jnp.where(stable, jnp.mean(offsets) + wait, inf)
    out["tpot_s"] = jnp.where(stable, tpot, inf)
    qs = jnp.asarray([q / 100.0 for q in percentiles], jnp.float32)
    ttft_q = jax.vmap(quantile, in_axes=(0, None, None, None))(qs, offsets, pi, wait)   # one bisection loop
    for i, q in enumerate(percentiles):
        tag = f"p{q:g}"
        out[f"ttft_{tag}_s"] = jnp.where(stable, ttft_q[i], inf)
        out[f"tpot_{tag}_s"] = jnp.where(stable, jnp.maximum(tpot + _z(q) * dtpot, 0.0), inf)
    out["tokens_per_s_per_user"] = jnp.where(stable, 1.0 / tpot, 0.0)
    return out


def attainment(m: dict, max_ttft_s, max_tpot_s):
    """Share of requests meeting both ``TTFT <= max_ttft_s`` and ``TPOT <= max_tpot_s`` (taken as
    independent), from :func:`evaluate`'s ``_ttft_cdf``-style parts carried in ``m``."""
    f_ttft = wait_quantile_cdf(max_ttft_s, m["_offsets"], m["_pi"], m["_wait"])
    f_tpot = jax.scipy.stats.norm.cdf(_safe_div(max_tpot_s - m["tpot_mean_raw"], m["_dtpot"]))
    f_tpot = jnp.where(m["_dtpot"] > 0, f_tpot, (m["tpot_mean_raw"] <= max_tpot_s).astype(jnp.float32))
    return jnp.where(m["stable"], f_ttft * f_tpot, 0.0)


def evaluate_open(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, load: Load, lay: Layout,
                  scheduler: str = "mixed", percentiles=PERCENTILES, closed: dict | None = None) -> dict:
    """Open-loop metrics of one aggregated layout at ``load.rate`` requests/s (module docstring).
    ``closed``: the layout's :func:`serving.evaluate` metrics if already at hand."""
    closed = evaluate(p, hw, model, prec, wl, lay, scheduler) if closed is None else closed
    per_step = wl.tokens_per_step
    isl, osl, g = wl.prompt_tokens, wl.osl / per_step, lay.adp
    lam = load.rate / (lay.dp * g)                         # requests/s per attention group
    Br = jnp.minimum(lay.batch / g, admitted_batch(p, hw, model, prec, wl, lay))
    m_max = jnp.clip(jnp.floor(lay.chunk / isl), 1.0, jnp.maximum(Br, 1.0))
    n_iter = jnp.maximum(isl / lay.chunk, 1.0)
    mixed = scheduler == "mixed"

    def times(d):
        # A decoding request shares its iterations with itself and the others in decode: Poisson
        # with mean d as in M/G/inf, so 1 + d on average (the size-biased count), at most the batch.
        seen = jnp.minimum(1.0 + d, jnp.maximum(Br, 1.0))
        t_plain = round_time(p, hw, model, prec, wl, lay, g * seen, 0.0)
        m = jnp.clip(1.0 + lam * t_plain, 1.0, m_max)     # the prompt and those arriving during an iteration
        c = jnp.minimum(lay.chunk, m * isl)
        t_chunk = round_time(p, hw, model, prec, wl, lay, prompt_iteration_decoders(scheduler, g * seen), g * c)
        if mixed:
            # what an arriving prompt's iteration carries: no decoder with probability exp(-d), else
            # d / (1 - exp(-d)) of them on average
            p_o = 1.0 - jnp.exp(-d)
            t_alone = round_time(p, hw, model, prec, wl, lay, jnp.zeros_like(d), g * c)
            t_with = round_time(p, hw, model, prec, wl, lay, g * d / jnp.where(p_o > 0, p_o, 1.0), g * c)
            t_prompt = (1.0 - p_o) * t_alone + p_o * t_with
        else:
            t_prompt = t_chunk
        n_c = lam * isl / c                                # prompt-carrying iterations per second
        rho = n_c * t_chunk
        r = jnp.clip(rho, 0.0, RHO_MAX)
        tpot = 1.0 / (n_c + (1.0 - r) / t_plain) if mixed else t_plain / (1.0 - r)
        return tpot, t_plain, t_prompt, c, rho, t_chunk, n_c

    def step(_, carry):
        d = carry[0]
        tpot = times(d)[0]
        return jnp.minimum(lam * osl * tpot, Br), d

    d0 = jnp.minimum(lam * osl * times(jnp.zeros_like(lam))[0], Br)
    d = jax.lax.fori_loop(0, FIXED_POINT_STEPS, step, (d0, d0))[0]
    tpot, t_plain, t_chunk, c, rho, t_chunk_dec, n_c = times(d)
    demand = lam * osl * tpot                              # decoders Little's law asks for
    s_mean = isl * t_chunk / c                             # a prompt's share of prompt iterations
    rho = lam * s_mean                                     # the prefill queue's utilization
    w_p = kingman_wait(rho, s_mean, load.arrival_cv2, wl.isl_cv2)
    ttft0 = p["request_overhead_s"] + n_iter * t_chunk
    holding = ttft0 + w_p + osl * tpot
    u = lam * holding / Br
    w_a, p_a = slot_wait(u, Br, holding, load.arrival_cv2, load.osl_cv2)
    in_system = lam * holding
    p_busy = 1.0 - jnp.exp(-in_system)
    residual = jnp.maximum(p_busy - jnp.clip(rho, 0.0, 1.0), 0.0) * t_plain / 2.0
    wait = w_p + w_a
    pi = 1.0 - (1.0 - jnp.clip(rho, 0.0, 1.0)) * (1.0 - p_a)
    # unqueued TTFT of a prompt at each quantile length
    offsets = (p["request_overhead_s"] + residual
               + jnp.maximum(isl * load.isl_rel / lay.chunk, 1.0) * t_chunk)
    stable = (load.rate < closed["requests_per_s"]) & (rho < 1.0) & (u < 1.0) & (demand <= Br)

    def tpot_at(dd):
        return times(jnp.minimum(dd, Br))[0] / per_step
    tpot_m, dtpot = _tpot_spread(tpot_at, d)
    # ... and because the prompt iterations a request sits through over its osl steps are a Poisson
    # count (mean n_c * osl * TPOT), each adding (mixed) t_chunk - t_plain or (prefill-first) t_chunk
    extra = t_chunk_dec - t_plain if mixed else t_chunk_dec
    var_k = n_c * tpot * extra * extra / osl / (per_step * per_step)
    dtpot = jnp.sqrt(dtpot * dtpot + var_k + 1e-30)
    gpus = lay.tp * lay.ep * lay.pp * lay.dp
    out = {"rate_rps": load.rate, "sustainable_rps": closed["requests_per_s"],
           "utilization": load.rate / closed["requests_per_s"], "stable": stable,
           "prefill_utilization": rho, "prefill_service_s": s_mean, "slot_utilization": u,
           "decoding_requests": g * d, "decode_demand": g * demand,
           "requests_in_flight": g * lay.dp * in_system, "prefill_wait_s": w_p, "admission_wait_s": w_a,
           "iteration_wait_s": residual, "unqueued_ttft_s": jnp.mean(offsets),
           "tokens_per_s_per_gpu": jnp.where(stable, load.rate * wl.osl / gpus, 0.0),
           "memory_per_gpu_gb": closed["memory_per_gpu_gb"], "feasible": closed["feasible"],
           "tpot_mean_raw": tpot_m, "_offsets": offsets, "_pi": pi, "_wait": wait, "_dtpot": dtpot}
    return _distributions(out, offsets, pi, wait, tpot_m, dtpot, percentiles, stable)


def evaluate_disagg_open(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, load: Load, pre: Layout,
                         dec: Layout, x, y, cross_network, percentiles=PERCENTILES) -> dict:
    """Open-loop metrics of ``x`` prefill and ``y`` decode workers at ``load.rate``: each prefill
    worker a G/G/1 queue (Kingman) at its share of the rate with service 1 / its request rate,
    the prompt's prefill latency, the KV-cache transfer and the fixed overheads; the decode
    workers' batch by Little's law, their TPOT the decode round at that batch, waiting for a KV
    slot priced as in :func:`evaluate_open` (counted into TTFT)."""
    per_step = wl.tokens_per_step
    osl = wl.osl / per_step
    pw = prefill_worker(p, hw, model, prec, wl, pre)
    dw = decode_worker(p, hw, model, prec, wl, dec)
    t_kv = kv_transfer_time(p, hw, model, prec, wl.isl, pre, dec, cross_network)
    rho = load.rate / (x * pw["rate"])
    w_p = kingman_wait(rho, 1.0 / pw["rate"], load.arrival_cv2, wl.isl_cv2)
    Br = jnp.minimum(dec.batch, admitted_batch(p, hw, model, prec, wl, dec) * dec.adp)
    lam = load.rate / y

    def tpot_at(b):
        b = jnp.clip(b, 1e-3, Br)
        return round_time(p, hw, model, prec, wl, dec._replace(batch=b), b, jnp.float32(0.0))

    def step(_, carry):
        b = carry[0]
        return jnp.minimum(lam * osl * tpot_at(b), Br), b

    b0 = jnp.minimum(lam * osl * tpot_at(jnp.ones_like(lam)), Br)
    b = jax.lax.fori_loop(0, FIXED_POINT_STEPS, step, (b0, b0))[0]
    tpot = tpot_at(b)
    demand = lam * osl * tpot
    holding = osl * tpot
    u = lam * holding / Br
    w_a, p_a = slot_wait(u, Br, holding, load.arrival_cv2, load.osl_cv2)
    wait = w_p + w_a
    pi = 1.0 - (1.0 - jnp.clip(rho, 0.0, 1.0)) * (1.0 - p_a)
    fixed = t_kv + p["disagg_overhead_s"] + p["request_overhead_s"]
    isl = wl.prompt_tokens
    offsets = fixed + jnp.maximum(isl * load.isl_rel / pre.chunk, 1.0) * pw["iter_s"]
    sustainable = jnp.minimum(x * pw["rate"], y * dw["rate"])
    stable = (load.rate < sustainable) & (rho < 1.0) & (u < 1.0) & (demand <= Br)
    tpot_m, dtpot = _tpot_spread(lambda bb: tpot_at(bb) / per_step, b)
    gpus = x * pre.tp * pre.ep * pre.pp + y * dec.tp * dec.ep * dec.pp
    out = {"rate_rps": load.rate, "sustainable_rps": sustainable, "utilization": load.rate / sustainable,
           "stable": stable, "prefill_utilization": rho, "prefill_service_s": 1.0 / pw["rate"],
           "slot_utilization": u, "decoding_requests": b, "decode_demand": demand,
           "requests_in_flight": load.rate * (jnp.mean(offsets) + wait + osl * tpot),
           "prefill_wait_s": w_p, "admission_wait_s": w_a, "iteration_wait_s": jnp.zeros_like(w_p),
           "unqueued_ttft_s": jnp.mean(offsets), "kv_transfer_s": t_kv,
           "tokens_per_s_per_gpu": jnp.where(stable, load.rate * wl.osl / gpus, 0.0),
           "tpot_mean_raw": tpot_m, "_offsets": offsets, "_pi": pi, "_wait": wait, "_dtpot": dtpot}
    return _distributions(out, offsets, pi, wait, tpot_m, dtpot, percentiles, stable)


# ----------------------------------------------------------------------------- SLAs on percentiles, goodput

class PercentileSLA(NamedTuple):
    """Limits on percentiles: ``ttft`` and ``tpot`` are tuples of (percentile, seconds); ``share``:
    the share of requests that must meet both limits for goodput."""
    ttft: tuple[tuple[float, float], ...] = ()
    tpot: tuple[tuple[float, float], ...] = ()
    share: float = DEFAULT_GOODPUT_SHARE

    @property
    def percentiles(self) -> tuple[float, ...]:
        return tuple(sorted({*PERCENTILES, *(q for q, _ in self.ttft), *(q for q, _ in self.tpot)}))

    def limits(self) -> tuple[float, float]:
        """The strictest TTFT and TPOT limits (seconds; inf where none): what 'meeting the SLO'
        means for one request, in goodput."""
        return (min((s for _, s in self.ttft), default=math.inf), min((s for _, s in self.tpot), default=math.inf))

    def describe(self) -> str:
        parts = [f"P{q:g} TTFT <= {s:g} s" for q, s in self.ttft] + [f"P{q:g} TPOT <= {s * 1e3:g} ms"
                                                                    for q, s in self.tpot]
        return ", ".join(parts) or "none"

    def is_empty(self) -> bool:
        return not self.ttft and not self.tpot


def percentile_sla(ttft: dict | None = None, tpot: dict | None = None,
                   share: float = DEFAULT_GOODPUT_SHARE) -> PercentileSLA:
    """A :class:`PercentileSLA` from ``{percentile: seconds}`` limits, checked: percentiles strictly
    between 0 and 100, limits positive, the goodput share in (0, 1]."""
    out = {}
    for name, lim in (("ttft", ttft or {}), ("tpot", tpot or {})):
        rows = []
        for q, sec in sorted(lim.items()):
            q = check_percentile(q, f"SLA {name} percentile")
            if isinstance(sec, bool) or not isinstance(sec, (int, float)) or not sec > 0 or not math.isfinite(sec):
                raise SpecError(f"SLA {name} P{q:g}: the limit must be a positive number of seconds, got {sec!r}")
            rows.append((q, float(sec)))
        out[name] = tuple(rows)
    return PercentileSLA(out["ttft"], out["tpot"], check_share(share, "--goodput-share"))


def meets(m: dict, sla: PercentileSLA):
    """Whether open-loop metrics ``m`` meet every percentile limit of ``sla`` (array over layouts)."""
    ok = m["stable"] & m["feasible"] if "feasible" in m else m["stable"]
    for q, s in sla.ttft:
        ok = ok & (m[f"ttft_p{q:g}_s"] <= s)
    for q, s in sla.tpot:
        ok = ok & (m[f"tpot_p{q:g}_s"] <= s)
    return ok


def goodput_rate(metrics_at, sustainable, sla: PercentileSLA):
    """The highest rate (below ``sustainable``) at which ``metrics_at(rate)`` is stable, meets every
    percentile limit and at which at least ``sla.share`` of requests meet both SLOs (the strictest
    limits): a bisection on the rate (the share falls as the rate rises), ``GOODPUT_STEPS`` steps."""
    t_lim, p_lim = sla.limits()

    def ok(rate):
        m = metrics_at(rate)
        good = meets({k: m[k] for k in m if k != "feasible"}, sla)
        return good & (attainment(m, t_lim, p_lim) >= sla.share)

    def body(_, b):
        lo, hi = b
        mid = 0.5 * (lo + hi)
        good = ok(mid)
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

    lo, _ = jax.lax.fori_loop(0, GOODPUT_STEPS, body, (jnp.zeros_like(sustainable), sustainable))
    return jnp.where(ok(jnp.maximum(lo, 1e-9 * sustainable)), lo, 0.0)


@functools.cache
def evaluator(name: str, percentiles=PERCENTILES):
    """``f(p, hw, model, prec, (wl, load), lay)``: :func:`evaluate_open` under the scheduling policy
    (or backend default) ``name``, with the workload and load as one traced argument (what
    ``sweep.evaluate_layouts`` passes), private parts dropped."""
    scheduler = scheduler_for(name)

    def f(p, hw, model, prec, wl_load, lay):
        wl, load = wl_load
        m = evaluate_open(p, hw, model, prec, wl, load, lay, scheduler, percentiles)
        return {k: v for k, v in m.items() if not k.startswith("_") and k != "tpot_mean_raw"}
    f.__name__ = f"openloop_{scheduler}"
    return f


@functools.cache
def goodput_evaluator(name: str, sla: PercentileSLA):
    """``f(p, hw, model, prec, (wl, load), lay)``: per layout, the goodput rate (requests/s) and
    goodput per GPU (requests/s/GPU meeting the SLOs, :func:`goodput_rate`) and the open-loop
    metrics at that rate."""
    scheduler = scheduler_for(name)
    percentiles = sla.percentiles

    def f(p, hw, model, prec, wl_load, lay):
        wl, load = wl_load
        closed = evaluate(p, hw, model, prec, wl, lay, scheduler)

        def at(rate):
            return evaluate_open(p, hw, model, prec, wl, load._replace(rate=rate), lay, scheduler, percentiles,
                                 closed)
        g = goodput_rate(at, closed["requests_per_s"], sla)
        m = at(jnp.maximum(g, 1e-9))
        out = {k: v for k, v in m.items() if not k.startswith("_") and k != "tpot_mean_raw"}
        gpus = lay.tp * lay.ep * lay.pp * lay.dp
        out["feasible"] = closed["feasible"] & (g > 0)
        out["goodput_rps"] = g
        out["goodput_rps_per_gpu"] = g / gpus
        out["tokens_per_s_per_gpu"] = g * wl.osl / gpus
        return out
    f.__name__ = f"goodput_{scheduler}"
    return f


