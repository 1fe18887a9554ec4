"""Sensitivities: exact elasticities agree with finite differences of full re-sweeps wherever the
best layout does not switch; what-if scaling keeps the compiled sweep; physics of the signs."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxplan import sensitivity as S
from jaxplan.cli import parse_scales
from jaxplan.layouts import Layout
from jaxplan.report import label
from jaxplan.serving import evaluate
from jaxplan.specs import CONTINUOUS_HARDWARE, SpecError, Workload, load_experiment, scale_hardware
from jaxplan.sweep import DISAGG_KEY, run_sweep

EXPERIMENT = Path(__file__).parent / "data" / "small_experiment.yaml"   # Llama-3.1-8B on 8 H100, FP8
FD_STEP = 0.01          # central differences at x * (1 -+ 1%)
FD_REL = 0.02           # the tolerance: 2%
FD_ABS = 1e-3           # floor for elasticities near zero (float32 noise of a log over 2%)
PARAMS_CHECKED = ("gemm_eff_fp8", "mem_eff", "attn_decode_mem_eff", "step_overhead_s", "kernel_latency_s",
                  "layer_overhead_s", "roofline_sharpness")


@pytest.fixture(scope="module")
def exp():
    return load_experiment(EXPERIMENT)


@pytest.fixture(scope="module")
def sens(exp, p):
    return S.run_sensitivity(exp, p, switch_kinds=("hardware", "workload"))


def _best_gpu(exp, p):
    r = run_sweep(exp, p)
    return S.layout_key(r.columns, r.best), float(r.columns["tokens_per_s_per_gpu"][r.best])


def test_elasticities_match_finite_differences_of_full_resweeps(exp, p, sens):
    base_key = S.layout_key(sens.sweep.columns, sens.best)
    at_best = {(r["kind"], r["name"]): r for r in sens.records if r["row"] == sens.best}
    inputs = [k for k, r in at_best.items() if r["value"] > 0 and (k[0] in ("hardware", "workload")
                                                                   or k[1] in PARAMS_CHECKED)]
    checked, lines = 0, []
    for kind, name in inputs:
        keys, gpus = [], []
        for f in (1 - FD_STEP, 1 + FD_STEP):
            key, g = _best_gpu(*S.perturbed(exp, p, kind, name, f))
            keys.append(key)
            gpus.append(g)
        if not keys[0] == keys[1] == base_key:
            lines.append(f"{name}: best layout switches within 1%, not compared")
            continue
        fd = (math.log(gpus[1]) - math.log(gpus[0])) / (math.log(1 + FD_STEP) - math.log(1 - FD_STEP))
        e = at_best[(kind, name)]["elasticity_tokens_per_s_per_gpu"]
        lines.append(f"{name}: exact {e:+.4f}, re-sweep FD {fd:+.4f}")
        assert e == pytest.approx(fd, rel=FD_REL, abs=FD_ABS), name
        checked += 1
    print("\n" + "\n".join(lines))
    # the comparison is not vacuous: every hardware rate the layout uses and the parameters above
    assert checked >= 8
    big = [r for k, r in at_best.items() if abs(r["elasticity_tokens_per_s_per_gpu"]) > 0.1]
    assert len(big) >= 3


def test_workload_elasticities_match_finite_differences_at_a_fixed_layout(exp, p, sens):
    """ISL and OSL move the best layout within 1% here, so check them at the chosen layout itself,
    with a 0.1% step: at +1% ISL this layout's prefill saturates (decoders need isl/(osl*chunk) of
    the iterations to carry prompts: 127.3 decoding of 128 admitted, limit osl*chunk/isl = 128 ->
    126.7), a kink that a 1% central difference would straddle. TTFT is left out: in the closed
    loop it is N/X - OSL*TPOT, here 4.03 s - 4.00 s, so its float32 finite difference is noise at
    the 1% level (the derivative itself is taken analytically and does not suffer that way)."""
    step = 1e-3
    i = sens.best
    lay = Layout(*(np.float32(sens.sweep.columns[f][i]) for f in Layout._fields))
    at_best = {r["name"]: r for r in sens.records if r["row"] == i and r["kind"] == "workload"}
    f = jax.jit(evaluate, static_argnums=(2, 3))
    for name in ("isl", "osl"):
        vals = {}
        for s in (1 - step, 1 + step):
            wl = dataclasses.replace(exp.workload, **{name: getattr(exp.workload, name) * s})
            m = f(p, exp.hardware, exp.model, exp.precision, wl, lay)
            vals[s] = {k: math.log(float(m[k])) for k in S.METRICS}
        for metric in ("tokens_per_s_per_gpu", "tokens_per_s_per_user"):
            fd = (vals[1 + step][metric] - vals[1 - step][metric]) / (math.log(1 + step) - math.log(1 - step))
            assert at_best[name][f"elasticity_{metric}"] == pytest.approx(fd, rel=FD_REL, abs=FD_ABS), (name, metric)


def test_every_frontier_point_has_every_input(sens, exp):
    rows = {r["row"] for r in sens.records}
    assert set(int(i) for i in sens.sweep.frontier) <= rows and sens.best in rows
    per_row = {r: sum(1 for x in sens.records if x["row"] == r) for r in rows}
    assert S.workload_inputs(exp.workload) == ("isl", "osl")
    n_inputs = len(CONTINUOUS_HARDWARE) + 2
    assert min(per_row.values()) == max(per_row.values()) > n_inputs


def test_physics_of_the_signs(sens, exp):
    """More of a rate or a bandwidth never lowers throughput; a latency never raises it; on 8 GPUs
    inside one NVLink domain the scale-out network carries nothing."""
    for r in sens.records:
        e = r["elasticity_tokens_per_s_per_gpu"]
        if r["kind"] == "hardware" and r["name"].endswith(("_flops", "_bandwidth")):
            assert e >= -1e-6, r
        if r["kind"] == "hardware" and r["name"].endswith("_latency"):
            assert e <= 1e-6, r
        if r["kind"] == "hardware" and r["name"].startswith("scale_out"):
            assert e == 0.0
    # Decode of a few requests streams the weights: HBM bandwidth limits it more than FLOP/s; the
    # largest batch on the frontier leans more on FLOP/s than the smallest does.
    cols = sens.sweep.columns
    front = sens.sweep.frontier
    lo, hi = int(front[np.argmin(cols["batch"][front])]), int(front[np.argmax(cols["batch"][front])])
    el = {(r["row"], r["name"]): r["elasticity_tokens_per_s_per_gpu"] for r in sens.records}
    assert el[(lo, "hbm_bandwidth")] > el[(lo, "fp8_flops")]
    assert el[(hi, "fp8_flops")] > el[(lo, "fp8_flops")]


def test_switch_report_is_consistent(sens):
    base = float(sens.sweep.columns["tokens_per_s_per_gpu"][sens.best])
    assert {(s["name"], s["factor"]) for s in sens.switches} >= {(n, f) for n in ("hbm_bandwidth", "fp8_flops")
                                                                 for f in S.SWITCH_FACTORS}
    forced = chosen = 0
    for s in sens.switches:
        assert s["change_pct"] == pytest.approx(100 * (s["best_tokens_per_s_per_gpu"] / base - 1), abs=1e-6)
        if not s["switched"]:
            # same layout: the change is that layout's own, close to the linear prediction over 10%
            assert s["old_layout_tokens_per_s_per_gpu"] == s["best_tokens_per_s_per_gpu"]
            assert s["change_pct"] == pytest.approx(s["linear_pct"], rel=0.2, abs=0.05), s
        elif s["old_layout_meets_sla"]:
            # another layout wins: never worse than staying would have been
            assert s["best_tokens_per_s_per_gpu"] >= s["old_layout_tokens_per_s_per_gpu"], s
            chosen += 1
        else:
            forced += 1          # the old layout misses the SLA (or no longer fits) after the change
    print(f"\n{len(sens.switches)} re-sweeps: {chosen} switch to a better layout, {forced} are forced off the old one")


# ----------------------------------------------------------------------------- what-if scaling

def test_parse_scales_names_and_errors():
    assert parse_scales(["hbm_bandwidth=2", "scale_out_bandwidth=0.5"]) == {"hbm_bandwidth": 2.0,
                                                                            "scale_out_bandwidth": 0.5}
    # Hardware field names and YAML keys are accepted too
    assert parse_scales(["scale_out_bandwidth=3", "hbm_bandwidth_tb_s=1.5"]) == {"scale_out_bandwidth": 3.0,
                                                                                 "hbm_bandwidth": 1.5}
    for bad, words in ((["hbm=2"], ("unknown hardware number 'hbm'", "scale_out_bandwidth")),
                       (["hbm_bandwidth"], ("NAME=FACTOR",)),
                       (["hbm_bandwidth=x"], ("not a number",)),
                       (["hbm_bandwidth=0"], ("positive",)),
                       (["hbm_bandwidth=2", "hbm_bandwidth_tb_s=3"], ("twice",))):
        with pytest.raises(SpecError) as e:
            parse_scales(bad)
        assert all(w in str(e.value) for w in words), str(e.value)


def test_scale_hardware_multiplies_and_keeps_the_compiled_sweep(exp, p):
    hw = exp.hardware
    h2 = scale_hardware(hw, {"hbm_bandwidth": 2.0, "scale_up_latency": 0.5})
    assert h2.hbm_bandwidth == 2 * hw.hbm_bandwidth and h2.scale_up_latency == 0.5 * hw.scale_up_latency
    assert h2.fp8_flops == hw.fp8_flops
    # same pytree structure (name, rates, source are static metadata): no recompilation
    assert jax.tree_util.tree_structure(h2) == jax.tree_util.tree_structure(hw)
    # more HBM bandwidth is never slower, at any layout
    a = run_sweep(exp, p)
    b = run_sweep(dataclasses.replace(exp, hardware=h2.replace(scale_up_latency=hw.scale_up_latency)), p)
    ok = a.columns["feasible"]
    assert np.all(b.columns["tokens_per_s_per_gpu"][ok] >= a.columns["tokens_per_s_per_gpu"][ok] * (1 - 1e-5))


def test_fixed_layout_decode_streams_weights(exp, p):
    """``elasticities`` at a layout given by hand (what ``explain`` shows): decode of an 8B model
    at batch 64 on one GPU streams the weights, so faster HBM raises throughput, and HBM capacity
    moves nothing while the admitted requests fit."""
    one = {f: [v] for f, v in zip(Layout._fields, (1, 1, 1, 8, 64, 2048, 1))}
    wl = Workload(2048.0, 512.0)
    recs = {r["name"]: r for r in S.elasticities(p, exp.hardware, exp.model, exp.precision, wl, one, [0])}
    lay = Layout(*(np.float32(v[0]) for v in one.values()))
    f = jax.jit(evaluate, static_argnums=(2, 3))
    h = 0.01
    up, dn = (f(p, exp.hardware.replace(hbm_bandwidth=exp.hardware.hbm_bandwidth * s), exp.model, exp.precision,
                wl, lay) for s in (1 + h, 1 - h))
    fd = (math.log(float(up["tokens_per_s_per_gpu"])) - math.log(float(dn["tokens_per_s_per_gpu"]))) / (
        math.log(1 + h) - math.log(1 - h))
    assert recs["hbm_bandwidth"]["elasticity_tokens_per_s_per_gpu"] == pytest.approx(fd, rel=FD_REL, abs=FD_ABS)
    assert recs["hbm_bandwidth"]["elasticity_tokens_per_s_per_gpu"] > 0.2
    assert recs["hbm_capacity"]["elasticity_tokens_per_s_per_gpu"] == 0.0


# ----------------------------------------------------------------------------- disaggregated serving

@pytest.fixture(scope="module")
def dsens(exp, p):
    return S.run_sensitivity(exp, p, switch_kinds=("hardware",), serving="disagg")


def test_disagg_deployment_is_the_sweep_row(exp, p, dsens):
    """serving.disagg_deployment (what the Jacobian differentiates) gives the disaggregated sweep's
    own numbers at every frontier point: same pairing formula, fixed worker counts."""
    from jaxplan.serving import disagg_deployment
    cols, rows = dsens.sweep.columns, np.asarray(dsens.sweep.frontier)
    args = S.row_args(cols, rows, exp.hardware, "disagg")
    fn = jax.vmap(lambda a: disagg_deployment(p, exp.hardware, exp.model, exp.precision, exp.workload, *a))
    got = jax.device_get(fn(args))
    for k in ("tokens_per_s_per_gpu", "tokens_per_s_per_user", "ttft_s"):
        np.testing.assert_allclose(got[k], np.asarray(cols[k])[rows], rtol=1e-5, err_msg=k)


def test_disagg_elasticities_match_finite_differences_at_fixed_workers(exp, p, dsens):
    """At the SLA pick's fixed worker layouts and counts, the exact elasticity of tokens/s/GPU and
    TTFT equals the central difference of disagg_deployment at +-1% of the input."""
    from jaxplan.serving import disagg_deployment
    assert dsens.best is not None
    args = jax.tree_util.tree_map(lambda a: a[0], S.row_args(dsens.sweep.columns, np.asarray([dsens.best]),
                                                              exp.hardware, "disagg"))

    def metric(kind, name, f):
        e2, q = S.perturbed(exp, p, kind, name, f)
        return {k: float(v) for k, v in disagg_deployment(q, e2.hardware, e2.model, e2.precision, e2.workload,
                                                          *args).items()}
    at_best = {(r["kind"], r["name"]): r for r in dsens.records if r["row"] == dsens.best}
    checked = 0
    # (ISL is not checked here: ISL 1024 sits exactly at floor(chunk / isl) = 2 prompts per prefill
    # iteration, so any longer prompt drops to 1 and a difference quotient straddles that step.)
    for kind, name in (("hardware", "hbm_bandwidth"), ("hardware", "fp8_flops"), ("workload", "osl"),
                       ("param", "mem_eff"), ("param", "disagg_overhead_s")):
        lo, hi = metric(kind, name, 1 - FD_STEP), metric(kind, name, 1 + FD_STEP)
        for m in ("tokens_per_s_per_gpu", "ttft_s"):
            fd = (math.log(hi[m]) - math.log(lo[m])) / (math.log(1 + FD_STEP) - math.log(1 - FD_STEP))
            assert at_best[(kind, name)][f"elasticity_{m}"] == pytest.approx(fd, rel=FD_REL, abs=FD_ABS), (name, m)
            checked += 1
    assert checked == 10
    # a per-request constant moves TTFT only; decode HBM moves throughput (decode reads weights + KV)
    assert at_best[("param", "disagg_overhead_s")]["elasticity_tokens_per_s_per_gpu"] == 0.0
    assert at_best[("param", "disagg_overhead_s")]["elasticity_ttft_s"] > 0.0
    assert at_best[("hardware", "hbm_bandwidth")]["elasticity_tokens_per_s_per_user"] > 0.3


def test_disagg_switch_report_names_both_pools(dsens):
    assert dsens.switches and all(s["kind"] == "hardware" for s in dsens.switches)
    key = S.layout_key(dsens.sweep.columns, dsens.best)
    assert len(key) == len(DISAGG_KEY)
    assert S.find_layout(dsens.sweep.columns, key) == dsens.best
    for s in dsens.switches:
        if s["switched"] and s["new_layout"] is not None:
            assert label(s["new_layout"]).startswith("prefill ") and "decode " in label(s["new_layout"])


def test_speculation_and_prefix_cache_elasticities_match_central_differences(p, h100, fp8, models, ev):
    """With speculative decoding (3 drafts at 70%) and half of every prompt cached, the
    elasticities cover the acceptance rate and the cached share too, and each equals a central
    difference of the model at +-1%: Llama-3.1-70B, TP4, 64 requests of 4096 in / 512 out, 60%
    cached (1638 tokens computed: two prompts per 4096-token chunk, away from the floor's kinks)."""
    model = models("llama-3.1-70b")
    wl = Workload(4096.0, 512.0, 0.7, 3, 0.6)
    assert S.workload_inputs(wl) == ("isl", "osl", "acceptance", "prefix_hit")
    cols = {"tp": np.asarray([4.0]), "pp": np.asarray([1.0]), "ep": np.asarray([1.0]), "dp": np.asarray([2.0]),
            "batch": np.asarray([64.0]), "chunk": np.asarray([4096.0]), "adp": np.asarray([1.0])}
    recs = {r["name"]: r for r in S.elasticities(p, h100, model, fp8, wl, cols, np.asarray([0]), "trtllm")
            if r["kind"] == "workload"}
    lay = S.row_args(cols, np.asarray([0]), h100, "agg")
    lay = type(lay)(*(v[0] for v in lay))
    for name in ("acceptance", "prefix_hit"):
        assert recs[name]["value"] == getattr(wl, name)
        hi = ev(p, h100, model, fp8, dataclasses.replace(wl, **{name: getattr(wl, name) * 1.01}), lay, "mixed")
        lo = ev(p, h100, model, fp8, dataclasses.replace(wl, **{name: getattr(wl, name) / 1.01}), lay, "mixed")
        for metric in ("tokens_per_s_per_gpu", "tokens_per_s_per_user", "ttft_s"):
            fd = float(np.log(hi[metric] / lo[metric])) / (2 * np.log(1.01))
            assert recs[name][f"elasticity_{metric}"] == pytest.approx(fd, rel=0.02, abs=2e-3), (name, metric)
    # more accepted drafts: faster tokens; more of the prompt cached: shorter TTFT
    assert recs["acceptance"]["elasticity_tokens_per_s_per_user"] > 0.5
    assert recs["prefix_hit"]["elasticity_ttft_s"] < 0
