"""Cost model: each op's time against numbers built by hand from the published H100 figures, the
architecture of the preset models and the parameter formulas; physical laws with hypothesis.

Expected values never come from the code under test: FLOPs, bytes and efficiencies are written
out here from named quantities, and only the (input) parameter values are read from the params.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxplan import cost as C
from jaxplan.cost import Cost

# H100 SXM datasheet (dense rates), HGX board, NDR InfiniBand.
H100_BF16 = 989e12          # FLOP/s
H100_FP8 = 1979e12          # FLOP/s
H100_HBM = 3.35e12          # bytes/s
H100_HBM_CAP = 85.5e9       # bytes an engine can allocate: 81,559 MiB as nvidia-smi reports ("80 GB")
H100_DOMAIN = 8             # GPUs per NVLink domain
H100_NVLINK = 450e9         # bytes/s per direction
H100_IB = 50e9              # bytes/s (400 Gb/s)
H100_NVLINK_LATENCY = 3e-6  # s, the preset's scaleup_latency_us
H100_IB_LATENCY = 5e-6      # s, the preset's scaleout_latency_us

MAC = 2                     # FLOPs per multiply-accumulate
BF16_BYTES, FP8_BYTES = 2, 1

# Llama 3.1 70B (Hugging Face config.json)
L70_LAYERS, L70_D, L70_HEADS, L70_KV, L70_HD, L70_FF, L70_VOCAB = 80, 8192, 64, 8, 128, 28672, 128256
L70_PUBLISHED = 70.6e9
# DeepSeek-V3 MLA
DSV3_LAYERS, DSV3_KV_LORA, DSV3_ROPE = 61, 512, 64
# GPT-1.8T-MoE stand-in: 16 experts, top-2, gated experts of 12288 x 24576
GPT_E, GPT_K, GPT_D, GPT_FF = 16, 2, 12288, 24576

REL = 1e-5                  # float32 agreement for closed-form numbers


def f(x):
    return float(np.asarray(x))


def smooth_max(a, b, sharp):
    """The roofline join the params document: (t_c^p + t_m^p)^(1/p)."""
    return (a ** sharp + b ** sharp) ** (1.0 / sharp)


def pv(p, name):
    return float(p[name])


def test_h100_preset_is_the_datasheet(h100):
    assert h100.bf16_flops == H100_BF16 and h100.fp8_flops == H100_FP8
    assert h100.hbm_bandwidth == H100_HBM and h100.hbm_capacity == H100_HBM_CAP
    assert h100.scale_up_domain == H100_DOMAIN
    assert h100.scale_up_bandwidth == H100_NVLINK and h100.scale_out_bandwidth == H100_IB


# ----------------------------------------------------------------------------- Cost pytree

def test_cost_adds_fieldwise_and_total_sums_fields():
    a = Cost(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    b = Cost(10.0, 20.0, 30.0, 40.0, 50.0, 60.0)
    s = a + b
    assert [f(getattr(s, k)) for k in ("compute", "memory", "comm_tp", "comm_ep", "comm_pp", "overhead")] \
        == [11.0, 22.0, 33.0, 44.0, 55.0, 66.0]
    assert f(a.total()) == 21.0
    assert f(s.total()) == f(a.total()) + f(b.total())
    assert f(a.scale(3.0).total()) == 63.0
    z = C.zero_cost()
    assert f((z + a).total()) == 21.0
    assert f(C.sum_costs([a, b, a]).total()) == 21.0 * 2 + 210.0


def test_cost_is_a_pytree_with_six_leaves():
    a = Cost(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    leaves, tree = jax.tree_util.tree_flatten(a)
    assert sorted(leaves) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    doubled = jax.tree_util.tree_unflatten(tree, [2 * x for x in leaves])
    assert f(doubled.total()) == 42.0


def test_cost_where_keeps_or_zeroes_every_field():
    a = Cost(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    assert f(a.where(True).total()) == 21.0
    gone = a.where(False)
    assert all(f(x) == 0.0 for x in jax.tree_util.tree_leaves(gone))
    # vectorised condition: one lane kept, one dropped
    v = Cost(*(jnp.asarray([x, x]) for x in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)))
    np.testing.assert_array_equal(np.asarray(v.where(jnp.asarray([True, False])).total()), [21.0, 0.0])


# ----------------------------------------------------------------------------- GEMM

def gemm_eff(p, rate, m, n, k):
    """eff = eff_max * m/(m + m_half) * n/(n + h) * k/(k + h), from the params' documentation."""
    sat = lambda x, h: x / (x + h)
    return pv(p, f"gemm_eff_{rate}") * sat(m, pv(p, "gemm_m_half")) \
        * sat(n, pv(p, "gemm_nk_half")) * sat(k, pv(p, "gemm_nk_half"))


def test_gemm_large_square_bf16_is_compute_bound(p, h100, bf16):
    m = n = k = 8192
    flops = MAC * m * n * k
    t_compute = flops / (H100_BF16 * gemm_eff(p, "bf16", m, n, k))
    nbytes = n * k * BF16_BYTES + m * k * BF16_BYTES + m * n * BF16_BYTES   # W, X, Y
    t_memory = nbytes / (H100_HBM * pv(p, "mem_eff"))
    assert t_compute > 10 * t_memory
    c = C.gemm(p, h100, bf16, m, n, k)
    expect = smooth_max(t_compute, t_memory, pv(p, "roofline_sharpness"))
    assert f(c.compute) == pytest.approx(expect, rel=REL)
    assert f(c.memory) == 0.0
    assert f(c.overhead) == pytest.approx(pv(p, "kernel_latency_s"), rel=REL)
    assert f(c.total()) == pytest.approx(expect + pv(p, "kernel_latency_s"), rel=REL)
    # sanity: ~1.1 TFLOP at ~75% of 989 TFLOP/s is about 1.5 ms
    assert 1.2e-3 < f(c.total()) < 2.0e-3


def test_gemm_decode_m1_fp8_is_weight_bandwidth_bound(p, h100, fp8):
    m, n, k = 1, 8192, 8192
    nbytes = n * k * FP8_BYTES + m * k * FP8_BYTES + m * n * BF16_BYTES   # FP8 W and X, BF16 Y
    t_memory = nbytes / (H100_HBM * pv(p, "mem_eff"))
    t_compute = MAC * m * n * k / (H100_FP8 * gemm_eff(p, "fp8", m, n, k))
    assert t_memory > 3 * t_compute
    c = C.gemm(p, h100, fp8, m, n, k)
    assert f(c.compute) == 0.0
    assert f(c.memory) == pytest.approx(smooth_max(t_compute, t_memory, pv(p, "roofline_sharpness")), rel=REL)
    # ~ the 64 MiB of FP8 weights over 85% of 3.35 TB/s: ~23.6 us
    assert f(c.memory) == pytest.approx(n * k / (H100_HBM * pv(p, "mem_eff")), rel=0.01)


def test_gemm_launch_latency_and_empty_gemm(p, h100, fp8):
    lat = pv(p, "kernel_latency_s")
    tiny = C.gemm(p, h100, fp8, 1, 16, 16)
    # a 1x16x16 GEMM: 512 FLOPs and ~300 bytes take nanoseconds; its time is the kernel latency
    assert f(tiny.total()) == pytest.approx(lat, rel=0.01)
    assert f(tiny.overhead) == pytest.approx(lat, rel=REL)
    p2 = dict(p, kernel_latency_s=jnp.float32(3 * lat))
    tiny2 = C.gemm(p2, h100, fp8, 1, 16, 16)
    assert f(tiny2.total()) - f(tiny.total()) == pytest.approx(2 * lat, rel=1e-3)
    # latency adds on top of a big GEMM too
    big, big2 = C.gemm(p, h100, fp8, 4096, 4096, 4096), C.gemm(p2, h100, fp8, 4096, 4096, 4096)
    assert f(big2.total()) - f(big.total()) == pytest.approx(2 * lat, rel=1e-3)
    # no rows: no kernel, no cost at all (and no NaN from 0/0)
    empty = C.gemm(p, h100, fp8, 0, 8192, 8192)
    assert all(f(x) == 0.0 for x in jax.tree_util.tree_leaves(empty))


def test_gemm_matches_hand_roofline_across_shapes(p, h100, bf16):
    """Thin, square and wide shapes: the time is the smooth max of the hand compute time (with the
    shape-dependent efficiency) and the hand memory time, booked to the larger of the two."""
    sharp = pv(p, "roofline_sharpness")
    regimes = set()
    for m, n, k in ((16, 8192, 8192), (128, 16384, 16384), (2048, 2048, 2048), (8, 128256, 8192)):
        tc = MAC * m * n * k / (H100_BF16 * gemm_eff(p, "bf16", m, n, k))
        tm = (n * k + m * k + m * n) * BF16_BYTES / (H100_HBM * pv(p, "mem_eff"))
        c = C.gemm(p, h100, bf16, m, n, k)
        assert f(c.total() - c.overhead) == pytest.approx(smooth_max(tc, tm, sharp), rel=REL)
        assert (f(c.compute) > 0) == (tc >= tm) and (f(c.memory) > 0) == (tc < tm)
        regimes.add(tc >= tm)
    assert regimes == {True, False}


def test_gemm_batched_and_rate_override(p, h100, fp8):
    """``batch`` identical GEMMs cost batch x the FLOPs and bytes; rate='bf16' uses the BF16 peak and
    BF16 activations, with the weight bytes given."""
    m, n, k, b = 64, 512, 128, 16
    sharp = pv(p, "roofline_sharpness")
    tc = b * MAC * m * n * k / (H100_FP8 * gemm_eff(p, "fp8", m, n, k))
    tm = b * (n * k * FP8_BYTES + m * k * FP8_BYTES + m * n * BF16_BYTES) / (H100_HBM * pv(p, "mem_eff"))
    c = C.gemm(p, h100, fp8, m, n, k, batch=b)
    assert f(c.total() - c.overhead) == pytest.approx(smooth_max(tc, tm, sharp), rel=REL)
    # the LM head / router path: BF16 weights and activations at the BF16 rate
    m, n, k = 4096, 16384, 8192
    tc = MAC * m * n * k / (H100_BF16 * gemm_eff(p, "bf16", m, n, k))
    tm = (n * k + m * k + m * n) * BF16_BYTES / (H100_HBM * pv(p, "mem_eff"))
    c = C.gemm(p, h100, fp8, m, n, k, weight_bytes=2.0, rate="bf16")
    assert f(c.total() - c.overhead) == pytest.approx(smooth_max(tc, tm, sharp), rel=REL)


# ----------------------------------------------------------------------------- attention

def test_gqa_kv_heads_replicated_beyond_tp(models):
    m = models("llama-3.1-70b")
    for tp, (hq, hkv) in {1: (64, 8), 4: (16, 2), 8: (8, 1), 16: (4, 1), 64: (1, 1)}.items():
        q, kv = C.heads_per_gpu(m, tp)
        assert (f(q), f(kv)) == (hq, hkv), tp


def test_attention_decode_gqa_bytes(p, h100, fp8, models):
    """Decode reads 2 * kv_heads * head_dim * kv_bytes per cached token and spends
    4 * heads * head_dim FLOPs on it; at 16 FLOP/byte it is HBM-bound."""
    m = models("llama-3.1-70b")
    seqs, kv_len = 64, 4096
    sharp = pv(p, "roofline_sharpness")
    for tp in (8, 16):          # both hold one KV head per GPU: the same bytes
        hq, hkv = L70_HEADS / tp, max(L70_KV / tp, 1)
        nbytes = seqs * kv_len * 2 * hkv * L70_HD * FP8_BYTES
        flops = seqs * kv_len * MAC * 2 * hq * L70_HD
        tm = nbytes / (H100_HBM * pv(p, "attn_decode_mem_eff"))
        tc = flops / (H100_FP8 * pv(p, "attn_decode_eff"))
        assert tm > tc
        c = C.attention_decode(p, h100, m, fp8, seqs, kv_len, *C.heads_per_gpu(m, tp))
        assert f(c.memory) == pytest.approx(smooth_max(tc, tm, sharp), rel=REL)
        assert f(c.compute) == 0.0
    t8 = C.attention_decode(p, h100, m, fp8, seqs, kv_len, *C.heads_per_gpu(m, 8))
    t16 = C.attention_decode(p, h100, m, fp8, seqs, kv_len, *C.heads_per_gpu(m, 16))
    # replicated KV heads: going from TP8 to TP16 does not shrink the bytes read per GPU
    assert f(t16.memory) == pytest.approx(f(t8.memory), rel=0.02)
    t4 = C.attention_decode(p, h100, m, fp8, seqs, kv_len, *C.heads_per_gpu(m, 4))
    assert f(t4.memory) == pytest.approx(2 * f(t8.memory), rel=0.02)
    # nothing to decode: no cost
    assert f(C.attention_decode(p, h100, m, fp8, 0, kv_len, 8, 1).total()) == 0.0


def test_attention_decode_mla_latent_not_divided_by_tp(p, h100, fp8, models):
    """Absorbed MLA reads the latent (kv_lora_rank + qk_rope_head_dim per token) once for all heads:
    the bytes do not shrink with TP, and at ~60 FLOP/byte the read is HBM-bound."""
    m = models("deepseek-v3")
    seqs, kv_len = 32, 8192
    sharp = pv(p, "roofline_sharpness")
    per_token = (DSV3_KV_LORA + DSV3_ROPE) * FP8_BYTES          # the compressed latent + RoPE key
    tm = seqs * kv_len * per_token / (H100_HBM * pv(p, "mla_decode_mem_eff"))
    times = []
    for heads in (128 / 8, 128 / 32):                           # TP8 and TP32
        flops = seqs * kv_len * MAC * heads * (2 * DSV3_KV_LORA + DSV3_ROPE)
        tc = flops / (H100_FP8 * pv(p, "mla_decode_eff"))
        assert tc < tm / 3
        c = C.attention_decode(p, h100, m, fp8, seqs, kv_len, heads, heads)
        assert f(c.memory) == pytest.approx(smooth_max(tc, tm, sharp), rel=REL)
        assert f(c.compute) == 0.0
        times.append(f(c.memory))
    assert times[1] == pytest.approx(times[0], rel=0.02)        # TP32 reads as much as TP8
    # a GQA model with as many query heads would read 2 * 128 * 128 elements per token instead
    gqa_bytes = 2 * 128 * 128 * FP8_BYTES
    assert gqa_bytes / per_token > 50


def test_attention_prefill_causal_flops(p, h100, fp8, models):
    """A causal prompt of S tokens: each query sees S/2 keys on average, QK^T and PV each
    2 * S * (S/2) * head_dim FLOPs per head."""
    m = models("llama-3.1-70b")
    sharp = pv(p, "roofline_sharpness")
    hq, hkv = L70_HEADS / 8, 1
    times = []
    for S in (4096, 16384):
        flops = 2 * MAC * S * (S / 2) * hq * L70_HD
        eff = pv(p, "attn_prefill_eff") * S / (S + pv(p, "attn_q_half"))
        tc = flops / (H100_FP8 * eff)
        tm = (S / 2 * 2 * hkv * L70_HD * FP8_BYTES + 2 * S * hq * L70_HD * BF16_BYTES) / (H100_HBM * pv(p, "mem_eff"))
        assert tc > 5 * tm
        c = C.attention_prefill(p, h100, m, fp8, S, S / 2, hq, hkv)
        assert f(c.compute) == pytest.approx(smooth_max(tc, tm, sharp), rel=REL)
        times.append(f(c.compute))
    # quadratic in the prompt: 4x the tokens, ~16x the time
    assert times[1] / times[0] == pytest.approx(16.0, rel=0.03)
    assert f(C.attention_prefill(p, h100, m, fp8, 0, 1024, hq, hkv).total()) == 0.0


def test_round_prefill_attention_is_causal_over_the_whole_prompt(p, h100, fp8, models):
    """A whole prompt as one chunk (no decoders, pp 1): the 'attention' op of the round is
    num_layers causal prefills of the prompt."""
    from jaxplan.layouts import Layout
    from jaxplan.serving import round_costs
    from jaxplan.specs import Workload
    m = models("llama-3.1-70b")
    isl, tp = 4096.0, 8
    lay = Layout(*(jnp.float32(v) for v in (tp, 1, 1, 1, 1, isl, 1)))
    ops = round_costs(p, h100, m, fp8, Workload(isl, 256.0), lay, jnp.float32(0.0), jnp.float32(isl))
    hq, hkv = L70_HEADS / tp, 1
    flops = 2 * MAC * isl * (isl / 2) * hq * L70_HD
    tc = flops / (H100_FP8 * pv(p, "attn_prefill_eff") * isl / (isl + pv(p, "attn_q_half")))
    tm = (isl / 2 * 2 * hkv * L70_HD + 2 * isl * hq * L70_HD * BF16_BYTES) / (H100_HBM * pv(p, "mem_eff"))
    per_layer = smooth_max(tc, tm, pv(p, "roofline_sharpness")) + pv(p, "kernel_latency_s")
    assert f(ops["attention"].total()) == pytest.approx(L70_LAYERS * per_layer, rel=1e-4)


# ----------------------------------------------------------------------------- MoE

def test_expected_active_experts():
    E, k = GPT_E, GPT_K
    assert f(C.expected_active_experts(E, k, 1.0)) == pytest.approx(k, rel=1e-5)
    assert f(C.expected_active_experts(E, k, 4.0)) == pytest.approx(E * (1 - (1 - k / E) ** 4), rel=1e-5)
    assert f(C.expected_active_experts(E, k, 10_000.0)) == pytest.approx(E, rel=1e-6)
    assert f(C.expected_active_experts(256, 8, 32.0)) == pytest.approx(256 * (1 - (1 - 8 / 256) ** 32), rel=1e-5)
    assert f(C.expected_active_experts(256, 8, 1.0)) == pytest.approx(8, rel=1e-5)
    ts = jnp.asarray([1.0, 2.0, 4.0, 16.0, 64.0, 256.0])
    a = np.asarray(C.expected_active_experts(E, k, ts))
    assert np.all(np.diff(a) > 0) and np.all(a <= E)


def test_moe_expert_weight_reads_follow_active_experts(p, h100, fp8, models):
    """Only the experts that receive a token are read. The compute efficiency is pushed to the top of
    its range so the op is plainly HBM-bound and its time is the bytes over the bandwidth."""
    m = models("gpt-1.8t-moe")
    q = dict(p, moe_eff=jnp.float32(1.0), moe_m_half=jnp.float32(1.0))
    per_expert = 3 * GPT_D * GPT_FF                              # gated: up, gate, down
    bw = H100_HBM * pv(p, "moe_mem_eff")
    for tokens, ep in ((1.0, 1), (4.0, 1), (1.0, 8), (4096.0, 1)):
        imb = 1 + pv(p, "moe_imbalance_per_log2_ep") * math.log2(ep)
        active = GPT_E * (1 - (1 - GPT_K / GPT_E) ** tokens)
        pairs = tokens * GPT_K / ep * imb
        nbytes = active / ep * per_expert * FP8_BYTES + pairs * GPT_D * (FP8_BYTES + BF16_BYTES)
        c = C.moe_experts(q, h100, m, fp8, tokens, 1, ep)
        if tokens < 100:
            assert f(c.compute) == 0.0
            assert f(c.memory) == pytest.approx(nbytes / bw, rel=1e-4), (tokens, ep)
        else:                                                    # every expert's weights at least
            assert f(c.total()) >= GPT_E * per_expert * FP8_BYTES / bw
    one = f(C.moe_experts(q, h100, m, fp8, 1.0, 1, 1).memory)
    assert one == pytest.approx(GPT_K * per_expert * FP8_BYTES / bw, rel=0.001)   # top-2 of 16 experts


@pytest.mark.parametrize("name", [
    "mixtral-8x22b",
    "deepseek-v3",
])
def test_moe_one_decode_token_is_weight_bandwidth_bound(p, h100, fp8, models, name):
    """One token through its top-k experts is k GEMVs: each active expert gets a whole row, and the
    op costs what reading those k experts' weights costs, like any decode GEMM with m = 1."""
    m = models(name)
    per_expert = 3 * m.hidden_size * m.expert_intermediate_size
    bw = H100_HBM * pv(p, "moe_mem_eff")
    tm = (m.top_k * per_expert * FP8_BYTES + m.top_k * m.hidden_size * (FP8_BYTES + BF16_BYTES)) / bw
    rows = 1.0                                                  # per active expert
    eff = pv(p, "moe_eff") * rows / (rows + pv(p, "moe_m_half"))
    tc = MAC * m.top_k * per_expert / (H100_FP8 * eff)
    assert tc < tm / 3
    c = C.moe_experts(p, h100, m, fp8, 1.0, 1, 1)
    assert f(c.compute) == 0.0
    assert f(c.total() - c.overhead) == pytest.approx(smooth_max(tc, tm, pv(p, "roofline_sharpness")), rel=0.05)


# ----------------------------------------------------------------------------- collectives

def test_allreduce_ring_volume_and_latency(p, h100):
    nbytes = 64e6
    bw = H100_NVLINK * pv(p, "allreduce_bw_eff_nvlink")
    lat = f(h100.scale_up_latency) + pv(p, "allreduce_latency_nvlink_s")   # link + software, per step
    assert f(C.allreduce(p, h100, nbytes, 1.0)) == 0.0
    for n in (2, 4, 8):
        expect = lat * math.log2(n) + 2 * (n - 1) / n * nbytes / bw
        assert f(C.allreduce(p, h100, nbytes, float(n))) == pytest.approx(expect, rel=REL)
    # with the latency removed, the time is exactly the ring volume 2(n-1)/n over the link
    p0 = dict(p, allreduce_latency_nvlink_s=jnp.float32(0.0))
    h0 = h100.replace(scale_up_latency=0.0)
    for n in (2, 4, 8):
        assert f(C.allreduce(p0, h0, nbytes, float(n))) * bw / nbytes == pytest.approx(2 * (n - 1) / n, rel=REL)


def test_allreduce_jumps_past_the_scaleup_domain(p, h100):
    nbytes = 64e6
    t8 = f(C.allreduce(p, h100, nbytes, 8.0))
    t16 = f(C.allreduce(p, h100, nbytes, 16.0))
    # 16 GPUs = 2 HGX boards: NVLink reduce-scatter/all-gather over 8, then an all-reduce of the
    # 1/8 share between the 2 boards over InfiniBand
    net = (H100_IB_LATENCY + pv(p, "allreduce_latency_net_s")) * math.log2(2) \
        + 2 * (2 - 1) / 2 * (nbytes / 8) / (H100_IB * pv(p, "allreduce_bw_eff_net"))
    assert t16 == pytest.approx(t8 + net, rel=REL)
    assert t16 > 1.5 * t8


def _a2a(p, leaving, f_out):
    """Hand all-to-all: NVLink and network legs in parallel, the slower sets the time."""
    t_nv = H100_NVLINK_LATENCY + pv(p, "alltoall_latency_nvlink_s") + leaving * (1 - f_out) / (H100_NVLINK * pv(p, "alltoall_bw_eff_nvlink"))
    t_net = H100_IB_LATENCY + pv(p, "alltoall_latency_net_s") + leaving * f_out / (H100_IB * pv(p, "alltoall_bw_eff_net"))
    return max(t_nv, t_net) if f_out > 0 else t_nv


def test_alltoall_inside_and_across_the_domain(p, h100):
    nbytes = 8e6
    assert f(C.alltoall(p, h100, nbytes, 1.0, 1.0)) == 0.0
    # EP 8, TP 1 on an HGX board: all NVLink, 7/8 of the buffer leaves the GPU
    assert f(C.alltoall(p, h100, nbytes, 8.0, 8.0)) == pytest.approx(_a2a(p, nbytes * 7 / 8, 0.0), rel=REL)
    # EP 16, TP 1: half of the peers are on the other board
    t16 = f(C.alltoall(p, h100, nbytes, 16.0, 16.0))
    assert t16 == pytest.approx(_a2a(p, nbytes * 15 / 16, 0.5), rel=REL)
    assert t16 > 3 * f(C.alltoall(p, h100, nbytes, 8.0, 8.0))
    # EP 8 with TP 2 spans 16 ranks: same jump
    assert f(C.alltoall(p, h100, nbytes, 8.0, 16.0)) == pytest.approx(_a2a(p, nbytes * 7 / 8, 0.5), rel=REL)


def test_moe_layer_alltoall_jumps_when_tp_times_ep_exceeds_domain(p, h100, fp8, models):
    """GPT-1.8T-MoE layer, 256 decode tokens per replica stage, attention-DP = EP: dispatch (FP8) and
    combine (BF16). A token goes to the tp shards of each distinct EP rank among its top-2, i.e.
    u = 1 - (1 - 1/ep)^2 of the ranks, so each of the tp*ep GPUs receives tokens * u * d elements;
    the 1/adp share from its own attention group is already there."""
    m = models("gpt-1.8t-moe")
    tokens = 256.0

    def comm_ep(tp, ep, adp=None):
        adp = ep if adp is None else adp
        ops = C.layer_costs(p, h100, m, fp8, jnp.float32(tokens), jnp.float32(0.0), 2048.0, 1024.0,
                            jnp.float32(tp), jnp.float32(ep), jnp.float32(adp), moe=True)
        return f(ops["ep_alltoall"].comm_ep)

    def expect(tp, ep):
        u = 1 - (1 - 1 / ep) ** GPT_K
        per_gpu = tokens * u * GPT_D
        f_out = max(0.0, 1 - H100_DOMAIN / (tp * ep))
        leave = (ep - 1) / ep
        return _a2a(p, per_gpu * FP8_BYTES * leave, f_out) + _a2a(p, per_gpu * BF16_BYTES * leave, f_out)

    for tp, ep in ((1, 8), (1, 16), (2, 8), (1, 4)):
        assert comm_ep(tp, ep) == pytest.approx(expect(tp, ep), rel=REL), (tp, ep)
    # fewer bytes per GPU, yet slower: half the EP 16 peers sit behind 50 GB/s InfiniBand
    assert comm_ep(1, 16) > 2 * comm_ep(1, 8)
    assert comm_ep(2, 8) > 2 * comm_ep(1, 8)
    # attention sharded over the whole stage: every GPU already has every token, no all-to-all
    assert comm_ep(1, 8, adp=1) == 0.0


def test_p2p_uses_the_right_fabric(p, h100):
    nbytes = 1e6
    nv = h100.scale_up_latency + nbytes / (H100_NVLINK * pv(p, "p2p_bw_eff"))
    ib = h100.scale_out_latency + nbytes / (H100_IB * pv(p, "p2p_bw_eff"))
    assert f(C.p2p(p, h100, nbytes, False)) == pytest.approx(nv, rel=REL)
    assert f(C.p2p(p, h100, nbytes, True)) == pytest.approx(ib, rel=REL)


# ----------------------------------------------------------------------------- memory

def test_memory_weights_llama70b_fp8_tp8(p, h100, fp8, models):
    m = models("llama-3.1-70b")
    attn = L70_D * L70_HEADS * L70_HD * 2 + L70_D * L70_KV * L70_HD * 2     # q, o + k, v
    mlp = 3 * L70_D * L70_FF                                                # gate, up, down
    emb = L70_VOCAB * L70_D                                                 # each of in / out
    total = L70_LAYERS * (attn + mlp) + 2 * emb
    assert total == pytest.approx(L70_PUBLISHED, rel=0.005)   # the model card, norms aside
    tp = 8
    expect = L70_LAYERS * (attn + mlp) / tp * FP8_BYTES + 2 * emb / tp * BF16_BYTES
    mem = C.memory_per_gpu(p, h100, m, fp8, 1024.0, 1024.0, 8.0, 1.0, 1.0, 1.0, 1.0, 1024.0)
    assert f(mem["weights"]) == pytest.approx(expect, rel=REL)
    assert 8.5e9 < f(mem["weights"]) < 9.5e9
    parts = sum(f(mem[k]) for k in ("weights", "kv_cache", "activations", "reserve"))
    assert f(mem["total"]) == pytest.approx(parts, rel=REL)
    assert f(mem["reserve"]) == pytest.approx(pv(p, "mem_reserve_gb") * 1e9, rel=REL)
    # the KV cache gets mem_usable_frac of what weights, activations and the reserve leave free
    # (fixed: weights, the activations of a chunk of 1024 tokens, the reserve)
    act_chunk = 1024.0 * (4 * L70_D + 2 * max(L70_FF, L70_HEADS * L70_HD) / tp) * BF16_BYTES
    fixed = f(mem["weights"]) + act_chunk + f(mem["reserve"])
    assert f(mem["capacity"]) == pytest.approx(fixed + pv(p, "mem_usable_frac") * (H100_HBM_CAP - fixed), rel=REL)


def test_memory_kv_cache_gqa_replication_and_mla_latent(p, h100, fp8, models):
    batch, isl, osl = 32.0, 3072.0, 1024.0
    ctx = isl + osl
    m = models("llama-3.1-70b")
    kv = {tp: f(C.memory_per_gpu(p, h100, m, fp8, isl, osl, float(tp), 1.0, 1.0, 1.0, batch, 512.0)["kv_cache"])
          for tp in (4, 8, 16)}
    one_head = batch * ctx * 2 * 1 * L70_HD * FP8_BYTES * L70_LAYERS
    assert kv[8] == pytest.approx(one_head, rel=REL)
    assert kv[16] == pytest.approx(one_head, rel=REL)          # KV heads replicated past TP 8
    assert kv[4] == pytest.approx(2 * one_head, rel=REL)
    # PP splits the layers
    kv_pp2 = f(C.memory_per_gpu(p, h100, m, fp8, isl, osl, 8.0, 1.0, 1.0, 2.0, batch, 512.0)["kv_cache"])
    assert kv_pp2 == pytest.approx(one_head / 2, rel=REL)

    ds = models("deepseek-v3")
    latent = batch * ctx * (DSV3_KV_LORA + DSV3_ROPE) * FP8_BYTES * DSV3_LAYERS
    for tp in (8.0, 32.0):
        got = f(C.memory_per_gpu(p, h100, ds, fp8, isl, osl, tp, 1.0, 1.0, 1.0, batch, 512.0)["kv_cache"])
        assert got == pytest.approx(latent, rel=REL)


# ----------------------------------------------------------------------------- safe where

def test_empty_ops_cost_nothing_and_have_finite_zero_gradients(p, h100, fp8, models):
    """An op with no rows (a decode-only iteration has no prefill tokens; a prefill-only one no
    decoders) costs exactly zero, and its gradient is zero, not NaN: the 'safe where' pattern keeps
    the branch not taken finite (0/0 in the efficiency would poison every gradient)."""
    l70, ds = models("llama-3.1-70b"), models("deepseek-v3")
    ops = {
        "gemm": lambda p, hw, x: C.gemm(p, hw, fp8, x, 4096.0, 4096.0),
        "gemm_batched": lambda p, hw, x: C.gemm(p, hw, fp8, x, 512.0, 128.0, batch=16.0),
        "gemm_bf16": lambda p, hw, x: C.gemm(p, hw, fp8, x, 4096.0, 4096.0, weight_bytes=2.0, rate="bf16"),
        "decode_gqa": lambda p, hw, x: C.attention_decode(p, hw, l70, fp8, x, 2048.0, 8.0, 1.0),
        "decode_mla": lambda p, hw, x: C.attention_decode(p, hw, ds, fp8, x, 2048.0, 16.0, 16.0),
        "prefill_gqa": lambda p, hw, x: C.attention_prefill(p, hw, l70, fp8, x, 1024.0, 8.0, 1.0),
        "prefill_mla": lambda p, hw, x: C.attention_prefill(p, hw, ds, fp8, x, 1024.0, 16.0, 16.0),
        "moe_experts": lambda p, hw, x: C.moe_experts(p, hw, ds, fp8, x, 1.0, 8.0),
    }
    for name, op in ops.items():
        cost = op(p, h100, jnp.float32(0.0))
        assert all(f(v) == 0.0 for v in jax.tree_util.tree_leaves(cost)), name
        grads = jax.grad(lambda p, hw, x: op(p, hw, x).total(), argnums=(0, 1, 2))(p, h100, jnp.float32(0.0))
        leaves = [np.asarray(v) for v in jax.tree_util.tree_leaves(grads)]
        assert all(np.all(np.isfinite(v)) for v in leaves), name
        assert all(np.all(v == 0.0) for v in leaves), name
        # and just above zero the op costs something, with finite gradients
        g1 = jax.grad(lambda p, hw, x: op(p, hw, x).total(), argnums=(0, 1))(p, h100, jnp.float32(1.0))
        assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree_util.tree_leaves(g1)), name
        assert f(op(p, h100, jnp.float32(1.0)).total()) > 0, name


# ----------------------------------------------------------------------------- laws (hypothesis)

@pytest.fixture(scope="module")
def gemm_time(p, fp8):
    fn = jax.jit(lambda hw, m, n, k: C.gemm(p, hw, fp8, m, n, k).total())
    return fn


dims = st.sampled_from([1.0, 2.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0])
factors = st.floats(1.0, 8.0)


@settings(max_examples=25, deadline=None)
@given(m=dims, n=dims, k=dims, bw=factors, fl=factors)
def test_law_gemm_never_slower_on_faster_hardware(gemm_time, h100, m, n, k, bw, fl):
    base = f(gemm_time(h100, m, n, k))
    faster = h100.replace(hbm_bandwidth=h100.hbm_bandwidth * bw, fp8_flops=h100.fp8_flops * fl)
    assert f(gemm_time(faster, m, n, k)) <= base * (1 + 1e-6)
    assert f(gemm_time(h100.replace(hbm_bandwidth=h100.hbm_bandwidth * bw), m, n, k)) <= base * (1 + 1e-6)
    assert f(gemm_time(h100.replace(fp8_flops=h100.fp8_flops * fl), m, n, k)) <= base * (1 + 1e-6)


@settings(max_examples=25, deadline=None)
@given(m=dims, n=dims, k=dims, which=st.sampled_from(["m", "n", "k"]))
def test_law_gemm_bigger_is_never_faster(gemm_time, h100, m, n, k, which):
    base = f(gemm_time(h100, m, n, k))
    big = dict(m=m, n=n, k=k)
    big[which] *= 2
    assert f(gemm_time(h100, **big)) >= base * (1 - 1e-6)


MEM_MODELS = ("llama-3.1-70b", "gpt-1.8t-moe", "deepseek-v3")


@pytest.fixture(scope="module")
def mem_fns(p, h100, fp8, models):
    out = {}
    for name in MEM_MODELS:
        m = models(name)
        out[name] = jax.jit(jax.vmap(
            lambda tp, ep, adp, pp, b, m=m: C.memory_per_gpu(p, h100, m, fp8, 4096.0, 1024.0, tp, ep, adp, pp,
                                                            b, 2048.0)["total"]))
    return out


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(MEM_MODELS), tp=st.sampled_from([1, 2, 4, 8]), ep=st.sampled_from([1, 2, 4, 8]),
       pp=st.sampled_from([1, 2, 4]), batch=st.sampled_from([8.0, 64.0, 512.0]), adp_mode=st.sampled_from(["ep", "1"]))
def test_law_more_gpus_never_need_more_memory_per_gpu(mem_fns, models, name, tp, ep, pp, batch, adp_mode):
    """At a fixed batch per replica, doubling TP, EP or PP never raises the bytes per GPU."""
    m = models(name)
    if not m.is_moe:
        ep = 1
    rows = [(tp, ep, pp), (2 * tp, ep, pp), (tp, ep, 2 * pp)] + ([(tp, 2 * ep, pp)] if m.is_moe else [])
    adp = (lambda e: float(e)) if adp_mode == "ep" else (lambda e: 1.0)
    cols = [jnp.asarray(v, jnp.float32) for v in zip(*[(t, e, adp(e), q, batch) for t, e, q in rows])]
    tot = np.asarray(mem_fns[name](*cols))
    assert np.all(np.isfinite(tot))
    assert np.all(tot[1:] <= tot[0] * (1 + 1e-6)), (rows, tot)
