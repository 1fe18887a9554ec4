"""Open-loop sweeps and the CLI: ``sweep --rate`` meets percentile SLAs at the rate, ``--objective
goodput`` picks the most goodput per GPU, summary.json names the load model and the SLA, the CLI
equals ``plan_open``, and bad flags exit 2 with one line."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

import jaxplan
from jaxplan.cli import main

ARGS = ["--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--gpus", "2", "--precision", "fp8",
        "--isl", "2048", "--osl", "256"]
SLA = ["--sla-ttft-p99", "0.5", "--sla-tpot-p90", "0.03"]


def _run(argv):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:          # argparse refusing a flag
            rc = e.code
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def exp():
    return jaxplan.experiment("llama-3.1-8b", "h100-sxm", 2, precision="fp8", isl=2048, osl=256,
                              chunk_sizes=(2048,), max_batch=128)


@pytest.fixture(scope="module")
def sla():
    return jaxplan.percentile_sla(ttft={99: 0.5}, tpot={90: 0.03})


def test_rate_sweep_checks_percentiles_at_the_rate(exp, sla):
    import dataclasses
    e = dataclasses.replace(exp, traffic=exp.load.with_rate(10.0))
    pl = jaxplan.plan_open(e, sla=sla)
    c = pl.columns
    stable = c["stable"].astype(bool)
    assert stable.any() and (~stable).any()          # the small batches cannot sustain 10 requests/s
    ok = c["meets_percentile_sla"].astype(bool)
    assert np.all(c["ttft_p99_s"][ok] <= 0.5) and np.all(c["tpot_p90_s"][ok] <= 0.03)
    assert np.all(c["sustainable_rps"][stable] > 10.0) and np.all(c["rate_rps"] == 10.0)
    b = pl.best_row
    assert b["meets_percentile_sla"] and b["capacity_tokens_per_s_per_gpu"] == pytest.approx(
        c["capacity_tokens_per_s_per_gpu"][ok].max())
    s = pl.summary()
    assert s["load"]["load"] == "poisson" and s["load"]["rate_rps"] == 10.0
    assert s["percentile_sla"] == "P99 TTFT <= 0.5 s, P90 TPOT <= 30 ms" and s["objective"] == "throughput"


def test_goodput_pick_and_cli_equal_the_api(sla, tmp_path):
    rc, _ = _run(["sweep", *ARGS, *SLA, "--objective", "goodput", "--out", str(tmp_path)])
    cli = json.loads((tmp_path / "summary.json").read_text())
    e = jaxplan.load_experiment(model="llama-3.1-8b", hardware="h100-sxm", gpus=2, precision="fp8", isl=2048, osl=256)
    pl = jaxplan.plan_open(e, sla=sla, objective="goodput")
    c = pl.columns
    b = pl.best_row
    assert b["goodput_rps_per_gpu"] == pytest.approx(np.max(np.where(c["feasible"], c["goodput_rps_per_gpu"], 0)))
    assert b["ttft_p99_s"] <= 0.5 + 1e-6 and b["tpot_p90_s"] <= 0.03 + 1e-6
    assert b["goodput_rps"] <= b["sustainable_rps"]
    s = pl.summary()
    assert s["goodput_share"] == 0.9 and "goodput" in s["load"]["description"]
    assert rc == 0 and cli["best_at_sla"]["goodput_rps"] == pytest.approx(b["goodput_rps"], rel=1e-6)
    assert cli["percentile_sla"] == s["percentile_sla"] and cli["counts"] == s["counts"]
    header = (tmp_path / "layouts.csv").read_text().splitlines()[0].split(",")
    assert {"ttft_p99_s", "tpot_p90_s", "goodput_rps", "stable"} <= set(header)


@pytest.mark.parametrize("argv, msg", [
    (["--rate", "-3"], "--rate"),
    (["--goodput-share", "1.5", "--objective", "goodput", *SLA], "share of requests must be in"),
    (["--sla-ttft-p99", "0"], "--sla-ttft-p99: must be > 0"),
    (["--rate", "5", "--serving", "disagg"], "aggregated serving"),
])
def test_bad_open_loop_flags_exit_2(argv, msg, tmp_path):
    rc, err = _run(["sweep", *ARGS, *argv, "--out", str(tmp_path)])
    assert rc == 2 and msg in err


def test_goodput_needs_an_slo(exp):
    with pytest.raises(jaxplan.SpecError, match="needs an SLO"):
        jaxplan.run_open_sweep(exp, objective="goodput")
    with pytest.raises(jaxplan.SpecError, match="strictly between 0 and 100"):
        jaxplan.percentile_sla(ttft={100: 1.0})
