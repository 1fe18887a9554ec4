"""Streamed sweeps: the flat-index decode equals the materialized space, the streamed frontier and
SLA pick equal the materialized sweep's (aggregated and disaggregated, one segment or several,
with a frontier longer than its buffer), the rows kept do not grow with the space, hardware grids
agree with one sweep per grid point, and bad grid specifications name the axis."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from jaxplan import layouts as L
from jaxplan import stream as T
from jaxplan import sweep as S
from jaxplan.specs import SpecError, load_experiment

EXPERIMENT = Path(__file__).parent / "data" / "small_experiment.yaml"
KEY = ("tp", "pp", "ep", "dp", "adp", "batch", "chunk")
DISAGG_KEY = KEY + S.DISAGG_KEY


def keys(res, idx, names=KEY):
    return [tuple(int(res.columns[k][i]) for k in names) for i in idx]


@pytest.fixture(scope="module")
def small():
    return load_experiment(str(EXPERIMENT))


@pytest.fixture(scope="module")
def study():
    return load_experiment("gpt-1.8t-moe-64gpu")


@pytest.fixture(scope="module")
def small_sweeps(small):
    return S.run_sweep(small), T.run_streamed(small, chunk=128)


def test_flat_index_decode_is_the_materialized_space(study):
    p, _ = S.experiment_params(study)
    configs = L.parallel_configs(study.model, study.gpus, "all")
    bmax = S.max_batch(p, study.hardware, study.model, study.precision, study.workload, configs,
                       float(max(study.chunk_sizes)), study.max_batch)
    want = L.expand(configs, bmax, study.chunk_sizes)
    space = T.aggregated_space(study, p, "all")
    assert space.total == len(want["tp"]) > 10_000
    got = space.decode(np.arange(space.total))
    for k in L.Layout._fields:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # segments: contiguous config ranges, each within the limit unless one config alone exceeds it
    segs = T.segments(space, 1000)
    assert segs[0][0] == 0 and segs[-1][1] == len(configs) and len(segs) > 10
    assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))
    assert all(space.rows[c0:c1].sum() <= 1000 or c1 - c0 == 1 for c0, c1 in segs)


def test_streamed_equals_materialized_on_the_small_study(small, small_sweeps):
    mat, st = small_sweeps
    assert st.n == mat.n == st.counts["layouts"]
    assert st.counts["feasible"] == int(mat.columns["feasible"].sum())
    assert st.counts["meeting_sla"] == int(S.meets_sla(mat.columns, small.sla.min_tokens_per_user,
                                                       small.sla.max_ttft_s).sum())
    assert keys(st, st.frontier) == keys(mat, mat.frontier)
    assert keys(st, [st.best]) == keys(mat, [mat.best])
    for k in ("tokens_per_s_per_gpu", "tokens_per_s_per_user", "ttft_s"):
        np.testing.assert_array_equal(st.columns[k][st.frontier], mat.columns[k][mat.frontier])
    # the density counts every feasible layout once
    assert st.hist.sum() == st.counts["feasible"]


def test_streamed_in_several_segments_and_a_short_buffer_is_the_same(small, small_sweeps):
    mat, _ = small_sweeps
    assert len(mat.frontier) > 16
    st = T.run_streamed(small, chunk=128, segment_rows=100, capacity=16)   # 16 < frontier: reruns larger
    assert keys(st, st.frontier) == keys(mat, mat.frontier)
    assert keys(st, [st.best]) == keys(mat, [mat.best])
    assert st.counts["layouts"] == mat.n


def test_streamed_equals_materialized_on_the_default_study(study):
    mat = S.run_sweep(study)
    st = T.run_streamed(study, chunk=1024)
    assert st.n == mat.n and st.counts["feasible"] == int(mat.columns["feasible"].sum())
    assert keys(st, st.frontier) == keys(mat, mat.frontier)
    assert mat.best is not None and keys(st, [st.best]) == keys(mat, [mat.best])
    assert st.columns["tokens_per_s_per_gpu"][st.best] == mat.columns["tokens_per_s_per_gpu"][mat.best]


def test_streamed_disaggregated_equals_materialized(small):
    mat = S.run_disagg_sweep(small)
    st = T.run_disagg_streamed(small, block_rows=small.gpus * 4 * 40)      # 40 worker pairs per block
    assert st.n == mat.n > 500
    assert keys(st, st.frontier, DISAGG_KEY) == keys(mat, mat.frontier, DISAGG_KEY)
    assert keys(st, [st.best], DISAGG_KEY) == keys(mat, [mat.best], DISAGG_KEY)
    assert st.counts["meeting_sla"] == int(S.meets_sla(mat.columns, small.sla.min_tokens_per_user,
                                                       small.sla.max_ttft_s).sum())


def test_rows_kept_do_not_grow_with_the_space(small):
    """Two spaces 2x apart in size: the device state has the same shapes, the host keeps at most
    the frontier buffer plus the top-k, whatever the size."""
    p, _ = S.experiment_params(small)
    shapes, kept = [], []
    for gpus in (8, 16):
        e = dataclasses.replace(small, gpus=gpus)
        space = T.aggregated_space(e, p)
        parts, counts, hist, *_ = T.stream_space(space, e.model, e.precision, S.evaluator(e.scheduler_name), p,
                                                 e.hardware, e.workload, (50.0, 2.0), chunk=128, steps=2)
        assert counts[0] == space.total
        shapes.append([(k, v.shape) for pt in parts for k, v in sorted(pt["front"].items())])
        kept.append(sum(int(pt["front"]["valid"].sum()) + int(pt["top"]["valid"].sum()) for pt in parts))
    assert shapes[0] == shapes[1]
    assert all(k <= T.FRONTIER_CAPACITY + T.TOP_K for k in kept)


def test_hardware_grid_equals_one_sweep_per_point(small):
    grid = T.parse_grid(["hbm_capacity=40,80", "scale_up_domain=4,8", "gpus=8"])
    res = T.explore(small, grid, chunk=128)
    assert len(res.rows) == 4
    p, _ = S.experiment_params(small)
    for r in res.rows:
        hw = small.hardware.replace(hbm_capacity=r["hbm_capacity"] * 1e9, scale_up_domain=float(r["scale_up_domain"]))
        mat = S.run_sweep(dataclasses.replace(small, hardware=hw), p)
        assert r["best"] is not None and mat.best is not None
        assert tuple(r["best"][k] for k in KEY) == keys(mat, [mat.best])[0]
        assert r["best"]["tokens_per_s_per_gpu"] == pytest.approx(float(mat.columns["tokens_per_s_per_gpu"][mat.best]),
                                                                  rel=1e-6)
        # the union space holds every layout of this point's space; those beyond its memory are infeasible
        assert r["feasible"] == int(mat.columns["feasible"].sum())
    assert res.rows[0]["best"]["tokens_per_s_per_gpu"] <= res.rows[2]["best"]["tokens_per_s_per_gpu"]  # 40 GB <= 80 GB


@pytest.mark.parametrize("items, words", [
    (["hbm_bandwidth_tbs=1,2"], "unknown axis 'hbm_bandwidth_tbs'"),
    (["hbm_bandwidth=1:4:0"], "axis 'hbm_bandwidth': empty range"),
    (["hbm_bandwidth="], "axis 'hbm_bandwidth': empty list"),
    (["hbm_capacity=80,-1"], "axis 'hbm_capacity': values must be positive"),
    (["gpus=8,-8"], "axis 'gpus': values must be positive"),
    (["gpus=8.5"], "axis 'gpus': values must be whole numbers"),
    (["scale_up_domain=a,b"], "axis 'scale_up_domain'"),
    ([], "no axis"),
])
def test_bad_grid_specs_name_the_axis(items, words):
    with pytest.raises(SpecError, match=words):
        T.parse_grid(items)


def test_grid_in_yaml_units_and_geometric_ranges():
    g = T.parse_grid(["hbm_bandwidth_tb_s=2:8:3", "scaleup_domain_gpus=8,72", "gpus=64,128"])
    assert g["hbm_bandwidth"] == pytest.approx([2.0, 4.0, 8.0])
    assert g["scale_up_domain"] == [8, 72] and g["gpus"] == [64, 128]


# ----------------------------------------------------------------------------- the command line

def _csv_keys(path, names=KEY):
    import csv
    with open(path) as f:
        return [tuple(int(float(r[k])) for k in names) for r in csv.DictReader(f)]


def test_cli_streamed_sweep_writes_the_kept_rows(tmp_path, small_sweeps):
    from jaxplan.cli import main
    mat, _ = small_sweeps
    assert main(["sweep", str(EXPERIMENT), "--write-layouts", "frontier", "--out", str(tmp_path)]) == 0
    import json
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["counts"]["layouts"] == mat.n
    assert summary["counts"]["feasible"] == int(mat.columns["feasible"].sum())
    assert summary["counts"]["rows_kept"] <= T.FRONTIER_CAPACITY + T.TOP_K
    assert _csv_keys(tmp_path / "frontier.csv") == keys(mat, mat.frontier)
    assert len(_csv_keys(tmp_path / "layouts.csv")) == summary["counts"]["rows_kept"] < mat.n
    assert tuple(summary["best_at_sla"][k] for k in KEY) == keys(mat, [mat.best])[0]


@pytest.mark.parametrize("argv, words", [
    (["sweep", "--write-layouts", "some"], "--write-layouts 'some' is unknown"),
    (["sweep", "--write-layouts", "sample:0"], "--write-layouts 'sample:0' is unknown"),
    (["explore", "--grid", "hbm_bandwidth=1,-2"], "axis 'hbm_bandwidth': values must be positive"),
    (["explore", "--grid", "nvlink=8,72"], "unknown axis 'nvlink'"),
    (["explore", "--grid", "gpus=8,16", "--grid", "hbm_capacity_gb=80", "--heatmap", "gpus,tp"], "--heatmap"),
])
def test_cli_refuses_bad_streaming_and_grid_flags(argv, words, capsys, tmp_path):
    from jaxplan.cli import main
    assert main([argv[0], str(EXPERIMENT), *argv[1:], "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_two_processes_equal_one(tmp_path, small_sweeps):
    """``--distributed`` with two CPU processes on this machine (coordinator on localhost): each
    streams half of the space; process 0 writes the merged frontier, pick and counts."""
    import json
    import os
    import socket
    import subprocess
    import sys
    mat, _ = small_sweeps
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-m", "jaxplan", "sweep", str(EXPERIMENT), "--write-layouts", "frontier",
                               "--distributed", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i),
                               "--out", str(tmp_path / f"p{i}")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert "process 1 of 2" in outs[1][1]
    assert not (tmp_path / "p1" / "summary.json").exists()            # only process 0 writes
    summary = json.loads((tmp_path / "p0" / "summary.json").read_text())
    assert summary["counts"]["layouts"] == mat.n
    assert summary["counts"]["feasible"] == int(mat.columns["feasible"].sum())
    assert _csv_keys(tmp_path / "p0" / "frontier.csv") == keys(mat, mat.frontier)
    assert tuple(summary["best_at_sla"][k] for k in KEY) == keys(mat, [mat.best])[0]


def test_plan_streams_above_the_threshold_with_the_same_summary(small):
    big = T.plan(small, threshold=100)                 # 448 layouts > 100: streamed
    few = T.plan(small)                                # below 1,000,000: materialized, as before
    assert isinstance(big.results["agg"], T.StreamResult) and not isinstance(few.results["agg"], T.StreamResult)
    a, b = big.summary(), few.summary()
    for k in ("layouts", "feasible", "frontier", "meeting_sla"):
        assert a["counts"][k] == b["counts"][k], k
    assert a["counts"]["rows_kept"] < b["counts"]["rows_kept"] == b["counts"]["layouts"]
    assert a["best_at_sla"] == b["best_at_sla"]
    with pytest.raises(SpecError, match="--write-layouts 'everything'"):
        T.plan(small, write_layouts="everything")
