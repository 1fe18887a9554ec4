"""Blackwell and Blackwell Ultra (issue 13): the system map, the B300/GB300 presets against the
datasheet figures of the data's own system files, profiles derived for chips without kernel tables,
NVIDIA's quantized checkpoints, the NVFP4 DeepSeek memory case by hand, and disaggregated worker
counts. Tests reading ../shared/data skip with a reason where it is absent."""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import pytest
import yaml

from jaxplan import cli, cost
from jaxplan import serving as sv
from jaxplan.calibrate import kernels as kt
from jaxplan.calibrate import serving_data as sd
from jaxplan.cost import heads_per_gpu, memory_per_gpu
from jaxplan.layouts import Layout
from jaxplan.params import BLACKWELL_ULTRA_ADJUST, derive_profile, for_backend, load_params, profile_path
from jaxplan.serving import admitted_batch
from jaxplan.specs import SYSTEMS, SpecError, Workload, get_precision, load_hardware, load_model

DATA = sd.default_data_dir()
AIC = DATA / "aic_systems"


# ----------------------------------------------------------------------------- systems

def test_every_system_of_the_data_has_a_preset():
    # the data source's system names (README of the data: h100_sxm, h200_sxm, b200_sxm, gb200,
    # b300_sxm, gb300)
    assert SYSTEMS == {"h100_sxm": "h100-sxm", "h200_sxm": "h200-sxm", "b200_sxm": "b200",
                       "gb200": "gb200-nvl72", "b300_sxm": "b300", "gb300": "gb300-nvl72"}
    for name in SYSTEMS.values():
        assert load_hardware(name).name == name
    # kernel and serving loaders read the same map
    assert kt.default_kernels_dir("b300") == kt.data_dir() / "kernels" / "b300_sxm"
    assert sd._Resolver(DATA).hardware("gb300").name == "gb300-nvl72"


@pytest.mark.parametrize("system, domain", [("b300_sxm", 8), ("gb300", 72)])
def test_blackwell_ultra_presets_match_the_datasheet_files(system, domain):
    path = AIC / f"{system}.yaml"
    if not path.is_file():
        pytest.skip(f"{path} absent (../shared/data is not here)")
    aic = yaml.safe_load(path.read_text())
    gpu, node = aic["gpu"], aic["node"]
    hw = load_hardware(SYSTEMS[system])
    assert hw.bf16_flops == gpu["bfloat16_tc_flops"]
    assert hw.fp8_flops == gpu["fp8_tc_flops"]
    assert hw.fp4_flops == gpu["fp4_tc_flops"]
    assert hw.hbm_bandwidth == gpu["mem_bw"]
    # what nvidia-smi reports (MiB count), to the preset's 0.1 GB
    assert hw.hbm_capacity == pytest.approx(gpu["mem_capacity"], abs=0.05e9)
    nvlink = node["inter_node_bw"] if domain == 72 else node["intra_node_bw"]
    assert hw.scale_up_bandwidth == nvlink == 900e9
    assert hw.scale_out_bandwidth == node.get("inter_rack_bw", node["inter_node_bw"]) == 100e9
    assert hw.scale_up_domain == node.get("num_gpus_per_rack", node["num_gpus_per_node"]) == domain
    # Blackwell Ultra against Blackwell: 1.5x the FP4 rate of its predecessor, 1.6x the memory
    base = load_hardware("b200" if domain == 8 else "gb200-nvl72")
    assert hw.fp4_flops / base.fp4_flops == pytest.approx(1.5, rel=0.06)
    assert hw.hbm_capacity / base.hbm_capacity == pytest.approx(1.5, rel=0.01)


# ----------------------------------------------------------------------------- derived profiles

def test_derive_profile_rule(tmp_path):
    """Everything carries over but the adjusted parameter; the new chip's speed comes from its
    preset: a compute-bound FP4 GEMM runs 14/9 faster on B300 than on B200 (datasheet FP4 rates),
    a memory-bound pass 8/7.75 slower (HBM bandwidths)."""
    b200, b300 = load_hardware("b200"), load_hardware("b300")
    src = load_params(profile_path("b200"))
    params, meta = derive_profile("b200", "b300", BLACKWELL_ULTRA_ADJUST)
    assert meta["hardware"] == "b300" and meta["from_hardware"] == "b200"
    assert meta["preset_ratios"]["fp4_flops"] == pytest.approx(14000 / 9000, rel=1e-3)
    for k, v in src.items():
        want = float(v) * (0.5 if k == "attn_softmax_dim" else 1.0)
        assert float(params[k]) == pytest.approx(want, rel=1e-6), k
    fp4 = get_precision("fp4")
    # as served (the kernel tables' separate activation-quantization pass neutralized)
    src_s, params_s = for_backend(src, "trtllm"), for_backend(params, "trtllm")
    big = [cost.gemm(p, hw, fp4, 16384.0, 16384.0, 16384.0).total() for p, hw in ((src_s, b200), (params_s, b300))]
    assert float(big[0] / big[1]) == pytest.approx(14000 / 9000, rel=0.01)
    stream = [cost.elementwise(p, hw, 1e9).total() for p, hw in ((src_s, b200), (params_s, b300))]
    assert float(stream[1] / stream[0]) == pytest.approx(8 / 7.75, rel=1e-3)
    # the shipped profiles are what the command writes
    out = tmp_path / "b300.yaml"
    assert cli.main(["fit", "--derive-from", "b200", "--hardware", "b300", "--adjust", "attn_softmax_dim=0.5",
                     "--out", str(out)]) == 0
    shipped = load_params(profile_path("b300"))
    written = load_params(out)
    assert all(float(shipped[k]) == pytest.approx(float(written[k]), rel=1e-5) for k in written)
    assert float(jnp.asarray(written["attn_softmax_dim"])) == pytest.approx(float(src["attn_softmax_dim"]) / 2, rel=1e-5)


def test_derive_profile_rejects_bad_input(tmp_path):
    with pytest.raises(SpecError, match="neither a file nor a shipped profile"):
        derive_profile("no-such-chip", "b300")
    with pytest.raises(SpecError, match="unknown parameter 'nope'"):
        derive_profile("b200", "b300", {"nope": 2.0})
    with pytest.raises(SpecError, match="outside its range"):
        derive_profile("b200", "b300", {"gemm_eff_fp4": 10.0})


# ----------------------------------------------------------------------------- checkpoints and engine semantics

def _need_configs():
    if not (DATA / "model_configs").is_dir():
        pytest.skip(f"{DATA / 'model_configs'} absent (../shared/data is not here)")


def _row(**kw):
    base = dict(id="r", silicon_data_source="silicon_concurrency=8", backend="trtllm", model_path="", system="b200_sxm",
                precision="", mode="agg", isl="1024", osl="128", batch_size="8", tp_size="8", pp_size="1",
                attention_dp_size="1", moe_tp_size="", moe_ep_size="", silicon_ttft_ms="100", silicon_tpot_ms="10")
    base.update(kw)
    return base


@pytest.mark.parametrize("path, model, precision", [
    ("nvidia/DeepSeek-R1-NVFP4", "DeepSeek-R1", "fp4"),
    ("nvidia/DeepSeek-V3.1-NVFP4", "deepseek-v3", "fp4"),       # V3.1: V3's architecture
    ("nvidia/Qwen3-32B-NVFP4", "Qwen3-32B", "fp4"),
    ("Qwen/Qwen3-235B-A22B-FP8", "qwen3-235b-a22b", "fp8"),
    ("deepseek-ai/DeepSeek-R1-0528", "DeepSeek-R1", "bf16"),      # a re-release, precision column blank
    ("meta-llama/Meta-Llama-3.1-70B-Instruct-FP8", "llama-3.1-70b", "fp8"),
])
def test_checkpoint_names_map_to_base_architecture_at_their_precision(path, model, precision):
    _need_configs()
    res = sd._Resolver(DATA)
    moe = dict(moe_tp_size="8", moe_ep_size="1") if "DeepSeek" in path or "A22B" in path else {}
    c = sd.map_row(_row(model_path=path, **moe), res)
    assert c.model.name == model and c.precision.name == precision
    assert sd.checkpoint_precision(path) == ("" if precision == "bf16" else precision)


def test_every_model_and_system_of_the_b200_file_is_mapped():
    path = DATA / "serving" / "silicon_b200.csv"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    cases, unmapped = sd.load_serving(path)
    assert len(cases) + len(unmapped) == 2052
    # every row, the hybrid linear-attention model included (issue 14)
    assert unmapped == []
    assert sum(c.model_path == "Qwen/Qwen3.5-397B-A17B" for c in cases) == 224
    names = {c.model_path: (c.model.name, c.precision.name) for c in cases if c.model_path.startswith("nvidia/")}
    assert names == {"nvidia/DeepSeek-R1-NVFP4": ("DeepSeek-R1", "fp4"),
                     "nvidia/DeepSeek-V3.1-NVFP4": ("deepseek-v3", "fp4"),
                     "nvidia/Qwen3-32B-NVFP4": ("Qwen3-32B", "fp4")}


def test_engine_semantics_for_blank_or_zero_parallel_columns():
    _need_configs()
    res = sd._Resolver(DATA)
    ds = "deepseek-ai/DeepSeek-R1"
    # attention_dp_size 0 (not recorded), tp 2, experts over 8 GPUs: 4 attention-DP groups of 2
    # GPUs (SGLang --tp 8 --dp 4 --enable-dp-attention; vLLM --data-parallel-size 4 -tp 2); the
    # batch counts per group, the concurrency 32 = 8 * 4
    c = sd.map_row(_row(model_path=ds, tp_size="2", attention_dp_size="0", moe_tp_size="1", moe_ep_size="8",
                        silicon_data_source="silicon_concurrency=32"), res)
    lay = c.layout
    assert (float(lay.tp), float(lay.ep), float(lay.adp), float(lay.batch)) == (1, 8, 4, 32) and c.replicas == 1
    # MoE columns 0: the engine default, experts tensor-parallel over tp * adp GPUs
    c = sd.map_row(_row(model_path=ds, tp_size="4", attention_dp_size="1", moe_tp_size="0", moe_ep_size="0"), res)
    assert (float(c.layout.tp), float(c.layout.ep), float(c.layout.adp)) == (4, 1, 1)
    # a MoE layout that cannot be the engine's: an actionable reason
    with pytest.raises(sd._Skip, match="moe_tp_size"):
        sd.map_row(_row(model_path=ds, tp_size="8", attention_dp_size="1", moe_tp_size="2", moe_ep_size="2"), res)
    # attention TP 32 over MiniMax-M2.5's 48 query heads: padded, 2 heads on the busiest GPU
    c = sd.map_row(_row(model_path="MiniMaxAI/MiniMax-M2.5", backend="vllm", precision="fp8", tp_size="32",
                        moe_tp_size="1", moe_ep_size="32", silicon_data_source="silicon_concurrency=8"), res)
    assert c.model.num_heads == 48 and float(c.layout.tp * c.layout.ep / c.layout.adp) == 32
    assert float(heads_per_gpu(c.model, 32.0)[0]) == 2.0 == -(-48 // 32)
    assert float(heads_per_gpu(c.model, 16.0)[0]) == 3.0


# ----------------------------------------------------------------------------- memory by hand

# DeepSeek-R1 (config.json of deepseek-ai/DeepSeek-R1; the MTP layer is not served)
DS_D, DS_LAYERS, DS_DENSE, DS_EXPERTS, DS_FF_E, DS_FF = 7168, 61, 3, 256, 2048, 18432
DS_VOCAB, DS_HEADS, DS_QLORA, DS_KVLORA, DS_ROPE, DS_NOPE, DS_V = 129280, 128, 1536, 512, 64, 128, 128
NVFP4_BYTES = (4 + 8 / 16) / 8      # E2M1 value + one FP8 (E4M3) scale per 16 values
FP8_BYTES = 1.0
B200_BYTES = 183_359 * 2**20        # nvidia-smi's MiB for a B200 (the preset rounds to 0.1 GB)


def _ds_weights_per_gpu(tp, wbytes):
    """Weights on one GPU of a TP-``tp`` DeepSeek-R1 replica (attention TP, experts TP), by hand."""
    down = DS_D * (DS_QLORA + DS_KVLORA + DS_ROPE)                  # q_a, kv_a: replicated
    attn = (DS_D * DS_QLORA + DS_QLORA * DS_HEADS * (DS_NOPE + DS_ROPE)
            + DS_D * (DS_KVLORA + DS_ROPE) + DS_KVLORA * DS_HEADS * (DS_NOPE + DS_V) + DS_HEADS * DS_V * DS_D)
    attn_gpu = down + (attn - down) / tp
    dense = 3 * DS_D * DS_FF / tp
    moe = DS_EXPERTS * 3 * DS_D * DS_FF_E / tp + 3 * DS_D * DS_FF_E / tp + DS_D * DS_EXPERTS    # + router
    layers = DS_DENSE * (attn_gpu + dense) + (DS_LAYERS - DS_DENSE) * (attn_gpu + moe)
    return layers * wbytes + 2 * DS_VOCAB * DS_D / tp * 2.0        # embedding + LM head, BF16


@pytest.mark.parametrize("precision, wbytes", [("fp4", NVFP4_BYTES), ("fp8", FP8_BYTES)])
def test_deepseek_on_four_b200_fits_with_hand_computed_bytes(precision, wbytes):
    """The aggregated DeepSeek-R1 rows on 4 B200 (TP4) at 8-32 concurrent requests ran; with the
    B200 taken as 180e9 B and 92% of it usable, the FP8 weights alone (169 GB) did not fit, so one
    request was admitted at a time and TTFT came out 50-500x the measurement."""
    _need_configs()
    model = load_model(DATA / "model_configs" / "DeepSeek-R1.json")
    hw, prec = load_hardware("b200"), get_precision(precision)
    p = load_params(profile_path("b200"))
    assert hw.hbm_capacity == pytest.approx(B200_BYTES, abs=0.05e9)
    assert prec.weight_bytes == wbytes and prec.kv_bytes == FP8_BYTES
    tp, isl, osl, batch = 4, 8192.0, 1024.0, 32.0
    weights = _ds_weights_per_gpu(tp, wbytes)
    kv_token = (DS_KVLORA + DS_ROPE) * DS_LAYERS * FP8_BYTES        # MLA latent, replicated over TP
    mem = memory_per_gpu(p, hw, model, prec, isl, osl, 4.0, 1.0, 1.0, 1.0, batch, 8192.0)
    assert float(mem["weights"]) == pytest.approx(weights, rel=1e-4)
    assert float(mem["kv_cache"]) == pytest.approx(batch * (isl + osl) * kv_token, rel=1e-4)
    # the engine's KV budget: mem_usable_frac of what weights, the activations of one 8192-token
    # chunk (4d + 2 * widest / tp BF16 values per token; widest: 128 heads x 192 dims) and the reserve leave
    act_chunk = 8192 * (4 * DS_D + 2 * max(DS_FF, 8 * DS_FF_E, DS_HEADS * (DS_NOPE + DS_ROPE)) / 4) * 2.0
    fixed = weights + act_chunk + float(p["mem_reserve_gb"]) * 1e9
    budget = float(p["mem_usable_frac"]) * (B200_BYTES - fixed)
    assert float(mem["capacity"]) - fixed == pytest.approx(budget, rel=2e-3)
    assert bool(mem["total"] <= mem["capacity"])
    f = jnp.float32
    lay = Layout(tp=f(4), pp=f(1), ep=f(1), dp=f(1), batch=f(batch), chunk=f(8192), adp=f(1))
    admitted = float(admitted_batch(p, hw, model, prec, Workload(isl, osl), lay))
    by_hand = budget / (kv_token * (isl + osl / 2))                 # paged: the mean context
    assert admitted == pytest.approx(by_hand, rel=0.02) and admitted >= batch
    if precision == "fp8":
        # what the old reading did: 92% of 180e9 B is less than the weights
        assert weights > 0.92 * 180e9


# ----------------------------------------------------------------------------- disaggregated worker counts

def test_blank_worker_counts_are_derived_at_the_decode_knee():
    """A disaggregated row without worker counts: decode workers run the knee batch (the largest
    whose step takes at most DECODE_KNEE = 3 one-request steps, capped by what the KV cache
    holds), y = ceil(N / knee batch); prefill workers rate-matched at 80% utilization."""
    assert sv.DECODE_KNEE == 3.0 and sv.DERIVED_PREFILL_UTILIZATION == 0.8
    p = for_backend(load_params(profile_path("b200")), "trtllm")
    model, hw, prec = load_model("llama-3.1-70b"), load_hardware("b200"), get_precision("fp8")
    wl = Workload(1024.0, 1024.0)
    f = jnp.float32
    pre = Layout(tp=f(4), pp=f(1), ep=f(1), dp=f(1), batch=f(1), chunk=f(8192), adp=f(1))
    dec = Layout(tp=f(4), pp=f(1), ep=f(1), dp=f(1), batch=f(1), chunk=f(0), adp=f(1))

    def step(b):
        return float(sv.round_time(p, hw, model, prec, wl, dec._replace(batch=f(b)), f(b), f(0.0)))

    knee = float(sv.decode_knee_batch(p, hw, model, prec, wl, dec))
    one = step(1.0)
    assert step(knee) <= 3.0 * one * (1 + 1e-5) < step(knee * 1.01)
    b_max = float(admitted_batch(p, hw, model, prec, wl, dec))
    assert knee < b_max                              # here the knee, not memory, sizes the pool
    n = 1000.0
    y = math.ceil(n / knee)
    m = sv.evaluate_disagg(p, hw, model, prec, wl, pre, dec, f(0), f(0), f(n), False)
    assert float(m["decode_workers"]) == y
    # prefill: the fewest workers whose rate at 80% covers y decode workers at the batch N / y
    b = n / y
    dec_rate = b / (wl.osl * step(b))
    pre_rate = float(sv.prefill_worker(p, hw, model, prec, wl, pre)["rate"])
    assert float(m["prefill_workers"]) == max(math.ceil(y * dec_rate / (0.8 * pre_rate) - 1e-6), 1)
    # counts given in the row are used as they are
    m = sv.evaluate_disagg(p, hw, model, prec, wl, pre, dec, f(3), f(5), f(n), False)
    assert (float(m["prefill_workers"]), float(m["decode_workers"])) == (3.0, 5.0)


# ----------------------------------------------------------------------------- speculative decoding the CSV does not record

def test_speculation_rule_marks_rows_below_the_one_request_step():
    """No one-token-per-step decoder beats its layout's step with one request per attention group
    (the step grows with the batch), so a row measured below SPECULATION_MARGIN x that step is
    predicted with speculative decoding: 3 drafted tokens accepted at 0.7 each, 1 + 0.7 + 0.49 +
    0.343 = 2.533 tokens per step. Rows above it are left as they are."""
    from jaxplan.calibrate import serving_predict as sp
    assert (sp.SPECULATION_MARGIN, sp.SPECULATION_DRAFT_TOKENS, sp.SPECULATION_ACCEPTANCE) == (0.8, 3, 0.7)
    p = for_backend(load_params(profile_path("b200")), "trtllm")
    model, hw, prec = load_model("llama-3.1-70b"), load_hardware("b200"), get_precision("fp8")
    wl = Workload(1024.0, 1024.0)
    f = jnp.float32
    lay = Layout(tp=f(4), pp=f(1), ep=f(1), dp=f(1), batch=f(16), chunk=f(8192), adp=f(1))
    step1 = float(sp.one_request_step(p, hw, model, prec, wl, lay))
    assert step1 == pytest.approx(float(sv.round_time(p, hw, model, prec, wl, lay._replace(batch=f(1)), f(1), f(0))))
    assert step1 < float(sv.round_time(p, hw, model, prec, wl, lay, f(16), f(0)))      # grows with the batch

    def case(tpot_ms):
        return sd.ServingCase(id=f"r{tpot_ms:g}", model_path="meta-llama/Llama-3.1-70B", model=model, system="b200_sxm",
                              hardware=hw, precision=prec, backend="trtllm", mode="agg", isl=1024.0, osl=1024.0,
                              concurrency=16.0, ttft_ms=100.0, tpot_ms=tpot_ms, layout=lay)
    below, above = case(0.5 * step1 * 1e3), case(0.9 * step1 * 1e3)
    out, marked = sp.speculation_rule([below, above], [step1, step1])
    assert marked.tolist() == [True, False]
    assert (out[0].draft_tokens, out[0].acceptance) == (3, 0.7) and "speculative decoding assumed" in out[0].note
    assert out[1] == above
    # a marked row decodes 2.533 tokens per step of a 4-token verify step plus the draft head
    spec = Workload(1024.0, 1024.0, 0.7, 3)
    assert float(spec.tokens_per_step) == pytest.approx(1 + 0.7 + 0.7**2 + 0.7**3)
    t_spec = float(sv.round_time(p, hw, model, prec, spec, lay._replace(batch=f(1)), f(1), f(0)))
    assert step1 < t_spec and t_spec / float(spec.tokens_per_step) < step1
    # and a marked row still far off says so
    reasons = sp.far_off_reasons(out, {}, [100.0, 100.0], [100.0, 100.0], [10 * below.tpot_ms, above.tpot_ms],
                                 [below.tpot_ms, above.tpot_ms])
    assert reasons.tolist() == ["speculative decoding assumed", ""]
    # end to end through the validator: the marked row is re-predicted at 2.533 tokens per step
    # (below its one-request step), the other keeps its plain prediction; switched off, neither moves
    v = sp.validate([below, above])
    off = sp.validate([below, above], speculation=False)
    assert v.cases[0].draft_tokens == 3 and v.cases[1] == above
    assert v.pred["tpot_s"][0] < step1 < off.pred["tpot_s"][0]
    assert v.pred["tpot_s"][1] == off.pred["tpot_s"][1]


def test_unique_measurements_prefer_the_described_row_whatever_the_speculation_rule_assumed():
    """The files repeat a measurement under several ids (a row with worker counts and a row
    without); the validator's note on assumed speculation must not make the derived row win."""
    model, hw, prec = load_model("llama-3.1-70b"), load_hardware("b200"), get_precision("fp8")
    f = jnp.float32
    lay = Layout(tp=f(4), pp=f(1), ep=f(1), dp=f(1), batch=f(8), chunk=f(8192), adp=f(1))
    common = dict(model_path="meta-llama/Llama-3.1-70B", model=model, system="b200_sxm", hardware=hw, precision=prec,
                  backend="trtllm", mode="agg", isl=1024.0, osl=1024.0, concurrency=8.0, ttft_ms=100.0, tpot_ms=3.0,
                  layout=lay)
    derived = sd.ServingCase(id="a", note="blank *_num_workers -> derived", **common)
    described = sd.ServingCase(id="b", note=f"{sd.SPECULATION_NOTE}: measured TPOT 3 ms; 3 drafted", draft_tokens=3,
                               acceptance=0.7, **common)
    assert sd.derivations(described) == "" and sd.derivations(derived) == derived.note
    both = dataclasses.replace(derived, note=f"{derived.note}; {described.note}")
    assert sd.derivations(both) == derived.note
    assert sd.unique_mask([derived, described]).tolist() == [False, True]
