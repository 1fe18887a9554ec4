"""The benchmark harness: one quick run on 4 simulated CPU devices, checked for layout and sense."""
from __future__ import annotations

import csv
import gzip
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jaxplan import cli
from jaxplan.calibrate import bench

REPO = Path(__file__).resolve().parents[1]
SHARED_KERNELS = REPO.parent / "shared" / "data" / "kernels" / "h100_sxm"
N_DEVICES = 4


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.csv"
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={N_DEVICES}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, "-m", "jaxplan.cli", "bench", "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with out.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    return dict(out=out, header=header, rows=rows, stderr=proc.stderr)


def _rows(run, table):
    return [r for r in run["rows"] if r["kernel_table"] == table]


def _shared_table(table, column):
    """(header, distinct values of ``column``) of an H100 table in ../shared/data."""
    path = SHARED_KERNELS / f"{table}.csv.gz"
    if not path.exists():
        pytest.skip(f"shared kernel table {path} absent (../shared/data not checked out)")
    with gzip.open(path, "rt", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), {row[column] for row in reader}


def test_every_kernel_table_appears(quick_run):
    kinds = {r["kernel_table"] for r in quick_run["rows"]}
    assert kinds == set(bench.KERNEL_TABLES)
    assert quick_run["header"] == bench.CSV_COLUMNS
    # Non-TTY progress: one line per kind with counts.
    for table in bench.KERNEL_TABLES:
        assert f"bench {table}:" in quick_run["stderr"]


def test_common_columns(quick_run):
    import jax
    for r in quick_run["rows"]:
        assert r["framework"] == "JAX"
        assert r["version"] == jax.__version__
        assert r["device"]
        assert r["kernel_source"].startswith("jax-")
        assert r["op_name"]


def test_latencies_positive_and_finite(quick_run):
    for r in quick_run["rows"]:
        lat = float(r["latency"])
        assert math.isfinite(lat) and lat > 0, r


def test_collectives_over_all_devices(quick_run):
    rows = _rows(quick_run, "nccl_perf")
    assert {r["op_name"] for r in rows} == {"all_reduce", "all_gather", "reduce_scatter",
                                           "alltoall"}
    assert all(int(r["num_gpus"]) == N_DEVICES for r in rows)
    assert all(int(r["message_size"]) % N_DEVICES == 0 for r in rows)


def test_gemm_latency_grows_with_m(quick_run):
    rows = _rows(quick_run, "gemm_perf")
    assert {r["gemm_dtype"] for r in rows} == {"bfloat16"}  # no fp8 on CPU
    # The largest (n, k): 256 tokens do 256x the FLOPs of one token.
    n, k = max({(int(r["n"]), int(r["k"])) for r in rows}, key=lambda p: p[0] * p[1])
    lat = {int(r["m"]): float(r["latency"]) for r in rows
           if (int(r["n"]), int(r["k"])) == (n, k)}
    assert {1, 256} <= set(lat)
    assert lat[256] > lat[1], lat


def test_attention_rows_follow_table_conventions(quick_run):
    ctx = _rows(quick_run, "context_attention_perf")
    gen = _rows(quick_run, "generation_attention_perf")
    assert ctx and gen
    for r in ctx + gen:
        assert int(r["num_heads"]) > int(r["num_key_value_heads"])  # GQA
        assert int(r["head_dim"]) == 128
        assert (r["window_size"], r["beam_width"]) == ("0", "1")
        assert (r["attn_dtype"], r["kv_cache_dtype"]) == ("bfloat16", "bfloat16")
    assert all(r["step"] == "0" for r in ctx)
    # Decode: as in the TensorRT-LLM tables, isl = 1 and the cache holds isl + step tokens.
    assert all(r["isl"] == "1" and int(r["step"]) >= 1 for r in gen)


def test_mem_copy_rows(quick_run):
    rows = _rows(quick_run, "mem_copy_perf")
    assert rows
    for r in rows:
        assert r["op_name"] == "mem_copy"
        assert int(r["message_size"]) > 0
        assert r["m"] == r["nccl_dtype"] == r["batch_size"] == ""


@pytest.mark.parametrize("table", ["gemm_perf", "context_attention_perf",
                                   "generation_attention_perf", "nccl_perf"])
def test_columns_superset_of_shared_table(quick_run, table):
    dtype_col = {"gemm_perf": "gemm_dtype", "context_attention_perf": "attn_dtype",
                 "generation_attention_perf": "kv_cache_dtype", "nccl_perf": "nccl_dtype"}[table]
    shared_cols, shared_values = _shared_table(table, dtype_col)
    rows = _rows(quick_run, table)
    assert rows
    missing = set(shared_cols) - set(quick_run["header"])
    assert not missing, f"{table}: columns missing {sorted(missing)}"
    for r in rows:
        blank = [c for c in shared_cols if r[c] == ""]
        assert not blank, f"{table}: blank {blank} in {r}"
    # Dtype strings are spelled as in the shared table.
    assert {r[dtype_col] for r in rows} <= shared_values


def test_metadata_sidecar(quick_run):
    meta_path = quick_run["out"].with_name(quick_run["out"].name + ".meta.yaml")
    assert meta_path.exists()
    meta = yaml.safe_load(meta_path.read_text())
    assert meta["device_count"] == N_DEVICES
    assert meta["platform"] == "cpu"
    assert meta["quick"] is True and meta["complete"] is True
    assert meta["errors"] == []
    for key in ("device_kind", "jax_version", "jaxlib_version", "date_utc", "timing_method"):
        assert meta[key]
    assert set(meta["tables"]) == set(bench.KERNEL_TABLES)


# ----------------------------------------------------------------------------- no subprocess

def test_gemm_shapes_cover_llama_projections():
    pairs = set(bench.gemm_shapes())
    # Llama-3.1-8B TP1: qkv, o, gate+up, down; 70B TP8: qkv (8 q heads + 2 kv heads), down.
    assert {(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)} <= pairs
    assert {(1280, 8192), (8192, 3584)} <= pairs
    assert (4, 1) in bench.attention_heads() and (64, 8) in bench.attention_heads()


def test_coarse_to_fine_order_spans_the_range_first():
    vals = [1 << e for e in range(15)]
    rank = bench._coarse_to_fine_rank(vals)
    assert set(rank) == set(vals)
    assert rank[1] == rank[vals[-1]] == 0
    assert max(rank.values()) <= 5
    cases = [dict(m=m) for m in vals]
    ordered = bench._order_cases(cases, [("m", vals)])
    assert {c["m"] for c in ordered[:3]} == {1, vals[-1], vals[7]}


def test_cli_args_and_bad_kind(tmp_path, capsys):
    args = cli.build_parser().parse_args(["bench", "--quick", "--out", str(tmp_path / "x.csv")])
    assert args.quick and args.out.endswith("x.csv") and args.progress is None
    assert cli.main(["bench", "--quick", "--kinds", "no_such_table", "--out", str(tmp_path / "x.csv")]) == 2
    assert "unknown kernel tables" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
