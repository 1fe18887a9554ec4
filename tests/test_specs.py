"""Specs: the preset YAMLs load, Hugging Face configs give the published parameter totals,
bad input fails with a SpecError that names the file and the key, hardware is in SI units.

Fast: reads YAML/JSON only, no JAX compilation.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from jaxplan.specs import (
    HARDWARE_BY_KEY,
    SpecError,
    load_hardware,
    load_model,
    model_from_dict,
    model_from_hf_config,
    preset_names,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HF_CONFIGS = DATA / "model_configs"

MODEL_PRESETS = sorted(p.stem for p in (CONFIGS / "models").glob("*.yaml"))
HARDWARE_PRESETS = sorted(p.stem for p in (CONFIGS / "hardware").glob("*.yaml"))

# Published total parameter counts of the Hugging Face configs in ../shared/data/model_configs,
# keyed by file stem. The count is of the served text model: no multi-token-prediction (MTP)
# module, no vision encoder.
PUBLISHED_TOTAL = {
    # Meta Llama 3.1 model cards / Hugging Face safetensors counts
    "Meta-Llama-3.1-8B": 8.03e9,
    "Meta-Llama-3.1-70B": 70.6e9,
    "Meta-Llama-3.1-405B": 405.9e9,
    # DeepSeek-V3 technical report and model card: 671B main model; the 685B on Hugging Face
    # adds the 14B MTP module (num_nextn_predict_layers: 1), which the loader leaves out.
    # DeepSeek-R1 has the same architecture.
    "DeepSeek-V3": 671e9,
    "DeepSeek-R1": 671e9,
    # Kimi K2 / K2.5 (Moonshot AI model cards): "1T total, 32B activated", ~1.03T parameters
    # in the text model (DeepSeek-V3 architecture, 384 experts); the ~0.4B MoonViT vision
    # encoder of K2.5 is not counted.
    "Kimi-K2.5": 1.03e12,
    # Qwen3 model cards (Qwen/Qwen3-*): 235B total / 22B active, 30.5B / 3.3B, 32.8B dense
    "Qwen3-235B-A22B": 235e9,
    "Qwen3-235B-A22B-FP8": 235e9,
    "Qwen3-30B-A3B": 30.5e9,
    "Qwen3-32B": 32.8e9,
    # Mistral AI: Mixtral 8x7B 46.7B total (announcement "Mixtral of experts", Dec 2023);
    # Mixtral 8x22B 141B total (announcement "Cheaper, Better, Faster, Stronger", Apr 2024),
    # 140.6B by the Hugging Face safetensors count
    "Mixtral-8x7B-v0.1": 46.7e9,
    "Mixtral-8x22B-v0.1": 140.6e9,
    # OpenAI gpt-oss model card, Table 1: 116.83B total, 5.13B active
    "gpt-oss-120b": 116.8e9,
    # MiniMax-M2.5 model card (MiniMaxAI/MiniMax-M2.5): ~229B total, ~10B active (MTP modules
    # not counted)
    "MiniMax-M2.5": 229e9,
    # GLM-5 (zai-org/GLM-5 model card): 744B total, ~40B active; the loader counts the DSA
    # sparse-attention indexer (~0.7B), not the MTP layer.
    "GLM-5": 744e9,
    # Qwen3.5-397B-A17B model card: 397B total, 17B active (with the vision encoder; the text
    # model counts 396.3B, the MTP layer left out).
    "Qwen3.5-397B-A17B": 397e9,
}

# Presets taken from a Hugging Face config: preset stem -> config file stem.
PRESET_FROM_HF = {
    "llama-3.1-8b": "Meta-Llama-3.1-8B",
    "llama-3.1-70b": "Meta-Llama-3.1-70B",
    "llama-3.1-405b": "Meta-Llama-3.1-405B",
    "deepseek-v3": "DeepSeek-V3",
    "qwen3-235b-a22b": "Qwen3-235B-A22B",
    "mixtral-8x22b": "Mixtral-8x22B-v0.1",
    "gpt-oss-120b": "gpt-oss-120b",
    "qwen3.5-397b-a17b": "Qwen3.5-397B-A17B",
    "glm-5": "GLM-5",
}


def need_data():
    if not HF_CONFIGS.is_dir():
        pytest.skip(f"measured data not found at {DATA} (expected ../shared/data beside the repo)")


@pytest.fixture(autouse=True)
def _repo_configs(monkeypatch):
    """Preset names resolve to this repository's configs/, whatever the environment says."""
    monkeypatch.setenv("JAXPLAN_CONFIGS", str(CONFIGS))


# ----------------------------------------------------------------------------- presets load

def test_expected_presets_exist():
    assert set(MODEL_PRESETS) >= {"llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "deepseek-v3",
                                  "qwen3-235b-a22b", "mixtral-8x22b", "gpt-oss-120b", "gpt-1.8t-moe"}
    assert set(HARDWARE_PRESETS) >= {"h100-sxm", "h200-sxm", "b200", "gb200-nvl72"}
    assert preset_names("models") == MODEL_PRESETS
    assert preset_names("hardware") == HARDWARE_PRESETS


@pytest.mark.parametrize("name", MODEL_PRESETS)
def test_model_preset_loads(name):
    m = load_model(name)
    assert m.name == name
    assert m.source
    assert m.total_params() >= m.active_params() > 0
    assert load_model(CONFIGS / "models" / f"{name}.yaml") == m


@pytest.mark.parametrize("name", HARDWARE_PRESETS)
def test_hardware_preset_loads(name):
    hw = load_hardware(name)
    assert hw.name == name
    assert hw.source
    assert {"bf16", "fp8"} <= set(hw.rates)
    assert hw.bf16_flops < hw.fp8_flops
    assert load_hardware(CONFIGS / "hardware" / f"{name}.yaml") == hw


@pytest.mark.parametrize("preset, hf", sorted(PRESET_FROM_HF.items()))
def test_preset_matches_hf_config(preset, hf):
    """Each preset transcribes its Hugging Face config: every architecture field agrees."""
    need_data()
    a, b = load_model(preset), load_model(HF_CONFIGS / f"{hf}.json")
    skip = {"name", "source"}
    if a.num_shared_experts == 0:
        skip.add("shared_intermediate_size")   # unused without shared experts
    for f in dataclasses.fields(a):
        if f.name not in skip:
            assert getattr(a, f.name) == getattr(b, f.name), f"{preset} vs {hf}.json: {f.name}"
    assert a.total_params() == b.total_params()


def test_sliding_window_preset():
    m = load_model("gpt-oss-120b")
    assert (m.sliding_window, m.sliding_layers, m.num_layers) == (128, 18, 36)
    assert (m.num_heads, m.head_dim, m.num_kv_heads, m.num_experts, m.top_k) == (64, 64, 8, 128, 4)


def test_deepseek_preset_structure():
    m = load_model("deepseek-v3")
    assert m.attention == "mla" and m.qk_head_dim == 192
    assert (m.num_dense_layers, m.num_moe_layers) == (3, 58)
    assert (m.num_experts, m.top_k, m.num_shared_experts) == (256, 8, 1)
    assert (m.ffn_intermediate_size, m.expert_intermediate_size, m.shared_intermediate_size) == \
        (18432, 2048, 2048)


# ----------------------------------------------------------------------------- parameter totals

def test_every_hf_config_is_covered_by_a_check():
    need_data()
    stems = {p.stem for p in HF_CONFIGS.glob("*.json")}
    assert stems, f"no config.json files in {HF_CONFIGS}"
    unchecked = stems - set(PUBLISHED_TOTAL)
    assert not unchecked, f"add the published total of {sorted(unchecked)} to PUBLISHED_TOTAL"


@pytest.mark.parametrize("stem", sorted(PUBLISHED_TOTAL))
def test_hf_config_total_params(stem):
    need_data()
    path = HF_CONFIGS / f"{stem}.json"
    if not path.is_file():
        pytest.skip(f"{path} not in the data folder")
    total = load_model(path).total_params()
    published = PUBLISHED_TOTAL[stem]
    assert total == pytest.approx(published, rel=0.02), \
        f"{stem}: computed {total / 1e9:.2f}B, published {published / 1e9:.2f}B"


def test_hf_config_missing_key(tmp_path):
    p = tmp_path / "tiny.json"
    p.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                             "num_hidden_layers": 2, "intermediate_size": 128}))
    with pytest.raises(SpecError, match=r"tiny\.json.*'vocab_size'"):
        load_model(p)


def test_hf_config_invalid_json(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text("{not json")
    with pytest.raises(SpecError, match=r"broken\.json.*not valid JSON"):
        load_model(p)


def test_hf_config_dense_layers_among_moe_rejected():
    cfg = {"model_type": "qwen3_moe", "hidden_size": 64, "num_attention_heads": 4,
           "num_hidden_layers": 4, "vocab_size": 100, "num_experts": 8, "num_experts_per_tok": 2,
           "moe_intermediate_size": 32, "intermediate_size": 128, "mlp_only_layers": [0]}
    with pytest.raises(SpecError, match="where.json.*mlp_only_layers"):
        model_from_hf_config(cfg, "x", "where.json")


def test_gpt_1p8t_moe_size():
    m = load_model("gpt-1.8t-moe")
    assert (m.num_layers, m.hidden_size, m.num_heads, m.head_dim, m.num_kv_heads, m.vocab_size) == \
        (120, 12288, 128, 96, 8, 100256)
    assert (m.num_experts, m.top_k, m.expert_intermediate_size, m.first_dense_layers) == (16, 2, 24576, 0)
    assert m.num_heads % 64 == 0                    # TP64 divides the heads
    total = m.total_params()
    assert 1.75e12 <= total <= 1.85e12
    gpu_bytes = load_hardware("gb200-nvl72").hbm_capacity
    assert gpu_bytes == 198.7e9                     # 189,471 MiB (nvidia-smi)
    assert math.ceil(total * 0.5 / gpu_bytes) == 5


# ----------------------------------------------------------------------------- SI units

def test_hardware_si_units():
    h100 = load_hardware("h100-sxm")
    assert h100.hbm_bandwidth == 3.35e12
    assert h100.hbm_capacity == 85.5e9              # 81,559 MiB (nvidia-smi)
    assert h100.bf16_flops == 989e12 and h100.fp8_flops == 1979e12
    assert h100.fp4_flops == 0 and h100.rates == ("bf16", "fp8")
    assert h100.scale_up_domain == 8
    assert h100.scale_up_bandwidth == 450e9 and h100.scale_out_bandwidth == 50e9
    assert h100.scale_up_latency == pytest.approx(3e-6) and h100.scale_out_latency == pytest.approx(5e-6)

    h200 = load_hardware("h200-sxm")
    assert (h200.hbm_bandwidth, h200.hbm_capacity, h200.fp8_flops) == (4.8e12, 150.8e9, 1979e12)

    b200 = load_hardware("b200")
    assert (b200.bf16_flops, b200.fp8_flops, b200.fp4_flops) == (2250e12, 4500e12, 9000e12)
    assert (b200.hbm_bandwidth, b200.hbm_capacity, b200.scale_up_bandwidth) == (8e12, 192.3e9, 900e9)
    assert b200.rates == ("bf16", "fp8", "fp4") and b200.scale_up_domain == 8

    gb200 = load_hardware("gb200-nvl72")
    assert (gb200.bf16_flops, gb200.fp8_flops, gb200.fp4_flops) == (2500e12, 5000e12, 10000e12)
    assert (gb200.hbm_bandwidth, gb200.hbm_capacity) == (8e12, 198.7e9)
    assert (gb200.scale_up_domain, gb200.scale_up_bandwidth, gb200.scale_out_bandwidth) == (72, 900e9, 100e9)


def test_hardware_keys_cover_presets():
    """Presets use only the hardware numbers' YAML keys plus name/source/power, and give every
    required one; every shipped preset has its power block."""
    for name in HARDWARE_PRESETS:
        data = yaml.safe_load((CONFIGS / "hardware" / f"{name}.yaml").read_text())
        assert set(data) - {"name", "source", "power"} <= set(HARDWARE_BY_KEY)
        assert load_hardware(name).has_power
        assert {k for k, h in HARDWARE_BY_KEY.items() if not h.optional} <= set(data)


# ----------------------------------------------------------------------------- bad input

def _preset(kind, name):
    return yaml.safe_load((CONFIGS / kind / f"{name}.yaml").read_text())


def _write(tmp_path, data, name="bad.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _error(loader, path) -> str:
    with pytest.raises(SpecError) as e:
        loader(path)
    return str(e.value)


def test_model_unknown_key(tmp_path):
    data = _preset("models", "llama-3.1-8b")
    data["num_layer"] = 32
    p = _write(tmp_path, data)
    msg = _error(load_model, p)
    assert str(p) in msg and "num_layer" in msg
    assert "allowed keys" in msg and "num_layers" in msg and "ffn_intermediate_size" in msg


def test_model_unknown_nested_key(tmp_path):
    data = _preset("models", "deepseek-v3")
    data["moe"]["num_expert"] = 256
    p = _write(tmp_path, data)
    msg = _error(load_model, p)
    assert str(p) in msg and "[moe]" in msg and "num_expert" in msg and "num_experts" in msg


def test_hardware_unknown_key(tmp_path):
    data = _preset("hardware", "h100-sxm")
    data["hbm_bandwidth_gb_s"] = 3350
    p = _write(tmp_path, data)
    msg = _error(load_hardware, p)
    assert str(p) in msg and "hbm_bandwidth_gb_s" in msg
    assert "allowed keys" in msg and all(k in msg for k in HARDWARE_BY_KEY)


def test_model_missing_key(tmp_path):
    data = _preset("models", "llama-3.1-8b")
    del data["hidden_size"]
    p = _write(tmp_path, data)
    msg = _error(load_model, p)
    assert str(p) in msg and "missing" in msg and "'hidden_size'" in msg


def test_model_missing_dense_mlp_size(tmp_path):
    data = _preset("models", "llama-3.1-70b")
    del data["ffn_intermediate_size"]
    p = _write(tmp_path, data)
    msg = _error(load_model, p)
    assert str(p) in msg and "'ffn_intermediate_size'" in msg


def test_model_mla_without_mla_block(tmp_path):
    data = _preset("models", "deepseek-v3")
    del data["mla"]
    p = _write(tmp_path, data)
    msg = _error(load_model, p)
    assert str(p) in msg and "'mla'" in msg


def test_hardware_missing_key(tmp_path):
    data = _preset("hardware", "b200")
    del data["hbm_capacity_gb"]
    p = _write(tmp_path, data)
    msg = _error(load_hardware, p)
    assert str(p) in msg and "missing" in msg and "'hbm_capacity_gb'" in msg


def test_model_wrong_type(tmp_path):
    data = _preset("models", "llama-3.1-8b")
    data["num_layers"] = "32"
    p = _write(tmp_path, data)
    msg = _error(load_model, p)
    assert str(p) in msg and "'num_layers'" in msg and "must be a number" in msg


def test_model_fractional_count(tmp_path):
    data = _preset("models", "llama-3.1-8b")
    data["num_heads"] = 32.5
    p = _write(tmp_path, data)
    msg = _error(load_model, p)
    assert str(p) in msg and "'num_heads'" in msg and "whole number" in msg


def test_hardware_wrong_type(tmp_path):
    data = _preset("hardware", "h100-sxm")
    data["bf16_dense_tflops"] = "989 TFLOPS"
    p = _write(tmp_path, data)
    msg = _error(load_hardware, p)
    assert str(p) in msg and "'bf16_dense_tflops'" in msg and "must be a number" in msg


def test_hardware_bool_is_not_a_number(tmp_path):
    data = _preset("hardware", "h100-sxm")
    data["scaleup_domain_gpus"] = True
    p = _write(tmp_path, data)
    msg = _error(load_hardware, p)
    assert str(p) in msg and "'scaleup_domain_gpus'" in msg and "must be a number" in msg


@pytest.mark.parametrize("value", [0, -3.35])
def test_hardware_non_positive_rate(tmp_path, value):
    data = _preset("hardware", "h100-sxm")
    data["hbm_bandwidth_tb_s"] = value
    p = _write(tmp_path, data)
    msg = _error(load_hardware, p)
    assert str(p) in msg and "'hbm_bandwidth_tb_s'" in msg and "must be positive" in msg


def test_hardware_negative_fp4(tmp_path):
    data = _preset("hardware", "h100-sxm")
    data["fp4_dense_tflops"] = -1
    p = _write(tmp_path, data)
    msg = _error(load_hardware, p)
    assert str(p) in msg and "'fp4_dense_tflops'" in msg


def test_model_non_positive_size(tmp_path):
    data = _preset("models", "llama-3.1-8b")
    data["vocab_size"] = 0
    p = _write(tmp_path, data)
    msg = _error(load_model, p)
    assert str(p) in msg and "'vocab_size'" in msg and "must be positive" in msg


def test_model_unknown_attention_kind(tmp_path):
    data = _preset("models", "llama-3.1-8b")
    data["attention"] = "mha"
    p = _write(tmp_path, data)
    msg = _error(load_model, p)
    assert str(p) in msg and "'attention'" in msg and "mha" in msg and "gqa, mla" in msg


def test_model_inconsistent_values(tmp_path):
    data = _preset("models", "mixtral-8x22b")
    data["moe"]["top_k"] = 9
    p = _write(tmp_path, data)
    msg = _error(load_model, p)
    assert str(p) in msg and "top_k" in msg and "num_experts" in msg

    data = _preset("models", "llama-3.1-8b")
    data["num_kv_heads"] = 7
    p = _write(tmp_path, data, "bad2.yaml")
    msg = _error(load_model, p)
    assert str(p) in msg and "num_kv_heads" in msg


def test_not_a_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    msg = _error(load_model, p)
    assert str(p) in msg and "mapping" in msg


def test_invalid_yaml(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    msg = _error(load_hardware, p)
    assert str(p) in msg and "not valid YAML" in msg


@pytest.mark.parametrize("loader", [load_model, load_hardware])
def test_nonexistent_file(tmp_path, loader):
    p = tmp_path / "missing.yaml"
    msg = _error(loader, p)
    assert str(p) in msg and "does not exist" in msg


def test_unknown_model_preset_lists_presets():
    msg = _error(load_model, "llama-9")
    assert "llama-9" in msg and "presets" in msg
    assert all(n in msg for n in MODEL_PRESETS)


def test_unknown_hardware_preset_lists_presets():
    msg = _error(load_hardware, "h300")
    assert "h300" in msg and "presets" in msg
    assert all(n in msg for n in HARDWARE_PRESETS)


def test_model_from_dict_where_is_named():
    data = _preset("models", "llama-3.1-8b")
    data["tie_embeddings"] = "no"
    with pytest.raises(SpecError, match=r"^somewhere: key 'tie_embeddings' must be true or false"):
        model_from_dict(data, "somewhere")
