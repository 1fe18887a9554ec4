"""Bad and extreme input: every refusal is exit code 2 and one line naming the flag, file or key,
before any long work; outputs are written atomically (a killed run never leaves a file that looks
complete); Ctrl-C at any moment exits 130 with one line; measured data found or named."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_cli import call as run

from jaxplan import report
from jaxplan.calibrate.kernels import load_kernel_file
from jaxplan.calibrate.serving_data import load_serving
from jaxplan.specs import MAX_GPUS, SpecError, load_hardware, load_model

REPO = Path(__file__).resolve().parents[1]
SMALL = (Path(__file__).parent / "data" / "small_experiment.yaml")


@pytest.mark.parametrize("argv, words", [
    (["sweep", "--min-tokens-per-user", "nan"], "--min-tokens-per-user: expected a finite number"),
    (["sweep", "--max-ttft", "inf"], "--max-ttft: expected a finite number"),
    (["sweep", "--gpus", "1000000000"], f"at most {MAX_GPUS:,}"),
    (["sweep", "--isl", "-3"], "--isl: must be > 0"),
    (["sweep", "--acceptance", "0.5"], "needs draft tokens"),
    (["codesign", "--lr", "inf"], "--lr: expected a finite number"),
    (["fit", "--hardware", "h100-sxm", "--steps", "-5", "--out", "x.yaml"], "--steps: must be > 0"),
    (["fit", "--hardware", "h100-sxm", "--max-rows", "0", "--out", "x.yaml"], "--max-rows: must be > 0"),
    (["bench", "--time-budget", "-1"], "--time-budget: must be > 0"),
    (["bench", "--time-budget", "nan"], "--time-budget: expected a finite number"),
    (["--data", "/no/such/folder", "validate", "--serving", "x.csv"], "--data '/no/such/folder' is not a folder"),
])
def test_bad_flags_exit_2_with_one_line(argv, words, capsys):
    rc, _, err = run(argv, capsys)
    assert rc == 2 and words in err and "Traceback" not in err, err


def test_output_paths_are_checked_before_any_work(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    t0 = time.perf_counter()
    for out, words in ((afile, "is a file; give a folder"), (afile / "sub", "is a file, not a folder")):
        rc, _, err = run(["sweep", str(SMALL), "--out", str(out)], capsys)
        assert rc == 2 and words in err, err
    rc, _, err = run(["fit", "--hardware", "h100-sxm", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "is a folder; give a file name" in err
    assert time.perf_counter() - t0 < 60          # refused before fitting or sweeping (those take minutes)


def test_numbers_beyond_any_real_system_are_refused(tmp_path):
    model = yaml.safe_load((REPO / "configs" / "models" / "llama-3.1-8b.yaml").read_text())
    for key, value, words in (("num_layers", 1e30, "beyond any real system"), ("hidden_size", float("inf"), "finite"),
                              ("num_heads", float("nan"), "finite")):
        bad = tmp_path / f"{key}.yaml"
        bad.write_text(yaml.safe_dump({**model, key: value}))
        with pytest.raises(SpecError, match=f"{key}.*{words}"):
            load_model(bad)
    hw = yaml.safe_load((REPO / "configs" / "hardware" / "h100-sxm.yaml").read_text())
    bad = tmp_path / "hw.yaml"
    bad.write_text(yaml.safe_dump({**hw, "hbm_bandwidth_tb_s": float("inf")}))
    with pytest.raises(SpecError, match="hbm_bandwidth_tb_s.*finite"):
        load_hardware(bad)


def test_a_binary_file_as_serving_csv(tmp_path):
    blob = tmp_path / "blob.csv"
    blob.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(SpecError, match="not a text CSV"):
        load_serving(blob)


def test_kernel_rows_of_absurd_shape_are_reported_not_trained_on(tmp_path):
    f = tmp_path / "gemm_perf.csv"
    f.write_text("framework,version,device,op_name,kernel_source,gemm_dtype,m,n,k,latency\n"
                 "TRTLLM,1,H100,gemm,x,bfloat16,1024,4096,4096,0.05\n"
                 "TRTLLM,1,H100,gemm,x,bfloat16,1e30,4096,4096,0.05\n")
    meas = load_kernel_file(f, load_hardware("h100-sxm"))
    assert len(meas.kinds["gemm"]) == 1
    assert any("beyond any real kernel" in why for _, why in meas.unmapped)


def test_missing_data_folder_is_named_not_blamed_on_rows(tmp_path, monkeypatch):
    serving = REPO.parent / "shared" / "data" / "serving" / "silicon_hopper.csv"
    if not serving.is_file():
        pytest.skip(f"{serving} absent: ../shared/data is not checked out")
    with pytest.raises(SpecError, match="--data DIR"):
        load_serving(serving, data_dir=tmp_path)


def test_outputs_are_atomic_and_a_broken_run_leaves_no_marker(tmp_path, monkeypatch):
    """A run into a folder that holds an earlier complete run: the old marker goes first; a run that
    dies while writing leaves neither a summary.json nor a temporary file."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("summary.json", "layouts.csv", "frontier.png"):
        (out / name).write_text("old")

    class Boom(Exception):
        pass

    def broken(*a, **k):
        raise Boom

    monkeypatch.setattr(report, "plot_frontier", broken)
    cols = {"tp": np.arange(3), "tokens_per_s_per_gpu": np.ones(3)}
    with pytest.raises(Boom):
        report.start_run(out, ("summary.json", "layouts.csv", "frontier.csv", "frontier.png"))
        report.write_csv(out / "layouts.csv", cols, ["tp", "tokens_per_s_per_gpu"])
        report.plot_frontier()
    assert sorted(p.name for p in out.iterdir()) == ["layouts.csv"]
    assert (out / "layouts.csv").read_text().startswith("tp,tokens_per_s_per_gpu")
    # a write that fails half-way leaves nothing under the final name, and no temporary file
    with pytest.raises(Boom), report.atomic_path(out / "x.csv") as tmp:
        tmp.write_text("half")
        broken()
    assert not (out / "x.csv").exists() and not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("delay", [0.3, 4.0])
def test_ctrl_c_exits_130_with_one_line_and_no_half_written_file(tmp_path, delay):
    """SIGINT during the imports (0.3 s) and during compilation or evaluation (4 s) of the default
    study: exit code 130, one line, no traceback, no crash, no summary.json and no temporary file."""
    out = tmp_path / "out"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "jaxplan", "sweep", "--out", str(out)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the sweep finished before the signal")
    assert proc.returncode == 130, err
    assert err.rstrip().endswith("jaxplan: interrupted") and "Traceback" not in err, err
    assert not (out / "summary.json").exists()
    assert not list(out.glob(".*.tmp")) if out.exists() else True


def test_wrong_types_in_experiment_and_prices_files(tmp_path, capsys):
    exp = tmp_path / "e.yaml"
    exp.write_text(SMALL.read_text() + "params: 123\n")
    rc, _, err = run(["sweep", str(exp)], capsys)
    assert rc == 2 and "'params' must be a string" in err
    prices = tmp_path / "p.yaml"
    prices.write_text("prices: {hbm_bandwidth_tb_s: 1000}\ncurrency: [USD]\n")
    rc, _, err = run(["codesign", str(SMALL), "--prices", str(prices)], capsys)
    assert rc == 2 and "'currency' must be a string" in err


def test_unreadable_or_broken_yaml_is_one_line_naming_file_and_place(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    for path, words in ((broken, "not valid YAML at line 2, column 1"),
                        (binary, "cannot be read as a YAML text file (UnicodeDecodeError"),
                        (tmp_path, "is a folder, not a YAML file")):
        rc, _, err = run(["sweep", str(path)], capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and str(path) in lines[0] and words in lines[0], err
