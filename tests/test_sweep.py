"""The batched evaluator (compile once, fixed-size chunks), the Pareto frontier, the SLA pick, the
memory-limited batch bound and a whole small sweep."""
from __future__ import annotations

import math
from pathlib import Path

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxplan import layouts as L
from jaxplan import sweep as S
from jaxplan.cost import memory_per_gpu
from jaxplan.serving import evaluate
from jaxplan.specs import Workload, load_experiment

EXPERIMENT = (Path(__file__).parent / "data" / "small_experiment.yaml").read_text()


# ----------------------------------------------------------------------------- Pareto and SLA

def test_pareto_mask_hand_made():
    #          0    1    2    3    4    5    6    7    8    9    10      11
    user = np.array([5, 10, 15, 12, 20, 25, 30, 35, 40, 20, np.nan, 22], float)
    gpu = np.array([200, 100, 90, 80, 80, 60, 50, 70, 10, 80, 500, np.inf], float)
    feas = np.ones(12, bool)
    feas[7] = False                     # (35, 70) would dominate 5 and 6, but does not fit
    m = S.pareto_mask(user, gpu, feas)
    on = set(np.flatnonzero(m))
    # 3 is beaten by 2 on both axes; 4 and 9 are the same point: exactly one of them is kept;
    # 10 and 11 have no finite value; 7 is infeasible
    assert on - {4, 9} == {0, 1, 2, 5, 6, 8}
    assert len(on & {4, 9}) == 1
    # let 7 in: it takes 5's and 6's places
    feas[7] = True
    on = set(np.flatnonzero(S.pareto_mask(user, gpu, feas)))
    assert on - {4, 9} == {0, 1, 2, 7, 8}
    assert not S.pareto_mask(user, gpu, np.zeros(12, bool)).any()


def dominated_brute(user, gpu, feas):
    n = len(user)
    keep = np.zeros(n, bool)
    for i in range(n):
        if not feas[i]:
            continue
        keep[i] = not any(feas[j] and user[j] >= user[i] and gpu[j] >= gpu[i]
                          and (user[j] > user[i] or gpu[j] > gpu[i]) for j in range(n))
    return keep


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12), st.booleans()), min_size=1, max_size=40))
def test_pareto_mask_equals_brute_force(points):
    user, gpu, feas = (np.array(x) for x in zip(*points))
    user, gpu = user.astype(float), gpu.astype(float)
    m = S.pareto_mask(user, gpu, feas)
    strict = dominated_brute(user, gpu, feas)
    # every point on the frontier is undominated, and every undominated point is on it or has an
    # identical twin on it
    assert np.all(strict[m])
    for i in np.flatnonzero(strict):
        twins = np.flatnonzero((user == user[i]) & (gpu == gpu[i]) & feas)
        assert m[twins].sum() == 1


def test_sla_pick():
    res = {
        "tokens_per_s_per_user": np.array([100.0, 60.0, 40.0, 80.0, 70.0, 90.0]),
        "tokens_per_s_per_gpu": np.array([100.0, 500.0, 900.0, 300.0, 800.0, 350.0]),
        "ttft_s": np.array([0.5, 1.0, 0.5, 1.5, 3.0, 0.2]),
        "feasible": np.array([True, False, True, True, True, True]),
    }
    # >= 50 tokens/s/user and TTFT <= 2 s: 1 is infeasible, 2 too slow per user, 4 too slow to
    # first token; of 0, 3 and 5 the most tokens/s/GPU is 5
    assert S.sla_pick(res, 50.0, 2.0) == 5
    assert S.sla_pick(res, 50.0, math.inf) == 4
    assert S.sla_pick(res, 0.0, math.inf) == 2
    assert S.sla_pick(res, 95.0, 0.4) is None
    assert S.sla_pick(res, 1000.0, math.inf) is None


# ----------------------------------------------------------------------------- the evaluator

@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    path = tmp_path_factory.mktemp("exp") / "small.yaml"
    path.write_text(EXPERIMENT)
    return load_experiment(path)


@pytest.fixture(scope="module")
def cols200(exp, p):
    """200 layouts of Llama 3.1 8B on 8 GPUs: every config, batches 1..4096, two chunk sizes."""
    configs = L.parallel_configs(exp.model, exp.gpus)
    cols = L.expand(configs, np.full(len(configs), 4096), [512, 2048])
    assert len(cols["tp"]) >= 200
    return {k: v[:200] for k, v in cols.items()}


def test_batched_evaluator_is_cached_per_model_and_precision(exp, bf16):
    a = S.batched_evaluator(exp.model, exp.precision)
    assert S.batched_evaluator(exp.model, exp.precision) is a
    assert S.batched_evaluator(exp.model, bf16) is not a


def test_chunked_evaluation_equals_one_big_chunk(exp, p, cols200, monkeypatch):
    shapes = []
    real = S.batched_evaluator

    def spy(model, prec, metric_fn=evaluate):
        fn = real(model, prec, metric_fn)

        def call(p, hw, wl, lay):
            shapes.append(lay.tp.shape)
            return fn(p, hw, wl, lay)
        return call

    monkeypatch.setattr(S, "batched_evaluator", spy)
    a = S.evaluate_layouts(p, exp.hardware, exp.model, exp.precision, exp.workload, cols200, chunk=64)
    # fixed-size chunks: 4 calls of 64 rows (the last padded), whatever the number of layouts
    assert shapes == [(64,)] * 4
    shapes.clear()
    b = S.evaluate_layouts(p, exp.hardware, exp.model, exp.precision, exp.workload, cols200, chunk=256)
    assert shapes == [(200,)]
    assert set(a) == set(b) and all(len(v) == 200 for v in a.values())
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k], float), np.asarray(b[k], float), rtol=1e-6, err_msg=k)
    # the rows are the layouts asked for, in order, the padded tail included: reversing the
    # layouts reverses the results
    shapes.clear()
    rev = S.evaluate_layouts(p, exp.hardware, exp.model, exp.precision, exp.workload,
                             {k: v[::-1].copy() for k, v in cols200.items()}, chunk=64)
    for k in a:
        np.testing.assert_allclose(np.asarray(rev[k], float)[::-1], np.asarray(a[k], float), rtol=1e-6, err_msg=k)
    # and row i is the evaluator's answer for layout i (asked directly, in a 64-row call)
    picks = np.asarray([137, 0, 199, 63, 64] + [5] * 59)
    lay = S.Layout(*(jnp.asarray(cols200[f][picks]) for f in S.Layout._fields))
    direct = real(exp.model, exp.precision)(p, exp.hardware, exp.workload, lay)
    np.testing.assert_allclose(np.asarray(direct["tpot_s"])[:5], a["tpot_s"][picks[:5]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(direct["ttft_s"])[:5], a["ttft_s"][picks[:5]], rtol=1e-6)


def test_compiles_once_per_shape(exp, p, cols200):
    """Two sweeps with different parameters, hardware numbers, workload and layouts, same chunk
    shape: the metric function is traced exactly once."""
    traces = []

    def counted(*args):
        traces.append(1)
        return evaluate(*args)

    once = chex.assert_max_traces(counted, n=1)
    hw, wl = exp.hardware, exp.workload
    r1 = S.evaluate_layouts(p, hw, exp.model, exp.precision, wl, cols200, chunk=64, metric_fn=once)
    p2 = dict(p, step_overhead_s=jnp.float32(5e-3), mem_eff=jnp.float32(0.7))
    hw2 = hw.replace(hbm_bandwidth=2 * hw.hbm_bandwidth, scale_up_bandwidth=900e9)
    wl2 = Workload(4096.0, 1024.0)
    other = {k: v[::-1][:150].copy() for k, v in cols200.items()}        # 150 rows: padded chunks
    r2 = S.evaluate_layouts(p2, hw2, exp.model, exp.precision, wl2, other, chunk=64, metric_fn=once)
    assert len(traces) == 1
    assert len(r2["tpot_s"]) == 150
    assert not np.allclose(r1["tpot_s"][:150], r2["tpot_s"])            # it did use the new values
    fn = S.batched_evaluator(exp.model, exp.precision, once)
    assert fn._cache_size() == 1


# ----------------------------------------------------------------------------- batch bound

def test_max_batch_is_the_largest_batch_that_fits(exp, p):
    configs = L.parallel_configs(exp.model, exp.gpus)
    chunk = 2048.0
    bmax = S.max_batch(p, exp.hardware, exp.model, exp.precision, exp.workload, configs, chunk, 10**6)
    assert np.all(bmax > 0)
    tp, pp, ep, adp = (configs[:, i].astype(np.float32) for i in (0, 1, 2, 4))

    def total(b):
        m = memory_per_gpu(p, exp.hardware, exp.model, exp.precision, exp.workload.isl, exp.workload.osl,
                           tp, ep, adp, pp, b.astype(np.float32), chunk)
        return np.asarray(m["total"], float), np.asarray(m["capacity"], float)     # per layout

    at, cap = total(bmax.astype(float))
    below, _ = total(bmax.astype(float) - 1)
    above, _ = total(bmax.astype(float) + 1)
    # The slope per request is taken in float32 from two totals of ~1e10 bytes, so the bound can be
    # off by a fraction of one request where it runs into the thousands (e.g. TP4 x PP2: 6413
    # requests of ~10 MB, 1.3 MB over): allow 1e-4 of the capacity, and require one fewer to fit.
    assert np.all(below <= cap)
    assert np.all(at <= cap * (1 + 1e-4))
    assert np.all(above > cap * (1 - 1e-4))
    # the cap applies
    capped = S.max_batch(p, exp.hardware, exp.model, exp.precision, exp.workload, configs, chunk, 64)
    assert np.all(capped == np.minimum(bmax, 64))


def test_max_batch_zero_when_weights_do_not_fit(p, h100, bf16, models):
    m = models("mixtral-8x22b")                  # ~281 GB of BF16 weights
    configs = np.asarray([[1, 1, 1, 1, 1], [8, 1, 1, 1, 1]])
    b = S.max_batch(p, h100, m, bf16, Workload(1024.0, 256.0), configs, 512.0, 4096)
    assert b[0] == 0 and b[1] > 0


# ----------------------------------------------------------------------------- a whole sweep

def test_run_sweep_small(exp, p):
    res = S.run_sweep(exp, p)
    cols = res.columns
    configs = L.parallel_configs(exp.model, exp.gpus)
    assert res.num_parallel_configs == len(configs) == 10
    assert res.n == len(cols["tp"]) > 0
    # every layout uses the 8 GPUs, fits its batch, and has both chunk sizes
    assert np.all(cols["tp"] * cols["pp"] * cols["ep"] * cols["dp"] == 8)
    assert set(np.unique(cols["chunk"])) == {512, 2048}         # a chunk beyond the prompt packs prompts
    # frontier: feasible, sorted by tokens/s/user, consistent with on_frontier and pareto_mask
    f = res.frontier
    assert len(f) > 0 and np.all(cols["feasible"][f])
    assert np.all(np.diff(cols["tokens_per_s_per_user"][f]) >= 0)
    assert np.all(np.diff(cols["tokens_per_s_per_gpu"][f]) <= 0)
    assert set(f) == set(np.flatnonzero(cols["on_frontier"]))
    np.testing.assert_array_equal(cols["on_frontier"], S.pareto_mask(
        cols["tokens_per_s_per_user"], cols["tokens_per_s_per_gpu"], cols["feasible"]))
    # the SLA pick meets the SLA and nothing that meets it does better
    b = res.best
    assert b is not None
    ok = cols["feasible"] & (cols["tokens_per_s_per_user"] >= 50) & (cols["ttft_s"] <= 2)
    assert ok[b]
    assert cols["tokens_per_s_per_gpu"][b] == cols["tokens_per_s_per_gpu"][ok].max()
    # a frontier point is never beaten on both axes by any feasible layout
    u, g = cols["tokens_per_s_per_user"], cols["tokens_per_s_per_gpu"]
    feas = cols["feasible"]
    for i in f:
        assert not np.any(feas & (u >= u[i]) & (g >= g[i]) & ((u > u[i]) | (g > g[i])))
    assert res.compile_s >= 0 and res.evaluate_s >= 0
