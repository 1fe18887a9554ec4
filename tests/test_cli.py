"""The command line, in process: ``sweep`` writes its contract files and prints the frontier,
``explain --json`` breaks the iteration times into ops that add up, and every bad input exits with
code 2 and a message naming the key or the file, never a traceback."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import pytest

from jaxplan.cli import main

EXPERIMENT = (Path(__file__).parent / "data" / "small_experiment.yaml").read_text()
SLA_USER, SLA_TTFT = 50.0, 2.0

CONTRACT = ["tp", "pp", "ep", "dp", "batch", "chunk", "feasible", "ttft_s", "tpot_s", "tokens_per_s_per_user",
            "tokens_per_s_per_gpu", "memory_per_gpu_gb", "on_frontier"]
COST_FIELDS = ("compute", "memory", "comm_tp", "comm_ep", "comm_pp", "overhead")


def write_exp(folder, text=EXPERIMENT, name="small.yaml"):
    path = folder / name
    path.write_text(text)
    return path


def call(argv, capsys):
    """Run the CLI in process; return (exit code, stdout, stderr)."""
    try:
        rc = main(argv)
    except SystemExit as e:          # argparse's own errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


# ----------------------------------------------------------------------------- sweep

@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    exp = write_exp(d)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["sweep", str(exp), "--out", str(d / "out")])
    return {"rc": rc, "dir": d / "out", "stdout": out.getvalue(), "stderr": err.getvalue()}


def test_sweep_writes_layouts_csv_with_the_contract_columns(swept):
    assert swept["rc"] == 0
    header, rows = read_csv(swept["dir"] / "layouts.csv")
    # every contract column, in the contract's order (other columns may sit between them)
    pos = [header.index(c) for c in CONTRACT]
    assert pos == sorted(pos)
    assert len(rows) > 0
    for r in rows:
        tp, pp, ep, dp = (int(r[k]) for k in ("tp", "pp", "ep", "dp"))
        assert tp * pp * ep * dp == 8 and ep == 1
        assert r["feasible"] in ("0", "1") and r["on_frontier"] in ("0", "1")
        u, g, tpot = float(r["tokens_per_s_per_user"]), float(r["tokens_per_s_per_gpu"]), float(r["tpot_s"])
        assert u == pytest.approx(1 / tpot, rel=1e-4)
        assert g > 0 and float(r["ttft_s"]) > 0 and 0 < float(r["memory_per_gpu_gb"]) < 80
        assert int(r["chunk"]) in (512, 2048)   # a chunk beyond the prompt packs prompts


def test_sweep_frontier_csv_and_summary_agree_with_layouts(swept):
    _, rows = read_csv(swept["dir"] / "layouts.csv")
    fheader, front = read_csv(swept["dir"] / "frontier.csv")
    summary = json.loads((swept["dir"] / "summary.json").read_text())
    counts = summary["counts"]
    assert counts["layouts"] == len(rows)
    assert counts["feasible"] == sum(r["feasible"] == "1" for r in rows)
    assert counts["frontier"] == len(front) == sum(r["on_frontier"] == "1" for r in rows) > 0
    assert counts["parallel_layouts"] == 10                # worked out in test_layouts
    assert all(r["on_frontier"] == "1" and r["feasible"] == "1" for r in front)
    us = [float(r["tokens_per_s_per_user"]) for r in front]
    gs = [float(r["tokens_per_s_per_gpu"]) for r in front]
    assert us == sorted(us) and gs == sorted(gs, reverse=True)
    # no layout beats a frontier point on both axes
    pts = [(float(r["tokens_per_s_per_user"]), float(r["tokens_per_s_per_gpu"])) for r in rows if r["feasible"] == "1"]
    for u, g in zip(us, gs):
        assert not any(a >= u and b >= g and (a > u or b > g) for a, b in pts)
    # best at the SLA: meets it, and is the most tokens/s/GPU of the layouts that do
    meet = [r for r in rows if r["feasible"] == "1" and float(r["tokens_per_s_per_user"]) >= SLA_USER
            and float(r["ttft_s"]) <= SLA_TTFT]
    assert counts["meeting_sla"] == len(meet) > 0
    best = summary["best_at_sla"]
    assert best["tokens_per_s_per_user"] >= SLA_USER and best["ttft_s"] <= SLA_TTFT
    assert best["tokens_per_s_per_gpu"] == pytest.approx(max(float(r["tokens_per_s_per_gpu"]) for r in meet),
                                                         rel=1e-5)
    assert summary["sla"] == {"min_tokens_per_s_per_user": SLA_USER, "max_ttft_s": SLA_TTFT}
    for k in ("compile", "evaluate"):
        assert isinstance(summary["seconds"][k], float) and summary["seconds"][k] >= 0


def test_sweep_draws_a_png_and_prints_the_frontier(swept):
    png = (swept["dir"] / "frontier.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    summary = json.loads((swept["dir"] / "summary.json").read_text())
    lines = swept["stdout"].splitlines()
    head = next(i for i, ln in enumerate(lines) if "Pareto frontier" in ln)
    assert "tok/s/user" in lines[head + 1] and "tok/s/GPU" in lines[head + 1]
    body = []
    for ln in lines[head + 3:]:
        if not ln.strip():
            break
        body.append(ln)
    assert len(body) == summary["counts"]["frontier"]
    assert "Best at SLA" in swept["stdout"]
    assert "Traceback" not in swept["stderr"]


# ----------------------------------------------------------------------------- explain

EXPLAIN = ["--tp", "2", "--pp", "2", "--batch", "32", "--chunk", "512"]


def check_explain_json(doc):
    assert doc["layout"] == {"tp": 2, "pp": 2, "ep": 1, "dp": 2, "adp": 1, "batch": 32, "chunk": 512}
    m = doc["metrics"]
    for phase, total_key in (("chunk_iteration", "chunk_iter_s"), ("decode_iteration", "decode_iter_s")):
        ops = {k: v for k, v in doc["ops_s"][phase].items() if k != "TOTAL"}
        assert {"attention", "attn_proj", "mlp", "tp_allreduce", "lm_head", "pp_handoff",
                "step_overhead"} <= set(ops)
        for name, v in ops.items():
            assert v["total"] == pytest.approx(sum(v[f] for f in COST_FIELDS), rel=1e-5, abs=1e-12), name
            assert all(v[f] >= 0 for f in COST_FIELDS), name
        total = doc["ops_s"][phase]["TOTAL"]["total"]
        assert total == pytest.approx(sum(v["total"] for v in ops.values()), rel=1e-5)
        # and the breakdown is of the very iteration the metrics were computed from
        assert total == pytest.approx(m[total_key], rel=1e-4)
    # PP 2 between two GPUs of one board: hand-offs over NVLink are in the chunk iteration
    assert doc["ops_s"]["chunk_iteration"]["pp_handoff"]["comm_pp"] > 0
    assert doc["ops_s"]["decode_iteration"]["lm_head"]["total"] > 0
    assert m["tokens_per_s_per_user"] == pytest.approx(1 / m["tpot_s"], rel=1e-5)
    mem = doc["memory_gb"]
    assert mem["total"] == pytest.approx(mem["weights"] + mem["kv_cache"] + mem["activations"] + mem["reserve"],
                                         rel=1e-5)


def test_explain_json_ops_add_up(tmp_path, capfd):
    exp = write_exp(tmp_path)
    rc = main(["explain", str(exp), *EXPLAIN, "--json"])
    out = capfd.readouterr()
    assert rc == 0, out.err
    check_explain_json(json.loads(out.out))


def test_explain_json_goes_to_sys_stdout(tmp_path, capsys):
    exp = write_exp(tmp_path)
    rc, out, err = call(["explain", str(exp), *EXPLAIN, "--json"], capsys)
    assert rc == 0, err
    check_explain_json(json.loads(out))


def test_explain_with_another_scheduler(tmp_path, capsys):
    """``scheduler: prefill_first`` in the experiment: the prompt's iteration carries prompt tokens
    only, and the breakdown is still that of the very iterations the metrics came from;
    ``--scheduler mixed`` on the same file overrides it, and then the decoders run inside that
    iteration, which therefore takes longer."""
    exp = write_exp(tmp_path, EXPERIMENT + "scheduler: prefill_first\n")
    rc, out, err = call(["explain", str(exp), *EXPLAIN, "--json"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["scheduler"] == "prefill_first"
    check_explain_json(doc)
    rc, out, err = call(["explain", str(exp), *EXPLAIN, "--scheduler", "mixed", "--json"], capsys)
    mixed = json.loads(out)
    assert mixed["scheduler"] == "mixed"
    check_explain_json(mixed)
    assert mixed["metrics"]["chunk_iter_s"] > doc["metrics"]["chunk_iter_s"]


def test_explain_with_speculative_decoding(tmp_path, capsys):
    """``--draft-tokens 3 --acceptance 0.7``: the decode iteration gains a draft op, the iterations
    reported are steps, and TPOT is a step (a decode step, or one with another prompt's chunk) over
    the 1 + 0.7 + 0.49 + 0.343 = 2.533 tokens it yields; the text title says so."""
    exp = write_exp(tmp_path)
    rc, out, err = call(["explain", str(exp), *EXPLAIN, "--draft-tokens", "3", "--acceptance", "0.7", "--json"],
                        capsys)
    assert rc == 0, err
    doc = json.loads(out)
    check_explain_json(doc)
    assert doc["tokens_per_step"] == pytest.approx(2.533, rel=1e-4)
    assert doc["ops_s"]["decode_iteration"]["draft"]["total"] > 0
    m = doc["metrics"]
    # a token waits a decode step, or a step with another prompt's chunk, over the tokens per step
    assert m["decode_iter_s"] / 2.533 * (1 - 1e-4) <= m["tpot_s"] <= m["chunk_iter_s"] / 2.533
    rc, out, err = call(["explain", str(exp), *EXPLAIN, "--draft-tokens", "3", "--acceptance", "0.7"], capsys)
    assert rc == 0 and "speculative 3 draft tokens at 70% acceptance (2.53 tokens/step)" in out
    bad(tmp_path, capsys, ["explain", str(exp), *EXPLAIN, "--draft-tokens", "1", "--acceptance", "1.5"],
        "acceptance", "[0, 1)")


def test_unknown_scheduler_names_the_allowed_ones(tmp_path, capsys):
    exp = write_exp(tmp_path, EXPERIMENT + "scheduler: lockstep\n")
    bad(tmp_path, capsys, ["explain", str(exp), "--tp", "1"], "scheduler", "lockstep", "prefill_first", str(exp))
    bad(tmp_path, capsys, ["explain", str(write_exp(tmp_path)), "--tp", "1", "--scheduler", "x"], "prefill_first")


def test_explain_text(tmp_path, capsys):
    exp = write_exp(tmp_path)
    rc, out, err = call(["explain", str(exp), *EXPLAIN], capsys)
    assert rc == 0, err
    assert "TTFT" in out and "tokens/s/GPU" in out and "memory per GPU" in out
    assert "attention" in out and "pp_handoff" in out
    # the headline TPOT and tokens/s/user printed are one number seen two ways
    m = re.search(r"TPOT ([\d.]+) ms\s+([\d.]+) tokens/s/user", out)
    assert m, out
    assert float(m.group(2)) == pytest.approx(1e3 / float(m.group(1)), rel=0.01)


def test_explain_disaggregated(tmp_path, capsys):
    """The disaggregated sweep's best: its TTFT parts add up to its TTFT, the decode worker's
    iteration is its TPOT, and layout flags (one aggregated layout) are refused with it."""
    exp = write_exp(tmp_path)
    rc, out, err = call(["explain", str(exp), "--serving", "disagg", "--json"], capsys)
    assert rc == 0, err
    j = json.loads(out)
    m = j["metrics"]
    assert sum(j["ttft_parts_s"].values()) == pytest.approx(m["ttft_s"], rel=1e-4)
    assert sum(j["decode_iteration_ms"].values()) == pytest.approx(1e3 * m["tpot_s"], rel=1e-3)
    assert j["deployment"]["label"].startswith("prefill ") and j["elasticities"]["ttft_s"]
    rc, out, err = call(["explain", str(exp), "--serving", "disagg"], capsys)
    assert rc == 0, err
    assert "TTFT = prefill" in out and "decode worker iteration (= TPOT)" in out
    rc, _, err = call(["explain", str(exp), "--serving", "disagg", "--tp", "2"], capsys)
    assert rc == 2 and "--serving disagg" in err


# ----------------------------------------------------------------------------- bad input: exit 2

def bad(tmp_path, capsys, argv, *words):
    rc, out, err = call(argv, capsys)
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out + err
    for w in words:
        assert w in err, (w, err)
    return err


def test_unknown_key(tmp_path, capsys):
    exp = write_exp(tmp_path, EXPERIMENT + "gpu_count: 8\n")
    bad(tmp_path, capsys, ["sweep", str(exp), "--out", str(tmp_path / "o")], "gpu_count", str(exp), "allowed")
    assert not (tmp_path / "o" / "layouts.csv").exists()


def test_unknown_nested_key(tmp_path, capsys):
    exp = write_exp(tmp_path, EXPERIMENT.replace("  osl_tokens: 256\n", "  osl_tokens: 256\n  osl: 3\n"))
    bad(tmp_path, capsys, ["explain", str(exp), "--tp", "1"], "osl", "workload", str(exp))


def test_missing_key(tmp_path, capsys):
    exp = write_exp(tmp_path, EXPERIMENT.replace("gpus: 8\n", ""))
    bad(tmp_path, capsys, ["sweep", str(exp), "--out", str(tmp_path / "o")], "gpus", "missing", str(exp))


@pytest.mark.parametrize("old,new,key", [
    ("gpus: 8\n", "gpus: eight\n", "gpus"),
    ("  isl_tokens: 1024\n", "  isl_tokens: 1k\n", "isl_tokens"),
    ("  max_ttft_s: 2\n", "  max_ttft_s: [2]\n", "max_ttft_s"),
    ("precision: fp8\n", "precision: 8\n", "precision"),
])
def test_wrong_type(tmp_path, capsys, old, new, key):
    exp = write_exp(tmp_path, EXPERIMENT.replace(old, new))
    bad(tmp_path, capsys, ["explain", str(exp), "--tp", "1"], key, str(exp))


@pytest.mark.parametrize("text,key", [
    (EXPERIMENT + "hardware_overrides:\n  hbm_bandwidth_tb_s: 0\n", "hbm_bandwidth_tb_s"),
    (EXPERIMENT + "hardware_overrides:\n  scaleup_bandwidth_gb_s: -450\n", "scaleup_bandwidth_gb_s"),
    (EXPERIMENT.replace("  min_tokens_per_s_per_user: 50\n", "  min_tokens_per_s_per_user: -5\n"),
     "min_tokens_per_s_per_user"),
    (EXPERIMENT.replace("  osl_tokens: 256\n", "  osl_tokens: 0\n"), "osl_tokens"),
])
def test_non_positive_rate_in_the_file(tmp_path, capsys, text, key):
    exp = write_exp(tmp_path, text)
    bad(tmp_path, capsys, ["explain", str(exp), "--tp", "1"], key, str(exp))


@pytest.mark.parametrize("flag,value", [("--gpus", "0"), ("--max-ttft", "0"), ("--isl", "-5"),
                                        ("--min-tokens-per-user", "-1")])
def test_non_positive_on_the_command_line(tmp_path, capsys, flag, value):
    exp = write_exp(tmp_path)
    bad(tmp_path, capsys, ["explain", str(exp), "--tp", "1", flag, value], flag)


def test_tp_that_does_not_divide_the_heads(tmp_path, capsys):
    exp = write_exp(tmp_path)
    bad(tmp_path, capsys, ["explain", str(exp), "--tp", "3"], "--tp", "3", "32", "heads")


def test_ep_above_the_experts(tmp_path, capsys):
    exp = write_exp(tmp_path)
    bad(tmp_path, capsys, ["explain", str(exp), "--model", "gpt-1.8t-moe", "--gpus", "64", "--ep", "32"],
        "ep=32", "16 experts")


def test_ep_on_a_dense_model(tmp_path, capsys):
    exp = write_exp(tmp_path)
    bad(tmp_path, capsys, ["explain", str(exp), "--ep", "2"], "ep=2", "dense")


def test_nonexistent_experiment_file(tmp_path, capsys):
    missing = tmp_path / "nope" / "missing.yaml"
    bad(tmp_path, capsys, ["sweep", str(missing), "--out", str(tmp_path / "o")], str(missing), "does not exist")


def test_unknown_experiment_preset(tmp_path, capsys):
    bad(tmp_path, capsys, ["explain", "no-such-experiment"], "no-such-experiment", "presets")


def test_unknown_model_preset(tmp_path, capsys):
    exp = write_exp(tmp_path)
    bad(tmp_path, capsys, ["explain", str(exp), "--model", "llama-9", "--tp", "1"], "llama-9", "llama-3.1-8b")


def test_unknown_precision(tmp_path, capsys):
    exp = write_exp(tmp_path)
    bad(tmp_path, capsys, ["explain", str(exp), "--precision", "fp16", "--tp", "1"], "--precision", "fp16", "bf16")


def test_fp4_on_h100(tmp_path, capsys):
    exp = write_exp(tmp_path)
    bad(tmp_path, capsys, ["sweep", str(exp), "--precision", "fp4", "--out", str(tmp_path / "o")],
        "fp4", "h100-sxm", str(exp))


def test_batch_below_attention_groups(tmp_path, capsys):
    exp = write_exp(tmp_path)
    bad(tmp_path, capsys, ["explain", str(exp), "--model", "gpt-1.8t-moe", "--gpus", "64", "--ep", "8",
                           "--batch", "4"], "--batch", "4")


def test_no_command_prints_help(capsys):
    rc, out, err = call([], capsys)
    assert rc == 2 and "sweep" in out + err


# ----------------------------------------------------------------------------- what-if, sensitivity, codesign

def test_sweep_whatif_compare(swept, tmp_path, capsys):
    exp = write_exp(tmp_path)
    rc, out, err = call(["sweep", str(exp), "--out", str(tmp_path / "o"), "--scale", "hbm_bandwidth=2",
                         "--scale", "scale_out_bandwidth=0.5", "--compare"], capsys)
    assert rc == 0, err
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["hardware_scales"] == {"hbm_bandwidth": 2.0, "scale_out_bandwidth": 0.5}
    base = json.loads((swept["dir"] / "summary.json").read_text())["best_at_sla"]
    # the baseline of --compare is the unscaled sweep; twice the HBM bandwidth is never slower
    assert s["baseline_best_at_sla"]["tokens_per_s_per_gpu"] == pytest.approx(base["tokens_per_s_per_gpu"], rel=1e-6)
    assert s["whatif_over_baseline_at_sla"] == pytest.approx(
        s["best_at_sla"]["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"], rel=1e-6)
    assert s["whatif_over_baseline_at_sla"] > 1.0
    assert "what-if / baseline" in out and "hbm_bandwidth x2" in err


@pytest.mark.parametrize("argv, words", [
    (["--compare"], ("--compare", "--scale NAME=FACTOR")),
    (["--scale", "nvlink=2"], ("unknown hardware number 'nvlink'", "scale_up_bandwidth")),
    (["--scale", "hbm_bandwidth=-2"], ("positive",)),
])
def test_whatif_errors(tmp_path, capsys, argv, words):
    rc, _, err = call(["sweep", str(write_exp(tmp_path)), "--out", str(tmp_path / "o")] + argv, capsys)
    assert rc == 2 and all(w in err for w in words), err


def test_sensitivity_command(tmp_path, capsys):
    rc, out, err = call(["sensitivity", str(write_exp(tmp_path)), "--out", str(tmp_path / "s")], capsys)
    assert rc == 0, err
    header, rows = read_csv(tmp_path / "s" / "sensitivity.csv")
    assert {"layout", "kind", "name", "value", "elasticity_tokens_per_s_per_gpu", "is_best_at_sla"} <= set(header)
    best = [r for r in rows if r["is_best_at_sla"] == "1"]
    names = {r["name"] for r in best}
    assert {"hbm_bandwidth", "fp8_flops", "scale_up_latency", "scale_out_bandwidth", "isl", "osl",
            "gemm_eff_fp8"} <= names
    j = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert j["elasticities_at_best"]["hardware:hbm_bandwidth"]["elasticity_tokens_per_s_per_gpu"] == pytest.approx(
        float(next(r for r in best if r["name"] == "hbm_bandwidth")["elasticity_tokens_per_s_per_gpu"]), rel=1e-4)
    for png in ("sensitivity.png", "sensitivity_frontier.png"):
        assert (tmp_path / "s" / png).read_bytes()[:4] == b"\x89PNG"
    # the ranked table: hardware rows sorted by |elasticity of tok/s/GPU|
    lines = out.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.lstrip().startswith("input") and "tok/s/GPU" in ln)
    vals = []
    for ln in lines[i + 2:]:
        if not ln.strip():
            break
        vals.append(abs(float(re.findall(r"[+-]\d+\.\d{3}", ln)[0])))
    assert len(vals) == 11 and vals == sorted(vals, reverse=True)


def test_codesign_command(tmp_path, capsys):
    prices = tmp_path / "prices.yaml"
    prices.write_text("prices:\n  hbm_bandwidth_tb_s: 2000\n  fp8_dense_tflops: 3\n")
    rc, out, err = call(["codesign", str(write_exp(tmp_path)), "--prices", str(prices), "--steps", "4",
                         "--out", str(tmp_path / "c")], capsys)
    assert rc == 0, err
    header, rows = read_csv(tmp_path / "c" / "trajectory.csv")
    assert len(rows) == 4 and {"hbm_bandwidth_tb_s", "fp8_dense_tflops", "share_hbm_bandwidth"} <= set(header)
    for r in rows:   # every step spends the same budget
        assert 2000 * float(r["hbm_bandwidth_tb_s"]) + 3 * float(r["fp8_dense_tflops"]) == pytest.approx(
            2000 * 3.35 + 3 * 1979, rel=1e-4)
    j = json.loads((tmp_path / "c" / "codesign.json").read_text())
    assert j["final"]["tokens_per_s_per_gpu"] >= j["start"]["tokens_per_s_per_gpu"]
    # the written hardware loads as a preset and the budget table is printed
    from jaxplan.specs import load_hardware
    hw = load_hardware(tmp_path / "c" / "codesign_hardware.yaml")
    assert hw.hbm_bandwidth == pytest.approx(j["final"]["values"]["hbm_bandwidth"] * 1e12, rel=1e-4)
    assert "budget share" in out and (tmp_path / "c" / "codesign.png").read_bytes()[:4] == b"\x89PNG"


def test_codesign_bad_prices_file(tmp_path, capsys):
    prices = tmp_path / "prices.yaml"
    prices.write_text("prices:\n  hbm_bw: 1\n")
    rc, _, err = call(["codesign", str(write_exp(tmp_path)), "--prices", str(prices)], capsys)
    assert rc == 2 and "hbm_bw" in err and str(prices) in err and "Traceback" not in err


def test_sensitivity_command_disaggregated(tmp_path, capsys):
    rc, out, err = call(["sensitivity", str(write_exp(tmp_path)), "--serving", "disagg", "--out", str(tmp_path / "d")],
                        capsys)
    assert rc == 0, err
    header, rows = read_csv(tmp_path / "d" / "sensitivity.csv")
    assert {"prefill_workers", "decode_workers", "prefill_chunk", "decode_batch"} <= set(header)
    j = json.loads((tmp_path / "d" / "sensitivity.json").read_text())
    assert j["serving"] == "disagg" and j["best_at_sla"]["mode"] == "disagg"
    assert "disaggregated serving" in out and "these worker counts" in out
