"""Property tests over specs (hypothesis): whatever a user writes into a model, hardware or
experiment spec, jaxplan either refuses it with ``SpecError`` (the one error the CLI turns into
exit 2 and one line) or accepts it, and then every metric of a layout is a finite, non-negative
number. Models select compiled code, so the metric property varies everything that is traced
(hardware numbers, lengths, the layout) on two fixed models: one compile each."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jaxplan.layouts import Layout
from jaxplan.specs import (
    HARDWARE_BY_KEY,
    HF_NUMBERS,
    LIMITS,
    SpecError,
    experiment,
    hardware_from_dict,
    model_from_dict,
    model_from_hf_config,
    read_yaml,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "model_configs"
HW_YAML = read_yaml(REPO / "configs" / "hardware" / "h100-sxm.yaml")
MODEL_YAML = read_yaml(REPO / "configs" / "models" / "llama-3.1-8b.yaml")
MOE_YAML = read_yaml(REPO / "configs" / "models" / "deepseek-v3.yaml")

# Values a careless or hostile spec may hold: sane ones, edge cases and wrong types alike.
ANY_VALUE = st.one_of(
    st.integers(min_value=-10, max_value=10**6),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 0.5, -1, 1e30, 1e-30, "abc", "", None, True, [], [1], {}, {"a": 1}]),
)
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _mutate(spec: dict, changes: dict) -> dict:
    out = copy.deepcopy(spec)
    for path, value in changes.items():
        node = out
        *parents, key = path
        for k in parents:
            node = node[k]
        node[key] = value
    return out


def _paths(spec: dict, prefix=()):
    for k, v in spec.items():
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))
        else:
            yield prefix + (k,)


# sizes that often make a consistent model (heads that divide, experts above top-k)
PLAUSIBLE = st.sampled_from([1, 2, 4, 8, 16, 64, 128, 512, 4096])


def _changes(spec):
    return st.dictionaries(st.sampled_from(sorted(_paths(spec))), st.one_of(ANY_VALUE, PLAUSIBLE, PLAUSIBLE),
                           min_size=1, max_size=2)


def _check_model(m):
    """An accepted model: whole, positive sizes within the physical limits, finite parameter count."""
    for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size"):
        v = getattr(m, field)
        assert isinstance(v, int) and 1 <= v <= LIMITS[field], (field, v)
    assert m.num_heads % m.num_kv_heads == 0 or m.attention == "mla"
    assert math.isfinite(m.total_params()) and m.total_params() > 0
    assert 0 < m.active_params() <= m.total_params()


@pytest.mark.parametrize("base", [MODEL_YAML, MOE_YAML], ids=["dense", "moe"])
@SETTINGS
@given(data=st.data())
def test_model_yaml_is_refused_or_sound(base, data):
    changes = data.draw(_changes(base))
    try:
        m = model_from_dict(_mutate(base, changes), "model.yaml")
    except SpecError as e:
        assert str(e).startswith("model.yaml")
        event("refused")
        return
    event("accepted")
    _check_model(m)


HF_BASES = sorted(DATA.glob("*.json")) if DATA.is_dir() else []


@pytest.mark.skipif(not HF_BASES, reason=f"no Hugging Face configs in {DATA}")
@SETTINGS
@given(base=st.sampled_from(HF_BASES or [None]), key=st.sampled_from(sorted(HF_NUMBERS) + ["text_config",
       "layer_types", "model_type"]), value=ANY_VALUE, drop=st.booleans())
def test_hugging_face_config_is_refused_or_sound(base, key, value, drop):
    cfg = json.loads(base.read_text())
    target = cfg.get("text_config", cfg) if key != "text_config" else cfg
    if drop:
        target.pop(key, None)
    else:
        target[key] = value
    try:
        m = model_from_hf_config(cfg, base.stem, str(base))
    except SpecError as e:
        assert str(e).startswith(str(base))
        event("refused")
        return
    event("accepted")
    _check_model(m)


def test_hugging_face_config_errors_name_file_key_value_and_what_is_allowed():
    cfg = {"model_type": "llama", "hidden_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2,
           "num_key_value_heads": 2, "vocab_size": 1000, "intermediate_size": 512}
    assert model_from_hf_config(cfg, "tiny", "c.json").ffn_intermediate_size == 512
    cases = [
        ("hidden_size", "abc", "key 'hidden_size' must be a number, got str 'abc'"),
        ("hidden_size", None, "key 'hidden_size' must be a number, got null"),
        ("hidden_size", -256, "key 'hidden_size' must be positive, got -256"),
        ("hidden_size", 256.5, "key 'hidden_size' must be a whole number, got 256.5"),
        ("num_attention_heads", 0, "key 'num_attention_heads' must be positive, got 0"),
        ("num_key_value_heads", 0, "key 'num_key_value_heads' must be positive, got 0"),
        ("num_hidden_layers", 1e30, "key 'num_hidden_layers' = 1e+30 is beyond any real system; at most 10000"),
        ("intermediate_size", None, "lacks 'intermediate_size'"),
        ("layer_types", 5, "key 'layer_types' must be a list of strings, one per layer, got 5"),
        ("layer_types", ["full_attention"], "key 'layer_types' lists 1 layers; num_hidden_layers is 2"),
        ("text_config", "x", "key 'text_config' must be a JSON object, got str 'x'"),
    ]
    for key, value, words in cases:
        with pytest.raises(SpecError) as e:
            model_from_hf_config({**cfg, key: value}, "tiny", "c.json")
        assert str(e.value).startswith("c.json: ") and words in str(e.value), (key, value, str(e.value))
    moe = {**cfg, "num_experts": 8, "num_experts_per_tok": "eight", "moe_intermediate_size": 128}
    with pytest.raises(SpecError, match="key 'num_experts_per_tok' must be a number, got str 'eight'"):
        model_from_hf_config(moe, "tiny", "c.json")
    with pytest.raises(SpecError, match="lacks 'moe_intermediate_size'"):
        model_from_hf_config({**moe, "num_experts_per_tok": 2, "moe_intermediate_size": None,
                              "intermediate_size": None}, "tiny", "c.json")
    with pytest.raises(SpecError, match="a Hugging Face config is a JSON object, got list"):
        model_from_hf_config([1, 2], "tiny", "c.json")


# --------------------------------------------------------------------------- metrics

# the numbers a hardware YAML holds, with values from absurdly small to absurdly large
HW_KEYS = sorted(k for k, v in HW_YAML.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
# a preset number scaled by 10^e (e in [-3, 3]: mostly accepted), or one that must be refused
HW_VALUES = st.one_of(st.floats(min_value=-3.0, max_value=3.0), st.floats(min_value=-3.0, max_value=3.0),
                      st.sampled_from([0, -1.0, 1e-9, 1e30, math.inf, math.nan, "fast", None]))


def _hardware(changes: dict) -> dict:
    out = dict(HW_YAML)
    for key, v in changes.items():
        if isinstance(v, float) and -3.0 <= v <= 3.0 and v not in (-1.0,):
            v = HW_YAML[key] * 10.0 ** v
            v = round(v) if HARDWARE_BY_KEY[key].integer else v
        out[key] = v
    return out


@pytest.fixture(scope="module")
def metric_of(ev, p, fp8, models):
    """``metric_of(model, hw_dict, isl, osl, layout)`` -> metrics of one layout, or None where a
    validator refused the spec. One compile per model (all else is traced)."""
    def run(model_name, hw_dict, isl, osl, tp, batch, chunk):
        try:
            hw = hardware_from_dict(hw_dict, "hw.yaml")
            exp = experiment(models(model_name), hw, gpus=8, precision="fp8", isl=isl, osl=osl)
        except SpecError:
            return None
        lay = Layout(*(jnp.float32(v) for v in (tp, 1, 8 // tp if models(model_name).is_moe else 1,
                                                 8 // tp, batch, chunk, 1)))
        return ev(p, exp.hardware, exp.model, fp8, exp.workload, lay, "mixed")
    return run


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(hw=st.dictionaries(st.sampled_from(HW_KEYS), HW_VALUES, max_size=4),
       isl=st.one_of(st.integers(1, 10**7), st.integers(1, 10**4), st.sampled_from([0, -5, 10**9])),
       osl=st.one_of(st.integers(1, 10**5), st.integers(1, 10**3), st.sampled_from([0, -1])),
       tp=st.sampled_from([1, 2, 4, 8]), batch=st.integers(1, 4096), chunk=st.sampled_from([128, 896, 8192]),
       moe=st.booleans())
def test_accepted_specs_give_finite_non_negative_metrics(metric_of, hw, isl, osl, tp, batch, chunk, moe):
    m = metric_of("deepseek-v3" if moe else "llama-3.1-8b", _hardware(hw), isl, osl, tp, batch, chunk)
    if m is None:
        event("refused")
        return
    event("accepted")
    for k, v in m.items():
        v = np.asarray(v, dtype=np.float64)
        assert np.isfinite(v).all() and (v >= 0).all(), (k, float(v), hw, isl, osl, tp, batch, chunk)
    assert float(m["tpot_s"]) > 0 and float(m["ttft_s"]) > 0

