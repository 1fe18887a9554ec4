"""Disaggregated serving, attention-DP and wide EP: checks built from named quantities."""
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxplan.cost import alltoall, layer_costs
from jaxplan.layouts import Layout
from jaxplan.params import default_params
from jaxplan.serving import (
    disagg_cold_start_ttft,
    evaluate_disagg,
    kv_cache_bytes,
    kv_transfer_time,
    prefill_wait,
    prefill_worker,
    prefill_workers_needed,
)
from jaxplan.specs import Workload, config_root, get_precision, load_experiment, load_hardware, load_model
from jaxplan.sweep import PREFILL_UTILIZATIONS, run_disagg_sweep

FP8_KV_BYTES = 1.0
ISL = 8192

REPO = Path(__file__).resolve().parents[1]


def lay(tp=1, pp=1, ep=1, adp=None, batch=1, chunk=8192):
    return Layout(*(jnp.float32(v) for v in (tp, pp, ep, 1, batch, chunk, ep if adp is None else adp)))


@pytest.fixture(scope="module")
def p():
    return default_params()


def test_kv_bytes_gqa_llama70b():
    m = load_model("llama-3.1-70b")
    # GQA: K and V for each of 8 KV heads of 128 dims, in each of 80 layers.
    expected = ISL * 2 * 8 * 128 * FP8_KV_BYTES * 80
    assert float(kv_cache_bytes(m, get_precision("fp8"), ISL)) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.342e9, rel=1e-3)


def test_kv_bytes_mla_deepseek():
    m = load_model("deepseek-v3")
    # MLA caches one latent of kv_lora_rank 512 plus a shared 64-dim RoPE key per token per layer.
    expected = ISL * (512 + 64) * FP8_KV_BYTES * 61
    assert float(kv_cache_bytes(m, get_precision("fp8"), ISL)) == pytest.approx(expected, rel=1e-6)
    # ~4.7x less than the same context on Llama-70B, despite 128 heads.
    assert ISL * 2 * 8 * 128 * 80 / expected > 4.5


def test_kv_transfer_time_from_named_quantities(p):
    m, hw, prec = load_model("llama-3.1-70b"), load_hardware("h100-sxm"), get_precision("fp8")
    pre, dec = lay(tp=8), lay(tp=4)
    # 8 KV heads: a TP8 prefill worker holds 8 shards, a TP4 decode worker 4: 4 links in parallel.
    nbytes = ISL * 2 * 8 * 128 * 80 / 4
    for cross, bw, lat in ((True, hw.scale_out_bandwidth, hw.scale_out_latency),
                           (False, hw.scale_up_bandwidth, hw.scale_up_latency)):
        want = lat + nbytes / (bw * float(p["p2p_bw_eff"]))
        assert float(kv_transfer_time(p, hw, m, prec, ISL, pre, dec, cross)) == pytest.approx(want, rel=1e-5)
    # Over InfiniBand (50 GB/s) a 1.3 GB prompt cache takes ~10 ms even on 4 links; NVLink ~9x less.
    assert float(kv_transfer_time(p, hw, m, prec, ISL, pre, dec, True)) > 5e-3


def test_rate_matching_twice_as_fast_pool_needs_half_the_workers():
    y, r_d, rho = 8.0, 3.0, 0.8
    x = prefill_workers_needed(y, r_d, 1.5, rho)
    x_fast = prefill_workers_needed(y, r_d, 3.0, rho)
    assert x == 20 and x_fast == 10          # 8 * 3 / (0.8 * 1.5) = 20
    # and the pair is rate-matched: prefill capacity at the target utilization covers decode
    assert x * 1.5 * rho >= y * r_d


def test_prefill_wait_md1():
    # M/D/1: W = rho / (2 (1 - rho)) service times; at rho = 0.5 half a service time.
    assert float(prefill_wait(0.5, 2.0)) == pytest.approx(0.5 / (2 * 0.5) / 2.0)
    assert float(prefill_wait(0.0, 2.0)) == 0.0


def test_disagg_closed_loop_law_and_saturation(p):
    m, hw, prec = load_model("deepseek-v3"), load_hardware("h200-sxm"), get_precision("fp8")
    wl = Workload(8192.0, 1024.0)
    pre, dec = lay(tp=8, ep=1, adp=1, chunk=8192), lay(tp=1, ep=8, adp=8, batch=32)
    rate = float(prefill_worker(p, hw, m, prec, wl, pre)["rate"])
    for n in (8.0, 64.0, 1024.0):
        r = {k: float(v) for k, v in evaluate_disagg(p, hw, m, prec, wl, pre, dec, 1.0, 1.0, n, True).items()}
        # Little's law over the whole deployment: N = X * (TTFT + OSL * TPOT)
        assert r["requests_per_s"] * (r["ttft_s"] + wl.osl * r["tpot_s"]) == pytest.approx(n, rel=2e-3)
        assert r["requests_per_s"] <= rate * (1 + 1e-5)
    # At N = 1024 the single prefill worker saturates and the queue lands in TTFT.
    assert r["prefill_utilization"] == pytest.approx(1.0, rel=1e-4)
    assert r["ttft_s"] > 10 * r["prefill_latency_s"]


def test_disagg_cold_start_wave_queues_behind_the_prefill_slots(p):
    """All N requests arrive at once: one prefill worker of TP8 packs floor(8192 / 1024) = 8
    prompts per iteration, so prompt k waits max(k - 8, 0) / capacity and the wave's mean wait is
    (N - 8) / (2 capacity) on top of prefill + KV transfer + the per-request overhead."""
    m, hw, prec = load_model("deepseek-v3"), load_hardware("h200-sxm"), get_precision("fp8")
    wl = Workload(1024.0, 1024.0)
    pre, dec = lay(tp=8, ep=8, adp=1, batch=8, chunk=8192), lay(tp=1, ep=8, adp=8, batch=64)
    pw = {k: float(v) for k, v in prefill_worker(p, hw, m, prec, wl, pre).items()}
    assert pw["prompts_per_iter"] == 8.0
    cap = 8.0 / pw["iter_s"]                                # prompts per second of the worker
    cold, steady = {}, {}
    for n in (4.0, 256.0):
        r = evaluate_disagg(p, hw, m, prec, wl, pre, dec, 1.0, 2.0, n, True)
        f = {k: float(v) for k, v in r.items()}
        assert f["prefill_capacity_rps"] == pytest.approx(cap, rel=1e-5)
        assert f["unqueued_ttft_s"] == pytest.approx(pw["latency_s"] + f["kv_transfer_s"] + float(p["disagg_overhead_s"])
                                                     + float(p["request_overhead_s"]), rel=1e-5)
        cold[n], steady[n] = float(disagg_cold_start_ttft(r, n)), f["ttft_s"]
        want = f["unqueued_ttft_s"] + max(n - 8.0, 0.0) / (2 * cap)
        assert cold[n] == pytest.approx(max(want, f["ttft_s"]), rel=1e-5)
    # 4 prompts fit in the first batch: the wave adds nothing; 256 wait ~31 batches on average
    assert cold[4.0] == pytest.approx(steady[4.0], rel=1e-5)
    assert cold[256.0] > 10 * steady[4.0]


def test_alltoall_jumps_when_ep_leaves_the_nvlink_domain(p):
    m, hw, prec = load_model("deepseek-v3"), load_hardware("h100-sxm"), get_precision("fp8")
    tokens, d, k = 512.0, m.hidden_size, m.top_k

    def comm_ep(ep):
        ops = layer_costs(p, hw, m, prec, jnp.float32(tokens), jnp.float32(0.0), 9000.0, 4096.0,
                          1.0, float(ep), float(ep), moe=True)
        return float(ops["ep_alltoall"].comm_ep)

    def expected(ep):
        hit = 1 - (1 - 1 / ep) ** k                 # share of EP ranks a token's k experts hit
        per_gpu = tokens * hit * d * (ep - 1) / ep  # elements each GPU exchanges
        f_out = max(0.0, 1 - hw.scale_up_domain / ep)
        t = 0.0
        for nbytes in (prec.qact_bytes, prec.act_bytes):   # dispatch, combine
            t_nv = hw.scale_up_latency + float(p["alltoall_latency_nvlink_s"]) + per_gpu * nbytes * (1 - f_out) / (
                hw.scale_up_bandwidth * float(p["alltoall_bw_eff_nvlink"]))
            t_net = hw.scale_out_latency + float(p["alltoall_latency_net_s"]) + per_gpu * nbytes * f_out / (
                hw.scale_out_bandwidth * float(p["alltoall_bw_eff_net"]))
            t += max(t_nv, t_net) if f_out > 0 else t_nv
        return t

    for ep in (8, 16, 32):
        assert comm_ep(ep) == pytest.approx(expected(ep), rel=1e-4)
    # Each GPU exchanges less at EP16 than at EP8 (0.40 * 15/16 vs 0.66 * 7/8 of its tokens), yet the
    # time more than doubles: past the 8-GPU domain half the peers sit behind 50 GB/s InfiniBand
    # instead of 450 GB/s NVLink.
    hit = lambda ep: (1 - (1 - 1 / ep) ** k) * (ep - 1) / ep
    assert hit(16) < hit(8)
    assert comm_ep(16) > 2 * comm_ep(8)


def test_alltoall_none_without_attention_dp(p):
    hw = load_hardware("gb200-nvl72")
    assert float(alltoall(p, hw, 1e6, 1.0, 8.0)) == 0.0


def test_attention_dp_kv_memory(p):
    """Attention-DP: each of adp groups keeps only its own requests' KV cache; attention TP = S/adp."""
    from jaxplan.cost import memory_per_gpu
    m, hw, prec = load_model("deepseek-v3"), load_hardware("h200-sxm"), get_precision("fp8")
    isl, osl, batch = 8192.0, 1024.0, 64.0
    kv_tp8 = memory_per_gpu(p, hw, m, prec, isl, osl, 1.0, 8.0, 1.0, 1.0, batch, 0.0)["kv_cache"]
    kv_adp8 = memory_per_gpu(p, hw, m, prec, isl, osl, 1.0, 8.0, 8.0, 1.0, batch, 0.0)["kv_cache"]
    # MLA's latent is replicated over attention TP, so TP8 stores every request's cache on every GPU
    # while attention-DP 8 stores 1/8 of them per GPU.
    per_request = (isl + osl) * (512 + 64) * 1.0 * 61
    assert float(kv_tp8) == pytest.approx(batch * per_request, rel=1e-5)
    assert float(kv_adp8) == pytest.approx(batch / 8 * per_request, rel=1e-5)


def test_wide_ep_imbalance_grows_with_ep(p):
    from jaxplan.cost import moe_imbalance
    vals = [float(moe_imbalance(p, jnp.float32(e))) for e in (1, 8, 64, 256)]
    assert vals[0] == 1.0 and all(b > a for a, b in zip(vals, vals[1:]))


@pytest.fixture(scope="module")
def disagg_sweep():
    exp = load_experiment(config_root() / "experiments" / "gpt-1.8t-moe-64gpu.yaml", model="deepseek-v3",
                          isl=8192, osl=1024, min_tokens_per_user=20, max_ttft=5)
    return exp, run_disagg_sweep(exp, default_params())


def test_disagg_sweep_respects_budget_and_rates(disagg_sweep):
    exp, r = disagg_sweep
    c = r.columns
    assert r.n > 0 and r.best is not None
    g_p = c["prefill_tp"] * c["prefill_ep"] * c["prefill_pp"]
    g_d = c["decode_tp"] * c["decode_ep"] * c["decode_pp"]
    used = c["prefill_workers"] * g_p + c["decode_workers"] * g_d
    assert np.all(used == c["gpus_used"]) and np.all(used <= exp.gpus)
    assert np.all(c["prefill_utilization"] <= 0.95 + 1e-6)
    # throughput per GPU = completions x OSL over the GPUs in use
    assert np.allclose(c["tokens_per_s_per_gpu"], c["requests_per_s"] * exp.workload.osl / used, rtol=1e-5)
    assert np.all(c["ttft_s"] >= c["prefill_latency_s"] + c["kv_transfer_s"] - 1e-9)


def test_prefill_bound_deployments_when_the_budget_cannot_rate_match(p):
    """A 100k-token prompt with a one-token answer on 4 GPUs: one decode worker completes requests
    far faster than the 3 GPUs left can prefill them, so rate matching (x = y * decode rate /
    (u * prefill rate)) asks for more GPUs than the budget. The prefill pool then takes the rest of
    the budget and sets the rate at its planned utilization u; the decode pool runs below capacity."""
    exp = load_experiment(REPO / "tests" / "data" / "small_experiment.yaml", isl=100_000, osl=1, gpus=4)
    c = run_disagg_sweep(exp, p).columns
    assert len(c["tp"]) > 0
    g_p = c["prefill_tp"] * c["prefill_ep"] * c["prefill_pp"]
    g_d = c["decode_tp"] * c["decode_ep"] * c["decode_pp"]
    assert np.all(c["prefill_workers"] * g_p + c["decode_workers"] * g_d <= 4)
    # a prompt longer than the chunk: each attention group prefills one prompt in prefill_latency_s
    rate_p = c["prefill_adp"] / c["prefill_latency_s"]                    # one worker's prompts/s
    capacity = c["prefill_workers"] * rate_p
    assert np.all(c["requests_per_s"] <= capacity * 1.0001)
    # prefill sets the rate, X = u * x * (prefill rate) at a planned utilization u; the decode pool
    # (a worker completes batch / (OSL * TPOT) requests/s) could take far more
    assert np.allclose(np.unique(np.round(c["prefill_utilization"], 3)), PREFILL_UTILIZATIONS)
    decode_capacity = c["decode_workers"] * c["decode_batch"] / (exp.workload.osl * c["tpot_s"])
    assert np.all(c["requests_per_s"] < 0.01 * decode_capacity)
    assert np.all(c["ttft_s"] >= c["prefill_latency_s"])


def test_derived_worker_counts_hold_every_request_and_match_rates(p):
    """Worker counts given as 0 are sized like a deployment: decode workers at the knee batch, never
    more requests each than their KV caches hold (tests/test_blackwell.py checks the knee),
    prefill workers rate-matched at 80% utilization."""
    from jaxplan.serving import DERIVED_PREFILL_UTILIZATION, admitted_batch, decode_knee_batch
    m, hw, prec = load_model("deepseek-v3"), load_hardware("h200-sxm"), get_precision("fp8")
    wl = Workload(8192.0, 1024.0)
    pre, dec = lay(tp=1, ep=8, adp=8, chunk=8192), lay(tp=1, ep=8, adp=8, batch=64)
    n = 4096.0
    r = {k: float(v) for k, v in evaluate_disagg(p, hw, m, prec, wl, pre, dec, 0.0, 0.0, n, True).items()}
    per_worker = min(float(admitted_batch(p, hw, m, prec, wl, dec)) * 8,
                     float(decode_knee_batch(p, hw, m, prec, wl, dec)))
    assert r["decode_workers"] == math.ceil(n / per_worker - 1e-6)
    assert r["decode_workers"] * per_worker >= n
    assert r["prefill_workers"] >= 1
    assert r["prefill_utilization"] <= DERIVED_PREFILL_UTILIZATION + 0.05
