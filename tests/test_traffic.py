"""Traffic specs: length distributions and their moments, loads (closed, Poisson, trace), the
experiment YAML's ``traffic:`` key, and the errors bad traffic gets (file and key named; a trace's
bad rows reported, its good rows kept)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from jaxplan.specs import SpecError, experiment, load_experiment
from jaxplan.traffic import Lengths, Traffic, check_percentile, load_lengths, load_trace, traffic_from_dict

MEAN, CV = 2048.0, 0.5
LOW, HIGH = 100.0, 300.0


def test_moments_of_named_distributions():
    # lognormal with mean m and spread s = std/mean: E[x^2] = m^2 (1 + s^2)
    assert Lengths("lognormal", MEAN, CV).moments() == pytest.approx((MEAN, MEAN ** 2 * (1 + CV ** 2)))
    # uniform on [a, b]: E[x] = (a + b)/2, E[x^2] = (a^2 + ab + b^2)/3
    assert Lengths("uniform", 200.0, low=LOW, high=HIGH).moments() == pytest.approx(
        (200.0, (LOW ** 2 + LOW * HIGH + HIGH ** 2) / 3))
    # samples agree with the stated moments
    x = Lengths("lognormal", MEAN, CV).sample(np.random.default_rng(0), 200_000)
    assert x.mean() == pytest.approx(MEAN, rel=0.01) and x.std() / x.mean() == pytest.approx(CV, rel=0.03)
    q = Lengths("lognormal", MEAN, CV).quantiles(64)
    assert np.median(q) == pytest.approx(MEAN / math.sqrt(1 + CV ** 2), rel=0.02)   # lognormal median


def test_workload_fields_use_the_moments_nonlinear_costs_need():
    t = Traffic(isl=Lengths("lognormal", MEAN, CV), osl=Lengths("uniform", 200.0, low=LOW, high=HIGH))
    f = t.workload_fields()
    assert f["isl"] == MEAN and f["osl"] == 200.0
    assert f["isl_cv2"] == pytest.approx(CV ** 2)                            # E[isl^2]/E[isl]^2 - 1
    var_osl = (HIGH - LOW) ** 2 / 12                                         # independent lengths: Cov = 0
    assert f["decode_context_excess"] == pytest.approx(var_osl / 2 / 200.0)
    fixed = Traffic().with_lengths(1024, 256).workload_fields()
    assert fixed == {"isl": 1024.0, "osl": 256.0, "isl_cv2": 0.0, "decode_context_excess": 0.0}


def test_fixed_closed_loop_experiment_is_todays_workload():
    e = experiment("llama-3.1-8b", "h100-sxm", 8, isl=2048, osl=256)
    assert e.traffic.load == "closed" and e.workload.isl_cv2 == 0.0 and e.workload.decode_context_excess == 0.0
    assert e.workload.decode_kv_len == 2048 + 256 / 2
    assert e.workload.prefill_key_span == 2048 / 2


def test_yaml_traffic_and_rate_override(tmp_path):
    (tmp_path / "lengths.csv").write_text("isl,osl\n100,10\n300,30\n")
    (tmp_path / "e.yaml").write_text(
        "model: llama-3.1-8b\nhardware: h100-sxm\ngpus: 8\nprecision: fp8\nworkload: {}\n"
        "traffic:\n  lengths_csv: lengths.csv\n  load: {kind: poisson, rate_rps: 12.5}\n")
    e = load_experiment(tmp_path / "e.yaml")
    assert e.traffic.load == "poisson" and e.traffic.rate == 12.5 and e.traffic.paired
    assert e.workload.isl == 200.0 and e.workload.osl == 20.0
    # paired rows: Cov(isl, osl) = E[isl osl] - 200*20 = (1000 + 9000)/2 - 4000 = 1000; Var(osl) = 100
    assert e.workload.decode_context_excess == pytest.approx((1000 + 100 / 2) / 20)
    assert load_experiment(tmp_path / "e.yaml", rate=3.0).traffic.rate == 3.0


def test_trace_bad_rows_reported_good_rows_kept(tmp_path):
    f = tmp_path / "trace.csv"
    f.write_text("timestamp_s,isl,osl\n0.0,100,10\nabc,100,10\n0.5,200,20\n1.0,-5,10\n2.0,300,30\n")
    t = load_trace(f)
    assert t.arrivals == (0.0, 0.5, 2.0) and t.rate == pytest.approx(2 / 2.0)
    assert len(t.skipped) == 2 and "line 3" in t.skipped[0] and "'abc'" in t.skipped[0] and "line 5" in t.skipped[1]
    assert t.isl.values == (100.0, 200.0, 300.0) and t.paired
    # gaps 0.5 and 1.5: mean 1, variance 0.25 -> cv^2 = 0.25
    assert t.arrival_cv2 == pytest.approx(0.25)


@pytest.mark.parametrize("text, match", [
    ("", "is empty"),
    ("timestamp_s\n", "no usable data row"),
    ("timestamp_s\nx\ny\n", r"no usable data row \(2 bad: .*line 2"),
    ("when\n1\n2\n", "no timestamp column"),
    ("timestamp_s\n1\n1\n", "two distinct timestamps"),
])
def test_bad_traces_name_the_file_and_key(tmp_path, text, match):
    f = tmp_path / "trace.csv"
    f.write_text(text)
    with pytest.raises(SpecError, match=match) as e:
        traffic_from_dict({"load": {"kind": "trace", "file": str(f)}}, "exp.yaml")
    assert "exp.yaml [traffic] [load] key 'file'" in str(e.value) and "trace.csv" in str(e.value)


@pytest.mark.parametrize("data, match", [
    ({"load": {"kind": "poisson", "rate_rps": -1}}, "rate_rps.*positive"),
    ({"load": {"kind": "poisson"}}, "rate_rps"),
    ({"load": {"kind": "burst"}}, "'load' must be"),
    ({"isl": {"distribution": "pareto"}}, "'distribution' is 'pareto'"),
    ({"isl": {"distribution": "uniform", "low": 5, "high": 2}}, "below"),
    ({"isl": {"distribution": "lognormal", "mean": 100}}, "needs key 'spread'"),
    ({"osl": -3}, "key 'osl'"),
    ({"rate": 3}, "unknown key"),
])
def test_bad_traffic_specs(data, match):
    with pytest.raises(SpecError, match=match) as e:
        traffic_from_dict(data, "exp.yaml")
    assert "exp.yaml [traffic]" in str(e.value)


def test_percentiles_rates_and_lengths_files(tmp_path):
    for q in (0, 100, -5, 150, float("nan")):
        with pytest.raises(SpecError, match=r"--sla-ttft-p.*strictly between 0 and 100"):
            check_percentile(q, "--sla-ttft-p")
    assert check_percentile(99, "x") == 99.0
    with pytest.raises(SpecError, match="--rate.*positive"):
        experiment("llama-3.1-8b", "h100-sxm", 8, rate=-2.0)
    f = tmp_path / "l.csv"
    f.write_text("isl,osl\n10,1\nfoo,2\n")
    isl, osl, skipped = load_lengths(f)
    assert isl.values == (10.0,) and osl.values == (1.0,) and "line 3" in skipped[0]


def test_closed_loop_of_fixed_lengths_prices_exactly_as_before(tmp_path):
    """The same study with and without a ``traffic:`` key of fixed lengths under a closed loop: every
    metric of every layout identical (not merely close), so today's numbers stand."""
    import numpy as np

    from jaxplan.sweep import run_sweep
    body = ("model: llama-3.1-8b\nhardware: h100-sxm\ngpus: 2\nprecision: fp8\n"
            "search: {chunk_sizes: [2048], max_batch: 64}\n")
    (tmp_path / "a.yaml").write_text(body + "workload: {isl_tokens: 2048, osl_tokens: 256}\n")
    (tmp_path / "b.yaml").write_text(body + "workload: {}\ntraffic: {isl: 2048, osl: 256, load: closed}\n")
    a, b = (run_sweep(load_experiment(tmp_path / f)) for f in ("a.yaml", "b.yaml"))
    assert a.n == b.n > 10
    for k, v in a.columns.items():
        assert np.array_equal(np.asarray(v), np.asarray(b.columns[k])), k
