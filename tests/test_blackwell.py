"""Blackwell and Blackwell Ultra (issue 13): the system map, the B300/GB300 presets against the
datasheet figures of the data's own system files, profiles derived for chips without kernel tables,
NVIDIA's quantized checkpoints, the NVFP4 DeepSeek memory case by hand, and disaggregated worker
counts. Tests reading ../shared/data skip with a reason where it is absent."""
from __future__ import annotations

import pytest
import yaml

from jaxplan.calibrate import kernels as kt
from jaxplan.calibrate import serving_data as sd
from jaxplan.specs import SYSTEMS, load_hardware

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
    # the datasheet's 288 GB against nvidia-smi's MiB count: within 4%
    assert hw.hbm_capacity == 288e9
    assert abs(hw.hbm_capacity / gpu["mem_capacity"] - 1) < 0.04
    nvlink = node["inter_node_bw"] if domain == 72 else node["intra_node_bw"]
    assert hw.scale_up_bandwidth == nvlink == 900e9
    assert hw.scale_out_bandwidth == node.get("inter_rack_bw", node["inter_node_bw"]) == 100e9
    assert hw.scale_up_domain == node.get("num_gpus_per_rack", node["num_gpus_per_node"]) == domain
    # Blackwell Ultra against Blackwell: 1.5x the FP4 rate of its predecessor, 1.6x the memory
    base = load_hardware("b200" if domain == 8 else "gb200-nvl72")
    assert hw.fp4_flops / base.fp4_flops == pytest.approx(1.5, rel=0.06)
    assert hw.hbm_capacity / base.hbm_capacity == pytest.approx(288 / (180 if domain == 8 else 192))


# ----------------------------------------------------------------------------- derived profiles

def test_derive_profile_rule(tmp_path):
    """Everything carries over but the adjusted parameter; the new chip's speed comes from its
    preset: a compute-bound FP4 GEMM runs 14/9 faster on B300 than on B200 (datasheet FP4 rates),
    a memory-bound pass 8/7.75 slower (HBM bandwidths)."""
    import jax.numpy as jnp

    from jaxplan import cli, cost
    from jaxplan.params import BLACKWELL_ULTRA_ADJUST, derive_profile, for_backend, load_params, profile_path
    from jaxplan.specs import get_precision

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
    from jaxplan.params import derive_profile
    from jaxplan.specs import SpecError

    with pytest.raises(SpecError, match="neither a file nor a shipped profile"):
        derive_profile("no-such-chip", "b300")
    with pytest.raises(SpecError, match="unknown parameter 'nope'"):
        derive_profile("b200", "b300", {"nope": 2.0})
    with pytest.raises(SpecError, match="outside its range"):
        derive_profile("b200", "b300", {"gemm_eff_fp4": 10.0})
