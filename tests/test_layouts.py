"""The design space: legal parallel layouts (checked against an independent brute-force enumeration),
hand-counted cases, refusals that name the offending value, and the batch x chunk expansion.

No JAX compilation here.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from jaxplan import layouts as L
from jaxplan.layouts import Layout
from jaxplan.specs import SpecError


def brute_force(model, gpus):
    """Every (tp, pp, ep, dp) with tp*pp*ep*dp == gpus that the DESIGN's rules allow, adp = ep:
    attention TP (= tp) divides the heads, dense -> ep 1, MoE -> ep divides the experts, pp <= layers."""
    out = set()
    r = range(1, gpus + 1)
    for tp, pp, ep in itertools.product(r, r, r):
        if tp * pp * ep > gpus or gpus % (tp * pp * ep):
            continue
        if model.num_heads % tp or pp > model.num_layers:
            continue
        if (not model.is_moe and ep != 1) or (model.is_moe and model.num_experts % ep):
            continue
        out.add((tp, pp, ep, gpus // (tp * pp * ep), ep))
    return out


def as_set(rows):
    return {tuple(int(x) for x in r) for r in rows}


def test_llama8b_on_8_gpus_by_hand(models):
    """32 heads: TP 1, 2, 4, 8 all divide them; PP any divisor of the rest; dense so EP 1.
    TP1: PP 1,2,4,8 (4); TP2: PP 1,2,4 (3); TP4: PP 1,2 (2); TP8: PP 1 (1) -> 10 layouts."""
    rows = L.parallel_configs(models("llama-3.1-8b"), 8)
    assert rows.shape == (10, 5)
    expect = {(1, 1, 1, 8, 1), (1, 2, 1, 4, 1), (1, 4, 1, 2, 1), (1, 8, 1, 1, 1),
              (2, 1, 1, 4, 1), (2, 2, 1, 2, 1), (2, 4, 1, 1, 1),
              (4, 1, 1, 2, 1), (4, 2, 1, 1, 1), (8, 1, 1, 1, 1)}
    assert as_set(rows) == expect


def test_llama70b_on_3_gpus_has_no_tp3(models):
    """64 heads: TP 3 is illegal, so 3 GPUs are only TP1 x (PP 1 or 3) x DP."""
    rows = L.parallel_configs(models("llama-3.1-70b"), 3)
    assert as_set(rows) == {(1, 1, 1, 3, 1), (1, 3, 1, 1, 1)}


CASES = [("llama-3.1-8b", 8), ("llama-3.1-70b", 24), ("gpt-1.8t-moe", 64), ("mixtral-8x22b", 48),
         ("deepseek-v3", 128), ("qwen3-235b-a22b", 32)]


@pytest.mark.parametrize("name,gpus", CASES)
def test_default_space_equals_brute_force(models, name, gpus):
    m = models(name)
    rows = L.parallel_configs(m, gpus)
    assert len(as_set(rows)) == len(rows), "duplicate layouts"
    assert as_set(rows) == brute_force(m, gpus)


@pytest.mark.parametrize("name,gpus", CASES)
@pytest.mark.parametrize("mode", ["ep", "all"])
def test_every_generated_layout_is_legal(models, name, gpus, mode):
    m = models(name)
    rows = L.parallel_configs(m, gpus, mode)
    assert rows.dtype.kind == "i" and rows.shape[1] == 5 and len(rows) > 0
    assert len(as_set(rows)) == len(rows)
    for tp, pp, ep, dp, adp in rows:
        assert tp * pp * ep * dp == gpus
        assert (tp * ep) % adp == 0
        assert m.num_heads % (tp * ep // adp) == 0             # attention TP divides the heads
        assert pp <= m.num_layers
        if m.is_moe:
            assert m.num_experts % ep == 0
        else:
            assert ep == 1
        if mode == "ep":
            assert adp == ep
        assert L.check_parallel(m, gpus, int(tp), int(pp), int(ep), int(dp), int(adp)) == dp
    # "all" only adds attention-DP choices to the default space
    assert as_set(L.parallel_configs(m, gpus)) <= as_set(L.parallel_configs(m, gpus, "all"))


def test_moe_counts_by_hand(models):
    """GPT-1.8T-MoE (128 heads, 16 experts, 120 layers) on 16 GPUs, adp = ep: for each (tp, ep) with
    tp*ep | 16 and ep | 16, PP is any divisor of 16/(tp*ep). Number of (tp, ep, pp) triples with
    tp*ep*pp | 16 and all of them powers of two: sum over tp*ep*pp = 2^a of the number of ordered
    factorisations = sum_{a=0..4} C(a+2, 2) = 1 + 3 + 6 + 10 + 15 = 35."""
    assert len(L.parallel_configs(models("gpt-1.8t-moe"), 16)) == 35
    # DeepSeek-V3 has 61 layers: on 128 GPUs PP 64 and PP 128 are refused
    rows = L.parallel_configs(models("deepseek-v3"), 128)
    assert rows[:, 1].max() == 32


def test_expert_parallelism_never_exceeds_the_experts(models):
    rows = L.parallel_configs(models("mixtral-8x22b"), 64)             # 8 experts
    assert set(rows[:, 2]) == {1, 2, 4, 8}


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("name,kw,words", [
    ("llama-3.1-8b", dict(gpus=8, tp=3, pp=1, ep=1), ["3", "32", "heads"]),
    ("llama-3.1-8b", dict(gpus=8, tp=1, pp=1, ep=2), ["ep=2", "dense"]),
    ("gpt-1.8t-moe", dict(gpus=64, tp=1, pp=1, ep=32), ["ep=32", "16 experts"]),
    ("llama-3.1-8b", dict(gpus=64, tp=1, pp=64, ep=1), ["pp=64", "32 layers"]),
    ("llama-3.1-8b", dict(gpus=8, tp=1, pp=1, ep=1, dp=4), ["dp must be 8"]),
    ("llama-3.1-8b", dict(gpus=6, tp=4, pp=1, ep=1), ["does not divide gpus=6"]),
    ("llama-3.1-8b", dict(gpus=8, tp=0, pp=1, ep=1), ["tp must be at least 1"]),
    ("gpt-1.8t-moe", dict(gpus=64, tp=1, pp=1, ep=4, adp=3), ["adp=3"]),
])
def test_check_parallel_refuses_with_the_value_named(models, name, kw, words):
    with pytest.raises(SpecError) as e:
        L.check_parallel(models(name), where="--tp/--ep", **kw)
    msg = str(e.value)
    assert msg.startswith("--tp/--ep")
    for w in words:
        assert w in msg, (w, msg)


def test_parallel_configs_refuses_bad_budget_and_mode(models):
    with pytest.raises(SpecError, match="gpus"):
        L.parallel_configs(models("llama-3.1-8b"), 0)
    with pytest.raises(SpecError, match="attention_dp"):
        L.parallel_configs(models("llama-3.1-8b"), 8, "some")


# ----------------------------------------------------------------------------- expansion

def test_batch_grid_is_powers_of_two_and_midpoints():
    g = L.BATCH_GRID
    assert list(g) == sorted(set(g))
    assert g[:8] == (1, 2, 3, 4, 6, 8, 12, 16)
    assert all((x & (x - 1)) == 0 or (x % 3 == 0 and ((x // 3) & (x // 3 - 1)) == 0) for x in g)
    assert {2 ** i for i in range(14)} <= set(g)


def test_expand_crosses_batches_up_to_the_memory_limit_and_chunks():
    configs = np.asarray([[1, 1, 1, 8, 1], [2, 1, 4, 1, 4], [8, 1, 1, 1, 1]])
    bmax = np.asarray([16, 24, 0])            # the third does not fit at all
    cols = L.expand(configs, bmax, chunks=[512, 4096, 8192, 4096])
    # every distinct chunk is kept, also those longer than a prompt (iterations pack prompts)
    per = {0: [1, 2, 3, 4, 6, 8, 12, 16], 1: [4, 6, 8, 12, 16, 24], 2: [1]}
    n = sum(len(v) for v in per.values()) * 3
    assert all(len(v) == n for v in cols.values())
    assert set(cols) == set(Layout._fields)
    assert all(v.dtype == np.float32 for v in cols.values())
    assert set(cols["chunk"]) == {512.0, 4096.0, 8192.0}
    rows = set(zip(*(cols[k] for k in ("tp", "ep", "adp", "batch", "chunk"))))
    expect = set()
    for i, (tp, _pp, ep, _dp, adp) in enumerate(configs):
        for b in per[i]:
            for c in (512, 4096, 8192):
                expect.add((tp, ep, adp, b, c))
    assert rows == expect
    # every attention-DP group gets at least one request
    assert np.all(cols["batch"] >= cols["adp"])
    lay = L.to_layout(cols)
    assert isinstance(lay, Layout) and lay.batch.dtype == np.float32 and len(lay.tp) == n


def test_divisors_by_factorization_equal_brute_force():
    for n in range(1, 400):
        assert L.divisors(n) == [d for d in range(1, n + 1) if n % d == 0], n
    # a highly composite budget: 8648640 = 2^6 * 3^3 * 5 * 7 * 11 * 13 has 7 * 4 * 2 * 2 * 2 * 2 = 448 divisors
    assert L.prime_factors(8648640) == {2: 6, 3: 3, 5: 1, 7: 1, 11: 1, 13: 1}
    ds = L.divisors(8648640)
    assert len(ds) == 448 and ds[0] == 1 and ds[-1] == 8648640 and all(8648640 % d == 0 for d in ds)
    assert L.divisors(2_147_483_647) == [1, 2_147_483_647]     # a Mersenne prime: trial division to sqrt only
