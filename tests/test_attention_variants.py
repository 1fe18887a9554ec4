"""Hybrid linear attention (Gated DeltaNet: Qwen3.5, Qwen3-Next) and DeepSeek Sparse Attention
(GLM-5, DeepSeek-V3.2): the loader, the state and KV memory, and the cost of one layer of each
kind, with expected numbers built from the models' published shapes."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplan.cost import (
    FLOPS_PER_MAC,
    LINEAR_CHUNK,
    attention_block,
    dsa_indexer,
    linear_attention,
    linear_state_bytes,
    memory_per_gpu,
    stage_costs,
    sum_costs,
)
from jaxplan.params import default_params
from jaxplan.serving import kv_cache_bytes
from jaxplan.specs import SpecError, get_precision, load_hardware, load_model, model_from_hf_config

REPO = Path(__file__).resolve().parents[1]
HF_CONFIGS = REPO.parent / "shared" / "data" / "model_configs"

# Qwen3.5-397B-A17B (config.json text_config): Gated DeltaNet heads and state
QWEN_V_HEADS, QWEN_K_HEADS, QWEN_DK, QWEN_DV, QWEN_CONV = 64, 16, 128, 128, 4
QWEN_STATE_BYTES = 4                     # mamba_ssm_dtype float32
QWEN_LINEAR, QWEN_FULL = 45, 15          # layer_types: 3 linear then 1 full, 60 layers
QWEN_KV_HEADS, QWEN_HEAD_DIM = 2, 256
# GLM-5 (config.json): MLA latent and the DSA indexer
GLM_LATENT = 512 + 64                    # kv_lora_rank + qk_rope_head_dim
GLM_INDEX_HEADS, GLM_INDEX_DIM, GLM_TOPK = 32, 128, 2048
GLM_INDEX_KEY_BYTES = GLM_INDEX_DIM + 4  # FP8 key + one FP32 scale per 128
BF16_BYTES = 2
SHARP = 16.0                             # roofline sharpness: the smooth max ~ the max


@pytest.fixture(scope="module")
def qwen():
    return load_model(REPO / "configs" / "models" / "qwen3.5-397b-a17b.yaml")


@pytest.fixture(scope="module")
def glm():
    return load_model(REPO / "configs" / "models" / "glm-5.yaml")


@pytest.fixture(scope="module")
def b200():
    return load_hardware(REPO / "configs" / "hardware" / "b200.yaml")


@pytest.fixture(scope="module")
def sharp():
    """Default parameters with a sharp roofline, so a bound op's time is its bound's time."""
    p = default_params()
    p["roofline_sharpness"] = jnp.float32(SHARP)
    return p


@pytest.fixture(scope="module")
def block():
    """attention_block jitted once per model: (p, hw, model, prec, dec, pre, kv_len, ctx, tp)."""
    return jax.jit(attention_block, static_argnums=(2, 3))


def total(c):
    return float(c.total())


# ----------------------------------------------------------------------------- loader

def test_presets_carry_the_published_shapes(qwen, glm):
    assert (qwen.linear_layers, qwen.num_full_layers) == (QWEN_LINEAR, QWEN_FULL)
    assert (qwen.linear_num_value_heads, qwen.linear_num_key_heads, qwen.linear_key_head_dim,
            qwen.linear_value_head_dim, qwen.linear_conv_kernel) == (QWEN_V_HEADS, QWEN_K_HEADS, QWEN_DK, QWEN_DV,
                                                                    QWEN_CONV)
    assert qwen.attn_output_gate and not glm.attn_output_gate
    assert (glm.index_n_heads, glm.index_head_dim, glm.index_topk) == (GLM_INDEX_HEADS, GLM_INDEX_DIM, GLM_TOPK)
    assert glm.num_full_layers == glm.num_layers == 78


def _hf(stem):
    path = HF_CONFIGS / f"{stem}.json"
    if not path.is_file():
        pytest.skip(f"{path} not found (the measured data's model_configs folder beside the repo)")
    return json.loads(path.read_text()), path


# Published totals: Qwen3.5-397B-A17B model card 397B (17B active), its vision encoder and MTP
# layer not in the text model; GLM-5 model card 744B (~40B active).
@pytest.mark.parametrize("stem, published_total, published_active",
                         [("Qwen3.5-397B-A17B", 397e9, 17e9), ("GLM-5", 744e9, 40e9)])
def test_hf_configs_load_within_two_percent(stem, published_total, published_active):
    cfg, path = _hf(stem)
    m = model_from_hf_config(cfg, stem, str(path))
    assert m.total_params() == pytest.approx(published_total, rel=0.02)
    assert m.active_params() == pytest.approx(published_active, rel=0.05)


def test_qwen3_next_style_config_flat_with_interval_loads_the_same(qwen):
    """Qwen3-Next's config is not nested and has no layer_types: full_attention_interval 4 gives
    the same layer kinds (every 4th layer full), and the output gate is implied by the type."""
    cfg, path = _hf("Qwen3.5-397B-A17B")
    flat = copy.deepcopy(cfg["text_config"])
    del flat["layer_types"], flat["attn_output_gate"]
    flat["model_type"] = "qwen3_next"
    m = model_from_hf_config(flat, "flat", "flat.json")
    a = dataclasses.replace(m, name=qwen.name, source=qwen.source)
    assert a == qwen


@pytest.mark.parametrize("value, words", [
    ("linear_attention", ["must be a list", "'linear_attention'"]),
    (["linear_attention"] * 59, ["lists 59 layers", "num_hidden_layers is 60"]),
    (["linear_attention"] * 59 + ["mamba"], ["entry 59", "'mamba'", "full_attention, sliding_attention, "
                                                                        "linear_attention"]),
])
def test_bad_layer_types_named_in_the_error(value, words):
    cfg, _ = _hf("Qwen3.5-397B-A17B")
    bad = copy.deepcopy(cfg)
    bad["text_config"]["layer_types"] = value
    with pytest.raises(SpecError) as e:
        model_from_hf_config(bad, "q", "bad.json")
    msg = str(e.value)
    assert "bad.json" in msg and "'layer_types'" in msg
    for w in words:
        assert w in msg


def test_yaml_rejects_sparse_attention_on_gqa(tmp_path):
    text = (REPO / "configs" / "models" / "llama-3.1-8b.yaml").read_text()
    f = tmp_path / "m.yaml"
    f.write_text(text + "\nsparse:\n  index_n_heads: 8\n  index_head_dim: 64\n  index_topk: 512\n")
    with pytest.raises(SpecError, match=r"m\.yaml.*MLA models only"):
        load_model(f)


# ----------------------------------------------------------------------------- state and KV memory

def test_linear_state_bytes_from_the_shapes(qwen):
    bf16 = get_precision("bf16")
    conv_channels = 2 * QWEN_K_HEADS * QWEN_DK + QWEN_V_HEADS * QWEN_DV
    one_gpu = QWEN_V_HEADS * QWEN_DK * QWEN_DV * QWEN_STATE_BYTES + conv_channels * (QWEN_CONV - 1) * BF16_BYTES
    assert one_gpu == 4_268_032                    # 4 MiB of float32 state + 72 KiB of convolution state
    assert float(linear_state_bytes(qwen, bf16)) == one_gpu
    tp = 8                                         # 8 value heads and 2 key heads per GPU
    per_gpu = 8 * QWEN_DK * QWEN_DV * QWEN_STATE_BYTES + (2 * 2 * QWEN_DK + 8 * QWEN_DV) * (QWEN_CONV - 1) * BF16_BYTES
    assert float(linear_state_bytes(qwen, bf16, tp)) == per_gpu


def test_kv_transfer_bytes_state_plus_full_layers(qwen, glm):
    fp8 = get_precision("fp8")
    tokens = 8192.0
    full_kv = tokens * 2 * QWEN_KV_HEADS * QWEN_HEAD_DIM * fp8.kv_bytes * QWEN_FULL
    state = linear_state_bytes(qwen, fp8) * QWEN_LINEAR
    assert float(kv_cache_bytes(qwen, fp8, tokens)) == pytest.approx(full_kv + float(state), rel=1e-6)
    glm_kv = tokens * (GLM_LATENT * fp8.kv_bytes + GLM_INDEX_KEY_BYTES) * 78
    assert float(kv_cache_bytes(glm, fp8, tokens)) == pytest.approx(glm_kv, rel=1e-6)


def test_memory_per_request_grows_with_full_layers_only(qwen, glm, b200):
    """One more request costs its state once plus the full layers' KV per token of context; the
    slope in context is the full-attention layers' KV alone. DSA keeps every key (and its index key)."""
    p, fp8 = default_params(), get_precision("fp8")

    def kv(model, ctx, batch):
        return float(memory_per_gpu(p, b200, model, fp8, ctx, 0.0, 8.0, 1.0, 1.0, 1.0, batch, 1024.0)["kv_cache"])
    per_token_gpu = 2 * QWEN_KV_HEADS / QWEN_KV_HEADS * QWEN_HEAD_DIM * fp8.kv_bytes * QWEN_FULL  # 1 KV head per GPU
    state_gpu = float(linear_state_bytes(qwen, fp8, 8.0)) * QWEN_LINEAR
    assert kv(qwen, 4096.0, 1.0) == pytest.approx(4096 * per_token_gpu + state_gpu, rel=1e-6)
    assert kv(qwen, 65536.0, 1.0) - kv(qwen, 4096.0, 1.0) == pytest.approx(61440 * per_token_gpu, rel=1e-6)
    glm_tok = (GLM_LATENT * fp8.kv_bytes + GLM_INDEX_KEY_BYTES) * 78      # latent replicated over TP
    assert kv(glm, 65536.0, 2.0) == pytest.approx(2 * 65536 * glm_tok, rel=1e-6)


# ----------------------------------------------------------------------------- one linear layer

def test_linear_decode_streams_the_state_once(qwen, b200, sharp):
    """A decode step of S sequences reads and writes each state once (plus the token's q, k, v,
    z and output): memory bound, its time the bytes over the decode-attention family's bandwidth."""
    bf16 = get_precision("bf16")
    S, tp = 64.0, 1.0
    ops = linear_attention(sharp, b200, qwen, bf16, S, 0.0, tp)
    state = QWEN_V_HEADS * QWEN_DK * QWEN_DV * QWEN_STATE_BYTES \
        + (2 * QWEN_K_HEADS * QWEN_DK + QWEN_V_HEADS * QWEN_DV) * (QWEN_CONV - 1) * BF16_BYTES
    io = (2 * QWEN_K_HEADS * QWEN_DK + 3 * QWEN_V_HEADS * QWEN_DV) * BF16_BYTES
    nbytes = S * (2 * state + io)
    t_mem = nbytes / (b200.hbm_bandwidth * float(sharp["attn_decode_mem_eff"]))
    c = ops["linear_attention"]
    assert float(c.compute) == 0.0
    assert float(c.memory) == pytest.approx(t_mem, rel=1e-4)
    flops = FLOPS_PER_MAC * 4 * QWEN_V_HEADS * QWEN_DK * QWEN_DV * S
    assert flops / nbytes < 2.0                    # ~1 FLOP per byte: far below any GPU's ridge


def test_linear_prefill_chunked_flops_and_bytes(qwen, b200, sharp):
    """Chunked delta rule: per token and value head C(3 dk + 2 dv) + C^2/3 + 3 dk dv MACs on the
    BF16 tensor cores at the flash-prefill family's efficiency; it reads q, k, v, z and writes the
    output once per token, writes and reads each chunk's boundary state (BF16) once, and reads and
    writes the sequence's state once. Its time is the slower of the two, linear in the prompt."""
    bf16 = get_precision("bf16")
    C = LINEAR_CHUNK
    macs = C * (3 * QWEN_DK + 2 * QWEN_DV) + C * C / 3 + 3 * QWEN_DK * QWEN_DV
    state = float(linear_state_bytes(qwen, bf16))
    times = []
    for T in (8192.0, 16384.0):
        c = linear_attention(sharp, b200, qwen, bf16, 0.0, T, 1.0)["linear_attention"]
        flops = FLOPS_PER_MAC * T * QWEN_V_HEADS * macs
        nbytes = T * (2 * QWEN_K_HEADS * QWEN_DK + 3 * QWEN_V_HEADS * QWEN_DV) * BF16_BYTES \
            + 2 * (T / C) * QWEN_V_HEADS * QWEN_DK * QWEN_DV * BF16_BYTES + 2 * state
        t_c = flops / (b200.bf16_flops * float(sharp["attn_prefill_eff"]))
        t_m = nbytes / (b200.hbm_bandwidth * float(sharp["mem_eff"]))
        assert float(c.compute + c.memory) == pytest.approx(max(t_c, t_m), rel=2e-3)
        times.append(float(c.compute + c.memory))
    assert times[1] == pytest.approx(2 * times[0], rel=1e-2)


def test_linear_decode_independent_of_context(qwen, b200, sharp, block):
    fp8 = get_precision("fp8")
    short = block(sharp, b200, qwen, fp8, 32.0, 0.0, 1024.0, 0.0, 8.0)
    long = block(sharp, b200, qwen, fp8, 32.0, 0.0, 262144.0, 0.0, 8.0)
    assert total(long["linear_attention"]) == total(short["linear_attention"]) > 0
    assert total(long["linear_attn_proj"]) == total(short["linear_attn_proj"])
    assert total(long["attention"]) > 10 * total(short["attention"])      # the full layers' KV reads grow


# ----------------------------------------------------------------------------- one sparse layer

def test_sparse_equals_dense_below_top_k_and_is_flat_above(glm, b200, sharp, block):
    fp8 = get_precision("fp8")
    dense = dataclasses.replace(glm, index_topk=0, index_n_heads=0, index_head_dim=0)

    def dec(model, L, key):
        return total(block(sharp, b200, model, fp8, 32.0, 0.0, L, 0.0, 8.0)[key])

    def pre(model, ctx, key):
        return total(block(sharp, b200, model, fp8, 0.0, 1024.0, ctx, ctx, 8.0)[key])
    for L in (512.0, 2048.0):
        assert dec(glm, L, "sparse_attention") == pytest.approx(dec(dense, L, "attention"), rel=1e-6)
    at_k = dec(glm, float(GLM_TOPK), "sparse_attention")
    for L in (4096.0, 131072.0):
        assert dec(glm, L, "sparse_attention") == pytest.approx(at_k, rel=1e-6)
        assert dec(dense, L, "attention") > 1.5 * at_k
    # prefill: a prompt of s <= top_k tokens (mean span s/2) is dense; longer ones attend <= top_k each
    assert pre(glm, 1024.0, "sparse_attention") == pytest.approx(pre(dense, 1024.0, "attention"), rel=1e-6)
    assert pre(glm, 65536.0, "sparse_attention") < pre(dense, float(GLM_TOPK), "attention")
    assert pre(glm, 65536.0, "sparse_attention") > pre(glm, 1024.0, "sparse_attention")


def test_indexer_scores_every_key(glm, b200, sharp):
    """Decode: each of S sequences reads L FP8 index keys (and writes then reads FP32 logits):
    doubling the context adds S L (132 + 8) bytes at the decode-attention family's bandwidth.
    Prefill: T queries against a span of c keys cost 2 * 32 * 128 FLOPs per pair in FP8."""
    fp8 = get_precision("fp8")
    S, L = 64.0, 32768.0
    a = dsa_indexer(sharp, b200, glm, fp8, S, 0.0, L, 0.0)
    b = dsa_indexer(sharp, b200, glm, fp8, S, 0.0, 2 * L, 0.0)
    extra = S * L * (GLM_INDEX_KEY_BYTES + 2 * 4)
    assert float(b.memory - a.memory) == pytest.approx(extra / (b200.hbm_bandwidth
                                                                * float(sharp["attn_decode_mem_eff"])), rel=1e-3)
    T, c = 8192.0, 16384.0
    a = dsa_indexer(sharp, b200, glm, fp8, 0.0, T, 0.0, c)
    b = dsa_indexer(sharp, b200, glm, fp8, 0.0, T, 0.0, 2 * c)
    flops = FLOPS_PER_MAC * GLM_INDEX_HEADS * GLM_INDEX_DIM * T * c
    assert float(b.compute - a.compute) == pytest.approx(flops / (b200.fp8_flops * float(sharp["attn_prefill_eff"])),
                                                         rel=1e-3)


# ----------------------------------------------------------------------------- differentiable

@pytest.mark.parametrize("which, keys", [
    ("qwen", ("linear_prefill_eff_scale", "linear_decode_mem_eff_scale", "linear_kernels")),
    ("glm", ("dsa_index_eff_scale", "dsa_index_mem_eff_scale", "dsa_index_kernels")),
])
def test_new_terms_have_finite_nonzero_gradients(which, keys, request, b200):
    """What ``fit`` and ``sensitivity`` rely on: an iteration's time moves with each new term."""
    model, fp8, p = request.getfixturevalue(which), get_precision("fp8"), default_params()

    def iteration(params):
        ops = stage_costs(params, b200, model, fp8, 32.0, 1024.0, 4096.0, 2048.0, 8.0, 1.0, 1.0, 1.0)
        return sum_costs(ops.values()).total()
    g = jax.jit(jax.grad(iteration))(p)
    for k in keys:
        assert np.isfinite(float(g[k])) and float(g[k]) != 0.0, k
    assert all(np.isfinite(float(v)) for v in g.values())
