"""Fittable parameters: the unconstrained (raw) round trip, the bounds the sigmoid enforces, the
YAML round trip, and errors that name the key and the file."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from jaxplan import params as P
from jaxplan.report import save_params
from jaxplan.specs import SpecError

SPECS = P.PARAM_SPECS
NAMES = sorted(SPECS)
F32_SLACK = 1e-6          # a few float32 ulps: float32(0.02) is already below 0.02


def interior(spec, frac):
    """The point a fraction ``frac`` of the way through the range (in log space for log params)."""
    if spec.log:
        return math.exp(math.log(spec.lo) + frac * (math.log(spec.hi) - math.log(spec.lo)))
    return spec.lo + frac * (spec.hi - spec.lo)


def test_defaults_are_float32_scalars_inside_their_ranges():
    p = P.default_params()
    assert set(p) == set(SPECS)
    for k, s in SPECS.items():
        assert s.lo < s.hi, k
        assert s.lo <= s.default <= s.hi, k
        assert p[k].dtype == jnp.float32 and p[k].shape == ()
        assert float(p[k]) == pytest.approx(s.default, rel=1e-6)
        if s.log:
            assert s.lo > 0, k


@pytest.mark.parametrize("frac", [0.01, 0.25, 0.5, 0.75, 0.99])
def test_raw_round_trip_every_param(frac):
    values = {k: jnp.float32(interior(s, frac)) for k, s in SPECS.items()}
    back = P.from_raw(P.to_raw(values))
    assert set(back) == set(values)
    for k in NAMES:
        assert float(back[k]) == pytest.approx(float(values[k]), rel=1e-4), k


def test_raw_round_trip_defaults_and_raw_side():
    p = P.default_params()
    back = P.from_raw(P.to_raw(p))
    for k in NAMES:
        assert float(back[k]) == pytest.approx(float(p[k]), rel=1e-4), k
    # and raw -> physical -> raw, for raw values the optimizer might reach
    raw = {k: jnp.float32(r) for k, r in zip(NAMES, np.linspace(-6.0, 6.0, len(NAMES)))}
    again = P.to_raw(P.from_raw(raw))
    for k in NAMES:
        assert float(again[k]) == pytest.approx(float(raw[k]), abs=2e-3), k


def test_raw_zero_is_the_middle_of_the_range():
    mid = P.from_raw({k: jnp.float32(0.0) for k in NAMES})
    for k, s in SPECS.items():
        expect = math.sqrt(s.lo * s.hi) if s.log else (s.lo + s.hi) / 2
        assert float(mid[k]) == pytest.approx(expect, rel=1e-5), k


@pytest.mark.parametrize("raw", [-50.0, 50.0, -1e4, 1e4])
def test_from_raw_stays_inside_the_range(raw):
    out = P.from_raw({k: jnp.float32(raw) for k in NAMES})
    for k, s in SPECS.items():
        v = float(out[k])
        assert math.isfinite(v), k
        assert s.lo * (1 - F32_SLACK) <= v <= s.hi * (1 + F32_SLACK), (k, v, s.lo, s.hi)
        # the end it was pushed to, to float32 accuracy
        assert v == pytest.approx(s.hi if raw > 0 else s.lo, rel=1e-5), k
        if s.hi == 1.0:
            assert v <= 1.0, k            # no efficiency or fraction above one, not even by an ulp


def test_from_raw_is_monotone_and_differentiable():
    def phys(r, k):
        return P.from_raw({k: r})[k]

    for k in NAMES:
        rs = jnp.linspace(-8.0, 8.0, 9)
        vals = np.asarray(jax.vmap(lambda r: phys(r, k))(rs))
        assert np.all(np.diff(vals) > 0), k
        g = float(jax.grad(phys)(jnp.float32(0.3), k))
        assert math.isfinite(g) and g > 0, k


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    fitted = {k: jnp.float32(interior(s, rng.uniform(0.05, 0.95))) for k, s in SPECS.items()}
    path = save_params(fitted, tmp_path / "sub" / "h100.yaml", meta={"source": "unit test", "rmse": 0.1})
    assert path.is_file()
    data = yaml.safe_load(path.read_text())
    assert set(data) == {"meta", "params"}
    assert data["meta"]["source"] == "unit test" and "written" in data["meta"]
    assert set(data["params"]) == set(SPECS)
    back = P.load_params(path)
    for k in NAMES:
        assert float(back[k]) == pytest.approx(float(fitted[k]), rel=1e-5), k
        assert back[k].dtype == jnp.float32
    # values driven to the ends of their ranges can be saved and read back too
    ends = P.from_raw({k: jnp.float32(50.0 if i % 2 else -50.0) for i, k in enumerate(NAMES)})
    back = P.load_params(save_params(ends, tmp_path / "ends.yaml"))
    for k in NAMES:
        assert float(back[k]) == pytest.approx(float(ends[k]), rel=1e-5), k


def test_a_partial_file_keeps_defaults_for_the_rest(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("params:\n  mem_eff: 0.5\n  kernel_latency_s: 1.0e-5\n")
    p = P.load_params(path)
    assert float(p["mem_eff"]) == pytest.approx(0.5)
    assert float(p["kernel_latency_s"]) == pytest.approx(1e-5)
    assert float(p["gemm_eff_bf16"]) == pytest.approx(SPECS["gemm_eff_bf16"].default)


@pytest.mark.parametrize("body,words", [
    ("params:\n  gemm_eff_fp16: 0.5\n", ["gemm_eff_fp16", "unknown parameter"]),
    ("params:\n  mem_eff: 1.5\n", ["mem_eff", "1.5", "outside"]),
    ("params:\n  kernel_latency_s: 0.0\n", ["kernel_latency_s", "outside"]),
    ("params:\n  mem_eff: fast\n", ["mem_eff", "must be a number"]),
    ("params:\n  mem_eff: true\n", ["mem_eff", "must be a number"]),
    ("meta: {}\n", ["params"]),
    ("params: {}\nextras: 1\n", ["extras", "unknown key"]),
    ("params: [1, 2]\n", ["params"]),
])
def test_bad_params_file_names_key_and_file(tmp_path, body, words):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(SpecError) as e:
        P.load_params(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_missing_params_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        P.load_params(tmp_path / "nope.yaml")


def test_params_for_override_and_defaults(tmp_path):
    path = save_params({"mem_eff": 0.6}, tmp_path / "mine.yaml")
    p, source = P.params_for("h100-sxm", path)
    assert float(p["mem_eff"]) == pytest.approx(0.6) and source == str(path)
    p, source = P.params_for("no-such-gpu")
    assert "default" in source
    assert all(float(p[k]) == pytest.approx(s.default, rel=1e-6) for k, s in SPECS.items())
