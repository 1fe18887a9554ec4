"""Co-design: the budget-split optimizer finds a hand-derived optimum, and on the real cost model
it puts the whole budget where the only limiting number is."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from jaxplan import codesign as C
from jaxplan.report import hardware_yaml, label
from jaxplan.specs import SpecError, load_experiment
from jaxplan.sweep import run_sweep

EXPERIMENT = Path(__file__).parent / "data" / "small_experiment.yaml"   # Llama-3.1-8B on 8 H100, FP8


def test_optimizer_finds_the_square_root_split():
    """Two numbers in series, time = a1/v1 + a2/v2, spend p1 v1 + p2 v2 = B. Lagrange: a_i / v_i^2 =
    lambda p_i, so the spend p_i v_i is proportional to sqrt(a_i p_i)."""
    a = {"x": 1.0, "y": 4.0}
    prices = {"x": 1.0, "y": 2.0}
    budget = 10.0
    optimum = {k: math.sqrt(a[k] * prices[k]) for k in a}
    total = sum(optimum.values())
    optimum = {k: v / total for k, v in optimum.items()}          # shares 0.261, 0.739

    def objective(v):
        t = sum(a[k] / v[k] for k in a)
        return -math.log(t), {k: (a[k] / v[k]) / t for k in a}, {"layout": "-", "tokens_per_s_per_gpu": 1 / t}

    traj, best = C.optimize_allocation(objective, ["x", "y"], prices, budget, {"x": 5.0, "y": 2.5},
                                       steps=200, lr=0.05)
    s = traj[best]["shares"]
    assert s["x"] == pytest.approx(optimum["x"], abs=0.01) and s["y"] == pytest.approx(optimum["y"], abs=0.01)
    t_opt = sum(a[k] / (budget * optimum[k] / prices[k]) for k in a)
    assert -traj[best]["log_objective"] == pytest.approx(math.log(t_opt), abs=1e-4)
    assert traj[best]["log_objective"] > traj[0]["log_objective"]
    # every point of the search spends exactly the budget
    for r in traj:
        assert sum(prices[k] * r["values"][k] for k in a) == pytest.approx(budget, rel=1e-5)


@pytest.fixture(scope="module")
def exp():
    return load_experiment(EXPERIMENT)


def test_codesign_moves_the_budget_to_the_only_limiting_number(exp, p, tmp_path_factory):
    """On 8 GPUs inside one NVLink domain the scale-out network carries nothing: its elasticity is
    exactly 0, so the optimum spends everything on HBM bandwidth. The known optimum: sweep the
    hardware with all the budget (less the floor share) on HBM; codesign must reach it, and cannot
    beat it (more HBM bandwidth is never slower)."""
    path = tmp_path_factory.mktemp("prices") / "prices.yaml"
    path.write_text("currency: USD\nprices:\n  hbm_bandwidth_tb_s: 2000\n  scaleout_bandwidth_gb_s: 40\n")
    prices = C.load_prices(path)
    res = C.run_codesign(exp, p, prices, steps=60, lr=0.1)
    hw = exp.hardware
    budget = 2000 * hw.hbm_bandwidth / 1e12 + 40 * hw.scale_out_bandwidth / 1e9
    assert res.budget == pytest.approx(budget, rel=1e-6)
    assert all(r["elasticities"]["scale_out_bandwidth"] == 0.0 for r in res.trajectory)
    assert res.final["shares"]["hbm_bandwidth"] > 0.99
    all_in = dataclasses.replace(exp, hardware=C.with_values(hw, {
        "hbm_bandwidth": budget * (1 - C.SHARE_FLOOR) / 2000, "scale_out_bandwidth": budget * C.SHARE_FLOOR / 40}))
    r = run_sweep(all_in, p)
    best_possible = float(r.columns["tokens_per_s_per_gpu"][r.best])
    got = res.final["tokens_per_s_per_gpu"]
    print(f"\nstart {res.start['tokens_per_s_per_gpu']:.0f}, codesign {got:.0f}, all-in optimum {best_possible:.0f} "
          f"tokens/s/GPU; HBM share {res.start['shares']['hbm_bandwidth']:.3f} -> "
          f"{res.final['shares']['hbm_bandwidth']:.4f}")
    assert got > res.start["tokens_per_s_per_gpu"]
    assert got == pytest.approx(best_possible, rel=0.005)
    assert got <= best_possible * (1 + 1e-5)
    # the final hardware is a usable preset
    text = hardware_yaml(res.final_hardware, "test")
    assert "hbm_bandwidth_tb_s" in text and "scaleup_domain_gpus: 8" in text


def test_disagg_codesign_also_puts_everything_on_hbm(exp, p, tmp_path_factory):
    """The same known optimum for disaggregated pools: the prefill and decode workers of 8 GPUs
    share one NVLink domain, so the KV cache never crosses the scale-out network (elasticity
    exactly 0) and the whole budget goes to HBM bandwidth; codesign reaches the all-in disagg
    sweep's best and cannot beat it."""
    from jaxplan.sweep import run_disagg_sweep
    path = tmp_path_factory.mktemp("prices") / "prices.yaml"
    path.write_text("prices:\n  hbm_bandwidth_tb_s: 2000\n  scaleout_bandwidth_gb_s: 40\n")
    res = C.run_codesign(exp, p, C.load_prices(path), steps=40, lr=0.1, serving="disagg")
    assert all(r["elasticities"]["scale_out_bandwidth"] == 0.0 for r in res.trajectory)
    assert all(r["layout"]["mode"] == "disagg" and label(r["layout"]).startswith("prefill ") for r in res.trajectory)
    assert res.final["shares"]["hbm_bandwidth"] > 0.99
    hw = exp.hardware
    all_in = dataclasses.replace(exp, hardware=C.with_values(hw, {
        "hbm_bandwidth": res.budget * (1 - C.SHARE_FLOOR) / 2000, "scale_out_bandwidth": res.budget * C.SHARE_FLOOR / 40}))
    r = run_disagg_sweep(all_in, p)
    best_possible = float(r.columns["tokens_per_s_per_gpu"][r.best])
    got = res.final["tokens_per_s_per_gpu"]
    assert got > res.start["tokens_per_s_per_gpu"]
    assert got == pytest.approx(best_possible, rel=0.005)
    assert got <= best_possible * (1 + 1e-5)


def test_tensor_core_rates_move_together(exp):
    hw = exp.hardware
    h2 = C.with_values(hw, {"fp8_flops": 2 * hw.fp8_flops / 1e12})
    assert h2.fp8_flops == pytest.approx(2 * hw.fp8_flops) and h2.bf16_flops == pytest.approx(2 * hw.bf16_flops)
    assert h2.fp4_flops == hw.fp4_flops == 0.0          # H100 has no FP4 units: stays 0


@pytest.mark.parametrize("text, words", [
    ("prices: {hbm_bandwidth_tb_s: 1}\nbudgett: 3\n", ("unknown key(s) budgett", "allowed")),
    ("prices: {hbm_bw: 1}\n", ("unknown hardware number 'hbm_bw'",)),
    ("prices: {scaleup_latency_us: 1}\n", ("cannot be bought", "hbm_bandwidth_tb_s")),
    ("prices: {fp8_dense_tflops: 1, bf16_dense_tflops: 2}\n", ("one tensor-core rate",)),
    ("prices: {hbm_bandwidth_tb_s: -1}\n", ("positive",)),
    ("prices: {hbm_bandwidth_tb_s: 1}\nbudget: zero\n", ("'budget'",)),
    ("budget: 3\n", ("'prices' must be a mapping",)),
])
def test_prices_errors_name_the_file_and_key(tmp_path, text, words):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as e:
        C.load_prices(path)
    assert str(path) in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_shipped_prices_load():
    from jaxplan.specs import config_root
    pr = C.load_prices(config_root() / "prices" / "default.yaml")
    assert set(pr.prices) == {"fp8_flops", "hbm_bandwidth", "scale_up_bandwidth", "scale_out_bandwidth"}
    assert pr.budget is None and pr.currency == "USD"
