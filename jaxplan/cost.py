"""Cost model: the time of each op on one GPU, and of one pipeline stage, for one layout.

Pure functions of ``(params, hardware, model, precision, ...)`` with scalar layout numbers, made
to be vmapped over layouts. Each op returns a ``Cost``: time split into compute-bound,
memory-bound, communication by mesh axis, and fixed overhead. Costs add.

Rank placement: TP innermost, then EP, then PP, then DP. A pipeline stage of a
replica spans ``S = tp * ep`` GPUs; a replica ``S * pp``. Routed experts are spread ``ep`` ways and
each expert is sharded ``tp`` ways. Attention and dense layers run data-parallel over ``adp``
attention groups (attention-DP, ``adp`` divides ``S``), each sharded ``tp_attn = S / adp`` ways and
holding the KV cache of its own requests. ``adp = ep`` is the classic "TP x EP" layout (attention
sharded like the experts' TP, replicated over EP); ``adp = 1`` shards attention over the whole
stage (TensorRT-LLM's ``tp_size = moe_tp * moe_ep``). A dense model has ``ep = adp = 1``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .specs import Hardware, Model, Precision

FLOPS_PER_MAC = 2
TINY = 1e-30


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Cost:
    """Seconds, additive. ``compute``/``memory``: ops bound by the tensor cores or by HBM."""
    compute: jax.Array = 0.0
    memory: jax.Array = 0.0
    comm_tp: jax.Array = 0.0
    comm_ep: jax.Array = 0.0
    comm_pp: jax.Array = 0.0
    overhead: jax.Array = 0.0

    def __add__(self, other: Cost) -> Cost:
        return jax.tree_util.tree_map(jnp.add, self, other)

    def scale(self, k) -> Cost:
        return jax.tree_util.tree_map(lambda x: x * k, self)

    def total(self) -> jax.Array:
        return self.compute + self.memory + self.comm_tp + self.comm_ep + self.comm_pp + self.overhead

    def where(self, cond) -> Cost:
        """This cost where ``cond`` holds, else zero."""
        return jax.tree_util.tree_map(lambda x: jnp.where(cond, x, 0.0), self)


def zero_cost() -> Cost:
    return Cost(*(jnp.zeros((), jnp.float32) for _ in range(6)))


def sum_costs(costs) -> Cost:
    out = zero_cost()
    for c in costs:
        out = out + c
    return out


# ----------------------------------------------------------------------------- helpers

def saturate(x, half):
    """x / (x + half): 0 for tiny x, 1 for x >> half."""
    return x / (x + half)


def smooth_max(a, b, p):
    """(a^p + b^p)^(1/p), written as max * (1 + r^p)^(1/p) so it is finite and differentiable at 0."""
    m = jnp.maximum(a, b)
    r = jnp.clip(jnp.minimum(a, b) / jnp.maximum(m, TINY), TINY, 1.0)
    return m * (1.0 + jnp.exp(p * jnp.log(r))) ** (1.0 / p)


def roofline(p, flops, nbytes, rate, eff_c, bw, eff_m) -> Cost:
    """One kernel: the smooth max of compute time and memory time, plus its fixed latency.

    The time is booked as compute when the compute time dominates, as memory otherwise."""
    tc = flops / (rate * eff_c)
    tm = nbytes / (bw * eff_m)
    t = smooth_max(tc, tm, p["roofline_sharpness"])
    bound = tc >= tm
    return Cost(compute=jnp.where(bound, t, 0.0), memory=jnp.where(bound, 0.0, t),
                overhead=p["kernel_latency_s"])


def _nonzero(x):
    """Safe-where partner: a stand-in value where x is 0, so the untaken branch stays finite."""
    return jnp.where(x > 0, x, 1.0)


# ----------------------------------------------------------------------------- ops

def gemm(p, hw: Hardware, prec: Precision, m, n, k, *, weight_bytes=None, rate=None, batch=1.0) -> Cost:
    """Y[m, n] = X[m, k] W[k, n]: 2mnk FLOPs; reads the weights and activations, writes Y in BF16.
    ``batch`` independent GEMMs of that shape run as one batched kernel (MLA's per-head matmuls).

    Efficiency falls for thin shapes: eff = eff_max * m/(m + m_half) * n/(n + h) * k/(k + h + k_extra)
    (tiles pad m and n; each tile's k-loop pays a pipeline fill and epilogue worth h + k_extra of k).

    Waves (fitted profiles; neutral at the default wave_elems = 1): the padded m x n output is cut
    into tiles that run in waves over the SMs, one wave covering ``gemm_wave_elems_<rate>`` output
    elements; below one wave the SMs idle unless the kernel splits k over more CTAs (split-K, not
    below ``gemm_splitk_min_k_<rate>`` of k per CTA). Time = (waves, at least one) x the time of one
    wave's k-loop.

    FP8/FP4 GEMMs as TensorRT-LLM runs them first quantize their BF16 input in a separate pass:
    ``gemm_quant_bytes_<rate>`` bytes of HBM traffic per input element (3 = read BF16, write FP8;
    more with an amax pass) plus ``gemm_quant_latency_<rate>_s`` (both 0 by default)."""
    rate = rate or prec.gemm_rate
    wb = prec.weight_bytes if weight_bytes is None else weight_bytes
    ab = prec.qact_bytes if rate != "bf16" else 2.0
    ms = _nonzero(m)
    flops = FLOPS_PER_MAC * ms * n * k * batch
    nbytes = (n * k * wb + ms * k * ab + ms * n * prec.act_bytes) * batch
    # padded rows, columns and k-loop; one wave's worth of output elements; split-K below one wave
    mp, npd, kp = ms + p["gemm_m_half"], n + p["gemm_nk_half"], k + p["gemm_nk_half"] + p[f"gemm_k_extra_{rate}"]
    wave = p[f"gemm_wave_elems_{rate}"]
    waves = mp * npd * batch / wave
    split = jnp.minimum(smooth_max(k / p[f"gemm_splitk_min_k_{rate}"], 1.0, 8.0), jnp.maximum(1.0, 1.0 / waves))
    t_c = FLOPS_PER_MAC * wave * (kp - k + k / split) * jnp.maximum(1.0, waves * split) \
        / (hw.peak(rate) * p[f"gemm_eff_{rate}"])
    eff = flops / (t_c * hw.peak(rate))
    cost = roofline(p, flops, nbytes, hw.peak(rate), eff, hw.hbm_bandwidth, p["mem_eff"])
    if rate != "bf16":
        cost = cost + Cost(memory=ms * k * batch * p[f"gemm_quant_bytes_{rate}"] / (hw.hbm_bandwidth * p["mem_eff"]),
                           overhead=p[f"gemm_quant_latency_{rate}_s"])
    return cost.where(m > 0)


def elementwise(p, hw: Hardware, nbytes) -> Cost:
    """A memory-bound pass (norm, residual add, activation): bytes over HBM bandwidth."""
    return Cost(memory=nbytes / (hw.hbm_bandwidth * p["mem_eff"]))


def attention_prefill(p, hw, model: Model, prec, q_tokens, ctx, heads, kv_heads) -> Cost:
    """Causal attention of ``q_tokens`` new tokens whose keys span ``ctx`` tokens on average.

    GQA/MHA: QK^T and PV each cost 2 * q * ctx * head_dim FLOPs per head.
    MLA prefill runs un-absorbed: per head, q.k over qk_nope + qk_rope dims and p.v over v_head_dim;
    it reads the compressed latent (kv_lora_rank + qk_rope_head_dim per token) once per layer."""
    qs = _nonzero(q_tokens)
    if model.attention == "mla":
        flops = FLOPS_PER_MAC * qs * ctx * heads * (model.qk_head_dim + model.v_head_dim)
        kv_read = ctx * model.kv_elements_per_token_layer() * prec.kv_bytes
        io = qs * heads * (model.qk_head_dim + model.v_head_dim) * prec.act_bytes
        eff, dim, fixed = p["mla_prefill_eff"], (model.qk_head_dim + model.v_head_dim) / 2, p["mla_prefill_latency_s"]
    else:
        flops = FLOPS_PER_MAC * 2 * qs * ctx * heads * model.head_dim
        kv_read = ctx * 2 * kv_heads * model.head_dim * prec.kv_bytes
        io = 2 * qs * heads * model.head_dim * prec.act_bytes
        eff, dim, fixed = p["attn_prefill_eff"], model.head_dim, p["attn_prefill_latency_s"]
    if prec.attn_rate != "bf16":                     # FP8 FMHA reaches a smaller share of its 2x peak
        eff = eff * p["attn_eff_scale_fp8"]
    # Tiles (all terms neutral at their defaults): query rows are padded per sequence to
    # ``attn_seq_tile`` (a causal prompt of s tokens has ctx = (s+1)/2, so s = 2 ctx - 1); every
    # (query, key) pair costs the matmuls' 2 * 2 * dim FLOPs plus the softmax exponential, worth
    # ``attn_softmax_dim`` more; each query tile's key loop pays ``attn_prefill_k_overhead`` keys of
    # fill/epilogue. Tiles run in waves of ``attn_prefill_wave_rows`` query-head rows, each wave
    # also paying ``attn_prefill_tile_s``; below one wave the longest (last) causal tile sets the time.
    seq = jnp.maximum(jnp.minimum(qs, 2.0 * ctx - 1.0), 1.0)
    rows = (qs + p["attn_q_half"]) * jnp.maximum(1.0, p["attn_seq_tile"] / seq) * heads
    wave = p["attn_prefill_wave_rows"]
    waves = rows / wave

    def wave_time(keys):
        return p["attn_prefill_tile_s"] + FLOPS_PER_MAC * 2 * wave * (dim + p["attn_softmax_dim"]) \
            * (keys + p["attn_prefill_k_overhead"]) / (hw.peak(prec.attn_rate) * eff)
    t_c = jnp.maximum(wave_time(ctx) * jnp.maximum(waves, 1.0)
                      + (wave_time(jnp.maximum(2.0 * ctx - 1.0, ctx)) - wave_time(ctx))
                      * jnp.clip(1.0 - waves, 0.0, 1.0),
                      TINY)
    cost = roofline(p, flops, kv_read + io, hw.peak(prec.attn_rate), flops / (t_c * hw.peak(prec.attn_rate)),
                    hw.hbm_bandwidth, p["mem_eff"])
    return (cost + Cost(overhead=fixed)).where(q_tokens > 0)


def attention_decode(p, hw, model: Model, prec, seqs, kv_len, heads, kv_heads, q: float = 1.0) -> Cost:
    """One new token for each of ``seqs`` sequences against ``kv_len`` cached tokens (``q`` new
    tokens with speculative decoding: the cache is read once for all of them, the FLOPs and the
    MMA rows grow q-fold).

    GQA reads 2 * kv_heads * head_dim elements per cached token and spends 4 * heads * head_dim
    FLOPs on it. Absorbed MLA reads the latent (kv_lora + rope) once for all heads and spends
    2 * heads * (2 * kv_lora + rope) FLOPs per cached token: decode MLA is far more compute-dense."""
    ss = _nonzero(seqs)
    if model.attention == "mla":
        per_tok_bytes = model.kv_elements_per_token_layer() * prec.kv_bytes
        per_tok_flops = FLOPS_PER_MAC * heads * (2 * model.kv_lora_rank + model.qk_rope_head_dim)
        eff_c, eff_m, fixed = p["mla_decode_eff"], p["mla_decode_mem_eff"], p["mla_decode_latency_s"]
        dim, groups, group = (2 * model.kv_lora_rank + model.qk_rope_head_dim) / 2, 1.0, heads
    else:
        per_tok_bytes = 2 * kv_heads * model.head_dim * prec.kv_bytes
        per_tok_flops = FLOPS_PER_MAC * 2 * heads * model.head_dim
        eff_c, eff_m, fixed = p["attn_decode_eff"], p["attn_decode_mem_eff"], p["attn_decode_latency_s"]
        dim, groups, group = model.head_dim, kv_heads, heads / kv_heads
    flops = ss * kv_len * per_tok_flops * q
    # Tiles (neutral at the defaults): the query heads sharing a KV head (MLA: all heads) form the
    # rows of the MMA, padded by ``attn_decode_group_pad``; each sequence's key loop pays
    # ``attn_decode_k_overhead`` keys of fill; the softmax costs ``attn_softmax_dim`` more per pair.
    t_c = FLOPS_PER_MAC * 2 * ss * groups * (q * group + p["attn_decode_group_pad"]) * (dim + p["attn_softmax_dim"]) \
        * (kv_len + p["attn_decode_k_overhead"]) / (hw.peak(prec.attn_rate) * eff_c)
    t_c = jnp.maximum(t_c, TINY)
    cost = roofline(p, flops, ss * kv_len * per_tok_bytes, hw.peak(prec.attn_rate),
                    _nonzero(flops) / (t_c * hw.peak(prec.attn_rate)), hw.hbm_bandwidth, eff_m)
    return (cost + Cost(overhead=fixed)).where(seqs > 0)


# Gated DeltaNet prefill runs in the chunked (WY / UT-transform) form of the delta rule, as the
# flash-linear-attention ``chunk_gated_delta_rule`` kernels that SGLang and vLLM call for Qwen3-Next
# and Qwen3.5: the prompt is cut into chunks of LINEAR_CHUNK tokens; inside a chunk the delta rule
# becomes small dense matmuls (tensor cores), and only the chunk boundaries pass the state along.
# That form, not the token-by-token recurrence (the same O(dk dv) work per token but a sequential
# read-modify-write of the whole state per token, bandwidth bound), is what serving engines run for
# prompts, so it is the one priced; its work is linear in the prompt.
LINEAR_CHUNK = 64
# Per token and value head, in multiply-accumulates, with C = LINEAR_CHUNK, dk/dv the key/value head
# dims and S the dk x dv state: the chunk's K K^T (C dk) and the triangular solve of (I + A)^-1
# (C^2/3 per token); W = T K and U = T V (C dk + C dv); Q K^T (C dk); the masked (Q K^T) V_new
# (C dv); and three state products, W S, Q S and the update K^T V_new (3 dk dv).


def linear_prefill_macs_per_token_head(dk, dv, chunk=LINEAR_CHUNK) -> float:
    return float(chunk * (3 * dk + 2 * dv) + chunk * chunk / 3.0 + 3 * dk * dv)


# A decode step of the recurrence per value head: decay the state (dk dv), read the old value of
# the key (S^T k, dk dv), write back the rank-one correction (dk dv) and read the output (S^T q,
# dk dv): 4 dk dv multiply-accumulates per token.
LINEAR_DECODE_MACS_PER_HEAD_DIM2 = 4


def linear_state_bytes(model: Model, prec: Precision, tp=1.0):
    """One request's state in one linear-attention layer on one of ``tp`` attention-TP GPUs: the
    recurrent dk x dv matrix of each of its value heads (``model.linear_state_bytes`` per element,
    float32 in Qwen3.5) plus the short convolution's last kernel-1 inputs (activation precision).
    Value and key heads are split over TP (key heads replicated once TP exceeds them)."""
    nv = model.linear_num_value_heads / tp
    nk = jnp.maximum(model.linear_num_key_heads / tp, 1.0)
    conv_ch = 2 * nk * model.linear_key_head_dim + nv * model.linear_value_head_dim
    return nv * model.linear_key_head_dim * model.linear_value_head_dim * model.linear_state_bytes \
        + conv_ch * (model.linear_conv_kernel - 1) * prec.act_bytes


def linear_attention(p, hw: Hardware, model: Model, prec: Precision, dec_seqs, pre_tokens, tp, q: float = 1.0,
                     pre_seqs=1.0) -> dict:
    """One Gated DeltaNet layer on one of ``tp`` attention-TP GPUs: its projections and its mixing.

    Projections: q, k (key dim each), v and the output gate z (value dim each), and the per-head
    beta and decay, from the hidden state; the output projection back. The convolution, the gates
    and the gated norm are memory-bound passes over those channels.
    Decode: each of ``dec_seqs`` sequences reads its state once and writes it back (with ``q``
    speculative tokens, one state per verified position, so a rejected draft can roll back), and
    spends 4 dk dv MACs per value head per token: a memory-bound, context-independent step.
    Prefill: ``pre_tokens`` tokens in the chunked form (LINEAR_CHUNK), their chunk-boundary states
    written and read once (BF16), the ``pre_seqs`` sequences' states read and written once.

    Efficiencies (no kernel tables exist for these kernels): the chunked prefill reaches the flash
    prefill family's ``attn_prefill_eff`` (both are tiles of small BF16 matmuls with a running state
    between tiles) times ``linear_prefill_eff_scale``; decode streams state at the decode-attention
    family's ``attn_decode_mem_eff`` (both stream a per-request cache once per token) times
    ``linear_decode_mem_eff_scale``. The recurrence runs in BF16 (the Triton kernels do, whatever
    the GEMM precision)."""
    d = model.hidden_size
    dk, dv = model.linear_key_head_dim, model.linear_value_head_dim
    nv = model.linear_num_value_heads / tp
    nk = jnp.maximum(model.linear_num_key_heads / tp, 1.0)
    kd, vd = nk * dk, nv * dv
    dec_tokens = dec_seqs * q
    tokens = dec_tokens + pre_tokens
    proj = gemm(p, hw, prec, tokens, 2 * kd + 2 * vd + 2 * nv, d) + gemm(p, hw, prec, tokens, d, vd)
    # convolution (read and write q, k, v), gates and gated norm (read v-sized output and z, write)
    proj = proj + elementwise(p, hw, tokens * (2 * (2 * kd + vd) + 3 * vd) * prec.act_bytes).where(tokens > 0)
    state = linear_state_bytes(model, prec, tp)
    bf16 = hw.peak("bf16")
    ds, pt = _nonzero(dec_seqs), _nonzero(pre_tokens)
    dec_flops = FLOPS_PER_MAC * LINEAR_DECODE_MACS_PER_HEAD_DIM2 * nv * dk * dv * ds * q
    dec_bytes = ds * state * (1.0 + q) + ds * q * (2 * kd + 3 * vd) * prec.act_bytes
    decode = roofline(p, dec_flops, dec_bytes, bf16, p["attn_decode_eff"], hw.hbm_bandwidth,
                      jnp.minimum(p["attn_decode_mem_eff"] * p["linear_decode_mem_eff_scale"], 1.0)).where(dec_seqs > 0)
    pre_flops = FLOPS_PER_MAC * pt * nv * linear_prefill_macs_per_token_head(dk, dv)
    pre_bytes = pt * (2 * kd + 3 * vd) * prec.act_bytes + 2 * (pt / LINEAR_CHUNK) * nv * dk * dv * 2.0 \
        + 2 * pre_seqs * state
    prefill = roofline(p, pre_flops, pre_bytes, bf16,
                       jnp.minimum(p["attn_prefill_eff"] * p["linear_prefill_eff_scale"], 1.0), hw.hbm_bandwidth,
                       p["mem_eff"]).where(pre_tokens > 0)
    small = Cost(overhead=p["linear_kernels"] * p["kernel_latency_s"] * (tokens > 0))
    return {"linear_attn_proj": proj, "linear_attention": decode + prefill + small}


def sparse_span(span, top_k):
    """Mean keys a query attends to under sparse attention that keeps the ``top_k`` best of the
    keys before it. Decode (a single position): min(span, k). For a causal prompt whose queries
    span ``span`` keys on average (positions uniform up to s = 2 span), the mean of min(i, k):
    span while s <= k, else k - k^2 / (2 s); continuous at s = k, at most k."""
    s = 2.0 * jnp.maximum(span, TINY)
    return jnp.where(s <= top_k, span, top_k - top_k * top_k / (2.0 * s))


def dsa_indexer(p, hw: Hardware, model: Model, prec: Precision, dec_seqs, pre_tokens, kv_len, ctx,
                q: float = 1.0) -> Cost:
    """DeepSeek Sparse Attention's lightning indexer in one layer, on one attention-TP GPU.

    Its weights are small and every attention-TP rank runs it whole (replicated, as SGLang does):
    the index query from the query latent (index_n_heads x index_head_dim), one index key and the
    per-head weights from the hidden state. Every query token then scores *every* cached key:
    2 * index_n_heads * index_head_dim FLOPs per (query, key) pair in FP8 (decode: ``kv_len`` keys;
    prefill: the mean span ``ctx``), reading the FP8 index-key cache (index_head_dim bytes and a
    scale per key) and writing FP32 logits that the top-k pass reads back.

    No kernel table exists: the scoring is a QK^T over cached keys, priced at the flash prefill
    family's ``attn_prefill_eff`` (times ``dsa_index_eff_scale``) on the FP8 peak, its reads at the
    decode-attention family's ``attn_decode_mem_eff`` (times ``dsa_index_mem_eff_scale``); its small
    kernels (key norm, RoPE, FP8 quantization, cache write, top-k) cost ``dsa_index_kernels`` times
    ``kernel_latency_s``."""
    d, hi, di = model.hidden_size, model.index_n_heads, model.index_head_dim
    rate = "fp8" if "fp8" in hw.rates else "bf16"
    dec_tokens = dec_seqs * q
    tokens = dec_tokens + pre_tokens
    q_in = model.q_lora_rank or d
    proj = gemm(p, hw, prec, tokens, hi * di, q_in) + gemm(p, hw, prec, tokens, di + hi, d)
    pairs = dec_tokens * kv_len + pre_tokens * ctx
    flops = FLOPS_PER_MAC * hi * di * _nonzero(pairs)
    key_bytes = model.index_key_bytes_per_token_layer()
    nbytes = (dec_seqs * kv_len + jnp.where(pre_tokens > 0, ctx, 0.0)) * key_bytes + 2 * 4.0 * pairs \
        + tokens * hi * di * 1.0
    eff_c = jnp.minimum(p["attn_prefill_eff"] * p["dsa_index_eff_scale"], 1.0)
    score = roofline(p, flops, nbytes, hw.peak(rate), eff_c, hw.hbm_bandwidth,
                     jnp.minimum(p["attn_decode_mem_eff"] * p["dsa_index_mem_eff_scale"], 1.0)).where(pairs > 0)
    small = Cost(overhead=p["dsa_index_kernels"] * p["kernel_latency_s"] * (tokens > 0))
    return proj + score + small


def expected_active_experts(experts, top_k, tokens):
    """E * (1 - (1 - k/E)^tokens): experts that receive at least one of ``tokens`` routed tokens."""
    return experts * (1.0 - jnp.exp(tokens * jnp.log1p(-top_k / experts)))


def moe_imbalance(p, ep):
    """Tokens on the busiest expert GPU over the mean: grows with the number of EP ranks."""
    return 1.0 + p["moe_imbalance_per_log2_ep"] * jnp.log2(ep)


def moe_experts(p, hw, model: Model, prec, tokens, tp, ep) -> Cost:
    """The routed-expert grouped GEMM on one GPU for ``tokens`` tokens of the replica stage.

    The GPU holds E/ep experts, each sharded tp ways. It computes tokens * top_k / ep routed
    token-expert pairs (times the imbalance of the busiest GPU) and streams the weights of its
    *active* experts only."""
    ts = _nonzero(tokens)
    E, k = model.num_experts, model.top_k
    per_expert = model.expert_params() / tp
    imb = moe_imbalance(p, ep)
    pairs = ts * k / ep * imb
    active = expected_active_experts(E, k, ts) / ep
    flops = FLOPS_PER_MAC * pairs * per_expert
    nbytes = active * per_expert * prec.weight_bytes \
        + pairs * model.hidden_size * (prec.qact_bytes + prec.act_bytes)
    # rows of each *active* expert's GEMM (1 for a single token, tokens * k / E for many)
    m_per_expert = ts * k * imb / expected_active_experts(E, k, ts)
    eff = p["moe_eff"] * saturate(m_per_expert, p["moe_m_half"])
    # Fitted terms (neutral at the defaults): the FP8/FP4 grouped GEMMs reach a share
    # ``moe_eff_scale_<rate>`` of the BF16 efficiency; each expert's sharded slice pays
    # ``moe_k_overhead`` columns of tile fill (thin slices at high TP); routing, permute and
    # finalize cost ``moe_pair_s`` per routed (token, expert) pair of the batch; the layer's
    # auxiliary kernels add ``moe_latency_s``.
    if prec.gemm_rate != "bf16":
        eff = eff * p[f"moe_eff_scale_{prec.gemm_rate}"]
    inter = model.expert_intermediate_size / tp
    eff = eff * inter / (inter + p["moe_k_overhead"])
    cost = roofline(p, flops, nbytes, hw.peak(prec.gemm_rate), eff, hw.hbm_bandwidth, p["moe_mem_eff"])
    return (cost + Cost(overhead=ts * k * p["moe_pair_s"] + p["moe_latency_s"])).where(tokens > 0)


# ----------------------------------------------------------------------------- collectives

def _tiers(hw: Hardware, n):
    """Split a group of n GPUs into the part inside one scale-up domain and the number of domains."""
    inside = jnp.minimum(n, hw.scale_up_domain)
    return inside, n / inside


def allreduce(p, hw: Hardware, nbytes, n) -> jax.Array:
    """All-reduce of ``nbytes`` over n GPUs, hierarchical when n exceeds the scale-up domain.

    Ring/tree: 2(n-1)/n of the buffer crosses each GPU's link, plus a latency per log2(n) step;
    or one-shot (below), whichever is faster.
    Beyond one domain: reduce-scatter on NVLink, all-reduce of the 1/inside share across domains on
    the scale-out network, all-gather on NVLink."""
    inside, outside = _tiers(hw, n)
    # NVLink SHARP (NVLS): on NVSwitch systems the switch reduces, and each GPU sends and receives the
    # buffer once whatever n; ``allreduce_nvls_share`` blends ring and switch traffic (1e-6 = ring).
    nvls = p["allreduce_nvls_share"]
    # Latency per step = the fabric's link latency (hardware) + the software's share (fitted:
    # kernel launch, flag polling, synchronization), so a what-if on the hardware latency acts.
    lat_nv, lat_net = hw.scale_up_latency, hw.scale_out_latency
    t_in = (lat_nv + p["allreduce_latency_nvlink_s"]) * jnp.log2(jnp.maximum(inside, 1.0)) \
        + ((1 - nvls) * 2 * (inside - 1) / inside + nvls) * nbytes \
        / (hw.scale_up_bandwidth * p["allreduce_bw_eff_nvlink"])
    # One-shot (TensorRT-LLM's custom all-reduce for small buffers): every GPU reads the other n-1
    # buffers over NVLink and reduces locally: one fixed latency, (n-1) x the buffer per GPU. The
    # faster of the two is used (never, at the default one-shot latency of 1 ms).
    t_in = jnp.minimum(t_in, lat_nv + p["allreduce_oneshot_latency_s"]
                       + (inside - 1) * nbytes / (hw.scale_up_bandwidth * p["allreduce_bw_eff_nvlink"]))
    t_out = (lat_net + p["allreduce_latency_net_s"]) * jnp.log2(outside) \
        + 2 * (outside - 1) / outside * (nbytes / inside) / (hw.scale_out_bandwidth * p["allreduce_bw_eff_net"])
    return jnp.where(n > 1, t_in, 0.0) + jnp.where(outside > 1, t_out, 0.0)


def alltoall(p, hw: Hardware, nbytes_per_gpu, n, span):
    """All-to-all among n groups laid out over ``span`` consecutive ranks.

    Each GPU exchanges (n-1)/n of ``nbytes_per_gpu`` with the other groups. Peers in its scale-up
    domain are reached over NVLink, the rest over the scale-out network; both links run at once, so the slower sets the
    time. The share beyond the domain is 1 - domain/span once span exceeds the domain."""
    leaving = nbytes_per_gpu * (n - 1) / jnp.maximum(n, 1.0)
    f_out = jnp.clip(1.0 - hw.scale_up_domain / span, 0.0, 1.0)
    t_nv = hw.scale_up_latency + p["alltoall_latency_nvlink_s"] \
        + leaving * (1 - f_out) / (hw.scale_up_bandwidth * p["alltoall_bw_eff_nvlink"])
    t_net = hw.scale_out_latency + p["alltoall_latency_net_s"] \
        + leaving * f_out / (hw.scale_out_bandwidth * p["alltoall_bw_eff_net"])
    t = jnp.where(f_out > 0, jnp.maximum(t_nv, t_net), t_nv)
    return jnp.where(n > 1, t, 0.0)


def p2p(p, hw: Hardware, nbytes, cross_network):
    """A pipeline hand-off of ``nbytes`` from one GPU to the next stage's GPU."""
    bw = jnp.where(cross_network, hw.scale_out_bandwidth, hw.scale_up_bandwidth) * p["p2p_bw_eff"]
    lat = jnp.where(cross_network, hw.scale_out_latency, hw.scale_up_latency)
    return lat + nbytes / bw


# ----------------------------------------------------------------------------- layer composition

def heads_per_gpu(model: Model, tp):
    """Query heads on the busiest GPU, padded where TP does not divide them (``ceil``; the layouts
    sweeps search divide them exactly, so there it is ``heads / tp``), and KV heads per GPU
    (replicated once TP exceeds the KV heads)."""
    return jnp.ceil(model.num_heads / tp), jnp.maximum(model.num_kv_heads / tp, 1.0)


def attention_block(p, hw, model: Model, prec, dec_seqs, pre_tokens, kv_len, ctx, tp, q: float = 1.0) -> dict:
    """Projections and attention for one attention group (tp GPUs) and one layer.

    ``dec_seqs`` decode sequences of ``q`` new tokens each (1, or 1 + the drafted tokens a
    speculative step verifies) with ``kv_len`` cached tokens each; ``pre_tokens`` prefill tokens
    whose keys span ``ctx`` tokens on average. Sliding-window layers cap both at the window."""
    d = model.hidden_size
    hq, hkv = heads_per_gpu(model, tp)
    dec_tokens = dec_seqs * q
    tokens = dec_tokens + pre_tokens
    ops = {}
    if model.attention == "mla":
        # Down-projections (q_a, kv_a) are replicated on every TP rank; up-projections are sharded.
        proj = gemm(p, hw, prec, tokens, model.q_lora_rank + model.kv_lora_rank + model.qk_rope_head_dim, d) \
            if model.q_lora_rank else gemm(p, hw, prec, tokens, hq * model.qk_head_dim
                                           + model.kv_lora_rank + model.qk_rope_head_dim, d)
        if model.q_lora_rank:
            proj = proj + gemm(p, hw, prec, tokens, hq * model.qk_head_dim, model.q_lora_rank)
        # Prefill decompresses K/V for its new tokens; decode absorbs W_uk and W_uv into per-head
        # batched matmuls (q_nope -> latent, latent -> v) instead.
        proj = proj + gemm(p, hw, prec, pre_tokens, hq * (model.qk_nope_head_dim + model.v_head_dim),
                           model.kv_lora_rank)
        proj = proj + gemm(p, hw, prec, dec_tokens, model.kv_lora_rank, model.qk_nope_head_dim, batch=hq)
        proj = proj + gemm(p, hw, prec, dec_tokens, model.v_head_dim, model.kv_lora_rank, batch=hq)
        proj = proj + gemm(p, hw, prec, tokens, d, hq * model.v_head_dim)
    else:
        # an output gate (Qwen3-Next / Qwen3.5) doubles the query projection's width
        q_width = hq * (2 if model.attn_output_gate else 1)
        proj = gemm(p, hw, prec, tokens, (q_width + 2 * hkv) * model.head_dim, d) \
            + gemm(p, hw, prec, tokens, d, hq * model.head_dim)
    ops["attn_proj"] = proj
    s = model.sliding_layers / model.num_layers
    win = float(model.sliding_window) if model.sliding_window else 0.0

    def mix(fn, length):
        full = fn(length)
        if not s:
            return full
        return full.scale(1 - s) + fn(jnp.minimum(length, win)).scale(s)

    if model.is_sparse:
        # DeepSeek Sparse Attention: MLA over the top-k keys the indexer picks (the same kernels
        # per (query, key) pair as dense MLA, so the MLA family's efficiencies), plus the indexer,
        # which scores every cached key. The KV cache itself stays full (cost.memory_per_gpu).
        top = float(model.index_topk)
        ops["sparse_attention"] = attention_decode(p, hw, model, prec, dec_seqs, jnp.minimum(kv_len, top), hq, hkv, q) \
            + attention_prefill(p, hw, model, prec, pre_tokens, sparse_span(ctx, top), hq, hkv)
        ops["dsa_indexer"] = dsa_indexer(p, hw, model, prec, dec_seqs, pre_tokens, kv_len, ctx, q)
    else:
        ops["attention"] = mix(lambda L: attention_decode(p, hw, model, prec, dec_seqs, L, hq, hkv, q), kv_len) \
            + mix(lambda L: attention_prefill(p, hw, model, prec, pre_tokens, L, hq, hkv), ctx)
    if model.linear_layers:
        # Hybrid: a share of the layers is Gated DeltaNet instead (costs per layer kind, weighted).
        lin = model.linear_layers / model.num_layers
        ops = {k: c.scale(1.0 - lin) for k, c in ops.items()}
        ops.update({k: c.scale(lin) for k, c in linear_attention(p, hw, model, prec, dec_seqs, pre_tokens, tp,
                                                                   q).items()})
    return ops


def mlp(p, hw, prec, tokens, hidden, intermediate, matrices, tp) -> Cost:
    """Dense (gated) MLP sharded tp ways: up (and gate) then down."""
    ff = intermediate / tp
    return gemm(p, hw, prec, tokens, (matrices - 1) * ff, hidden) + gemm(p, hw, prec, tokens, hidden, ff)


def layer_costs(p, hw: Hardware, model: Model, prec: Precision, dec, pre, kv_len, ctx, tp, ep, adp,
                moe: bool, q: float = 1.0) -> dict:
    """One transformer layer on one GPU for a micro-batch of ``dec`` decode sequences (``q`` new
    tokens each) and ``pre`` prefill tokens across the replica stage (so ``dec/adp`` and
    ``pre/adp`` per attention group).

    Two all-reduces per layer over the attention group (after attention and after the MLP/MoE)."""
    d = model.hidden_size
    tpa = tp * ep / adp
    dec_g, pre_g = dec / adp, pre / adp
    tok_g = dec_g * q + pre_g
    ops = attention_block(p, hw, model, prec, dec_g, pre_g, kv_len, ctx, tpa, q)
    if moe:
        tok_rep = dec * q + pre
        ops["moe_router"] = gemm(p, hw, prec, tok_g, model.num_experts, d, weight_bytes=2.0, rate="bf16")
        ops["moe_experts"] = moe_experts(p, hw, model, prec, tok_rep, tp, ep)
        if model.num_shared_experts:
            ops["mlp"] = mlp(p, hw, prec, tok_g, d, model.num_shared_experts * model.shared_intermediate_size,
                             model.mlp_matrices, tpa)
        # Dispatch (quantized activations) and combine (BF16). A token must reach every GPU that
        # holds a shard of one of its experts: the tp shards of each distinct EP rank it hits,
        # u = 1 - (1 - 1/ep)^k of the ep ranks. Spread over the S = tp*ep GPUs of the stage that
        # is tok_rep * u * d elements received per GPU, of which the share 1/adp already sits in
        # the GPU's own attention group (adp = 1: every GPU has every token; no all-to-all, the
        # MoE output is summed by the layer's second all-reduce instead).
        span = tp * ep
        hit = 1.0 - (1.0 - 1.0 / ep) ** model.top_k
        per_gpu = tok_rep * hit * d
        ops["ep_alltoall"] = Cost(comm_ep=alltoall(p, hw, per_gpu * prec.qact_bytes, adp, span)
                                  + alltoall(p, hw, per_gpu * prec.act_bytes, adp, span))
    else:
        ops["mlp"] = mlp(p, hw, prec, tok_g, d, model.ffn_intermediate_size, model.mlp_matrices, tpa)
    ops["tp_allreduce"] = Cost(comm_tp=2 * allreduce(p, hw, tok_g * d * prec.act_bytes, tpa))
    # Two norms, two residual adds, the activation function: ~6 passes over the activations.
    ops["norms"] = elementwise(p, hw, 6 * tok_g * d * prec.act_bytes) + Cost(overhead=p["layer_overhead_s"])
    return ops


def stage_costs(p, hw: Hardware, model: Model, prec: Precision, dec, pre, kv_len, ctx, tp, ep, adp, pp,
                q: float = 1.0) -> dict:
    """One micro-batch through one pipeline stage: layers/pp of each kind, plus a 1/pp share of the
    LM head (stages are assumed balanced by giving the last stage fewer layers). ``q``: new tokens
    per decode sequence (speculative decoding verifies 1 + the drafted ones).

    Returns op-group name -> Cost; their sum is the stage time."""
    out: dict[str, Cost] = {}

    def acc(ops, weight):
        for k, c in ops.items():
            out[k] = out[k] + c.scale(weight) if k in out else c.scale(weight)

    if model.num_dense_layers:
        acc(layer_costs(p, hw, model, prec, dec, pre, kv_len, ctx, tp, ep, adp, moe=False, q=q),
            model.num_dense_layers / pp)
    if model.num_moe_layers:
        acc(layer_costs(p, hw, model, prec, dec, pre, kv_len, ctx, tp, ep, adp, moe=True, q=q),
            model.num_moe_layers / pp)
    # LM head: logits for every decode token and the last token of each prefill chunk (~1 per chunk).
    tpa = tp * ep / adp
    heads_tokens = (dec * q + jnp.where(pre > 0, adp, 0.0)) / adp
    acc({"lm_head": gemm(p, hw, prec, heads_tokens, model.vocab_size / tpa, model.hidden_size,
                         weight_bytes=2.0, rate="bf16")}, 1.0 / pp)
    return out


def draft_costs(p, hw: Hardware, model: Model, prec: Precision, dec, kv_len, tp, ep, adp, draft_tokens: int,
                draft_layers: int = 1) -> Cost:
    """Speculative drafting for one decode step of ``dec`` sequences: ``draft_tokens`` passes one
    after another (each drafts the next token), each through ``draft_layers`` layers shaped like
    the model's own (DeepSeek-V3's multi-token-prediction module is one such layer) and the LM
    head, one token per sequence."""
    layer = sum_costs(layer_costs(p, hw, model, prec, dec, 0.0, kv_len, 0.0, tp, ep, adp, moe=model.is_moe).values())
    tpa = tp * ep / adp
    head = gemm(p, hw, prec, dec / adp, model.vocab_size / tpa, model.hidden_size, weight_bytes=2.0, rate="bf16")
    return (layer.scale(draft_layers) + head).scale(draft_tokens)


# ----------------------------------------------------------------------------- memory

def memory_per_gpu(p, hw: Hardware, model: Model, prec: Precision, isl, osl, tp, ep, adp, pp, batch, chunk,
                   draft_layers: int = 0) -> dict:
    """Bytes on the busiest GPU of a replica: weights, KV cache of the running batch at full
    context, activations of one iteration, and the runtime reserve. ``draft_layers``: layers of a
    speculative draft head (e.g. DeepSeek's MTP module, one layer) held beside the last stage."""
    d = model.hidden_size
    tpa = tp * ep / adp
    hq, hkv = heads_per_gpu(model, tpa)
    if model.attention == "mla":
        # q_a/kv_a down-projections are replicated; the rest of attention is sharded.
        repl = d * (model.q_lora_rank + model.kv_lora_rank + model.qk_rope_head_dim) if model.q_lora_rank else 0.0
        attn = repl + (model.attention_params() - repl) / tpa
        kv_per_tok_layer = model.kv_elements_per_token_layer()          # latent replicated over TP
    else:
        attn = d * model.head_dim * ((3 if model.attn_output_gate else 2) * hq + 2 * hkv)
        kv_per_tok_layer = 2 * hkv * model.head_dim
    if model.is_sparse:
        # the DSA indexer's weights are replicated on every attention-TP rank (cost.dsa_indexer)
        attn = attn + model.indexer_params() * (1.0 - 1.0 / tpa)
    if model.linear_layers:
        # layers are of two kinds: the mean weights of a layer's token mixing (Gated DeltaNet sharded)
        lin = model.linear_layers / model.num_layers
        attn = (1.0 - lin) * attn + lin * model.linear_attention_params() / tpa
    per_layer_dense = attn + model.dense_mlp_params() / tpa
    per_layer_moe = attn + model.num_experts / ep * model.expert_params() / tp + model.shared_params() / tpa \
        + d * model.num_experts
    layer_weights = (model.num_dense_layers * per_layer_dense + model.num_moe_layers * per_layer_moe) / pp \
        + draft_layers * (per_layer_moe if model.is_moe else per_layer_dense)
    # Embedding on the first stage, LM head on the last, both BF16 and vocab-sharded over TP.
    emb = model.vocab_size * d / tpa * 2.0 * jnp.where(pp > 1, 1.0, 1.0 if model.tie_embeddings else 2.0)
    weights = layer_weights * prec.weight_bytes + emb
    ctx = isl + osl
    s = model.sliding_layers / model.num_layers
    eff_ctx = (1 - s) * ctx + s * jnp.minimum(ctx, float(model.sliding_window or 1e12))
    # KV cache of the softmax-attention layers (DSA keeps every key, and its indexer's FP8 keys
    # too); a linear-attention layer holds a fixed state per request whatever the context.
    kv = batch / adp * eff_ctx * kv_per_tok_layer * prec.kv_bytes * model.num_full_layers / pp
    if model.is_sparse:
        kv = kv + batch / adp * eff_ctx * model.index_key_bytes_per_token_layer() * model.num_full_layers / pp
    if model.linear_layers:
        kv = kv + batch / adp * linear_state_bytes(model, prec, tpa) * model.linear_layers / pp
    tokens = chunk + batch / adp                      # one attention group's iteration
    widest = max(model.ffn_intermediate_size, model.top_k * model.expert_intermediate_size,
                 model.num_heads * max(model.qk_head_dim, model.head_dim))
    per_token_act = (4 * d + 2 * widest / tpa) * prec.act_bytes
    act = tokens * per_token_act + batch / adp * model.vocab_size / tpa * 4.0
    reserve = p["mem_reserve_gb"] * 1e9
    total = weights + kv + act + reserve
    # The engines size the KV cache from the memory left once the weights are loaded and a
    # forward pass has run: TensorRT-LLM gives it ``free_gpu_memory_fraction`` (0.9 by default) of
    # that free memory; vLLM's ``gpu_memory_utilization`` and SGLang's ``mem_fraction_static``
    # leave a similar margin. ``mem_usable_frac`` is that fraction; what is fixed (weights, the
    # activations of the chunk-sized iteration the engine profiles at start-up, the reserve) is not
    # discounted. ``hw.hbm_capacity`` is the bytes the GPU exposes (nvidia-smi). The capacity
    # depends on the layout, not on the batch.
    fixed = weights + chunk * per_token_act + reserve
    capacity = fixed + p["mem_usable_frac"] * (hw.hbm_capacity - fixed)
    return {"weights": weights, "kv_cache": kv, "activations": act, "reserve": reserve, "total": total,
            "capacity": capacity}


def max_batch_that_fits(p, hw: Hardware, model: Model, prec: Precision, isl, osl, tp, ep, adp, pp, chunk,
                        draft_layers: int = 0, per=1.0, min_step=1e-9):
    """How many batches of ``per`` requests fit in HBM beside what a batch of none needs (weights,
    one iteration's activations, the reserve), unrounded; negative where even that does not fit.

    Memory is affine in the batch (each request adds its KV cache at ``isl + osl`` tokens of
    context and its activations), so two evaluations give the slope; ``min_step`` bounds the slope
    from below. Used for the sweep's batch limit (per = 1 request, full context), admission
    (per = one request per attention group at the mean context) and the serving validator."""
    m0 = memory_per_gpu(p, hw, model, prec, isl, osl, tp, ep, adp, pp, 0.0, chunk, draft_layers)
    m1 = memory_per_gpu(p, hw, model, prec, isl, osl, tp, ep, adp, pp, per, chunk, draft_layers)
    return (m0["capacity"] - m0["total"]) / jnp.maximum(m1["total"] - m0["total"], min_step)
