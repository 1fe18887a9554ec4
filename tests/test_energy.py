"""Power, energy and cost per token (jaxplan/energy.py): the formulas from named quantities, the
power model's bounds, the objective picks against the SLA, and bad power or cost files."""
from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from jaxplan import energy as E
from jaxplan.cli import main
from jaxplan.cost import sum_costs
from jaxplan.layouts import Layout
from jaxplan.params import default_params
from jaxplan.serving import decode_worker, evaluate, explain
from jaxplan.specs import POWER_BY_KEY, SpecError, config_root, load_experiment, load_hardware
from jaxplan.sweep import meets_sla, plan, run_disagg_sweep, run_sweep, sla_pick

EXPERIMENT = Path(__file__).parent / "data" / "small_experiment.yaml"   # Llama-3.1-8B on 8 H100, FP8
HOURS_PER_YEAR = 8760.0


@pytest.fixture(scope="module")
def small():
    exp = load_experiment(EXPERIMENT)
    return exp, run_sweep(exp, default_params())


@pytest.fixture(scope="module")
def small_disagg():
    exp = load_experiment(EXPERIMENT)
    return exp, run_disagg_sweep(exp, default_params())


# ----------------------------------------------------------------------------- the formulas

def test_energy_and_cost_of_one_layout_from_named_quantities():
    """A GPU of 1,000 W TDP idling at 30%, busy half the time, with 500 W of system power per GPU in
    a facility of PUE 1.2, serving 100 tokens/s: (300 + 700 x 0.5 + 500) x 1.2 = 1,380 W per GPU,
    13.8 J per token; bought at 40,000 USD over 4 years with power at 0.10 USD/kWh."""
    hw = load_hardware("b200").replace(tdp=1000.0, idle_share=0.3, system_power=500.0, pue=1.2)
    busy, tps = 0.5, 100.0
    board = 1000.0 * 0.3 + (1000.0 - 300.0) * busy
    facility = (board + 500.0) * 1.2
    assert E.gpu_power(hw, busy) == pytest.approx(board) == pytest.approx(650.0)
    assert E.facility_power_per_gpu(hw, busy) == pytest.approx(facility) == pytest.approx(1380.0)
    assert E.joules_per_token(hw, busy, tps) == pytest.approx(facility / tps) == pytest.approx(13.8)
    assert E.tokens_per_s_per_mw(hw, busy, tps) == pytest.approx(tps / facility * 1e6)
    costs = E.Costs({"b200": E.GpuCost(capex_usd=40000.0)}, 4.0, 0.10, "USD", "test")
    hourly = 40000.0 / (4.0 * HOURS_PER_YEAR) + facility / 1e3 * 0.10
    assert E.usd_per_mtoken(costs, hw, busy, tps) == pytest.approx(hourly / (tps * 3600.0) * 1e6)
    # renting at 3 USD per GPU-hour, electricity included: power does not enter
    rent = E.Costs({"b200": E.GpuCost(gpu_hour_usd=3.0)}, math.nan, math.nan, "USD", "test")
    assert float(E.usd_per_mtoken(rent, hw, busy, tps)) == pytest.approx(3.0 / (tps * 3600.0) * 1e6)


def test_sweep_columns_are_the_formulas(small):
    """Every feasible layout's energy columns are the formulas of its busy share and throughput, with
    the preset's power numbers and the shipped cost file's prices."""
    exp, res = small
    c, hw = res.columns, exp.hardware
    ok = c["feasible"]
    busy, tps = c["busy_share"][ok].astype(np.float64), c["tokens_per_s_per_gpu"][ok].astype(np.float64)
    facility = (hw.tdp * hw.idle_share + hw.tdp * (1 - hw.idle_share) * busy + hw.system_power) * hw.pue
    np.testing.assert_allclose(c["facility_power_per_gpu_w"][ok], facility, rtol=1e-5)
    np.testing.assert_allclose(c["joules_per_token"][ok], facility / tps, rtol=1e-5)
    np.testing.assert_allclose(c["tokens_per_s_per_mw"][ok], tps * 1e6 / facility, rtol=1e-5)
    costs = E.load_costs()
    gpu = costs.gpu(hw)
    hourly = gpu.capex_usd / (costs.amortization_years * HOURS_PER_YEAR) + facility / 1e3 * costs.electricity_usd_per_kwh
    np.testing.assert_allclose(c["usd_per_mtoken"][ok], hourly / (tps * 3600) * 1e6, rtol=1e-5)


def test_busy_share_is_the_iterations_compute_and_memory_share(small):
    """A layout's busy share lies between those of its two kinds of iteration (decode-only and
    prompt-carrying), each (compute + memory) / total of the iteration's op costs."""
    exp, res = small
    c = res.columns
    p = default_params()
    for i in np.flatnonzero(c["feasible"])[:: max(1, int(c["feasible"].sum()) // 5)][:5]:
        lay = Layout(*(float(c[f][i]) for f in Layout._fields))
        ex = explain(p, exp.hardware, exp.model, exp.precision, exp.workload, lay)
        shares = []
        for it in ("decode_iteration", "chunk_iteration"):
            tot = sum_costs(ex[it].values())
            shares.append(float((tot.compute + tot.memory) / tot.total()))
        if c["pp"][i] == 1:       # with PP a GPU also idles when fewer micro-batches than stages run
            assert min(shares) - 1e-4 <= c["busy_share"][i] <= max(shares) + 1e-4
        assert 0.0 <= c["busy_share"][i] <= 1.0


def test_busier_layout_draws_more_power_never_more_than_tdp(h100, fp8, models):
    """A decode worker with more requests spends more of each iteration streaming weights and KV
    cache rather than in fixed costs (launch overhead, collective latency): busier, more power, and
    never above TDP (nor below idle)."""
    hw, model = h100, models("llama-3.1-70b")
    wl = load_experiment(EXPERIMENT).workload
    batches = jnp.asarray([1.0, 4.0, 16.0, 64.0, 256.0])
    lay = Layout(tp=jnp.full(5, 4.0), pp=jnp.ones(5), ep=jnp.ones(5), dp=jnp.ones(5), adp=jnp.ones(5),
                 batch=batches, chunk=jnp.zeros(5))
    out = jax.jit(jax.vmap(lambda lay: decode_worker(default_params(), hw, model, fp8, wl, lay)))(lay)
    busy = np.asarray(out["busy_share"])
    power = np.asarray(E.gpu_power(hw, busy))
    print(f"\nTP4 decode, batch 1..256: busy {np.round(busy, 3)}, board power {np.round(power)} W (TDP {hw.tdp:.0f})")
    assert np.all(np.diff(busy) > 0) and np.all(np.diff(power) > 0)
    assert np.all(power <= hw.tdp) and np.all(power >= hw.tdp * hw.idle_share)


def test_power_bounds_over_a_whole_sweep(small, small_disagg):
    for exp, res in (small, small_disagg):
        c, hw = res.columns, exp.hardware
        ok = np.asarray(c["feasible"], bool)
        assert ok.any()
        assert np.all((c["busy_share"][ok] >= 0) & (c["busy_share"][ok] <= 1))
        assert np.all(c["gpu_power_w"][ok] <= hw.tdp + 1e-3)
        assert np.all(c["gpu_power_w"][ok] >= hw.tdp * hw.idle_share - 1e-3)


def test_energy_per_token_is_differentiable(small):
    """d(J/token)/d(TDP) through the whole evaluator: (idle share + (1 - idle share) x busy) x PUE /
    tokens/s/GPU, since TDP moves neither the busy share nor the throughput."""
    exp, res = small
    i = int(res.best)
    lay = Layout(*(jnp.float32(res.columns[f][i]) for f in Layout._fields))
    p = default_params()

    def jpt(tdp):
        hw = exp.hardware.replace(tdp=tdp)
        return evaluate(p, hw, exp.model, exp.precision, exp.workload, lay)["joules_per_token"]
    g = float(jax.jit(jax.grad(jpt))(jnp.float32(exp.hardware.tdp)))
    hw, busy, tps = exp.hardware, res.columns["busy_share"][i], res.columns["tokens_per_s_per_gpu"][i]
    assert g == pytest.approx((hw.idle_share + (1 - hw.idle_share) * busy) * hw.pue / tps, rel=1e-3)


# ----------------------------------------------------------------------------- objectives

@pytest.mark.parametrize("objective", ["throughput", "cost", "energy"])
def test_objective_pick_never_violates_the_sla(small, small_disagg, objective):
    """Over a grid of SLAs, the pick by each objective meets the SLA and is the best of those that do."""
    col, larger = E.OBJECTIVE_COLUMNS[objective]
    for _, res in (small, small_disagg):
        c = res.columns
        for min_u in (0.0, 20.0, 50.0, 80.0, 120.0):
            for max_ttft in (0.2, 0.5, 2.0, math.inf):
                i = sla_pick(c, min_u, max_ttft, objective)
                ok = meets_sla(c, min_u, max_ttft)
                if i is None:
                    assert not (ok & np.isfinite(c[col])).any()
                    continue
                assert ok[i] and c["tokens_per_s_per_user"][i] >= min_u and c["ttft_s"][i] <= max_ttft
                vals = c[col][ok]
                assert c[col][i] == (vals.max() if larger else vals.min())


def test_plan_objective_cost_picks_the_cheapest_at_the_sla():
    exp = load_experiment(EXPERIMENT)
    by = {o: plan(exp, default_params(), "defaults", serving="both", objective=o) for o in ("throughput", "cost")}
    t, c = by["throughput"].best_row, by["cost"].best_row
    assert c["usd_per_mtoken"] <= t["usd_per_mtoken"]
    assert t["tokens_per_s_per_gpu"] >= c["tokens_per_s_per_gpu"]
    s = by["cost"].summary()
    assert s["objective"] == "cost" and s["costs"]["currency"] == "USD"
    assert s["best_at_sla"]["usd_per_mtoken"] == pytest.approx(c["usd_per_mtoken"])
    assert s["power"]["tdp_w"] == exp.hardware.tdp


# ----------------------------------------------------------------------------- bad files

def _hw_file(tmp_path, edit):
    data = yaml.safe_load((config_root() / "hardware" / "h100-sxm.yaml").read_text())
    edit(data)
    p = tmp_path / "hw.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


@pytest.mark.parametrize("edit, words", [
    (lambda d: d["power"].update(tdp_w=-700), ("tdp_w", "positive")),
    (lambda d: d["power"].update(system_power_per_gpu_w=-1), ("system_power_per_gpu_w", ">= 0")),
    (lambda d: d["power"].update(idle_share_of_tdp=1.5), ("idle_share_of_tdp", "between 0 and 1")),
    (lambda d: d["power"].update(pue=0.9), ("pue", ">= 1")),
    (lambda d: d["power"].update(pue=float("nan")), ("pue", "finite")),
    (lambda d: d["power"].update(tdp=d["power"].pop("tdp_w")), ("missing required key 'tdp_w'",)),   # no unit
    (lambda d: d["power"].update(tdp_watts=700), ("unknown key", "tdp_watts", "tdp_w")),
    (lambda d: d["power"].pop("source"), ("missing required key 'source'",)),
    (lambda d: d["power"].update(tdp_w="700 W"), ("tdp_w", "must be a number")),
])
def test_bad_power_block(tmp_path, edit, words):
    p = _hw_file(tmp_path, edit)
    with pytest.raises(SpecError) as e:
        load_hardware(p)
    msg = str(e.value)
    assert str(p) in msg and "[power]" in msg
    assert all(w in msg for w in words), msg


def test_power_keys_carry_units():
    assert set(POWER_BY_KEY) == {"tdp_w", "idle_share_of_tdp", "system_power_per_gpu_w", "pue"}


def test_hardware_without_power(tmp_path):
    """No power block: the sweep runs, its energy columns are NaN, and the cost and energy
    objectives are refused with the keys to add."""
    p = _hw_file(tmp_path, lambda d: d.pop("power"))
    hw = load_hardware(p)
    assert not hw.has_power and math.isnan(hw.tdp)
    exp = load_experiment(EXPERIMENT, hardware=str(p))
    res = run_sweep(exp, default_params())
    assert np.isnan(res.columns["joules_per_token"]).all()
    assert res.best is not None
    for objective in ("cost", "energy"):
        with pytest.raises(SpecError, match="no 'power' block.*tdp_w"):
            run_sweep(exp, default_params(), objective=objective)


def _costs_file(tmp_path, data):
    p = tmp_path / "costs.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


GOOD_COSTS = {"currency": "USD", "amortization_years": 4, "electricity_usd_per_kwh": 0.08,
              "hardware": {"h100-sxm": {"capex_per_gpu_usd": 35000}}}


@pytest.mark.parametrize("edit, words", [
    (lambda d: d["hardware"]["h100-sxm"].update(capex_per_gpu_usd=-1), ("capex_per_gpu_usd", "positive")),
    (lambda d: d.update(electricity_usd_per_kwh=-0.1), ("electricity_usd_per_kwh", ">= 0")),
    (lambda d: d.update(amortization_years=0), ("amortization_years", "positive")),
    (lambda d: d.pop("amortization_years"), ("missing required key 'amortization_years'",)),
    (lambda d: d.update(electricity=0.08), ("unknown key", "electricity", "electricity_usd_per_kwh")),
    (lambda d: d["hardware"]["h100-sxm"].update(gpu_hour_usd=2.0), ("exactly one of",)),
    (lambda d: d["hardware"].update({"h100-sxm": {"capex": 35000}}), ("exactly one of",)),
    (lambda d: d.pop("hardware"), ("missing required key 'hardware'",)),
])
def test_bad_cost_file(tmp_path, edit, words):
    data = yaml.safe_load(yaml.safe_dump(GOOD_COSTS))
    edit(data)
    p = _costs_file(tmp_path, data)
    with pytest.raises(SpecError) as e:
        E.load_costs(p)
    msg = str(e.value)
    assert str(p) in msg and all(w in msg for w in words), msg


def test_shipped_cost_file_prices_every_preset_and_says_it_is_not_a_quote():
    costs = E.load_costs()
    text = (config_root() / "tco" / "default.yaml").read_text()
    assert "NOT quotes" in text
    for name in sorted(p.stem for p in (config_root() / "hardware").glob("*.yaml")):
        assert costs.gpu(load_hardware(name)).capex_usd > 0


def test_cli_objective_cost_on_unpriced_hardware(tmp_path, capsys):
    """A cost file without the hardware: --objective cost exits 2 with one line naming file and hardware."""
    data = yaml.safe_load(yaml.safe_dump(GOOD_COSTS))
    data["hardware"] = {"b200": {"gpu_hour_usd": 5.0}}
    p = _costs_file(tmp_path, data)
    rc = main(["sweep", str(EXPERIMENT), "--objective", "cost", "--costs", str(p),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert str(p) in err[-1] and "h100-sxm" in err[-1] and "no price" in err[-1]
