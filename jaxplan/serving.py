"""From step times to what users see: TTFT, TPOT, tokens/s/user and tokens/s/GPU.

Aggregated serving with in-flight batching and chunked prefill, under closed-loop load: a replica
keeps ``batch`` requests in flight, and a new one arrives as soon as one completes.

The model of one replica (all quantities per replica):
- An *iteration* (with PP, a *round*: every micro-batch through every stage once) advances every
  decoding request by one token and may carry one prefill chunk of ``c = min(chunk, isl)`` tokens.
  With PP the round is split into ``pp`` micro-batches, so its time is ``pp`` stage times plus the
  hand-offs; PP raises throughput, never a token's latency.
- Let ``d`` be the mean number of decoding requests. The prompt rate must match the completion
  rate: a share ``f = d * isl / (osl * c)`` of iterations carries a chunk (``f <= 1``), and
  ``d <= d_sat = osl * c / isl`` is the most decoders the prefill rate can feed.
- TTFT without queueing is ``isl / c`` chunk iterations; TPOT is the mean iteration time seen by a
  decoding request (chunks of *other* requests slow it).
- Little's law for the closed loop: ``batch = X * (TTFT + osl * TPOT)`` with ``X = d / (osl * T)``
  the completion rate and ``T`` the mean iteration time. Solving it for ``d`` is a fixed point
  (iteration times depend on ``d``), unrolled a fixed number of times. Where prefill saturates
  (``d`` hits ``d_sat``) the excess requests queue and the law puts the wait into TTFT.
- Workload features: with speculative decoding a decode step verifies ``1 + k`` tokens per request
  and yields ``Workload.tokens_per_step`` of them (``osl`` then counts steps, TPOT is a step over
  that); with prefix caching prefill computes ``Workload.prompt_tokens`` of each prompt.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .cost import (
    Cost,
    draft_costs,
    linear_state_bytes,
    max_batch_that_fits,
    memory_per_gpu,
    p2p,
    stage_costs,
    sum_costs,
)
from .energy import busy_share, disagg_busy_share, power_metrics
from .layouts import Layout
from .specs import Hardware, Model, Precision, SpecError, Workload, scheduler_for

FIXED_POINT_STEPS = 8
# The aggregated closed loop's fixed point d = G(d) (``_staggered``) is solved by Steffensen's
# method: a plain step, then an Aitken extrapolation from the two steps; SOLVER_EVALUATIONS
# evaluations of the cost model in all (the last one at the answer), against FIXED_POINT_STEPS
# plain steps before (``fixed_point`` with ``accelerate=False``; still used by the disaggregated
# closed loop). G is a strong contraction: on the serving validator's 3,287 aggregated rows the
# predictions moved by at most 7e-5 (TTFT) and 4e-5 (TPOT), and where 8 plain steps had not
# converged (long prompts, short answers) the accelerated point is closer to the converged one
# (tests/test_fixed_point.py). The sweep's cost per layout fell by about half.
SOLVER_EVALUATIONS = 3
# XLA:CPU compile options that skip the LLVM backend's expensive passes: the serving validator's
# graphs compile about twice as fast at no run-time cost, and a Jacobian with the speculative draft
# head compiles within memory at all (measurements: benchmarks/sensitivity_speed.md).
CHEAP_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# Layers of the speculative draft head, each shaped like one of the model's own: DeepSeek-V3's
# multi-token-prediction module is one transformer layer sharing the embedding and LM head
# (DeepSeek-V3 technical report, section 2.2); EAGLE-style heads are one layer too.
DRAFT_LAYERS = 1


def pp_handoff(p, hw: Hardware, model: Model, prec: Precision, tokens, tp, ep, pp):
    """Hand-offs of one micro-batch along the pipeline, per round-trip through all stages.

    Each of the tp*ep GPUs of a stage sends its share of the micro-batch's activations. A boundary
    crosses the scale-out network when the ranks before it fill a whole domain; with stages of
    ``s = tp*ep`` GPUs, about ``pp*s/domain - 1`` of the ``pp - 1`` boundaries do."""
    s = tp * ep
    nbytes = tokens * model.hidden_size * prec.act_bytes / s
    crossings = jnp.clip(pp * s / hw.scale_up_domain - 1.0, 0.0, pp - 1.0)
    return crossings * p2p(p, hw, nbytes, True) + (pp - 1.0 - crossings) * p2p(p, hw, nbytes, False)


def micro_batches(lay: Layout, dec, pre):
    """Micro-batches in flight: pp when a prefill chunk (splittable by tokens) can fill the
    pipeline, else no more than the decoding requests of an attention group (a request is never
    split), and at least one."""
    return jnp.where(pre > 0, lay.pp, jnp.clip(dec / lay.adp, 1.0, lay.pp))


def round_costs(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, lay: Layout, dec, pre) -> dict:
    """One round on one replica: ``dec`` decoding requests, ``pre`` prefill tokens, split into
    ``n <= pp`` micro-batches. Each micro-batch needs pp stage times to come round again, so the
    round takes pp stage times of a 1/n-sized micro-batch whatever n is: PP never shortens a
    token's latency. Returns op-group -> Cost (their sum is the round time)."""
    pp = lay.pp
    n = micro_batches(lay, dec, pre)
    kv_len = wl.decode_kv_len              # mean cached context of a decoding request
    ctx = wl.prefill_key_span              # mean key span of a prefill token (causal, + cached prefix)
    k = wl.draft_tokens                    # speculative decoding: verify 1 + k tokens per sequence
    stage = stage_costs(p, hw, model, prec, dec / n, pre / n, kv_len, ctx, lay.tp, lay.ep, lay.adp, pp, q=1 + k)
    ops = {name: c.scale(pp) for name, c in stage.items()}
    ops["pp_handoff"] = Cost(comm_pp=pp_handoff(p, hw, model, prec, (dec * (1 + k) + pre) / n, lay.tp, lay.ep, pp))
    if k:
        ops["draft"] = draft_costs(p, hw, model, prec, dec, kv_len, lay.tp, lay.ep, lay.adp, k,
                                   DRAFT_LAYERS).where(dec > 0)
    ops["step_overhead"] = Cost(overhead=p["step_overhead_s"])
    return ops


def draft_layers(wl: Workload) -> int:
    """Layers of the speculative draft head a decoding GPU holds (0 without speculation)."""
    return DRAFT_LAYERS if wl.draft_tokens else 0


def prompt_iteration_decoders(scheduler: str, dec):
    """Decoding requests that advance inside an iteration carrying prompt tokens: all of them when
    the scheduler mixes prompt chunks into decode iterations, none when prompts run alone
    (``prefill_first``, ``wave``)."""
    return dec if scheduler == "mixed" else jnp.zeros_like(dec)


def round_time(p, hw, model, prec, wl, lay, dec, pre):
    return sum_costs(round_costs(p, hw, model, prec, wl, lay, dec, pre).values()).total()


def round_time_busy(p, hw, model, prec, wl, lay, dec, pre):
    """A round's time and the share of it a GPU is compute- or memory-bound (``energy.busy_share``;
    a GPU has work in ``n`` of the ``pp`` micro-batch slots of a round)."""
    c = sum_costs(round_costs(p, hw, model, prec, wl, lay, dec, pre).values())
    return c.total(), busy_share(c, micro_batches(lay, dec, pre) / lay.pp)


def admitted_batch(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, lay: Layout):
    """Requests per attention group the KV cache can hold while they run: paged engines allocate
    the context a request has, on average ``isl + osl/2`` tokens over its life."""
    return jnp.maximum(max_batch_that_fits(p, hw, model, prec, wl.isl, wl.osl / 2.0, lay.tp, lay.ep, lay.adp, lay.pp,
                                           lay.chunk, draft_layers(wl), per=lay.adp, min_step=1.0), 1.0)


def aitken(x0, x1, x2, lo, hi):
    """Aitken's extrapolation of the fixed point of ``G`` from ``x1 = G(x0)`` and ``x2 = G(x1)``,
    kept within ``[lo, hi]``; ``x2`` itself where the two steps give no contraction rate (equal
    iterates, or a slope estimate beyond +-0.9: no faster than plain steps there)."""
    a, b = x1 - x0, x2 - x1
    s = b / jnp.where(a == 0, 1.0, a)
    ok = (a != 0) & (jnp.abs(s) < 0.9)
    return jnp.where(ok, jnp.clip(x2 + b * s / jnp.where(ok, 1.0 - s, 1.0), lo, hi), x2)


def fixed_point(times, update, x0, lo, hi, evaluations=SOLVER_EVALUATIONS, accelerate=True, zeros=()):
    """Solve ``x = update(x, times(x))`` from ``x0``, evaluating ``times`` (the cost model, traced
    once: the loop body) ``evaluations`` times. Accelerated (Steffensen): every second evaluation
    is followed by an Aitken extrapolation (:func:`aitken`, within ``[lo, hi]``) from the last two
    plain steps; otherwise plain steps. Returns ``(x, times(x), update(x, times(x)))`` for the last
    point evaluated (the last is a residual: equal to ``x`` at convergence). ``zeros``: a tuple
    shaped like ``times``'s output (the loop's initial carry)."""
    def step(i, carry):
        x, x_prev = carry[0], carry[1]
        t = times(x)
        y = update(x, t)
        nxt = jnp.where(i % 2 == 1, aitken(x_prev, x, y, lo, hi), y) if accelerate else y
        return (nxt, x, y) + tuple(t)

    carry = jax.lax.fori_loop(0, evaluations, step, (x0, x0, x0) + tuple(zeros))
    return carry[1], carry[3:], carry[2]


class Steady(NamedTuple):
    """What a scheduling policy solves for one attention group in steady state: ``d`` decoding
    requests, ``c`` prompt tokens per prompt-carrying iteration, that iteration's time ``t_chunk``
    and a decode-only iteration's ``t_plain``, the completion rate ``x_g`` (requests/s), a decode
    step's TPOT as a request sees it (a step, before dividing by tokens per step), the unqueued
    TTFT ``ttft0`` and whether the prompt rate caps the decoders (``saturated``)."""
    d: jax.Array
    c: jax.Array
    t_chunk: jax.Array
    t_plain: jax.Array
    x_g: jax.Array
    tpot: jax.Array
    ttft0: jax.Array
    saturated: jax.Array
    u_chunk: jax.Array     # busy share (energy.busy_share) of a prompt-carrying iteration
    u_plain: jax.Array     # and of a decode-only iteration


def wave(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, lay: Layout, Br, isl, osl) -> Steady:
    """Lock-step waves (SGLang under one OSL for all): requests that start together finish together
    and return together, so the batch runs ``k = max(B * isl / chunk, 1)`` prefill iterations, then
    ``osl`` decode iterations. TTFT is (k + 1)/2 prefill iterations; a request whose prompt ran early
    waits for the rest of the wave before decoding, which its TPOT absorbs."""
    g, o_req = lay.adp, p["request_overhead_s"]
    zero = jnp.zeros_like(Br)
    c = jnp.minimum(lay.chunk, Br * isl)
    k = jnp.maximum(Br * isl / lay.chunk, 1.0)
    t_chunk, u_chunk = round_time_busy(p, hw, model, prec, wl, lay, zero, g * c)
    t_plain, u_plain = round_time_busy(p, hw, model, prec, wl, lay, g * Br, 0.0)
    tpot = t_plain + (k - 1.0) / 2.0 * t_chunk / osl
    ttft0 = (k + 1.0) / 2.0 * t_chunk + o_req
    x_g = Br / (k * t_chunk + osl * t_plain + o_req)
    return Steady(Br, c, t_chunk, t_plain, x_g, tpot, ttft0, jnp.zeros_like(Br, dtype=bool), u_chunk, u_plain)


def _staggered(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, lay: Layout, Br, isl, osl,
               mixed: bool) -> Steady:
    """Steady state of staggered arrivals (the closed loop's fixed point, see the module docstring),
    prompts mixed into decode iterations (``mixed``) or run alone before them."""
    g, o_req = lay.adp, p["request_overhead_s"]
    zero = jnp.zeros_like(Br)
    scheduler = "mixed" if mixed else "prefill_first"
    m_max = jnp.clip(jnp.floor(lay.chunk / isl), 1.0, jnp.maximum(Br, 1.0))
    n_iter = jnp.maximum(isl / lay.chunk, 1.0)
    # mixed: at most one chunk per iteration, so the prompt rate caps the decoders (prefill
    # fully packed); prefill-first: prompts always run first, so they never wait on decode
    d_sat = osl * jnp.minimum(lay.chunk, m_max * isl) / isl if mixed else Br
    d0 = jnp.minimum(Br * osl / (osl + n_iter), d_sat)

    def times(d):
        # Steady state: completions are staggered, so prompts arrive one at a time and a chunk
        # iteration packs the prompt plus those that arrived during the iteration before it:
        # d / osl per iteration (the completion rate), up to what the chunk holds.
        m = jnp.clip(1.0 + d / osl, 1.0, m_max)
        c = jnp.minimum(lay.chunk, m * isl)
        t_plain, u_plain = round_time_busy(p, hw, model, prec, wl, lay, g * d, 0.0)
        t_chunk, u_chunk = round_time_busy(p, hw, model, prec, wl, lay, prompt_iteration_decoders(scheduler, g * d),
                                           g * c)
        own = 1.0 - jnp.minimum(m / jnp.maximum(Br, 1.0), 1.0)   # a request never waits on its own prompt
        if mixed:
            f = jnp.clip(d * isl / (osl * c), 0.0, 1.0)      # share of iterations with a chunk
            t_dec = f * t_chunk + (1 - f) * t_plain          # time per decode step
            t_iter = t_dec                                   # mean iteration
            tpot = f * own * t_chunk + (1 - f * own) * t_plain
        else:
            # prefill iterations carry prompt tokens only and the decoders wait them out:
            # r = d * isl / (osl * c) of them per decode step
            r = d * isl / (osl * c)
            t_dec = t_plain + r * t_chunk
            t_iter = t_dec / (1.0 + r)
            tpot = t_plain + r * own * t_chunk
        # A new request arrives when another completes, at an iteration's end; the engine has
        # already started the next iteration for the others, so the prompt waits about one
        # mean iteration (not when it is alone: nothing runs without it).
        residual = (1.0 - 1.0 / jnp.maximum(Br, 1.0)) * t_iter
        return c, t_chunk, t_plain, t_dec, tpot, o_req + residual + n_iter * t_chunk, u_chunk, u_plain

    def update(d, t):
        _, _, _, t_dec, tpot, ttft0, _, _ = t
        return jnp.minimum(Br * osl * t_dec / (ttft0 + osl * tpot), d_sat)

    # The outputs are those of the last point the solver evaluated (the cost model is traced once).
    d, t, _ = fixed_point(times, update, d0, zero, d_sat, zeros=(zero,) * 8)
    c, t_chunk, t_plain, t_dec, tpot, ttft0, u_chunk, u_plain = t
    x_g = d / (osl * t_dec)
    saturated = (d >= d_sat * (1 - 1e-4)) & mixed
    return Steady(d, c, t_chunk, t_plain, x_g, tpot, ttft0, saturated, u_chunk, u_plain)


def mixed(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, lay: Layout, Br, isl, osl) -> Steady:
    """TensorRT-LLM and vLLM: prompt chunks ride along with decode tokens. In steady state
    completions, and so arrivals, are staggered; an iteration packs the waiting prompts, ``m = 1 +
    d / osl`` of them on average (the prompt and the arrivals of one iteration), at most
    ``floor(chunk / isl)``; a prompt needs ``max(isl / chunk, 1)`` such iterations after waiting for
    the iteration in flight to end. The share of iterations that carry prompts and the number of
    decoding requests follow from the closed loop; at most one chunk per iteration, so the prompt
    rate caps the decoders (``saturated``). :func:`cold_start_ttft` prices a first wave instead."""
    return _staggered(p, hw, model, prec, wl, lay, Br, isl, osl, mixed=True)


def prefill_first(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, lay: Layout, Br, isl,
                  osl) -> Steady:
    """SGLang's policy under staggered arrivals: whenever prompts wait, the engine runs a prefill
    iteration of prompt tokens only, and the decoders wait it out (SGLang
    ``Scheduler.get_next_batch_to_run``: "run prefill first if possible"; mixed chunks off by
    default, ``enable_mixed_chunk=False``). Per decode step, ``r = d * isl / (osl * c)`` prefill
    iterations run; TPOT is a decode iteration plus the others' prefill iterations; the prompts
    never queue behind decode, so prefill never saturates (decode slows instead)."""
    return _staggered(p, hw, model, prec, wl, lay, Br, isl, osl, mixed=False)


# The aggregated scheduling policies by name (``specs.SCHEDULER_NAMES``; each backend's default
# is ``specs.DEFAULT_SCHEDULER``).
SCHEDULERS = {"mixed": mixed, "prefill_first": prefill_first, "wave": wave}


def evaluate(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, lay: Layout,
             scheduler: str = "mixed") -> dict:
    """All serving metrics of one aggregated layout (scalars; vmap over layouts), under the
    scheduling policy ``scheduler`` (a name in :data:`SCHEDULERS`: :func:`mixed`,
    :func:`prefill_first`, :func:`wave`).

    With attention-DP each of the ``adp`` attention groups of a replica schedules its own requests
    (``batch / adp`` of them) and its own prefill tokens; the groups meet in every MoE layer, so
    they share the round time. The policy solves one group.

    Admission: only the requests whose KV cache fits run (``admitted_batch``); the others wait,
    and Little's law puts the wait into TTFT.

    Front end: every request spends ``request_overhead_s`` outside the GPU before its first token
    reaches the client (HTTP, tokenization, hand-off, streaming); it adds to the unqueued TTFT and
    to the client's cycle, so the engine runs a little fewer of the ``batch`` requests at once."""
    if scheduler not in SCHEDULERS:
        raise SpecError(f"scheduler '{scheduler}' is unknown; allowed: {', '.join(SCHEDULERS)}")
    # With speculative decoding a decode step yields ``tokens_per_step`` tokens, so a request needs
    # osl / that many steps: below, ``osl`` counts steps and ``tpot`` is a step until the end.
    per_step = wl.tokens_per_step
    # Prefill volume: the prompt tokens not already in the prefix cache.
    isl, osl, g = wl.prompt_tokens, wl.osl / per_step, lay.adp
    B = lay.batch / g
    Br = jnp.minimum(B, admitted_batch(p, hw, model, prec, wl, lay))
    d, c, t_chunk, t_plain, x_g, tpot, ttft0, saturated, u_chunk, u_plain = SCHEDULERS[scheduler](
        p, hw, model, prec, wl, lay, Br, isl, osl)
    x = g * x_g                                            # completed requests/s per replica
    # Power: each request needs isl / c prompt-carrying iterations, so they take a share
    # x_g * isl / c * t_chunk of the time; decode-only iterations the rest (energy.py).
    chunk_share = jnp.clip(x_g * isl / c * t_chunk, 0.0, 1.0)
    busy = chunk_share * u_chunk + (1.0 - chunk_share) * u_plain
    ttft = jnp.maximum(lay.batch / x - osl * tpot, ttft0)
    gpus_per_replica = lay.tp * lay.ep * lay.pp
    mem = memory_per_gpu(p, hw, model, prec, wl.isl, wl.osl, lay.tp, lay.ep, lay.adp, lay.pp, lay.batch, lay.chunk,
                         draft_layers(wl))
    tpot = tpot / per_step
    tokens_per_gpu = x * wl.osl / gpus_per_replica
    return {
        "ttft_s": ttft,
        "tpot_s": tpot,
        "tokens_per_s_per_user": 1.0 / tpot,
        "tokens_per_s_per_gpu": tokens_per_gpu,
        "requests_per_s": x * lay.dp,
        "decoding_requests": g * d,
        "prefill_tokens_per_iter": g * c,
        "prefill_saturated": saturated,
        "admitted_requests": g * Br,
        "chunk_iter_s": t_chunk,
        "decode_iter_s": t_plain,
        "memory_per_gpu_gb": mem["total"] / 1e9,
        "feasible": mem["total"] <= mem["capacity"],
        **power_metrics(hw, busy, tokens_per_gpu),
    }


def cold_start_ttft(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, lay: Layout, m: dict,
                    scheduler: str = "mixed"):
    """Mean TTFT of a cold-start wave, all admitted requests arriving at once (a benchmark's first
    requests), given ``m``, the layout's :func:`evaluate` metrics: prompts packed ``floor(chunk /
    isl)`` to an iteration beside the solved decoders, the wave's mean TTFT ``(k + 1) / 2`` such
    iterations, ``k = B * isl / chunk``. Never below the steady-state TTFT. Lock-step waves
    (``scheduler="wave"``) are cold starts already. What a short benchmark's mean TTFT partly
    measures (``validate_serving.benchmark_ttft``); sweeps do not need it."""
    if scheduler == "wave":
        return m["ttft_s"]
    g = lay.adp
    Br = m["admitted_requests"] / g
    isl = wl.prompt_tokens
    m_max = jnp.clip(jnp.floor(lay.chunk / isl), 1.0, jnp.maximum(Br, 1.0))
    k = jnp.maximum(Br * isl / lay.chunk, 1.0)
    t_wave = round_time(p, hw, model, prec, wl, lay, prompt_iteration_decoders(scheduler, m["decoding_requests"]),
                        g * jnp.minimum(lay.chunk, m_max * isl))
    return jnp.maximum(p["request_overhead_s"] + (k + 1.0) / 2.0 * t_wave, m["ttft_s"])


@functools.cache
def evaluator(name: str):
    """:func:`evaluate` under the scheduling policy ``name``, or under the default policy of the
    backend ``name`` (``specs.scheduler_for``), as ``f(p, hw, model, prec, wl, lay)``. One object
    per policy, so compiled functions cached on it are shared."""
    scheduler = scheduler_for(name)
    return evaluate if scheduler == "mixed" else functools.partial(evaluate, scheduler=scheduler)


def explain(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, lay: Layout,
            scheduler: str = "mixed") -> dict:
    """Metrics of one layout plus where the time goes: the op breakdown of an iteration with a
    prefill chunk and of a decode-only iteration, at the solved decode batch, and the memory."""
    lay = Layout(*(jnp.asarray(v, jnp.float32) for v in lay))
    m = jax.jit(evaluate, static_argnums=(2, 3, 6))(p, hw, model, prec, wl, lay, scheduler)
    dec = m["decoding_requests"]
    c = m["prefill_tokens_per_iter"]
    rc = jax.jit(round_costs, static_argnums=(2, 3))
    mem = memory_per_gpu(p, hw, model, prec, wl.isl, wl.osl, lay.tp, lay.ep, lay.adp, lay.pp, lay.batch, lay.chunk,
                         draft_layers(wl))
    return {"metrics": {k: float(v) for k, v in m.items()},
            "chunk_iteration": rc(p, hw, model, prec, wl, lay, prompt_iteration_decoders(scheduler, dec), c),
            "decode_iteration": rc(p, hw, model, prec, wl, lay, dec, jnp.float32(0.0)),
            "memory_gb": {k: float(v) / 1e9 for k, v in mem.items()}}


# ----------------------------------------------------------------------------- disaggregated serving
#
# A disaggregated deployment runs ``x`` prefill workers and ``y`` decode workers, each with its own
# layout (a ``Layout`` with dp = 1). A prefill worker runs prompt chunks only; a decode worker runs
# decode rounds only; the KV cache of every prompt moves from the prefill GPUs to the decode GPUs.

def kv_cache_bytes(model: Model, prec: Precision, tokens):
    """KV cache of ``tokens`` tokens over all layers: GQA keeps K and V per KV head, MLA one latent
    (DSA: plus the indexer's FP8 keys); a hybrid model's linear-attention layers add one fixed
    recurrent state (and convolution state) per request instead."""
    kv = tokens * model.kv_elements_per_token_layer() * prec.kv_bytes * model.num_full_layers
    if model.is_sparse:
        kv = kv + tokens * model.index_key_bytes_per_token_layer() * model.num_full_layers
    if model.linear_layers:
        kv = kv + linear_state_bytes(model, prec) * model.linear_layers
    return kv


def kv_shards(model: Model, lay: Layout):
    """GPUs of one worker that hold distinct parts of a request's KV cache: the pipeline stages
    times the attention-TP ranks with distinct KV heads (MLA's latent is replicated over TP)."""
    tpa = lay.tp * lay.ep / lay.adp
    heads = 1.0 if model.attention == "mla" else jnp.minimum(tpa, float(model.num_kv_heads))
    return lay.pp * heads


def kv_transfer_time(p, hw: Hardware, model: Model, prec: Precision, isl, pre: Layout, dec: Layout, cross_network):
    """Moving one prompt's KV cache from a prefill worker to a decode worker: every holding GPU
    sends its shard at once, so min(sender shards, receiver shards) links work in parallel."""
    links = jnp.minimum(kv_shards(model, pre), kv_shards(model, dec))
    return p2p(p, hw, kv_cache_bytes(model, prec, isl) / links, cross_network)


def prefill_worker(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, lay: Layout) -> dict:
    """A prefill-only worker: each attention group packs up to ``batch / adp`` prompts (as many as
    fit in ``chunk`` tokens) into an iteration; a prompt longer than the chunk takes ``isl/chunk``
    iterations. Returns its request rate, one prompt's latency, and memory."""
    isl = wl.prompt_tokens                 # computed; the KV cache (memory) holds all wl.isl
    m = jnp.clip(jnp.floor(lay.chunk / isl), 1.0, jnp.maximum(lay.batch / lay.adp, 1.0))
    c = jnp.minimum(lay.chunk, m * isl)
    t_iter, busy = round_time_busy(p, hw, model, prec, wl, lay, jnp.float32(0.0), lay.adp * c)
    mem = memory_per_gpu(p, hw, model, prec, wl.isl, 0.0, lay.tp, lay.ep, lay.adp, lay.pp, lay.adp * m, c)
    return {"rate": lay.adp * c / isl / t_iter, "latency_s": jnp.maximum(isl / lay.chunk, 1.0) * t_iter,
            "iter_s": t_iter, "prompts_per_iter": m, "busy_share": busy, "memory_per_gpu_gb": mem["total"] / 1e9,
            "feasible": mem["total"] <= mem["capacity"]}


def decode_worker(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, lay: Layout) -> dict:
    """A decode-only worker holding ``batch`` requests at full context. Returns TPOT, its request
    rate, and memory."""
    t_iter, busy = round_time_busy(p, hw, model, prec, wl, lay, lay.batch, jnp.float32(0.0))
    tpot = t_iter / wl.tokens_per_step
    mem = memory_per_gpu(p, hw, model, prec, wl.isl, wl.osl, lay.tp, lay.ep, lay.adp, lay.pp, lay.batch, 0.0,
                         draft_layers(wl))
    return {"tpot_s": tpot, "rate": lay.batch / (wl.osl * tpot), "busy_share": busy,
            "memory_per_gpu_gb": mem["total"] / 1e9, "feasible": mem["total"] <= mem["capacity"]}


DERIVED_PREFILL_UTILIZATION = 0.8
# A decode pool left unsized is sized for the balance deployment planners aim at: each worker runs
# the largest batch whose step stays within DECODE_KNEE times a one-request step. Below that knee
# a decode step is dominated by what does not grow with the batch (streaming the weights, fixed
# kernel and step times), so more requests per worker are nearly free; beyond it the step grows
# about in proportion to the batch, so TPOT worsens as fast as the worker's throughput rises and a
# planner adds workers instead. Checked on the 56 B200 disaggregated rows that give their worker
# counts (named quantities only, no measured latency): the derived decode workers are within a
# factor 1.8 of the given ones on average (mean |log2 ratio| 0.87; median ratio 0.75), against 2.0x
# (1.03; 0.5) for "the fewest workers whose KV caches hold all requests" (benchmarks/
# serving_validation.md, issue 13). The campaigns ran fixed pools over a sweep of N, which no rule
# of N reproduces exactly.
DECODE_KNEE = 3.0
KNEE_SEARCH_STEPS = 14           # bisection steps on log2(batch) (1 .. 2^14 requests per worker)


def prefill_workers_needed(decode_workers, decode_rate, prefill_rate, utilization):
    """Rate matching: the fewest prefill workers whose combined request rate, run at the target
    ``utilization``, covers what ``decode_workers`` decode workers complete (at least one)."""
    xp = jnp if isinstance(decode_workers + decode_rate + prefill_rate, jax.Array) else np
    return xp.maximum(xp.ceil(decode_workers * decode_rate / (utilization * prefill_rate) - 1e-6), 1.0)


def prefill_wait(rho, rate):
    """Mean wait for a prefill worker at utilization rho: M/D/1, service time 1/rate."""
    rho = jnp.clip(rho, 0.0, 0.98)
    return rho / (2.0 * (1.0 - rho)) / rate


def disagg_pair(p, osl, pre_rate, pre_latency, dec_rate, dec_tpot, x, y, t_kv, gpus, max_utilization=1.0) -> dict:
    """A planned disaggregated deployment of ``x`` prefill and ``y`` decode workers under open-loop
    load: completions X = min(y * decode rate, u * x * prefill rate), u = ``max_utilization``, the
    load the prefill pool is planned to run at where it is the limit (the sweep mostly sizes x so the
    decode pool is the limit; where prefill is far slower than decode, e.g. a one-token answer, the
    budget caps x and the prefill pool sets the rate, the decode workers running below their batch:
    their TPOT is then an upper bound). TTFT = prefill latency + M/D/1 wait at the prefill
    utilization + KV transfer + the per-request overheads (disaggregation protocol, serving front
    end), TPOT the decode worker's. Works on numpy arrays (the sweep's pairs) and traced values
    (elasticities)."""
    X = jnp.minimum(y * dec_rate, max_utilization * x * pre_rate)
    rho = X / (x * pre_rate)
    wait = prefill_wait(rho, pre_rate)
    ttft = pre_latency + wait + t_kv + p["disagg_overhead_s"] + p["request_overhead_s"]
    return {"requests_per_s": X, "prefill_utilization": rho, "ttft_s": ttft, "tpot_s": dec_tpot,
            "tokens_per_s_per_user": 1.0 / dec_tpot, "tokens_per_s_per_gpu": X * osl / gpus,
            "prefill_latency_s": pre_latency, "prefill_wait_s": wait, "kv_transfer_s": t_kv}


def disagg_deployment(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, pre: Layout, dec: Layout,
                      x, y, cross_network, max_utilization=1.0) -> dict:
    """:func:`disagg_pair` of one prefill and one decode worker layout with fixed worker counts
    (and the planned load of a prefill pool that sets the rate): the metrics
    ``sweep.run_disagg_sweep`` reports for that deployment, as one traceable function (what
    ``sensitivity`` differentiates)."""
    pw = prefill_worker(p, hw, model, prec, wl, pre)
    dw = decode_worker(p, hw, model, prec, wl, dec)
    t_kv = kv_transfer_time(p, hw, model, prec, wl.isl, pre, dec, cross_network)
    gp, gd = x * pre.tp * pre.ep * pre.pp, y * dec.tp * dec.ep * dec.pp
    m = disagg_pair(p, wl.osl, pw["rate"], pw["latency_s"], dw["rate"], dw["tpot_s"], x, y, t_kv, gp + gd,
                    max_utilization)
    busy = disagg_busy_share(gp, pw["busy_share"], m["prefill_utilization"], gd, dw["busy_share"])
    return m | {"prefill_prompts_per_iter": pw["prompts_per_iter"]} | power_metrics(hw, busy,
                                                                                      m["tokens_per_s_per_gpu"])


def explain_disagg(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, pre: Layout, dec: Layout,
                   x, y, cross_network, max_utilization=1.0) -> dict:
    """A disaggregated deployment's metrics (:func:`disagg_deployment`), where its TTFT goes
    (prefill, the wait for a prefill worker, KV transfer, the per-request overheads), the op
    breakdown of a prefill worker's iteration and of a decode worker's iteration, and each pool's
    memory."""
    pre = Layout(*(jnp.asarray(v, jnp.float32) for v in pre))
    dec = Layout(*(jnp.asarray(v, jnp.float32) for v in dec))
    x, y = jnp.float32(x), jnp.float32(y)
    m = jax.jit(disagg_deployment, static_argnums=(2, 3))(p, hw, model, prec, wl, pre, dec, x, y, cross_network,
                                                          jnp.float32(max_utilization))
    ttft_parts = {"prefill": m["prefill_latency_s"], "wait for a prefill worker": m["prefill_wait_s"],
                  "KV-cache transfer": m["kv_transfer_s"], "disaggregation overhead": p["disagg_overhead_s"],
                  "front-end overhead": p["request_overhead_s"]}
    rc = jax.jit(round_costs, static_argnums=(2, 3))
    prompts = m["prefill_prompts_per_iter"]
    c = pre.adp * jnp.minimum(pre.chunk, prompts * wl.prompt_tokens)
    mem_p = memory_per_gpu(p, hw, model, prec, wl.isl, 0.0, pre.tp, pre.ep, pre.adp, pre.pp, pre.adp * prompts, c)
    mem_d = memory_per_gpu(p, hw, model, prec, wl.isl, wl.osl, dec.tp, dec.ep, dec.adp, dec.pp, dec.batch, 0.0,
                           draft_layers(wl))
    return {"metrics": {k: float(v) for k, v in m.items()},
            "ttft_parts_s": {k: float(v) for k, v in ttft_parts.items()},
            "prefill_iteration": rc(p, hw, model, prec, wl, pre, jnp.float32(0.0), c),
            "decode_iteration": rc(p, hw, model, prec, wl, dec, dec.batch, jnp.float32(0.0)),
            "memory_gb": {"prefill": {k: float(v) / 1e9 for k, v in mem_p.items()},
                          "decode": {k: float(v) / 1e9 for k, v in mem_d.items()}}}


def decode_knee_batch(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, dec: Layout,
                      knee: float = DECODE_KNEE):
    """Requests per decode worker at the knee: the largest batch (a multiple of ``dec.adp``,
    unrounded; found by bisection on its logarithm, the step time being monotone in it) whose
    decode step takes at most ``knee`` times a step with one request per attention group."""
    def t(b):
        return round_time(p, hw, model, prec, wl, dec._replace(batch=b), b, jnp.float32(0.0))

    limit = knee * t(dec.adp)

    def step(_, lohi):
        lo, hi = lohi
        mid = (lo + hi) / 2.0
        below = t(dec.adp * 2.0 ** mid) <= limit
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, _ = jax.lax.fori_loop(0, KNEE_SEARCH_STEPS, step, (jnp.float32(0.0), jnp.float32(KNEE_SEARCH_STEPS)))
    return dec.adp * 2.0 ** lo


def evaluate_disagg(p, hw: Hardware, model: Model, prec: Precision, wl: Workload, pre: Layout, dec: Layout,
                    x, y, concurrency, cross_network) -> dict:
    """A disaggregated deployment of ``x`` prefill and ``y`` decode workers (0: derive them) under
    closed-loop load of ``concurrency`` requests in flight.

    Decode workers share the requests that are past prefill; TPOT is their round time. Rates must
    match: completions X = min(y * decode rate, x * prefill rate). Decode workers admit only the
    requests whose KV cache fits. TTFT = prefill queueing (M/D/1 at the prefill utilization) +
    prefill compute + the KV-cache transfer + fixed per-request overheads (the disaggregation
    protocol: routing, KV-receiver allocation, handshake; the serving front end), and, once the
    prefill pool saturates or decode memory is full, whatever wait Little's law N = X * (TTFT + osl
    * TPOT) leaves."""
    per_step = wl.tokens_per_step        # speculative decoding: ``osl`` counts steps, ``tpot`` is a step
    osl = wl.osl / per_step
    pw = prefill_worker(p, hw, model, prec, wl, pre)
    t_kv = kv_transfer_time(p, hw, model, prec, wl.isl, pre, dec, cross_network)
    b_max = admitted_batch(p, hw, model, prec, wl, dec) * dec.adp   # decode requests whose KV fits
    # Worker counts given as 0 are derived the way a deployment would be sized: decode workers
    # running the knee batch (decode_knee_batch), never more than their KV caches hold, and
    # prefill workers rate-matched to them at DERIVED_PREFILL_UTILIZATION.
    y = jnp.where(y > 0, y, jnp.maximum(jnp.ceil(concurrency / jnp.minimum(decode_knee_batch(p, hw, model, prec, wl,
                                                                                             dec), b_max)
                                                 - 1e-6), 1.0))
    b_guess = concurrency / y
    rate_d = b_guess / (osl * round_time(p, hw, model, prec, wl, dec._replace(batch=b_guess), b_guess,
                                         jnp.float32(0.0)))
    x = jnp.where(x > 0, x, prefill_workers_needed(y, rate_d, pw["rate"], DERIVED_PREFILL_UTILIZATION))
    cap = x * pw["rate"]
    unqueued = pw["latency_s"] + t_kv + p["disagg_overhead_s"] + p["request_overhead_s"]

    def state(b):
        tpot = round_time(p, hw, model, prec, wl, dec._replace(batch=b), b, jnp.float32(0.0))
        X = jnp.minimum(y * b / (osl * tpot), cap)
        return tpot, X, unqueued + prefill_wait(X / cap, pw["rate"])

    def update(b, s):
        tpot, _, ttft0 = s
        return jnp.maximum(jnp.minimum(concurrency / y * osl * tpot / (ttft0 + osl * tpot), b_max), 1e-3)

    b0 = concurrency / y * osl / (osl + 1.0)
    zero = jnp.zeros_like(b0)
    # Plain steps here: near a saturated prefill pool (its M/D/1 wait is steep) an Aitken
    # extrapolation overshoots (validator row dsr1_h200_sglang_fp8_disagg_8192x1024_c128_cfg434:
    # TTFT 9.9% off the converged point after 3 accelerated evaluations, 0.4% after 8 plain
    # steps), and no sweep runs this evaluator per layout.
    b, (tpot, X, ttft0), _ = fixed_point(state, update, b0, jnp.float32(1e-3), jnp.maximum(b_max, 1e-3),
                                         evaluations=FIXED_POINT_STEPS, accelerate=False, zeros=(zero,) * 3)
    ttft = jnp.maximum(concurrency / X - osl * tpot, ttft0)
    gpus = x * pre.tp * pre.ep * pre.pp + y * dec.tp * dec.ep * dec.pp
    tpot = tpot / per_step
    return {"ttft_s": ttft, "tpot_s": tpot, "tokens_per_s_per_user": 1.0 / tpot,
            "tokens_per_s_per_gpu": X * wl.osl / gpus, "requests_per_s": X, "decode_batch": b,
            "kv_transfer_s": t_kv, "prefill_latency_s": pw["latency_s"],
            "prefill_utilization": X / cap, "prefill_workers": x, "decode_workers": y,
            "prefill_capacity_rps": cap, "prefill_slots": x * pre.adp * pw["prompts_per_iter"],
            "unqueued_ttft_s": unqueued}


def disagg_cold_start_ttft(m: dict, concurrency):
    """Mean TTFT of a cold-start wave of a disaggregated deployment, all ``concurrency`` requests
    arriving at once, given ``m``, its :func:`evaluate_disagg` metrics. The prefill pool takes
    ``prefill_slots`` prompts per batch and clears ``prefill_capacity_rps`` a second, so prompt
    ``k`` starts after ``max(k - slots, 0) / capacity`` s and the wave's mean wait is
    ``max(N - slots, 0) / (2 capacity)`` on top of the unqueued TTFT (prefill, KV transfer,
    per-request overhead). Never below the steady-state TTFT. What a short benchmark's mean TTFT
    partly measures (``validate_serving.benchmark_ttft``); sweeps do not need it."""
    wait = jnp.maximum(concurrency - m["prefill_slots"], 0.0) / (2.0 * m["prefill_capacity_rps"])
    return jnp.maximum(m["unqueued_ttft_s"] + wait, m["ttft_s"])
