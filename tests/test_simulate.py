"""The iteration-level simulator (jaxplan.simulate) as the analytical model's referee: at light load
TTFT is the unqueued prefill exactly; a prefill-bound queue waits as M/D/1 (growing as
1/(1 - utilization)); simulated and analytical percentiles agree within a stated tolerance; the
CLI writes per-request CSV and the distribution PNG."""
from __future__ import annotations

import contextlib
import csv
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplan import openloop as O
from jaxplan.cli import main
from jaxplan.layouts import Layout
from jaxplan.serving import evaluate, round_time
from jaxplan.simulate import simulate, simulate_disagg
from jaxplan.specs import experiment

ISL, OSL, CHUNK = 2048, 256, 2048
# analytical vs simulated: TTFT percentiles within 25%, TPOT mean and P50/P90 within 10%
# (benchmarks/openloop_vs_sim.md has the grid)
TTFT_TOL, TPOT_TOL = 0.25, 0.10


@pytest.fixture(scope="module")
def setup(p):
    e = experiment("llama-3.1-8b", "h100-sxm", 2, precision="fp8", isl=ISL, osl=OSL)
    lay = Layout(*(jnp.float32(v) for v in (2, 1, 1, 1, 64, CHUNK, 1)))
    X = float(jax.jit(evaluate, static_argnums=(2, 3, 6))(p, e.hardware, e.model, e.precision, e.workload, lay,
                                                           "mixed")["requests_per_s"])
    return e, lay, X


def test_light_load_ttft_is_the_unqueued_prefill(setup, p):
    e, lay, X = setup
    s = simulate(e, lay, p, n_requests=200, rate=0.002 * X, scheduler="mixed")
    alone = float(p["request_overhead_s"]) + float(round_time(p, e.hardware, e.model, e.precision, e.workload, lay,
                                                              jnp.float32(0.0), jnp.float32(ISL)))
    assert s.summary["ttft_p50_s"] == pytest.approx(alone, rel=1e-5)
    assert np.median(s.requests["queue_s"]) == 0.0


def test_prefill_bound_queue_waits_as_md1(p):
    """Prefill-first with one output token: prompts of one chunk each are served one per iteration
    of fixed length S, so the mean wait is M/D/1's rho S / (2 (1 - rho)), and grows as
    1/(1 - rho) (plus a decode step's residual, small here)."""
    e = experiment("llama-3.1-8b", "h100-sxm", 2, precision="fp8", isl=ISL, osl=1)
    lay = Layout(*(jnp.float32(v) for v in (2, 1, 1, 1, 256, CHUNK, 1)))
    S = float(round_time(p, e.hardware, e.model, e.precision, e.workload, lay, jnp.float32(0.0), jnp.float32(ISL)))
    waits = {}
    for rho in (0.5, 0.8):
        s = simulate(e, lay, p, n_requests=6000, rate=rho / S, scheduler="prefill_first", seed=1)
        waits[rho] = s.summary["queue_s"]
        assert waits[rho] == pytest.approx(rho * S / (2 * (1 - rho)), rel=0.2)
    assert waits[0.8] / waits[0.5] == pytest.approx((0.8 / 0.2) / (0.5 / 0.5), rel=0.2)


@pytest.mark.parametrize("frac", [0.5, 0.8])
def test_analytical_percentiles_match_the_simulator(setup, p, frac):
    e, lay, X = setup
    s = simulate(e, lay, p, n_requests=1500, rate=frac * X, scheduler="mixed").summary
    m = O.evaluate_open(p, e.hardware, e.model, e.precision, e.workload, O.load_of(e.load.with_rate(frac * X)), lay)
    for q in (50, 90, 99):
        assert float(m[f"ttft_p{q}_s"]) == pytest.approx(s[f"ttft_p{q}_s"], rel=TTFT_TOL)
    for k in ("tpot_s", "tpot_p50_s", "tpot_p90_s"):
        assert float(m[k]) == pytest.approx(s[k], rel=TPOT_TOL)
    assert s["throughput_rps"] == pytest.approx(frac * X, rel=0.08)


def test_simulate_cli_writes_requests_and_distribution(tmp_path):
    argv = ["simulate", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--gpus", "2", "--precision", "fp8",
            "--isl", "1024", "--osl", "64", "--tp", "2", "--batch", "32", "--chunk", "2048", "--rate", "5",
            "--requests", "200", "--out", str(tmp_path)]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "requests.csv")))
    assert len(rows) == 180 and {"ttft_s", "tpot_s", "queue_s"} <= set(rows[0])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["analytical"]["stable"] == 1.0 and summary["simulated"]["requests"] == 180
    assert (tmp_path / "distribution.png").stat().st_size > 10_000
    assert "analytical" in out.getvalue()


def test_disaggregated_simulation_matches_the_analytical_pools(p):
    e = experiment("llama-3.1-8b", "h100-sxm", 8, precision="fp8", isl=ISL, osl=OSL)
    pre = Layout(*(jnp.float32(v) for v in (2, 1, 1, 1, 1, CHUNK, 1)))
    dec = Layout(*(jnp.float32(v) for v in (2, 1, 1, 1, 64, 0, 1)))
    f = jax.jit(O.evaluate_disagg_open, static_argnums=(2, 3, 10, 11))

    def ana(rate):
        return f(p, e.hardware, e.model, e.precision, e.workload, O.load_of(e.load.with_rate(rate)), pre, dec,
                 jnp.float32(1), jnp.float32(2), False, O.PERCENTILES)
    X = float(ana(1.0)["sustainable_rps"])
    light = simulate_disagg(e, pre, dec, 1, 2, p, n_requests=200, rate=0.002 * X, cross_network=False).summary
    assert light["ttft_p50_s"] == pytest.approx(float(ana(0.002 * X)["ttft_p50_s"]), rel=1e-3)
    s = simulate_disagg(e, pre, dec, 1, 2, p, n_requests=1500, rate=0.7 * X, cross_network=False).summary
    m = ana(0.7 * X)
    for q in (50, 90, 99):
        assert float(m[f"ttft_p{q}_s"]) == pytest.approx(s[f"ttft_p{q}_s"], rel=TTFT_TOL)
    assert float(m["tpot_s"]) == pytest.approx(s["tpot_s"], rel=TPOT_TOL)
