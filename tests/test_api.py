"""The public API equals the CLI: ``jaxplan.plan`` gives the numbers ``jaxplan sweep`` writes, an
experiment built in code equals the same experiment read from YAML, parameters for a hardware and
backend come in one call, and the presets ship inside the wheel."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import jaxplan
from jaxplan import report
from jaxplan.cli import main

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"seconds", "layouts_per_second"}


def _numbers(summary: dict) -> dict:
    """A summary without its timings (wall-clock, not model output), as JSON would carry it."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in TIMING_KEYS}
        return x
    return strip(json.loads(report.to_json(summary)))


def _cli_summary(argv, out: Path) -> dict:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv + ["--out", str(out)]) == 0
    return json.loads((out / "summary.json").read_text())


def test_api_lists_every_name_once_and_sorted():
    names = jaxplan.__all__
    kind = lambda n: 0 if n.isupper() else 1 if n[0].isupper() else 2      # constants, classes, functions  # noqa: E731
    assert len(names) == len(set(names)) and names == sorted(names, key=lambda n: (kind(n), n))
    assert all(hasattr(jaxplan, n) for n in names)


def test_plan_equals_the_cli_on_the_default_study(tmp_path):
    """No arguments on either side: the GPT-1.8T-MoE study on 64 GB200s, with the fitted profile of
    the hardware as the experiment's backend (TensorRT-LLM) sees it."""
    cli = _cli_summary(["sweep"], tmp_path / "cli")
    lib = jaxplan.plan(jaxplan.load_experiment()).summary()
    assert _numbers(lib) == _numbers(cli)
    assert cli["best_at_sla"] is not None and cli["counts"]["layouts"] > 5000


def test_plan_equals_the_cli_on_a_disaggregated_study(tmp_path):
    argv = ["sweep", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--gpus", "8", "--precision", "fp8",
            "--isl", "1024", "--osl", "256", "--min-tokens-per-user", "50", "--serving", "disagg"]
    cli = _cli_summary(argv, tmp_path / "cli")
    exp = jaxplan.load_experiment(model="llama-3.1-8b", hardware="h100-sxm", gpus=8, precision="fp8", isl=1024,
                                  osl=256, min_tokens_per_user=50.0)
    lib = jaxplan.plan(exp, serving="disagg").summary()
    assert _numbers(lib) == _numbers(cli)
    assert cli["best_at_sla"]["mode"] == "disagg"
    # the backend's fitted overheads are in: a request's front end is TensorRT-LLM's, not the generic one
    p, _ = jaxplan.params_for("h100-sxm", backend="trtllm")
    raw, _ = jaxplan.params_for("h100-sxm")
    assert float(p["request_overhead_s"]) == float(raw["request_overhead_trtllm_s"])
    assert float(p["request_overhead_s"]) != float(raw["request_overhead_s"])


def test_experiment_in_code_equals_the_yaml():
    """The default study written as keyword arguments (the values of its YAML) is the same experiment."""
    yaml_exp = jaxplan.load_experiment("gpt-1.8t-moe-64gpu")
    code_exp = jaxplan.experiment(model="gpt-1.8t-moe", hardware="gb200-nvl72", gpus=64, precision="fp4", isl=32768,
                                  osl=1024, min_tokens_per_user=20, max_ttft=5, hardware_overrides={"hbm_capacity_gb": 192},
                                  chunk_sizes=yaml_exp.chunk_sizes, name="gpt-1.8t-moe-64gpu")
    assert code_exp == yaml_exp
    assert code_exp.hardware.hbm_capacity == 192e9
    # specs as objects work too, and bad values are refused with the key named
    same = jaxplan.experiment(model=yaml_exp.model, hardware=yaml_exp.hardware, gpus=64, precision="fp4",
                              isl=32768, osl=1024, min_tokens_per_user=20, max_ttft=5,
                              chunk_sizes=yaml_exp.chunk_sizes, name="gpt-1.8t-moe-64gpu")
    assert same == yaml_exp
    with pytest.raises(jaxplan.SpecError, match="'gpus'"):
        jaxplan.experiment(model="llama-3.1-8b", hardware="h100-sxm", gpus=0)
    with pytest.raises(jaxplan.SpecError, match="backend.*allowed: trtllm, vllm, sglang"):
        jaxplan.experiment(model="llama-3.1-8b", hardware="h100-sxm", gpus=8, backend="tgi")


def test_presets_by_name_and_a_users_own_folder_first(tmp_path, monkeypatch):
    assert jaxplan.load_experiment("gpt-1.8t-moe-64gpu").name == "gpt-1.8t-moe-64gpu"
    with pytest.raises(jaxplan.SpecError, match="neither a file nor a preset; presets: gpt-1.8t-moe-64gpu"):
        jaxplan.load_experiment("no-such-study")
    own = tmp_path / "mine"
    (own / "hardware").mkdir(parents=True)
    text = (REPO / "configs" / "hardware" / "h100-sxm.yaml").read_text().replace("hbm_capacity_gb: 85.5",
                                                                                  "hbm_capacity_gb: 96")
    (own / "hardware" / "h100-sxm.yaml").write_text(text)
    monkeypatch.setenv("JAXPLAN_CONFIGS", str(own))
    assert jaxplan.load_hardware("h100-sxm").hbm_capacity == 96e9      # the user's file wins
    assert jaxplan.load_hardware("b200").name == "b200"                 # the packaged ones still resolve
    assert "b200" in jaxplan.preset_names("hardware")


def test_the_wheel_ships_the_presets(tmp_path):
    """Build the wheel, install it into a folder of its own and load presets from another directory,
    with the source tree out of reach: the experiment, its model and hardware and the fitted profile."""
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheel_dir), str(REPO)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip()[-200:]}")
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheel_dir.glob("jaxplan-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("jaxplan/configs/experiments/gpt-1.8t-moe-64gpu.yaml", "jaxplan/configs/hardware/b200.yaml",
              "jaxplan/configs/models/deepseek-v3.yaml", "jaxplan/configs/profiles/gb200-nvl72.yaml",
              "jaxplan/configs/prices/default.yaml", "jaxplan/calibrate/serving_data.py"):
        assert f in names, f
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import jaxplan; from jaxplan.specs import packaged_config_root; e = jaxplan.load_experiment(); "
            "p, src = jaxplan.params_for(e.hardware.name, backend=e.backend); "
            "print(jaxplan.__file__); print(packaged_config_root()); print(e.model.name, e.hardware.name); print(src)")
    env = {k: v for k, v in os.environ.items() if k != "JAXPLAN_CONFIGS"} | {"PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    file, root, names_line, source = run.stdout.strip().splitlines()
    assert file.startswith(str(target)) and root == str(target / "jaxplan" / "configs")
    assert names_line == "gpt-1.8t-moe gb200-nvl72" and source.startswith(str(target))
