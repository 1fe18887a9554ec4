"""Serving validation: mapping the measured deployments of silicon_hopper.csv onto jaxplan, the
predictions, the closed-loop law, the serving-level fit and the report files.

Expected layouts are read off the CSV rows by hand (quoted in each case), not from the mapper.
The module compiles one vmapped evaluator per (architecture, precision, mode, scheduling policy)
once and shares it through module-scoped fixtures."""
from __future__ import annotations

import argparse
import csv
import math

import numpy as np
import pytest

from jaxplan import cli
from jaxplan.calibrate import serving_data as sd
from jaxplan.calibrate import serving_fit as sf
from jaxplan.calibrate import serving_predict as sp
from jaxplan.cost import memory_per_gpu
from jaxplan.params import default_params
from jaxplan.specs import SpecError

SERVING = sd.default_data_dir() / "serving" / "silicon_hopper.csv"
pytestmark = pytest.mark.skipif(not SERVING.is_file(),
                                reason=f"shared serving data not found at {SERVING} (../shared/data is absent)")

TOTAL_ROWS = 1884          # rows of silicon_hopper.csv (README: 1,884 measured deployments)
QWEN35_ROWS = 45           # Qwen/Qwen3.5-397B-A17B (hybrid linear attention), 15 of them on tp_size 64
QWEN35_TP64_ROWS = 15      # 64 attention-TP ranks > its 32 query heads: the heads are padded


@pytest.fixture(scope="module")
def loaded():
    return sd.load_serving(SERVING)


@pytest.fixture(scope="module")
def by_id(loaded):
    return {c.id: c for c in loaded[0]}


@pytest.fixture(scope="module")
def validation(loaded):
    cases, unmapped = loaded
    # the speculation rule is off here (its own evaluators would compile for every marked
    # architecture); tests/test_blackwell.py covers it end to end
    return sp.validate(cases, unmapped, params=default_params(), speculation=False)


def _lay(c):
    return {f: float(getattr(c.layout, f)) for f in ("tp", "pp", "ep", "adp", "batch", "chunk")}


# ----------------------------------------------------------------------------- mapping

def test_every_row_is_mapped_or_listed(loaded):
    cases, unmapped = loaded
    assert len(cases) + len(unmapped) == TOTAL_ROWS
    assert len({c.id for c in cases} | {u.id for u in unmapped}) == TOTAL_ROWS
    assert all(u.reason for u in unmapped)


def test_unmapped_reasons(loaded, by_id):
    _, unmapped = loaded
    assert unmapped == []                        # every row is mapped (issues 13 and 14)
    # vLLM Qwen3-235B rows with tp_size 1, attention_dp_size blank, moe_tp_size 2: vLLM's
    # --data-parallel-size 2 --tensor-parallel-size 1, MoE TP over both GPUs; batch_size 8 = the
    # concurrency counts the replica, so 4 requests per attention group
    c = by_id["qwen_qwen3_235b_a22b_fp8_qwen_qwen3_235b_a22b_fp8_h200_sxm_vllm_agg_1000x100_c8_tp1_epnone_2"]
    assert _lay(c) == dict(tp=2, pp=1, ep=1, adp=2, batch=8, chunk=sd.CHUNK["vllm"])
    assert c.concurrency == 8 and c.replicas == 1 and "engine data parallel" in c.note


def test_hybrid_linear_attention_rows_map(loaded):
    cases, _ = loaded
    qwen35 = [c for c in cases if "Qwen3.5" in c.model_path]
    assert len(qwen35) == QWEN35_ROWS
    assert all(c.model.name == "qwen3.5-397b-a17b" and c.model.linear_layers == 45 for c in qwen35)
    # tp_size 64 > its 32 query heads: the engine pads the heads (cost.heads_per_gpu), so these map too
    assert sum(float(c.layout.tp * c.layout.ep / c.layout.adp) == 64 for c in qwen35) == QWEN35_TP64_ROWS


def test_dense_row_bf16(by_id):
    # Llama-3.1-8B-Instruct, trtllm, precision blank, tp 1, batch 8, concurrency 8
    c = by_id["meta_llama_llama_3_1_8b_instruct_meta_llama_llama_3_1_8b_instruct_h100_sxm_trtllm_agg_1024x128_c8_tp1_epnone_1"]
    assert c.model.name == "llama-3.1-8b" and c.precision.name == "bf16" and c.hardware.name == "h100-sxm"
    assert _lay(c) == dict(tp=1, pp=1, ep=1, adp=1, batch=8, chunk=sd.CHUNK["trtllm"])
    assert c.concurrency == 8 and c.replicas == 1 and (c.isl, c.osl) == (1024, 128)


def test_moe_attention_tp_row(by_id):
    # DeepSeek-V3, sglang, tp 8, adp 1, moe_tp 8, moe_ep 1, batch 4: experts TP8, attention TP8
    c = by_id["dsr1_h200_sglang_fp8_agg_1024x1024_c4_cfg81"]
    assert c.model.name == "deepseek-v3" and c.precision.name == "fp8" and c.hardware.name == "h200-sxm"
    assert _lay(c) == dict(tp=8, pp=1, ep=1, adp=1, batch=4, chunk=sd.CHUNK["sglang"])


def test_attention_dp_row_batch_is_per_rank(by_id):
    # DeepSeek-R1 trtllm: tp 1, adp 8, moe_tp 1, moe_ep 8, batch_size 32, concurrency 256 = 32 * 8
    c = by_id["2026_03_25_deepseek_r1_h200_sxm_trtllm_fp8_agg_1024x8192_c256_tp8_0_ep8_0_1238"]
    assert c.model.name == "DeepSeek-R1"
    assert _lay(c) == dict(tp=1, pp=1, ep=8, adp=8, batch=256, chunk=sd.CHUNK["trtllm"])
    assert c.concurrency == 256 and c.replicas == 1
    # MiniMax-M2.5 vllm: tp 4, adp 4 (16 GPUs), moe_tp 1, moe_ep 16, batch 8, concurrency 32
    c = by_id["2026_04_06_minimax_m2_5_h100_sxm_vllm_fp8_agg_8192x1024_c32_tp4_ep4_1322"]
    assert _lay(c) == dict(tp=1, pp=1, ep=16, adp=4, batch=32, chunk=sd.CHUNK["vllm"])


def test_weight_only_fp4_and_replicas(by_id):
    # gpt-oss-120b "fp4" on Hopper -> MXFP4 weights on BF16 tensor cores
    c = by_id["2026_03_25_gpt_oss_120b_h100_sxm_vllm_fp4_agg_1024x1024_c64_tp4_0_ep1_0_185"]
    assert c.precision.name == "mxfp4"
    assert _lay(c) == dict(tp=4, pp=1, ep=1, adp=1, batch=64, chunk=sd.CHUNK["vllm"])
    # concurrency 192 on batch_size 48: four identical replicas of TP4
    c = by_id["openai_gpt_oss_120b_openai_gpt_oss_120b_h100_sxm_trtllm_agg_4000x1000_c192_tp4_epnone_1"]
    assert c.precision.name == "fp8" and c.replicas == 4 and float(c.layout.batch) == 48
    assert c.gpus == 16


def test_disagg_rows(by_id):
    # 2 prefill workers of (tp 1, adp 8, moe_ep 8) and 3 decode workers of the same; N = 192
    c = by_id["dsr1_h200_trtllm_fp8_disagg_8192x1024_c192_cfg325"]
    assert c.mode == "disagg" and (c.prefill_workers, c.decode_workers) == (2, 3) and c.concurrency == 192
    pre = {f: float(getattr(c.prefill, f)) for f in ("tp", "pp", "ep", "adp", "chunk")}
    assert pre == dict(tp=1, pp=1, ep=8, adp=8, chunk=sd.CHUNK["trtllm"])
    assert (float(c.decode.tp), float(c.decode.ep), float(c.decode.adp)) == (1, 8, 8)
    assert c.gpus == 40 and c.cross_network             # 5 workers x 8 GPUs > one 8-GPU NVLink domain
    # blank worker counts -> 0, derived in evaluate_disagg; tp 16 = moe_ep 16 in each pool
    c = by_id["2026_03_25_deepseek_r1_h100_sxm_trtllm_fp8_disagg_8192x1024_c154_tp16_0_ep16_0_851"]
    assert (c.prefill_workers, c.decode_workers) == (0, 0) and c.concurrency == 154
    assert (float(c.prefill.tp), float(c.prefill.ep), float(c.prefill.adp)) == (1, 16, 1)
    assert "blank *_num_workers" in c.note
    # no silicon_concurrency: N = decode_batch_size 48 * adp 1 * 11 decode workers
    c = by_id["qwen3_32b_qwen3_32b_h100_sxm_sglang_disagg_4000x1000_c_tpnone_epnone_1"]
    assert c.concurrency == 48 * 11 and (c.prefill_workers, c.decode_workers) == (5, 11)
    assert c.cross_network and "concurrency absent" in c.note


def test_user_errors_name_the_problem(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        sd.load_serving(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,model_path,system,backend\nx,a/b,h100_sxm,trtllm\n")
    with pytest.raises(SpecError, match="silicon_ttft_ms"):
        sd.load_serving(bad)
    args = argparse.Namespace(serving=str(tmp_path / "nope.csv"), params=None, out=str(tmp_path))
    with pytest.raises(SpecError, match="does not exist"):
        cli.validate_serving_command(args)


# ----------------------------------------------------------------------------- predictions

def test_predictions_finite_and_positive(loaded, validation):
    cases, _ = loaded
    for k in ("ttft_s", "tpot_s", "requests_per_s"):
        v = validation.pred[k]
        assert v.shape == (len(cases),)
        assert np.all(np.isfinite(v)) and np.all(v > 0), k


def test_closed_loop_law_agg(loaded, validation):
    """Per replica, in steady state: batch = X * (TTFT + OSL * TPOT). The benchmark TTFT adds a
    share of the cold-start wave on top (never below the steady state)."""
    cases, _ = loaded
    agg = np.asarray([c.mode == "agg" for c in cases])
    n = np.asarray([float(c.layout.batch) if c.mode == "agg" else np.nan for c in cases])[agg]
    osl = np.asarray([c.osl for c in cases])[agg]
    p = validation.pred
    law = p["requests_per_s"][agg] * (p["steady_ttft_s"][agg] + osl * p["tpot_s"][agg])
    np.testing.assert_allclose(law, n, rtol=1e-3)
    assert np.all(p["ttft_s"][agg] >= p["steady_ttft_s"][agg] * (1 - 1e-6))
    sg = np.asarray([c.backend == "sglang" for c in cases])[agg]
    # SGLang's lock-step waves are cold starts already: nothing is added
    np.testing.assert_allclose(p["ttft_s"][agg][sg], p["steady_ttft_s"][agg][sg], rtol=1e-6)


def test_closed_loop_law_disagg_and_its_cold_wave(loaded, validation):
    """Over a disaggregated deployment, in steady state: N = X * (TTFT + OSL * TPOT). The benchmark
    TTFT is the steady one plus a quarter (BENCHMARK_REQUESTS_PER_CLIENT = 4) of whatever the
    cold-start wave adds, so never below the steady state."""
    cases, _ = loaded
    dis = np.asarray([c.mode == "disagg" for c in cases])
    n = np.asarray([c.concurrency for c in cases])[dis]
    osl = np.asarray([c.osl for c in cases])[dis]
    p = validation.pred
    law = p["requests_per_s"][dis] * (p["steady_ttft_s"][dis] + osl * p["tpot_s"][dis])
    np.testing.assert_allclose(law, n, rtol=5e-3)
    added = p["ttft_s"][dis] - p["steady_ttft_s"][dis]
    assert np.all(added >= -1e-6 * p["steady_ttft_s"][dis])
    assert np.mean(added > 0.01 * p["steady_ttft_s"][dis]) > 0.5      # most rows queue a cold wave


def test_summary_statistics(validation):
    rows = validation.summary
    overall = rows[-1]
    assert overall["system"] == "overall" and overall["n"] == len(validation.cases)
    # the statistics of the overall row are those of the APE column
    ape = validation.table["tpot_ape"]
    assert math.isclose(overall["tpot_mape"], float(np.mean(ape)), rel_tol=1e-9)
    assert math.isclose(overall["tpot_within25"], float(np.mean(ape <= 0.25)), rel_tol=1e-9)
    assert sum(r["n"] for r in rows[:-1]) == overall["n"]


def test_overheads_enter_as_one_scalar(loaded, validation):
    """Every round time depends on (step, layer) only through step + num_layers * layer, the
    property the serving fit's tabulation rests on."""
    cases, _ = loaded
    p = default_params()
    a = {**p, **{f"step_overhead_{b}_s": np.float32(1e-3) for b in ("trtllm", "vllm", "sglang")},
         **{f"layer_overhead_{b}_s": np.float32(2e-5) for b in ("trtllm", "vllm", "sglang")}}
    base = sp.predict(cases, a)
    # the same o = 1e-3 + L * 2e-5, all of it in the step term, for the models of L layers
    for layers in (32, 61):
        sel = [i for i, c in enumerate(cases) if c.model.num_layers == layers]
        b = {**p, **{f"step_overhead_{k}_s": np.float32(1e-3 + layers * 2e-5) for k in ("trtllm", "vllm", "sglang")},
             **{f"layer_overhead_{k}_s": np.float32(0.0) for k in ("trtllm", "vllm", "sglang")}}
        other = sp.predict(cases, b)
        np.testing.assert_allclose(other["ttft_s"][sel], base["ttft_s"][sel], rtol=2e-4)
        np.testing.assert_allclose(other["tpot_s"][sel], base["tpot_s"][sel], rtol=2e-4)


# ----------------------------------------------------------------------------- fit

def test_serving_fit_lowers_the_loss(loaded):
    cases, _ = loaded
    pool = [c for c in cases if c.system == sf.TRAIN_SYSTEM and c.model.name == "llama-3.1-8b"
            and c.backend == "trtllm"]
    sub = sf.subsample(pool, 24, seed=0)
    assert sub == sf.subsample(pool, 24, seed=0) and len(sub) == 24       # deterministic
    p = default_params()
    fitted, info = sf.fit_step_overheads(p, sub, ("step_overhead_trtllm_s", "layer_overhead_trtllm_s"), steps=40)
    assert info["loss_after"] < info["loss_before"]
    before = sf.serving_loss(sub, sp.predict(sub, p))
    after = sf.serving_loss(sub, sp.predict(sub, fitted))
    assert math.isclose(before, info["loss_before"], rel_tol=1e-3)         # the tabulation is the model
    assert after < before
    assert fitted["step_overhead_trtllm_s"] != p["step_overhead_trtllm_s"]
    for k in p:                                                            # everything else is masked
        if k not in ("step_overhead_trtllm_s", "layer_overhead_trtllm_s"):
            assert float(fitted[k]) == pytest.approx(float(p[k]), rel=1e-5), k
    with pytest.raises(SpecError, match="serving-level"):
        sf.fit_step_overheads(p, sub, ("gemm_eff_bf16",), steps=1)


def test_disagg_overhead_fit_recovers_a_known_overhead(loaded):
    """Measured TTFTs synthesized by the model itself with disagg_overhead_sglang_s = 0.3 s: the
    fit, started from the default 0.1 s, recovers 0.3 s. Rows that no constant explains (50x the
    prediction) end at the bound and keep the start value; too few rows keep it too."""
    import dataclasses
    cases, _ = loaded
    pool = [c for c in cases if c.mode == "disagg" and c.backend == "sglang" and c.system == sf.TRAIN_SYSTEM
            and c.model.name == "DeepSeek-R1"]
    sub = sf.subsample(pool, 12, seed=0)
    assert len(sub) == 12
    p = default_params()
    truth = sp.predict(sub, {**p, "disagg_overhead_sglang_s": np.float32(0.3)})["ttft_s"]
    synth = [dataclasses.replace(c, ttft_ms=float(t) * 1e3) for c, t in zip(sub, truth)]
    fitted, rep = sf.fit_ttft_overheads(p, synth, "disagg")
    assert float(fitted["disagg_overhead_sglang_s"]) == pytest.approx(0.3, rel=0.03)
    assert rep["sglang"]["loss_after"] < rep["sglang"]["loss_before"]
    assert rep["trtllm"]["rows"] == 0 and "kept" in rep["trtllm"]["status"]
    stalls = [dataclasses.replace(c, ttft_ms=float(t) * 5e4) for c, t in zip(sub, truth)]
    fitted, rep = sf.fit_ttft_overheads(p, stalls, "disagg")
    assert "disagg_overhead_sglang_s" not in fitted and "bound" in rep["sglang"]["status"]


# ----------------------------------------------------------------------------- report

def test_command_writes_predictions_and_plot(loaded, validation, tmp_path, capsys):
    args = argparse.Namespace(serving=str(SERVING), params=None, out=str(tmp_path / "val"), speculation=False)
    assert cli.validate_serving_command(args) == 0
    out = tmp_path / "val"
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(loaded[0])
    for col in ("id", "model", "system", "backend", "mode", "isl", "osl", "concurrency", "tp", "pp", "ep",
                "measured_ttft_ms", "predicted_ttft_ms", "ttft_ape", "measured_tpot_ms", "predicted_tpot_ms",
                "tpot_ape"):
        assert col in rows[0], col
    assert all(float(r["predicted_tpot_ms"]) > 0 for r in rows)
    png = out / "serving_scatter.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "unmapped.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(loaded[1])
    text = capsys.readouterr()
    assert "overall" in text.out and "unmapped" in text.err


def test_command_validates_several_files_together(tmp_path, capsys):
    """``validate --serving A.csv B.csv``: the rows of both, one report; every row gets the far-off
    column (empty within 3x)."""
    with open(SERVING, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r["backend"] == "trtllm" and r["mode"] == "agg"
                and r["model_path"].endswith("Llama-3.1-8B-Instruct")][:12]
        fields = reader.fieldnames
    paths = []
    for name, part in (("a.csv", rows[:5]), ("b.csv", rows[5:])):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(part)
        paths.append(str(tmp_path / name))
    args = argparse.Namespace(serving=paths, params=None, out=str(tmp_path / "val"))
    assert cli.validate_serving_command(args) == 0
    with open(tmp_path / "val" / "predictions.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in rows)
    assert all("far_off" in r for r in got)
    err = capsys.readouterr().err
    assert "5 rows in" in err and "7 rows in" in err


def test_duplicate_measurements_keep_the_described_row(loaded):
    cases, _ = loaded
    mask = sd.unique_mask(cases)
    ids = {c.id: i for i, c in enumerate(cases)}
    # one measurement, three ids: the DeepSeek-V3 cfg434 row gives the worker counts, the two
    # DeepSeek-R1 exports leave them blank
    full = "dsr1_h200_sglang_fp8_disagg_8192x1024_c256_cfg434"
    dups = ["2026_03_25_deepseek_r1_h200_sxm_sglang_fp8_disagg_8192x1024_c256_tp8_0_ep1_0_921",
            "2026_04_06_deepseek_r1_h200_sxm_sglang_fp8_disagg_8192x1024_c256_tp8_ep1_1447"]
    keys = {sd.measurement_key(cases[ids[i]]) for i in [full] + dups}
    assert len(keys) == 1
    assert mask[ids[full]] and not any(mask[ids[i]] for i in dups)


def test_memory_cap_flags_overfull_replicas(by_id):
    # Qwen3-32B BF16 (65.5 GB of weights) on one H100 (85.5 GB as nvidia-smi counts), requests of
    # 2048 + 512 tokens at 256 KiB of KV per token: the KV cache gets mem_usable_frac of what the
    # weights, one iteration's activations and the reserve leave free, so few requests fit
    big = by_id["qwen_qwen3_32b_qwen_qwen3_32b_h100_sxm_sglang_agg_2048x512_c16_tp1_epnone_6"]
    small = by_id["meta_llama_llama_3_1_8b_instruct_meta_llama_llama_3_1_8b_instruct_h100_sxm_trtllm_agg_1024x128_c8_tp1_epnone_1"]
    assert big.precision.name == "bf16" and float(big.layout.tp) == 1 and float(big.layout.batch) == 16
    p = default_params()
    cap = sp.memory_batch_cap([small, big], p)
    assert cap[0] >= float(small.layout.batch)        # 8 short requests beside 16 GB of Llama-8B
    m = big.model
    kv_request = (2048 + 512) * 2 * m.num_kv_heads * m.head_dim * m.num_layers * 2.0     # BF16 K and V
    assert kv_request == 2560 * 256 * 1024
    fixed = memory_per_gpu(p, big.hardware, m, big.precision, 2048.0, 512.0, 1.0, 1.0, 1.0, 1.0, 0.0, 8192.0)
    fixed = float(fixed["weights"] + fixed["activations"] + fixed["reserve"])
    assert 65e9 < fixed < 72e9
    by_hand = 0.92 * (85.5e9 - fixed) / kv_request
    assert cap[1] == pytest.approx(math.floor(by_hand), abs=1)
    assert 0 < cap[1] < 2 * float(big.layout.batch)


def test_request_overhead_fit_recovers_a_known_front_end_latency(loaded):
    """Aggregated TTFTs synthesized with request_overhead_trtllm_s = 0.12 s (a front end's latency
    before the engine sees the request): the fit from the neutral 0.1 ms recovers it. It is spent
    outside the GPU, so TTFT rises, while TPOT can only fall: in the closed loop the front end holds
    some of the N requests and fewer decode at once."""
    import dataclasses
    cases, _ = loaded
    pool = [c for c in cases if c.mode == "agg" and c.backend == "trtllm" and c.system == sf.TRAIN_SYSTEM
            and c.model.name == "llama-3.1-8b"]
    sub = sf.subsample(pool, 16, seed=1)
    p = default_params()
    base = sp.predict(sub, p)
    with_o = sp.predict(sub, {**p, "request_overhead_trtllm_s": np.float32(0.12)})
    assert np.all(with_o["tpot_s"] <= base["tpot_s"] * (1 + 1e-6))
    assert np.all(with_o["decode_batch"] <= base["decode_batch"] * (1 + 1e-6))
    assert np.all(with_o["ttft_s"] > base["ttft_s"])
    synth = [dataclasses.replace(c, ttft_ms=float(t) * 1e3) for c, t in zip(sub, with_o["ttft_s"])]
    fitted, rep = sf.fit_ttft_overheads(p, synth, "request")
    assert float(fitted["request_overhead_trtllm_s"]) == pytest.approx(0.12, rel=0.03)
    assert set(fitted) == {"request_overhead_trtllm_s"}
    assert "rows < 8" in rep["vllm"]["status"]


def test_scheduler_override_reprices_only_that_backends_aggregated_rows(loaded, validation):
    """``jaxplan validate --scheduler sglang=prefill_first``: the aggregated SGLang rows of H200
    DeepSeek (TP8) are repriced with staggered prefill-first arrivals, which queue about one
    iteration instead of a lock-step wave's (k + 1) / 2 (k = N * ISL / 8192, up to 64 iterations
    here), so their TTFT falls; every other row is unchanged. Bad values name the allowed ones."""
    cases, _ = loaded
    sel = [i for i, c in enumerate(cases) if c.system == "h200_sxm" and c.model.name.startswith("DeepSeek")
           and c.mode == "agg" and c.backend in ("sglang", "trtllm")][:48]
    sub = [cases[i] for i in sel]
    pred = sp.predict(sub, default_params(), schedulers=cli.parse_schedulers(["sglang=prefill_first"]))
    sg = np.asarray([c.backend == "sglang" for c in sub])
    assert sg.any() and (~sg).any()
    base = {k: v[sel] for k, v in validation.pred.items()}
    np.testing.assert_allclose(pred["ttft_s"][~sg], base["ttft_s"][~sg], rtol=1e-6)
    np.testing.assert_allclose(pred["tpot_s"][~sg], base["tpot_s"][~sg], rtol=1e-6)
    k = np.asarray([c.concurrency * c.isl / 8192 for c in sub])[sg]
    assert np.all(pred["ttft_s"][sg][k > 4] < base["ttft_s"][sg][k > 4])
    for bad in (["sglang"], ["sgl=wave"], ["sglang=lockstep"]):
        with pytest.raises(SpecError, match="prefill_first"):
            cli.parse_schedulers(bad)
