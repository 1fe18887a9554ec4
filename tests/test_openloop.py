"""Open-loop serving (jaxplan.openloop): where the queueing model reduces to textbook queues
(M/D/1, M/M/1), Little's law for the decode batch, light load (no queue: TTFT is the unqueued
prefill), stability at the closed loop's sustainable rate, gradients, disaggregated pools, and
goodput."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from jaxplan import openloop as O
from jaxplan.layouts import Layout
from jaxplan.serving import evaluate, kv_transfer_time, prefill_worker, round_time
from jaxplan.specs import experiment

ISL, OSL, CHUNK, BATCH = 2048.0, 256.0, 2048.0, 64.0


@pytest.fixture(scope="module")
def setup(p):
    e = experiment("llama-3.1-8b", "h100-sxm", 8, precision="fp8", isl=int(ISL), osl=int(OSL))
    lay = Layout(*(jnp.float32(v) for v in (2, 1, 1, 1, BATCH, CHUNK, 1)))
    closed = jax.jit(evaluate, static_argnums=(2, 3, 6))(p, e.hardware, e.model, e.precision, e.workload, lay,
                                                          "mixed")
    f = jax.jit(O.evaluate_open, static_argnums=(2, 3, 7, 8))
    run = lambda wl, load, lay=lay: {k: float(v) for k, v in f(p, e.hardware, e.model, e.precision, wl, load, lay,
                                                                  "mixed", O.PERCENTILES).items()
                                     if not k.startswith("_")}
    return e, lay, float(closed["requests_per_s"]), run


def test_textbook_queues():
    lam, mu = 3.0, 5.0
    rho, S = lam / mu, 1 / mu
    # M/D/1 (Poisson arrivals, fixed service): Wq = rho S / (2 (1 - rho)); M/M/1: Wq = rho / (mu - lam)
    assert float(O.kingman_wait(rho, S, 1.0, 0.0)) == pytest.approx(rho * S / (2 * (1 - rho)), rel=1e-6)
    assert float(O.kingman_wait(rho, S, 1.0, 1.0)) == pytest.approx(rho / (mu - lam), rel=1e-6)
    # M/M/1 waiting-time distribution: P(Wq > t) = rho exp(-(mu - lam) t)
    for q in (0.5, 0.9, 0.99):
        t = float(O.quantile(q, jnp.zeros(4), jnp.float32(rho), jnp.float32(rho / (mu - lam))))
        exact = max(math.log(rho / (1 - q)) / (mu - lam), 0.0)
        assert t == pytest.approx(exact, rel=1e-4, abs=1e-6)
    # M/M/1 as M/M/c with c = 1: Sakasegawa's formula is exact there, Lq = rho^2 / (1 - rho)
    w, p_wait = O.slot_wait(jnp.float32(rho), 1.0, 1 / mu, 1.0, 1.0)
    assert float(w) == pytest.approx(rho / (mu - lam), rel=1e-5) and float(p_wait) == pytest.approx(rho, rel=1e-5)


def test_prefill_queue_is_md1_for_fixed_lengths_and_mm1_for_exponential_work(setup):
    e, lay, X, run = setup
    m = run(e.workload, O.load_of(e.load.with_rate(0.6 * X)))
    rho, S = m["prefill_utilization"], m["prefill_service_s"]
    assert 0.1 < rho < 0.9
    assert m["prefill_wait_s"] == pytest.approx(rho * S / (2 * (1 - rho)), rel=1e-4)
    # prompt lengths with a coefficient of variation of 1 (the exponential's): the M/M/1 mean wait
    wl = e.workload.__class__(**{**e.workload.__dict__, "isl_cv2": 1.0})
    m1 = run(wl, O.load_of(e.load.with_rate(0.6 * X)))
    assert m1["prefill_wait_s"] == pytest.approx(m1["prefill_utilization"] * m1["prefill_service_s"]
                                                 / (1 - m1["prefill_utilization"]), rel=1e-4)


def test_littles_law_and_light_load(setup, p):
    e, lay, X, run = setup
    for frac in (0.2, 0.7):
        m = run(e.workload, O.load_of(e.load.with_rate(frac * X)))
        # decoding requests = arrival rate x decode time (osl steps of TPOT), one replica here
        assert m["decoding_requests"] == pytest.approx(frac * X * OSL * m["tpot_s"], rel=2e-3)
    # no queue: TTFT = the front end + one chunk iteration of the prompt alone, TPOT = a decode step of one
    m = run(e.workload, O.load_of(e.load.with_rate(1e-4 * X)))
    t_alone = float(round_time(p, e.hardware, e.model, e.precision, e.workload, lay, jnp.float32(0.0),
                               jnp.float32(ISL)))
    t_one = float(round_time(p, e.hardware, e.model, e.precision, e.workload, lay, jnp.float32(1.0), 0.0))
    assert m["ttft_p99_s"] == pytest.approx(float(p["request_overhead_s"]) + t_alone, rel=2e-3)
    assert m["tpot_s"] == pytest.approx(t_one, rel=2e-3)


def test_stability_waits_and_percentiles_grow_with_load(setup):
    e, lay, X, run = setup
    ms = [run(e.workload, O.load_of(e.load.with_rate(f * X))) for f in (0.3, 0.6, 0.9, 0.99, 1.05)]
    assert [m["stable"] for m in ms] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert math.isinf(ms[-1]["ttft_p99_s"])
    for a, b in zip(ms[:3], ms[1:4]):
        assert b["ttft_p99_s"] > a["ttft_p99_s"] and b["tpot_s"] > a["tpot_s"]
    for m in ms[:4]:
        assert m["ttft_p50_s"] <= m["ttft_p90_s"] <= m["ttft_p99_s"] and m["tpot_p50_s"] <= m["tpot_p99_s"]


def test_gradients_are_finite_and_signed(setup, p):
    e, lay, X, _ = setup

    def p99(rate, bw):
        hw = e.hardware.replace(hbm_bandwidth=e.hardware.hbm_bandwidth * bw)
        load = O.load_of(e.load.with_rate(1.0))._replace(rate=rate)
        return O.evaluate_open(p, hw, e.model, e.precision, e.workload, load, lay)["ttft_p99_s"]
    g_rate, g_bw = jax.grad(p99, argnums=(0, 1))(jnp.float32(0.7 * X), jnp.float32(1.0))
    assert math.isfinite(float(g_rate)) and float(g_rate) > 0
    assert math.isfinite(float(g_bw)) and float(g_bw) < 0


def test_disaggregated_light_load_is_the_unqueued_path(p):
    e = experiment("llama-3.1-8b", "h100-sxm", 8, precision="fp8", isl=int(ISL), osl=int(OSL))
    pre = Layout(*(jnp.float32(v) for v in (2, 1, 1, 1, 1, CHUNK, 1)))
    dec = Layout(*(jnp.float32(v) for v in (2, 1, 1, 1, 64, 0, 1)))
    f = jax.jit(O.evaluate_disagg_open, static_argnums=(2, 3, 11))
    m = f(p, e.hardware, e.model, e.precision, e.workload, O.load_of(e.load.with_rate(0.01)), pre, dec,
          jnp.float32(1), jnp.float32(2), False, O.PERCENTILES)
    pw = prefill_worker(p, e.hardware, e.model, e.precision, e.workload, pre)
    t_kv = kv_transfer_time(p, e.hardware, e.model, e.precision, ISL, pre, dec, False)
    expect = float(pw["latency_s"] + t_kv + p["disagg_overhead_s"] + p["request_overhead_s"])
    assert float(m["ttft_p50_s"]) == pytest.approx(expect, rel=1e-3) and bool(m["stable"])
    heavy = f(p, e.hardware, e.model, e.precision, e.workload, O.load_of(e.load.with_rate(1.0)), pre, dec,
              jnp.float32(1), jnp.float32(2), False, O.PERCENTILES)
    heavy = heavy | {"rate_rps": heavy["sustainable_rps"] * 1.1}
    over = f(p, e.hardware, e.model, e.precision, e.workload,
             O.load_of(e.load.with_rate(float(heavy["sustainable_rps"]) * 1.1)), pre, dec,
             jnp.float32(1), jnp.float32(2), False, O.PERCENTILES)
    assert not bool(over["stable"])


def test_goodput_is_the_highest_rate_meeting_the_share(setup, p):
    e, lay, X, run = setup
    sla = O.PercentileSLA(ttft=((99.0, 0.1),), tpot=((90.0, 0.02),), share=0.9)
    fn = jax.jit(O.goodput_evaluator("mixed", sla), static_argnums=(2, 3))
    load = O.load_of(e.load.with_rate(1.0))
    g = {k: float(v) for k, v in fn(p, e.hardware, e.model, e.precision, (e.workload, load), lay).items()}
    assert 0 < g["goodput_rps"] < X
    at = run(e.workload, O.load_of(e.load.with_rate(g["goodput_rps"])))
    above = run(e.workload, O.load_of(e.load.with_rate(g["goodput_rps"] * 1.02)))
    assert at["ttft_p99_s"] <= 0.1 and at["tpot_p90_s"] <= 0.02
    assert above["ttft_p99_s"] > 0.1 or above["tpot_p90_s"] > 0.02 or not above["stable"]
    assert g["goodput_rps_per_gpu"] == pytest.approx(g["goodput_rps"] / 2)
