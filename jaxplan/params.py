"""Fittable efficiency parameters: defaults, physical ranges, and a YAML round trip.

``Params`` is a plain ``dict[str, jax.Array]`` of *physical* values (efficiencies in (0, 1],
latencies in seconds). For fitting, ``to_raw`` maps them to an unconstrained space and
``from_raw`` maps back through a (log-)sigmoid onto ``[lo, hi]``, so no optimizer step can make a
bandwidth negative or an efficiency exceed one.

Default values are first guesses from public measurements (cited per entry); ``jaxplan fit``
replaces them with values fitted to kernel and serving data.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import yaml

from .specs import BACKENDS, HARDWARE_NUMBERS, Hardware, SpecError, config_file, load_hardware, preset_names, read_yaml


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    default: float
    lo: float
    hi: float
    log: bool          # sigmoid in log space (for values spanning decades)
    doc: str


def _p(default, lo, hi, doc, log=False):
    return ParamSpec(float(default), float(lo), float(hi), log, doc)


PARAM_SPECS: dict[str, ParamSpec] = {
    # --- GEMM: eff(m, n, k) = eff_max * m/(m + m_half) * n/(n + nk_half) * k/(k + nk_half)
    "gemm_eff_bf16": _p(0.80, 0.05, 1.0, "peak fraction of large BF16 GEMMs (cuBLAS reaches ~75-85% on H100)"),
    "gemm_eff_fp8": _p(0.70, 0.05, 1.0, "peak fraction of large FP8 GEMMs"),
    "gemm_eff_fp4": _p(0.65, 0.05, 1.0, "peak fraction of large FP4 GEMMs"),
    "gemm_m_half": _p(48.0, 1.0, 4096.0, "rows (tokens) at which GEMM compute efficiency halves", log=True),
    "gemm_nk_half": _p(256.0, 1.0, 8192.0, "n or k at which GEMM compute efficiency halves", log=True),
    "mem_eff": _p(0.85, 0.3, 1.0, "achievable fraction of HBM bandwidth for streaming kernels"),
    "roofline_sharpness": _p(3.0, 1.0, 16.0,
                             "p of the smooth max (t_c^p + t_m^p)^(1/p) joining compute and memory time"),
    "kernel_latency_s": _p(4e-6, 1e-7, 1e-4, "fixed time of one kernel (launch, prologue, tail)", log=True),
    # --- attention (flash-style kernels)
    "attn_prefill_eff": _p(0.55, 0.02, 1.0, "peak fraction of causal prefill attention (FA3 ~ 0.6 of H100 BF16)"),
    "attn_q_half": _p(64.0, 1.0, 8192.0, "query tokens at which prefill attention efficiency halves", log=True),
    "attn_decode_eff": _p(0.30, 0.01, 1.0, "peak fraction of decode attention matmuls"),
    "attn_decode_mem_eff": _p(0.70, 0.05, 1.0, "HBM fraction reached reading the KV cache in decode"),
    "mla_prefill_eff": _p(0.45, 0.02, 1.0, "peak fraction of MLA prefill attention"),
    "mla_decode_eff": _p(0.40, 0.01, 1.0, "peak fraction of absorbed-MLA decode attention"),
    "mla_decode_mem_eff": _p(0.60, 0.05, 1.0, "HBM fraction reached reading the MLA latent cache"),
    # --- MoE grouped GEMM
    "moe_eff": _p(0.60, 0.02, 1.0, "peak fraction of the expert grouped GEMM at large tokens per expert"),
    "moe_m_half": _p(32.0, 1.0, 4096.0, "tokens per expert at which grouped-GEMM efficiency halves", log=True),
    "moe_mem_eff": _p(0.70, 0.05, 1.0, "HBM fraction reached streaming expert weights"),
    "moe_imbalance_per_log2_ep": _p(0.06, 0.0, 1.0,
                                    "busiest GPU's token excess per doubling of EP (routing skew)"),
    # --- collectives, per fabric tier (latency per log2 step; bandwidth fraction)
    "allreduce_latency_nvlink_s": _p(3e-6, 1e-7, 1e-3, "all-reduce software latency per log2(n) step on NVLink "
                                  "(beyond the hardware's scale_up_latency)", log=True),
    "allreduce_bw_eff_nvlink": _p(0.70, 0.05, 1.0, "NVLink bandwidth fraction reached by all-reduce"),
    "allreduce_latency_net_s": _p(15e-6, 1e-7, 1e-2, "all-reduce software latency per log2(n) step on the "
                               "scale-out network (beyond scale_out_latency)", log=True),
    "allreduce_bw_eff_net": _p(0.70, 0.05, 1.0, "network bandwidth fraction reached by all-reduce"),
    "alltoall_latency_nvlink_s": _p(12e-6, 1e-7, 1e-3, "all-to-all software latency on NVLink (beyond "
                                 "scale_up_latency)", log=True),
    "alltoall_bw_eff_nvlink": _p(0.55, 0.05, 1.0, "NVLink bandwidth fraction reached by all-to-all"),
    "alltoall_latency_net_s": _p(35e-6, 1e-7, 1e-2, "all-to-all software latency across the network (beyond "
                              "scale_out_latency)", log=True),
    "alltoall_bw_eff_net": _p(0.60, 0.05, 1.0, "network bandwidth fraction reached by all-to-all"),
    "p2p_bw_eff": _p(0.80, 0.05, 1.0, "bandwidth fraction of a pipeline hand-off"),
    # --- fixed overheads
    "layer_overhead_s": _p(8e-6, 1e-8, 1e-3, "per layer per forward: norms, residual, small kernels", log=True),
    "step_overhead_s": _p(2e-3, 1e-6, 5e-2, "per iteration: scheduling, sampling, host work", log=True),
    # --- per-backend serving overheads (TensorRT-LLM, vLLM, SGLang schedule differently);
    #     ``for_backend`` puts them in place of the generic two above
    **{f"{kind}_overhead_{b}_s": _p(v, lo, hi, f"{kind} overhead of {b}", log=True)
       for b in ("trtllm", "vllm", "sglang")
       for kind, v, lo, hi in (("step", 2e-3, 1e-6, 5e-2), ("layer", 8e-6, 1e-8, 1e-3),
                               ("disagg", 0.1, 1e-4, 2.0), ("request", 1e-4, 1e-5, 2.0))},
    "disagg_overhead_s": _p(0.1, 1e-4, 2.0, "per request of a disaggregated deployment: routing, KV-receiver "
                                            "allocation and transfer handshake (size-independent)", log=True),
    "request_overhead_s": _p(1e-4, 1e-5, 2.0, "per request before its first token outside the GPU work: the "
                                              "serving front end (HTTP, tokenization, hand-off to the engine, "
                                              "streaming the first token back); adds to TTFT (and to the "
                                              "client's closed-loop cycle), costs no GPU time",
                             log=True),
    # --- memory
    "mem_usable_frac": _p(0.92, 0.5, 1.0, "share of the HBM left free by weights, activations and the reserve "
                                           "that the engine gives the KV cache (TensorRT-LLM "
                                           "free_gpu_memory_fraction, 0.9 by default)"),
    "mem_reserve_gb": _p(4.0, 0.1, 40.0, "per-GPU runtime reserve: CUDA context, NCCL buffers, graphs", log=True),
    # --- kernel-shape terms fitted to the TensorRT-LLM kernel tables (jaxplan.fit). Every default
    #     is neutral: with it the op costs the same as without the term; fitted profiles set them.
    #     GEMM per rate; the ``_fp8_block`` family (128-block-scaled FP8, DeepGEMM-style kernels)
    #     is fitted on its own rows and stands in for the ``_fp8`` values when mapped onto gemm().
    **{k: v for r in ("bf16", "fp8", "fp4", "fp8_block") for k, v in {
        f"gemm_k_extra_{r}": _p(1e-4, 1e-4, 8192.0, f"{r} GEMM: k-loop fill/epilogue per tile beyond gemm_nk_half",
                                log=True),
        f"gemm_wave_elems_{r}": _p(1.0, 1.0, 1e9, f"{r} GEMM: output elements one wave of tiles covers "
                                                   "(tile area x SMs; 1 = no wave model)", log=True),
        f"gemm_splitk_min_k_{r}": _p(1024.0, 16.0, 1e7, f"{r} GEMM: k per CTA below which split-K stops "
                                                         "(block-scaled kernels: ~no split-K)", log=True),
    }.items()},
    **{k: v for r in ("fp8", "fp4", "fp8_block") for k, v in {
        f"gemm_quant_bytes_{r}": _p(1e-6, 1e-6, 64.0, f"{r} GEMM: HBM bytes per input element of the activation "
                                                      "quantization pass (3 = read BF16, write FP8)", log=True),
        f"gemm_quant_latency_{r}_s": _p(1e-12, 1e-12, 1e-4, f"{r} GEMM: fixed time of the activation quantization "
                                                          "(its kernels and scale handling)", log=True),
    }.items()},
    "gemm_eff_fp8_block": _p(0.60, 0.05, 1.0, "peak fraction of large 128-block-scaled FP8 GEMMs"),
    # attention kernels (flash-style prefill, XQA-style decode)
    "attn_seq_tile": _p(1.0, 1.0, 1024.0, "prefill query tile: shorter sequences are padded to it", log=True),
    "attn_softmax_dim": _p(1e-6, 1e-6, 1024.0,
                           "softmax exponential per (query, key) pair, in head-dim units of MMA work", log=True),
    "attn_prefill_k_overhead": _p(1e-4, 1e-4, 16384.0, "prefill: keys' worth of fill/epilogue per query tile",
                                  log=True),
    "attn_prefill_wave_rows": _p(1.0, 1.0, 1e8, "prefill: query-head rows one wave of CTAs covers (1 = no wave model)",
                                 log=True),
    "attn_prefill_tile_s": _p(3e-18, 3e-18, 1e-4, "prefill: fixed time per wave of tiles", log=True),
    "attn_prefill_latency_s": _p(1e-12, 1e-12, 1e-3,
                                 "prefill attention beyond one kernel: RoPE / KV-cache write kernels", log=True),
    "mla_prefill_latency_s": _p(1e-12, 1e-12, 1e-3, "MLA prefill beyond one kernel: RoPE / latent-cache write kernels",
                                log=True),
    "attn_decode_group_pad": _p(1e-6, 1e-6, 256.0, "decode: padding of the query-head group that forms the MMA rows",
                                log=True),
    "attn_decode_k_overhead": _p(1e-4, 1e-4, 16384.0, "decode: keys' worth of fill per sequence", log=True),
    "attn_decode_latency_s": _p(1e-12, 1e-12, 1e-3, "decode attention beyond one kernel: RoPE / KV-append kernels",
                                log=True),
    "mla_decode_latency_s": _p(1e-12, 1e-12, 1e-3, "MLA decode beyond one kernel", log=True),
    "attn_eff_scale_fp8": _p(1.0, 0.05, 1.0, "FP8 prefill attention (FMHA): share of the BF16 efficiency it reaches"),
    # MoE grouped GEMM
    "moe_eff_scale_fp8": _p(1.0, 0.05, 1.0, "FP8 expert GEMMs: share of moe_eff they reach"),
    "moe_eff_scale_fp4": _p(1.0, 0.05, 1.0, "FP4 expert GEMMs: share of moe_eff they reach"),
    "moe_eff_scale_fp8_block": _p(1.0, 0.05, 1.0, "128-block FP8 expert GEMMs (kernel tables): share of moe_eff"),
    "moe_k_overhead": _p(1e-4, 1e-4, 16384.0, "columns of tile fill per expert slice (inter/tp + this)", log=True),
    "moe_pair_s": _p(3e-18, 3e-18, 1e-6, "routing, permute and finalize time per routed (token, expert) pair",
                     log=True),
    "moe_latency_s": _p(1e-12, 1e-12, 1e-3, "MoE layer beyond one kernel: router, permute, activation, finalize",
                        log=True),
    "moe_imbalance_powerlaw_101": _p(0.06, 0.0, 4.0, "busiest-rank excess per log2(EP) under the kernel tables' "
                                                      "power_law_1.01 routing (fit only; sweeps use "
                                                      "moe_imbalance_per_log2_ep)"),
    "moe_imbalance_powerlaw_12": _p(0.06, 0.0, 4.0, "the same for power_law_1.2 routing (fit only)"),
    # collectives as NCCL runs them (the kernel tables' nccl_perf; sweeps use the allreduce_* values,
    # fitted on TensorRT-LLM's custom all-reduce)
    "allreduce_oneshot_latency_s": _p(1e-3, 1e-7, 1e-2, "one-shot all-reduce (TensorRT-LLM custom, small "
                                      "buffers) software latency beyond scale_up_latency; 1 ms = off", log=True),
    "allreduce_nvls_share": _p(1e-6, 1e-6, 1.0, "share of all-reduce traffic done by NVLink SHARP in the switch "
                               "(buffer once per GPU) rather than by a ring (2(n-1)/n)", log=True),
    "nccl_allreduce_latency_s": _p(7e-6, 1e-7, 1e-3, "NCCL all-reduce software latency per log2(n) step on "
                                   "NVLink (beyond scale_up_latency)",
                                   log=True),
    "nccl_allreduce_bw_eff": _p(0.70, 0.05, 1.0, "NVLink bandwidth fraction reached by NCCL all-reduce"),
    # --- attention variants without kernel tables (Gated DeltaNet, DeepSeek Sparse Attention). They
    #     are priced by roofline with the efficiencies of the nearest measured kernel family, times a
    #     fittable scale whose default 1 keeps that family's (fitted) value; their small kernels cost
    #     a count of ``kernel_latency_s`` each (cost.linear_attention, cost.dsa_indexer say which).
    "linear_prefill_eff_scale": _p(1.0, 0.05, 4.0, "chunked Gated DeltaNet prefill (tensor-core matmuls on "
                                   "64-token chunks): share of attn_prefill_eff (flash prefill) it reaches"),
    "linear_decode_mem_eff_scale": _p(1.0, 0.05, 4.0, "Gated DeltaNet decode (streams each request's state): "
                                      "share of attn_decode_mem_eff (decode attention streaming the KV cache)"),
    "linear_kernels": _p(4.0, 0.0, 64.0, "small kernels of a Gated DeltaNet layer beyond its GEMMs and its "
                         "recurrence (convolution, gates, gated norm, state copy), each kernel_latency_s"),
    "dsa_index_eff_scale": _p(1.0, 0.05, 4.0, "DSA indexer FP8 scoring of cached keys: share of attn_prefill_eff "
                              "(flash prefill QK^T) it reaches"),
    "dsa_index_mem_eff_scale": _p(1.0, 0.05, 4.0, "DSA indexer reading the FP8 key cache and its logits: share of "
                                  "attn_decode_mem_eff (decode attention streaming the KV cache)"),
    "dsa_index_kernels": _p(6.0, 0.0, 64.0, "small kernels of a DSA indexer beyond its GEMMs and scoring (key "
                            "norm, RoPE, FP8 quantization, cache write, top-k), each kernel_latency_s"),
}

Params = dict  # name -> jax scalar (physical value)


def default_params() -> Params:
    return {k: jnp.asarray(s.default, jnp.float32) for k, s in PARAM_SPECS.items()}


def for_backend(params: Mapping, backend: str) -> Params:
    """The parameters as one serving backend sees them: its own step, layer, disaggregation and
    request overheads take the place of the generic ``step_overhead_s``, ``layer_overhead_s``,
    ``disagg_overhead_s`` and ``request_overhead_s``."""
    if backend not in BACKENDS:
        raise SpecError(f"backend '{backend}' is unknown; allowed: {', '.join(BACKENDS)}")
    out = dict(params)
    # The kernel tables time FP8/FP4 GEMMs fed a BF16 input, so their fit includes a separate
    # quantization pass; a served model fuses that quantization into the kernel before the GEMM
    # (norm, activation), so serving neutralizes it (its effect on the serving rows:
    # benchmarks/serving_validation.md, "Decisions and their evidence").
    for key, spec in PARAM_SPECS.items():
        if key.startswith("gemm_quant_") and key in out:
            out[key] = jnp.asarray(spec.default, jnp.float32)
    for kind in ("step", "layer", "disagg", "request"):
        key = f"{kind}_overhead_{backend}_s"
        if key in out:
            out[f"{kind}_overhead_s"] = out[key]
    return out


def _bounds(spec: ParamSpec):
    return (math.log(spec.lo), math.log(spec.hi)) if spec.log else (spec.lo, spec.hi)


def from_raw(raw: Mapping[str, jax.Array]) -> Params:
    out = {}
    for k, v in raw.items():
        spec = PARAM_SPECS[k]
        lo, hi = _bounds(spec)
        y = lo + (hi - lo) * jax.nn.sigmoid(v)
        out[k] = jnp.exp(y) if spec.log else y
    return out


def to_raw(params: Mapping[str, jax.Array]) -> Params:
    out = {}
    for k, v in params.items():
        spec = PARAM_SPECS[k]
        lo, hi = _bounds(spec)
        y = jnp.log(v) if spec.log else jnp.asarray(v, jnp.float32)
        u = jnp.clip((y - lo) / (hi - lo), 1e-6, 1 - 1e-6)
        out[k] = jnp.log(u) - jnp.log1p(-u)
    return out


def params_from_dict(values: Mapping, where: str) -> Params:
    p = default_params()
    for k, v in values.items():
        if k not in PARAM_SPECS:
            raise SpecError(f"{where}: unknown parameter '{k}'; allowed: {', '.join(PARAM_SPECS)}")
        spec = PARAM_SPECS[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"{where}: parameter '{k}' must be a number, got {v!r}")
        if not spec.lo <= v <= spec.hi:
            raise SpecError(f"{where}: parameter '{k}' = {v} is outside its range [{spec.lo}, {spec.hi}]")
        p[k] = jnp.asarray(float(v), jnp.float32)
    return p


def load_params(path: str | Path) -> Params:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"params file '{path}' does not exist")
    data = read_yaml(path)
    unknown = set(data) - {"params", "meta"}
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed keys: meta, params")
    if not isinstance(data.get("params"), dict):
        raise SpecError(f"{path}: missing required mapping 'params'")
    return params_from_dict(data["params"], str(path))


def profile_text(params: Mapping, meta: Mapping | None = None) -> str:
    """A parameter profile as YAML (what :func:`load_params` reads): ``meta`` (with the time it was
    written) and the parameters to 6 significant digits."""
    meta = dict(meta or {})
    meta.setdefault("written", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    body = {"meta": meta, "params": {k: float(f"{float(v):.6g}") for k, v in params.items()}}
    return yaml.safe_dump(body, sort_keys=False)


def profile_path(hardware_name: str) -> Path | None:
    """The fitted profile shipped (or in a user's configs folder) for a hardware preset, if any."""
    return config_file("profiles", hardware_name)


def params_for(hardware_name: str, override: str | Path | None = None,
               backend: str | None = None) -> tuple[Params, str]:
    """The parameters a sweep uses: ``override`` if given, else the fitted profile of this
    hardware if one is shipped, else the defaults; as ``backend`` (``trtllm``, ``vllm``,
    ``sglang``) sees them (:func:`for_backend`) when one is given, which is what the CLI and
    ``jaxplan.plan`` use. Returns (params, where they came from)."""
    if override:
        p, source = load_params(override), str(override)
    else:
        prof = profile_path(hardware_name)
        p, source = (load_params(prof), str(prof)) if prof is not None else \
            (default_params(), "defaults (no fitted profile for this hardware)")
    return (for_backend(p, backend) if backend is not None else p), source


# ----------------------------------------------------------------------------- profiles for new chips

# Blackwell Ultra's special-function units evaluate the softmax exponentials at twice Blackwell's
# rate while its BF16/FP8 tensor-core rates (the attention matmuls) stay those of B200 (NVIDIA,
# "Inside NVIDIA Blackwell Ultra", 2025: "2x attention-layer acceleration" from doubled SFU
# throughput for exponentials). ``attn_softmax_dim`` counts the exponentials in units of MMA
# work, so it halves. The shipped b300 / gb300-nvl72 profiles were derived with this adjustment.
BLACKWELL_ULTRA_ADJUST = {"attn_softmax_dim": 0.5}


def derive_profile(profile: str | Path, hardware, adjust: Mapping[str, float] | None = None) -> tuple[Params, dict]:
    """A parameter profile for a chip without kernel tables, derived from one fitted on a related
    chip: ``profile`` (a YAML path or a shipped profile's hardware name), ``hardware`` (the new
    chip: preset name, YAML path or :class:`~jaxplan.specs.Hardware`). Returns ``(params, meta)``;
    ``report.save_params(params, out, meta)`` writes it (``jaxplan fit --derive-from``).

    The rule. Every parameter of a profile is a fraction of a hardware peak, a latency or a shape
    constant; none is a rate. What the new chip changes, its peak FLOP/s per precision, HBM
    bandwidth and capacity, NVLink and network bandwidths and latencies and the scale-up domain,
    is read from its hardware preset (datasheet figures) by the cost model at use time, not
    stored in the profile. So:

    * efficiencies (``*_eff*``, ``mem_eff``, ``*_bw_eff_*``, ``mem_usable_frac``) carry over: a
      kernel of the same architecture family (same SM design, tensor-core generation, NVLink
      generation) reaches the same share of the new peaks, so compute-bound time scales with
      1 / peak rate and memory-bound time with 1 / bandwidth;
    * latencies (``*_latency*``, ``*_overhead*``, ``kernel_latency_s``, ``moe_pair_s``) carry
      over: they are set by kernel prologues, the driver, NCCL's protocol and the serving
      engine's host code, which do not scale with peak rates;
    * shape constants (half-saturation points, tile and wave sizes, split-K thresholds,
      padding) carry over: the same kernels on the same SM design tile the same way (the wave
      sizes scale with the SM count, which datasheets do not always give and which changes by
      less than 10% within a generation);
    * ``adjust`` multiplies named parameters for a documented architectural change that is not a
      peak rate (e.g. :data:`BLACKWELL_ULTRA_ADJUST`); each factor is recorded in ``meta``.

    This holds within a generation (B200 -> B300, GB200 -> GB300) and is a first guess across
    generations; fit the new chip's own kernel tables (``jaxplan fit``) once they exist."""
    src = Path(profile) if Path(profile).suffix in (".yaml", ".yml") or Path(profile).is_file() \
        else profile_path(str(profile))
    if src is None or not src.is_file():
        raise SpecError(f"--derive-from: profile '{profile}' is neither a file nor a shipped profile; shipped: "
                        f"{', '.join(preset_names('profiles')) or 'none'}")
    params = load_params(src)
    src_meta = read_yaml(src).get("meta") or {}
    to_hw = hardware if isinstance(hardware, Hardware) else load_hardware(hardware)
    from_name = src_meta.get("hardware")
    try:
        label = str(src.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        label = str(src)
    meta = {"hardware": to_hw.name, "derived_from": label, "from_hardware": from_name,
            "fitted_on": src_meta.get("source", "?"),
            "rule": "efficiencies, latencies and shape constants carry over; peak rates, bandwidths, capacity and "
                    "fabric come from the hardware preset (params.derive_profile)"}
    if from_name:
        try:
            from_hw = load_hardware(from_name)
            meta["preset_ratios"] = {n: round(float(getattr(to_hw, n)) / float(getattr(from_hw, n)), 4)
                                     for n in HARDWARE_NUMBERS if float(getattr(from_hw, n)) > 0}
        except SpecError:
            pass
    adjusted = {}
    for key, factor in (adjust or {}).items():
        if key not in PARAM_SPECS:
            raise SpecError(f"--adjust: unknown parameter '{key}'; allowed: {', '.join(PARAM_SPECS)}")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) \
                or factor <= 0:
            raise SpecError(f"--adjust: factor of '{key}' must be a positive number, got {factor!r}")
        spec, old = PARAM_SPECS[key], float(params[key])
        new = old * float(factor)
        if not spec.lo <= new <= spec.hi:
            raise SpecError(f"--adjust: {key} = {old:g} x {factor:g} = {new:g} is outside its range "
                            f"[{spec.lo:g}, {spec.hi:g}]")
        params[key] = jnp.asarray(new, jnp.float32)
        adjusted[key] = f"x {float(factor):g} ({old:.6g} -> {new:.6g})"
    if adjusted:
        meta["adjusted"] = adjusted
    src_fitted = {k: src_meta[k] for k in ("date", "tables", "serving_fit") if k in src_meta}
    if src_fitted:
        meta["source_profile"] = src_fitted
    return params, meta
