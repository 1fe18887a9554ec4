"""Prefix caching: a share of every prompt is already cached, so prefill computes only the rest,
whose tokens still attend to the whole prompt. Checked through the op costs (same GEMMs as a
prompt of the computed length, attention as over the longer key span), TTFT at one request, the
KV memory (not shared, so unchanged), the closed-loop law, and the experiment key."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jaxplan.serving import round_costs
from jaxplan.specs import SpecError, Workload, load_experiment

ISL, OSL, HIT = 8192.0, 512.0, 0.75
NEW = ISL * (1 - HIT)                     # 2048 prompt tokens computed
SPAN = ISL * HIT + NEW / 2                # 7168 keys per computed token on average


def test_prompt_tokens_and_key_span():
    wl = Workload(ISL, OSL, prefix_hit=HIT)
    assert float(wl.prompt_tokens) == NEW and float(wl.prefill_key_span) == SPAN
    assert Workload(ISL, OSL).prompt_tokens == ISL and Workload(ISL, OSL).prefill_key_span == ISL / 2


def test_prefill_ops_price_the_computed_tokens_over_the_whole_prompt(p, h100, fp8, models, one_replica):
    """An iteration prefilling the 2048 computed tokens of an 8192-token prompt 75% cached: its
    GEMMs equal those of a 2048-token prompt; its attention equals that of tokens whose keys span
    7168 on average, i.e. of the second half of a 14336-token prompt (mean causal span 14336 / 2)."""
    model, lay = models("llama-3.1-70b"), one_replica(4, 1)
    rc = jax.jit(round_costs, static_argnums=(2, 3))
    pre = jnp.float32(NEW)
    cached = rc(p, h100, model, fp8, Workload(ISL, OSL, prefix_hit=HIT), lay, jnp.float32(0.0), pre)
    short = rc(p, h100, model, fp8, Workload(NEW, OSL), lay, jnp.float32(0.0), pre)
    same_span = rc(p, h100, model, fp8, Workload(2 * SPAN, OSL), lay, jnp.float32(0.0), pre)
    for op in ("attn_proj", "mlp", "lm_head"):
        assert float(cached[op].total()) == pytest.approx(float(short[op].total()), rel=1e-6), op
    assert float(cached["attention"].total()) == pytest.approx(float(same_span["attention"].total()), rel=1e-6)
    assert float(cached["attention"].total()) > float(short["attention"].total())


def test_one_request_ttft_falls_memory_does_not(p, h100, fp8, models, ev, one_replica):
    """One request: TTFT is the front end plus one iteration of the computed tokens, so caching
    75% of the prompt cuts TTFT by more than half here; the KV cache still holds all 8192 tokens
    (cached prefixes are not counted as shared), so memory is unchanged, and so is TPOT."""
    model, lay = models("llama-3.1-70b"), one_replica(4, 1)
    pp = {**p, "request_overhead_s": jnp.float32(0.05)}
    rc = jax.jit(round_costs, static_argnums=(2, 3))
    wl = Workload(ISL, OSL, prefix_hit=HIT)
    a = {k: float(v) for k, v in ev(pp, h100, model, fp8, Workload(ISL, OSL), lay, "mixed").items()}
    b = {k: float(v) for k, v in ev(pp, h100, model, fp8, wl, lay, "mixed").items()}
    # (the closed loop prices the prompt's iteration beside its solved mean decode share)
    dec = jnp.float32(b["decoding_requests"])
    t_pre = sum(float(c.total()) for c in rc(pp, h100, model, fp8, wl, lay, dec, jnp.float32(NEW)).values())
    assert b["ttft_s"] == pytest.approx(0.05 + t_pre, rel=1e-4)
    assert b["ttft_s"] - 0.05 < 0.5 * (a["ttft_s"] - 0.05)
    assert b["memory_per_gpu_gb"] == pytest.approx(a["memory_per_gpu_gb"], rel=1e-6)
    assert b["tpot_s"] == pytest.approx(a["tpot_s"], rel=1e-3)


def test_closed_loop_law_and_throughput_gain(p, h100, fp8, models, ev, one_replica):
    """64 requests of 8192 in / 512 out on TP4: the law N = X * (TTFT + OSL * TPOT) still holds,
    and with three quarters of every prompt cached the replica completes more requests."""
    model, lay = models("llama-3.1-70b"), one_replica(4, 64)
    a = {k: float(v) for k, v in ev(p, h100, model, fp8, Workload(ISL, OSL), lay, "mixed").items()}
    b = {k: float(v) for k, v in ev(p, h100, model, fp8, Workload(ISL, OSL, prefix_hit=HIT), lay, "mixed").items()}
    assert b["requests_per_s"] * (b["ttft_s"] + OSL * b["tpot_s"]) == pytest.approx(64.0, rel=2e-3)
    assert b["tokens_per_s_per_gpu"] > 1.2 * a["tokens_per_s_per_gpu"]


def test_experiment_key(tmp_path):
    text = ("name: x\nmodel: llama-3.1-70b\nhardware: h100-sxm\ngpus: 8\nprecision: fp8\n"
            "workload:\n  isl_tokens: 8192\n  osl_tokens: 512\n")
    path = tmp_path / "x.yaml"
    path.write_text(text + "  prefix_hit: 0.75\n")
    assert load_experiment(path).workload.prefix_hit == 0.75
    assert load_experiment(path, prefix_hit=0.5).workload.prefix_hit == 0.5
    path.write_text(text + "  prefix_hit: 1.0\n")
    with pytest.raises(SpecError, match=r"x\.yaml.*prefix_hit must be in \[0, 1\)"):
        load_experiment(path)
