"""Specs: the model, the hardware, the precision and the workload.

Frozen dataclasses, loaded strictly from YAML whose keys carry their units
(``hbm_bandwidth_tb_s``) and converted once to SI (bytes, bytes/s, FLOP/s, s).
A Hugging Face ``config.json`` can stand in for a model YAML.

``Hardware`` and ``Workload`` are JAX pytrees whose numbers are leaves, so the
cost model can be differentiated with respect to them; ``Model`` and
``Precision`` are static (they select code paths and are hashed by ``jit``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import yaml

from .errors import SpecError  # one class for bad input, re-exported here
from .traffic import Traffic, traffic_from_dict

BYTES_PER_GB = 1e9
FLOPS_PER_TFLOP = 1e12
SECONDS_PER_US = 1e-6




# ----------------------------------------------------------------------------- config lookup

CONFIG_KINDS = ("models", "hardware", "experiments", "profiles", "prices", "measurements", "tco")


def packaged_config_root() -> Path:
    """The presets shipped with jaxplan: ``jaxplan/configs`` in an installed wheel (the repository's
    ``configs/`` is packaged there, see pyproject.toml), else ``configs/`` beside the package (a
    source checkout or an editable install)."""
    here = Path(__file__).resolve().parent
    for c in (here / "configs", here.parent / "configs"):
        if (c / "models").is_dir():
            return c
    raise SpecError(f"jaxplan's packaged presets are missing (looked in {here / 'configs'} and "
                    f"{here.parent / 'configs'}): reinstall jaxplan")


def config_roots() -> list[Path]:
    """Folders searched for presets, first match wins: ``$JAXPLAN_CONFIGS`` (the CLI's
    ``--config-root``), then ``./configs`` (a user's own presets), then the packaged presets. A
    user's folder needs only the kinds and files it overrides."""
    env = os.environ.get("JAXPLAN_CONFIGS")
    roots = []
    if env:
        if not Path(env).is_dir():
            raise SpecError(f"JAXPLAN_CONFIGS / --config-root '{env}' is not a folder")
        roots.append(Path(env))
    roots += [Path.cwd() / "configs", packaged_config_root()]
    out = []
    for r in roots:
        if r.is_dir() and r.resolve() not in [o.resolve() for o in out]:
            out.append(r)
    return out


def config_root() -> Path:
    """The packaged presets' folder (``models/``, ``hardware/``, ``experiments/``, ``profiles/``,
    ``prices/``); :func:`config_file` looks in a user's folders first."""
    return packaged_config_root()


def config_file(kind: str, name: str, suffix: str = ".yaml") -> Path | None:
    """``<root>/<kind>/<name><suffix>`` in the first of :func:`config_roots` that has it, else None."""
    for root in config_roots():
        f = root / kind / f"{name}{suffix}"
        if f.is_file():
            return f
    return None


def preset_names(kind: str) -> list[str]:
    return sorted({p.stem for root in config_roots() for p in (root / kind).glob("*.yaml")})


def _resolve(name_or_path: str | os.PathLike, kind: str) -> Path:
    p = Path(name_or_path)
    noun = kind[:-1] if kind.endswith("s") else kind
    if p.suffix in (".yaml", ".yml", ".json") or os.sep in str(name_or_path):
        if not p.is_file():
            raise SpecError(f"{noun} file '{p}' does not exist")
        return p
    preset = config_file(kind, str(name_or_path))
    if preset is None:
        raise SpecError(f"unknown {noun} '{name_or_path}'; "
                        f"presets are: {', '.join(preset_names(kind))} (or give a file path)")
    return preset


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot be read as a YAML text file ({type(e).__name__}: {e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------- strict readers

# Physical upper bounds of the numbers jaxplan reads, by key: a larger value is a typo or an
# overflow (counts must also fit a 32-bit device integer), refused with the key named. Generous on
# purpose: a million-wide hidden size or a 100-million-token prompt still loads.
MAX_COUNT = 2**31 - 1
MAX_GPUS = 2**24                     # 16.8 million GPUs (the stress sweeps use 8,648,640)
MAX_TOKENS = 100_000_000             # per prompt or answer
LIMITS = {
    "num_layers": 10_000, "first_dense_layers": 10_000, "sliding_layers": 10_000, "hidden_size": 1_000_000,
    "num_heads": 65_536, "num_kv_heads": 65_536, "head_dim": 65_536, "vocab_size": 100_000_000,
    "ffn_intermediate_size": 10_000_000, "expert_intermediate_size": 10_000_000,
    "shared_intermediate_size": 10_000_000, "num_experts": 100_000, "top_k": 100_000, "num_shared_experts": 4_096,
    "q_lora_rank": 1_000_000, "kv_lora_rank": 1_000_000, "qk_nope_head_dim": 65_536, "qk_rope_head_dim": 65_536,
    "v_head_dim": 65_536, "sliding_window": MAX_TOKENS,
    # [linear] (Gated DeltaNet) and [sparse] (DSA indexer) blocks of a model YAML
    "layers": 10_000, "num_key_heads": 65_536, "num_value_heads": 65_536, "key_head_dim": 65_536,
    "value_head_dim": 65_536, "conv_kernel": 1_024, "state_bytes": 8,
    "index_n_heads": 65_536, "index_head_dim": 65_536, "index_topk": MAX_TOKENS,
    "isl_tokens": MAX_TOKENS, "osl_tokens": MAX_TOKENS, "gpus": MAX_GPUS, "max_batch": 10_000_000,
    "draft_tokens": 16,
    # hardware, per GPU, in the units of the keys
    "bf16_dense_tflops": 1e6, "fp8_dense_tflops": 1e6, "fp4_dense_tflops": 1e6, "hbm_bandwidth_tb_s": 1e3,
    "hbm_capacity_gb": 1e6, "scaleup_domain_gpus": MAX_GPUS, "scaleup_bandwidth_gb_s": 1e6,
    "scaleout_bandwidth_gb_s": 1e6, "scaleup_latency_us": 1e6, "scaleout_latency_us": 1e6,
    # power, per GPU
    "tdp_w": 1e5, "system_power_per_gpu_w": 1e5, "idle_share_of_tdp": 1.0, "pue": 10.0,
}


class _Reader:
    """Reads keys from a mapping, remembering which were used, with errors that name the file."""

    def __init__(self, data: Mapping, where: str):
        if not isinstance(data, Mapping):
            raise SpecError(f"{where}: expected a mapping, got {type(data).__name__}")
        self.data, self.where, self.used = data, where, set()

    def _get(self, key, default, required):
        self.used.add(key)
        if key not in self.data:
            if required:
                raise SpecError(f"{self.where}: missing required key '{key}'")
            return default
        return self.data[key]

    def num(self, key, default=None, *, required=True, positive=True, integer=False, min_value=None,
            limit_key=None):
        """A finite number, positive unless ``positive=False``, whole if ``integer``, at most the
        physical limit of ``limit_key`` (default: the key itself) in ``LIMITS``. A key given as null
        counts as absent where there is a default and is refused where the key is required."""
        needed = required and default is None
        v = self._get(key, default, needed)
        if key not in self.data:
            return default                       # an absent key takes the default as it is (e.g. inf)
        if v is None:
            if needed:
                raise SpecError(f"{self.where}: key '{key}' must be a number, got null")
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"{self.where}: key '{key}' must be a number, got {type(v).__name__} {v!r}")
        if not math.isfinite(v):
            raise SpecError(f"{self.where}: key '{key}' must be a finite number, got {v!r}")
        limit = LIMITS.get(limit_key or key, MAX_COUNT if integer else math.inf)
        if v > limit:
            raise SpecError(f"{self.where}: key '{key}' = {v!r} is beyond any real system; at most {limit:g}")
        if integer and (not float(v).is_integer()):
            raise SpecError(f"{self.where}: key '{key}' must be a whole number, got {v!r}")
        if positive and not v > 0:
            raise SpecError(f"{self.where}: key '{key}' must be positive, got {v!r}")
        if min_value is not None and v < min_value:
            raise SpecError(f"{self.where}: key '{key}' must be >= {min_value}, got {v!r}")
        return int(v) if integer else float(v)

    def str(self, key, default=None, *, allowed=None):
        v = self._get(key, default, default is None)
        if not isinstance(v, str):
            raise SpecError(f"{self.where}: key '{key}' must be a string, got {type(v).__name__} {v!r}")
        if allowed is not None and v not in allowed:
            raise SpecError(f"{self.where}: key '{key}' is '{v}'; allowed: {', '.join(allowed)}")
        return v

    def bool(self, key, default):
        v = self._get(key, default, False)
        if not isinstance(v, bool):
            raise SpecError(f"{self.where}: key '{key}' must be true or false, got {v!r}")
        return v

    def sub(self, key, required=False):
        v = self._get(key, None, required)
        return None if v is None else _Reader(v, f"{self.where} [{key}]")

    def finish(self, also_allowed=()):
        unknown = set(self.data) - self.used - set(also_allowed)
        if unknown:
            allowed = sorted(self.used | set(also_allowed))
            raise SpecError(f"{self.where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                            f"allowed keys: {', '.join(allowed)}")


# ----------------------------------------------------------------------------- precision

@dataclasses.dataclass(frozen=True)
class Precision:
    """Bytes per element and the tensor-core rate used by each kind of tensor."""
    name: str
    weight_bytes: float      # per parameter, block scales included
    gemm_rate: str           # which peak rate the GEMMs run at: bf16, fp8 or fp4
    kv_bytes: float          # per cached K/V (or MLA latent) element
    attn_rate: str           # rate of the attention matmuls
    qact_bytes: float        # quantized GEMM input activations and the MoE dispatch
    act_bytes: float = 2.0   # activations between ops and in TP all-reduce (BF16)


PRECISIONS = {
    "bf16": Precision("bf16", 2.0, "bf16", 2.0, "bf16", 2.0),
    # FP8 weights with per-tensor or 128-block scales (<1% extra); FP8 KV cache and FP8 FMHA,
    # as TensorRT-LLM serves FP8 checkpoints.
    "fp8": Precision("fp8", 1.0, "fp8", 1.0, "fp8", 1.0),
    # NVFP4: 4-bit E2M1 values plus one FP8 scale per 16 values = 4.5 bits per weight
    # (NVIDIA, "Introducing NVFP4", 2025). KV cache and attention stay FP8.
    "fp4": Precision("fp4", 4.5 / 8, "fp4", 1.0, "fp8", 0.5625),
    # Weight-only 4-bit formats, dequantized to BF16 inside the GEMM (what Hopper runs, having no
    # FP4 tensor cores): MXFP4 (32-value blocks with an 8-bit scale = 4.25 bits; gpt-oss) and INT4
    # with one BF16 scale per 32 values (= 4.5 bits; Kimi-K2 QAT checkpoints). BF16 KV cache.
    "mxfp4": Precision("mxfp4", 4.25 / 8, "bf16", 2.0, "bf16", 2.0),
    "int4": Precision("int4", 4.5 / 8, "bf16", 2.0, "bf16", 2.0),
}
RAW_FP4_WEIGHT_BYTES = 0.5  # what a bare 4-bit count gives, without the block scales


def get_precision(name: str, where: str = "precision") -> Precision:
    if name not in PRECISIONS:
        raise SpecError(f"{where}: precision '{name}' is unknown; allowed: {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


# ----------------------------------------------------------------------------- model

@dataclasses.dataclass(frozen=True)
class Model:
    """A decoder-only transformer, dense or MoE, with GQA or MLA attention.

    Two attention variants: *hybrid linear attention* (``linear_layers`` of the ``num_layers`` are
    Gated DeltaNet layers, as in Qwen3.5 and Qwen3-Next: a fixed recurrent state per request
    instead of a KV cache) and *DeepSeek Sparse Attention* (``index_topk > 0``, MLA models such as
    GLM-5 and DeepSeek-V3.2: an indexer scores every cached key and attention reads the top-k).

    Assumptions: gated (SwiGLU) MLPs with three matrices unless ``mlp_gated`` is false; biases
    and norms are counted but never priced as GEMMs.
    """
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_intermediate_size: int          # dense MLP (dense models and dense-first layers)
    vocab_size: int
    tie_embeddings: bool = False
    mlp_gated: bool = True
    attention: str = "gqa"              # "gqa" or "mla"
    # MLA (DeepSeek-V3 family)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # MoE
    num_experts: int = 0                # routed experts; 0 = dense
    top_k: int = 0
    expert_intermediate_size: int = 0
    num_shared_experts: int = 0
    shared_intermediate_size: int = 0
    first_dense_layers: int = 0
    # sliding-window attention on some layers (gpt-oss alternates 128-token windows)
    sliding_window: int = 0
    sliding_layers: int = 0
    # full-attention layers whose output is gated by a sigmoid of a second query-sized projection
    # (Qwen3-Next / Qwen3.5 ``attn_output_gate``): the query projection is twice as wide
    attn_output_gate: bool = False
    # Hybrid linear attention (Gated DeltaNet): ``linear_layers`` layers (any positions; costs are
    # per layer kind) with key heads of ``linear_key_head_dim`` and value heads of
    # ``linear_value_head_dim`` (each key head serves num_value/num_key value heads), a causal
    # depthwise convolution of ``linear_conv_kernel`` taps over q, k and v, and a recurrent state
    # kept at ``linear_state_bytes`` per element (4: float32, Qwen3.5's ``mamba_ssm_dtype``).
    linear_layers: int = 0
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel: int = 0
    linear_state_bytes: int = 4
    # DeepSeek Sparse Attention (MLA only): a lightning indexer of ``index_n_heads`` heads of
    # ``index_head_dim`` scores every cached key; attention reads the ``index_topk`` best
    # (0: dense attention).
    index_n_heads: int = 0
    index_head_dim: int = 0
    index_topk: int = 0
    source: str = ""

    # -- derived
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_dense_layers if self.is_moe else 0

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def mlp_matrices(self) -> int:
        return 3 if self.mlp_gated else 2

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.attention == "mla" else self.head_dim

    @property
    def num_full_layers(self) -> int:
        """Softmax-attention layers (full or sliding-window): all but the linear-attention ones."""
        return self.num_layers - self.linear_layers

    @property
    def is_sparse(self) -> bool:
        return self.index_topk > 0

    @property
    def linear_key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def linear_conv_dim(self) -> int:
        """Channels of the short convolution: q, k (key dim each) and v (value dim)."""
        return 2 * self.linear_key_dim + self.linear_value_dim

    def attention_params(self) -> float:
        """One softmax-attention layer (with a DSA model, its indexer included)."""
        d, h = float(self.hidden_size), self.num_heads
        if self.attention == "mla":
            q = (d * self.q_lora_rank + self.q_lora_rank * h * self.qk_head_dim) if self.q_lora_rank \
                else d * h * self.qk_head_dim
            kv = d * (self.kv_lora_rank + self.qk_rope_head_dim) \
                + self.kv_lora_rank * h * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv + h * self.v_head_dim * d + self.indexer_params()
        q_width = h * self.head_dim * (2 if self.attn_output_gate else 1)
        return d * q_width + d * h * self.head_dim + d * self.num_kv_heads * self.head_dim * 2

    def indexer_params(self) -> float:
        """DSA's lightning indexer in one layer: its query up-projection (from the query latent, or
        the hidden state without one), one shared key projection with its LayerNorm (weight and
        bias), and the per-head weights (DeepSeek-V3.2 ``Indexer``: wq_b, wk, k_norm, weights_proj)."""
        if not self.is_sparse:
            return 0.0
        hi, di, d = self.index_n_heads, self.index_head_dim, float(self.hidden_size)
        q_in = self.q_lora_rank or self.hidden_size
        return q_in * hi * di + d * di + 2 * di + d * hi

    def linear_attention_params(self) -> float:
        """One Gated DeltaNet layer (Qwen3-Next / Qwen3.5): the q/k/v/z input projection
        (z: the output gate, value-sized), the per-value-head beta and decay projections, the
        depthwise convolution, the decay's A and dt bias, the gated RMSNorm over a value head, and
        the output projection."""
        if not self.linear_layers:
            return 0.0
        d, kd, vd, nv = float(self.hidden_size), self.linear_key_dim, self.linear_value_dim, self.linear_num_value_heads
        return d * (2 * kd + 2 * vd) + d * 2 * nv + self.linear_conv_dim * self.linear_conv_kernel \
            + 2 * nv + self.linear_value_head_dim + vd * d

    def mixing_params(self) -> float:
        """Token-mixing parameters of the whole model: softmax attention (with any indexer) in the
        full layers, Gated DeltaNet in the linear ones."""
        return self.num_full_layers * self.attention_params() + self.linear_layers * self.linear_attention_params()

    def index_key_bytes_per_token_layer(self) -> float:
        """DSA's indexer key cache per token per layer: index_head_dim FP8 values plus one FP32
        scale per 128 of them (DeepSeek-V3.2's FP8 indexer cache)."""
        if not self.is_sparse:
            return 0.0
        return float(self.index_head_dim + 4 * math.ceil(self.index_head_dim / 128))

    # Counts are Python floats: several exceed 2^31 (Llama-405B's MLP is 2.6e9 per layer), which
    # JAX would refuse as an int32 constant.
    def dense_mlp_params(self) -> float:
        return float(self.mlp_matrices * self.hidden_size * self.ffn_intermediate_size)

    def expert_params(self) -> float:
        """One routed expert in one layer."""
        return float(self.mlp_matrices * self.hidden_size * self.expert_intermediate_size)

    def shared_params(self) -> float:
        """All shared experts of one MoE layer."""
        return float(self.num_shared_experts * self.mlp_matrices * self.hidden_size * self.shared_intermediate_size)

    def embedding_params(self) -> float:
        return float(self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2))

    def total_params(self) -> float:
        per_moe = self.num_experts * self.expert_params() + self.shared_params() \
            + self.hidden_size * self.num_experts
        norms = 2 * self.hidden_size * self.num_layers + self.hidden_size
        return (self.mixing_params() + self.num_dense_layers * self.dense_mlp_params()
                + self.num_moe_layers * per_moe + self.embedding_params() + norms)

    def active_params(self) -> float:
        """Parameters touched by one token (top-k routed experts plus shared)."""
        per_moe = self.top_k * self.expert_params() + self.shared_params()
        return (self.mixing_params() + self.num_dense_layers * self.dense_mlp_params()
                + self.num_moe_layers * per_moe + self.embedding_params())

    def kv_elements_per_token_layer(self) -> float:
        """Cached elements per token per layer for the whole model (all heads)."""
        if self.attention == "mla":
            return float(self.kv_lora_rank + self.qk_rope_head_dim)   # compressed latent + shared RoPE key
        return float(2 * self.num_kv_heads * self.head_dim)

    def validate(self, where: str) -> Model:
        for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size"):
            if getattr(self, field) < 1:       # e.g. head_dim left out, from hidden_size // num_heads
                raise SpecError(f"{where}: {field} is {getattr(self, field)}; it must be at least 1"
                                + (" (it defaults to hidden_size // num_heads: give head_dim)"
                                   if field == "head_dim" else ""))
        if self.attention not in ("gqa", "mla"):
            raise SpecError(f"{where}: key 'attention' is '{self.attention}'; allowed: gqa, mla")
        if self.attention == "gqa" and self.num_heads % self.num_kv_heads:
            raise SpecError(f"{where}: num_heads ({self.num_heads}) must be a multiple of "
                            f"num_kv_heads ({self.num_kv_heads})")
        if self.attention == "mla" and not (self.kv_lora_rank and self.qk_nope_head_dim and self.v_head_dim):
            raise SpecError(f"{where}: attention 'mla' needs mla.kv_lora_rank, qk_nope_head_dim, "
                            f"qk_rope_head_dim and v_head_dim")
        if self.is_moe:
            if not 1 <= self.top_k <= self.num_experts:
                raise SpecError(f"{where}: moe.top_k ({self.top_k}) must be between 1 and "
                                f"moe.num_experts ({self.num_experts})")
            if self.first_dense_layers >= self.num_layers:
                raise SpecError(f"{where}: moe.first_dense_layers ({self.first_dense_layers}) must be below "
                                f"num_layers ({self.num_layers})")
            if not self.expert_intermediate_size:
                raise SpecError(f"{where}: [moe] missing required key 'expert_intermediate_size'")
        if self.sliding_layers > self.num_layers:
            raise SpecError(f"{where}: sliding_layers ({self.sliding_layers}) exceeds num_layers")
        if self.linear_layers:
            if self.sliding_layers + self.linear_layers > self.num_layers:
                raise SpecError(f"{where}: linear_layers ({self.linear_layers}) plus sliding_layers "
                                f"({self.sliding_layers}) exceed num_layers ({self.num_layers})")
            dims = {"num_key_heads": self.linear_num_key_heads, "num_value_heads": self.linear_num_value_heads,
                    "key_head_dim": self.linear_key_head_dim, "value_head_dim": self.linear_value_head_dim,
                    "conv_kernel": self.linear_conv_kernel}
            missing = [k for k, v in dims.items() if not v]
            if missing:
                raise SpecError(f"{where}: linear attention needs [linear] {', '.join(missing)}")
            if self.linear_num_value_heads % self.linear_num_key_heads:
                raise SpecError(f"{where}: [linear] num_value_heads ({self.linear_num_value_heads}) must be a "
                                f"multiple of num_key_heads ({self.linear_num_key_heads})")
        if self.is_sparse:
            if self.attention != "mla":
                raise SpecError(f"{where}: sparse attention (index_topk {self.index_topk}) is priced for MLA "
                                f"models only (GLM-5, DeepSeek-V3.2); attention is '{self.attention}'")
            if not (self.index_n_heads and self.index_head_dim):
                raise SpecError(f"{where}: sparse attention needs [sparse] index_n_heads and index_head_dim")
        return self


def model_from_dict(data: Mapping, where: str) -> Model:
    r = _Reader(data, where)
    kw: dict[str, Any] = dict(
        name=r.str("name"), source=r.str("source", ""),
        num_layers=r.num("num_layers", integer=True),
        hidden_size=r.num("hidden_size", integer=True),
        num_heads=r.num("num_heads", integer=True),
        vocab_size=r.num("vocab_size", integer=True),
        tie_embeddings=r.bool("tie_embeddings", False),
        mlp_gated=r.bool("mlp_gated", True),
        attention=r.str("attention", "gqa", allowed=("gqa", "mla")),
        sliding_window=r.num("sliding_window", 0, positive=False, integer=True, min_value=0),
        sliding_layers=r.num("sliding_layers", 0, positive=False, integer=True, min_value=0),
    )
    kw["num_kv_heads"] = r.num("num_kv_heads", kw["num_heads"], integer=True)
    kw["head_dim"] = r.num("head_dim", kw["hidden_size"] // kw["num_heads"], integer=True)
    mla = r.sub("mla", required=kw["attention"] == "mla")
    if mla is not None:
        kw.update(q_lora_rank=mla.num("q_lora_rank", 0, positive=False, integer=True, min_value=0),
                  kv_lora_rank=mla.num("kv_lora_rank", integer=True),
                  qk_nope_head_dim=mla.num("qk_nope_head_dim", integer=True),
                  qk_rope_head_dim=mla.num("qk_rope_head_dim", integer=True),
                  v_head_dim=mla.num("v_head_dim", integer=True))
        mla.finish()
    moe = r.sub("moe")
    if moe is not None:
        kw.update(num_experts=moe.num("num_experts", integer=True),
                  top_k=moe.num("top_k", integer=True),
                  expert_intermediate_size=moe.num("expert_intermediate_size", integer=True),
                  num_shared_experts=moe.num("num_shared_experts", 0, positive=False, integer=True, min_value=0),
                  first_dense_layers=moe.num("first_dense_layers", 0, positive=False, integer=True, min_value=0))
        kw["shared_intermediate_size"] = moe.num("shared_intermediate_size", kw["expert_intermediate_size"],
                                                 integer=True)
        moe.finish()
    kw["attn_output_gate"] = r.bool("attn_output_gate", False)
    lin = r.sub("linear")
    if lin is not None:
        kw.update(linear_layers=lin.num("layers", integer=True),
                  linear_num_key_heads=lin.num("num_key_heads", integer=True),
                  linear_num_value_heads=lin.num("num_value_heads", integer=True),
                  linear_key_head_dim=lin.num("key_head_dim", integer=True),
                  linear_value_head_dim=lin.num("value_head_dim", integer=True),
                  linear_conv_kernel=lin.num("conv_kernel", integer=True),
                  linear_state_bytes=lin.num("state_bytes", 4, integer=True))
        lin.finish()
    sparse = r.sub("sparse")
    if sparse is not None:
        kw.update(index_n_heads=sparse.num("index_n_heads", integer=True),
                  index_head_dim=sparse.num("index_head_dim", integer=True),
                  index_topk=sparse.num("index_topk", integer=True))
        sparse.finish()
    needs_dense = moe is None or kw.get("first_dense_layers", 0) > 0
    kw["ffn_intermediate_size"] = r.num("ffn_intermediate_size", None if needs_dense else 0,
                                        positive=needs_dense, integer=True, min_value=0)
    r.finish()
    return Model(**kw).validate(where)


# Hugging Face keys read as numbers: key -> (the Model field whose physical limit applies, positive).
# Counts that may be 0 (no shared experts, no dense-first layers, no query compression) are not positive.
HF_NUMBERS = {
    "hidden_size": ("hidden_size", True), "num_attention_heads": ("num_heads", True),
    "num_hidden_layers": ("num_layers", True), "num_key_value_heads": ("num_kv_heads", True),
    "head_dim": ("head_dim", True), "vocab_size": ("vocab_size", True),
    "intermediate_size": ("ffn_intermediate_size", True), "moe_intermediate_size": ("expert_intermediate_size", True),
    "shared_expert_intermediate_size": ("shared_intermediate_size", True),
    "n_routed_experts": ("num_experts", False), "num_experts": ("num_experts", False),
    "num_local_experts": ("num_experts", False), "num_experts_per_tok": ("top_k", True),
    "n_shared_experts": ("num_shared_experts", False), "first_k_dense_replace": ("first_dense_layers", False),
    "q_lora_rank": ("q_lora_rank", False), "kv_lora_rank": ("kv_lora_rank", True),
    "qk_nope_head_dim": ("qk_nope_head_dim", True), "qk_rope_head_dim": ("qk_rope_head_dim", True),
    "v_head_dim": ("v_head_dim", True), "sliding_window": ("sliding_window", False),
    "index_topk": ("index_topk", False), "index_n_heads": ("index_n_heads", True),
    "index_head_dim": ("index_head_dim", True),
    "linear_num_key_heads": ("num_key_heads", True), "linear_num_value_heads": ("num_value_heads", True),
    "linear_key_head_dim": ("key_head_dim", True), "linear_value_head_dim": ("value_head_dim", True),
    "linear_conv_kernel_dim": ("conv_kernel", True),
}
# Layer kinds of a Hugging Face ``layer_types`` list that jaxplan prices.
HF_LAYER_TYPES = ("full_attention", "sliding_attention", "linear_attention")
# Hugging Face ``mamba_ssm_dtype`` -> bytes per element of a linear-attention layer's recurrent state.
STATE_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class _HFReader(_Reader):
    """Reads a Hugging Face config: numbers are whole, finite and within the physical limit of the
    Model field they become; a key given as null is absent (the Hub's convention); unknown keys are fine."""

    def count(self, key, default=None):
        field, positive = HF_NUMBERS[key]
        required = default is None
        return self.num(key, default, required=required, positive=positive, integer=True,
                        min_value=None if positive else 0, limit_key=field)

    def has(self, key) -> bool:
        return self.data.get(key) is not None


def hf_layer_types(c: Mapping, num_layers: int, where: str) -> list[str] | None:
    """The kind of each layer of a Hugging Face text config: its ``layer_types`` list, checked
    (a list of ``num_hidden_layers`` known kinds), else one built from ``full_attention_interval``
    (Qwen3-Next: every interval-th layer is full attention, the others linear), else None."""
    if "layer_types" in c and c["layer_types"] is not None:
        types = c["layer_types"]
        if not isinstance(types, list):
            raise SpecError(f"{where}: key 'layer_types' must be a list of layer kinds ({', '.join(HF_LAYER_TYPES)}),"
                            f" one per layer, got {type(types).__name__} {types!r}")
        if len(types) != num_layers:
            raise SpecError(f"{where}: key 'layer_types' lists {len(types)} layers but num_hidden_layers is "
                            f"{num_layers}: give one kind per layer")
        for i, t in enumerate(types):
            if t not in HF_LAYER_TYPES:
                raise SpecError(f"{where}: key 'layer_types' entry {i} is {t!r}; jaxplan covers layer kinds "
                                f"{', '.join(HF_LAYER_TYPES)}")
        return list(types)
    interval = c.get("full_attention_interval")
    if interval is None:
        return None
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise SpecError(f"{where}: key 'full_attention_interval' must be a positive whole number, got {interval!r}")
    return ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(num_layers)]


def model_from_hf_config(cfg: Mapping, name: str, where: str) -> Model:
    """Map a Hugging Face ``config.json`` onto ``Model`` (a multimodal config's ``text_config``).

    Covered: Llama, Qwen3 (dense and MoE), Mixtral, MiniMax-M2, gpt-oss, DeepSeek-V3/R1 and
    Kimi-K2 (MLA + routed/shared experts), GLM-5 and DeepSeek-V3.2 (MLA with DeepSeek Sparse
    Attention: ``index_topk``, ``index_n_heads``, ``index_head_dim``), Qwen3-Next and Qwen3.5
    (hybrid Gated DeltaNet / gated full attention: ``layer_types`` or ``full_attention_interval``
    and the ``linear_*`` keys). Multi-token-prediction layers (``num_nextn_predict_layers``,
    ``mtp_num_hidden_layers``) and vision encoders are not part of the served text model and are
    left out. Every number is checked (``HF_NUMBERS``): an error names the file, the key, the
    value and what is allowed.
    """
    if not isinstance(cfg, Mapping):
        raise SpecError(f"{where}: a Hugging Face config is a JSON object, got {type(cfg).__name__}")
    c = cfg.get("text_config", cfg)
    if not isinstance(c, Mapping):
        raise SpecError(f"{where}: key 'text_config' must be a JSON object, got {type(c).__name__} {c!r}")
    r = _HFReader(c, where)
    mtype = c.get("model_type", cfg.get("model_type", "?"))
    d, h, n_layers = r.count("hidden_size"), r.count("num_attention_heads"), r.count("num_hidden_layers")
    types = hf_layer_types(c, n_layers, where)
    kw: dict[str, Any] = dict(
        name=name, source=f"Hugging Face config {where}",
        num_layers=n_layers, hidden_size=d, num_heads=h,
        num_kv_heads=r.count("num_key_value_heads", h),
        head_dim=r.count("head_dim", max(d // h, 1)),
        vocab_size=r.count("vocab_size"),
        tie_embeddings=bool(c.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))),
    )
    if r.has("kv_lora_rank"):
        kw.update(attention="mla", q_lora_rank=r.count("q_lora_rank", 0), kv_lora_rank=r.count("kv_lora_rank"),
                  qk_nope_head_dim=r.count("qk_nope_head_dim"), qk_rope_head_dim=r.count("qk_rope_head_dim"),
                  v_head_dim=r.count("v_head_dim"))
    if r.count("index_topk", 0):
        # DeepSeek Sparse Attention (glm_moe_dsa, deepseek_v32)
        kw.update(index_topk=r.count("index_topk"), index_n_heads=r.count("index_n_heads"),
                  index_head_dim=r.count("index_head_dim"))
    # Qwen3-Next gates every full-attention output (its q_proj is twice as wide); Qwen3.5 says so
    kw["attn_output_gate"] = bool(c.get("attn_output_gate", str(mtype).startswith("qwen3_next")))
    if types is not None and "linear_attention" in types:
        dtype = c.get("mamba_ssm_dtype", "float32")
        if dtype not in STATE_DTYPE_BYTES:
            raise SpecError(f"{where}: key 'mamba_ssm_dtype' is {dtype!r}; allowed: {', '.join(STATE_DTYPE_BYTES)}")
        kw.update(linear_layers=sum(t == "linear_attention" for t in types),
                  linear_num_key_heads=r.count("linear_num_key_heads"),
                  linear_num_value_heads=r.count("linear_num_value_heads"),
                  linear_key_head_dim=r.count("linear_key_head_dim"),
                  linear_value_head_dim=r.count("linear_value_head_dim"),
                  linear_conv_kernel=r.count("linear_conv_kernel_dim"),
                  linear_state_bytes=STATE_DTYPE_BYTES[dtype])
    n_exp = max(r.count(k, 0) for k in ("n_routed_experts", "num_experts", "num_local_experts"))
    first_dense = r.count("first_k_dense_replace", 0) if n_exp else 0
    if n_exp:
        if not (r.has("moe_intermediate_size") or r.has("intermediate_size")):
            raise SpecError(f"{where}: Hugging Face config of a mixture of experts lacks 'moe_intermediate_size' "
                            f"(or 'intermediate_size'), the experts' hidden size")
        ff_e = r.count("moe_intermediate_size") if r.has("moe_intermediate_size") else r.count("intermediate_size")
        n_shared = r.count("n_shared_experts", 0)
        ff_s = r.count("shared_expert_intermediate_size", ff_e if n_shared else 0) if n_shared or r.has(
            "shared_expert_intermediate_size") else 0
        if r.has("shared_expert_intermediate_size") and not n_shared:
            n_shared = 1
        if c.get("mlp_only_layers"):
            raise SpecError(f"{where}: mlp_only_layers {c['mlp_only_layers']} (dense layers among MoE "
                            f"layers) is not covered")
        kw.update(num_experts=n_exp, top_k=r.count("num_experts_per_tok"),
                  expert_intermediate_size=ff_e, num_shared_experts=n_shared,
                  shared_intermediate_size=ff_s, first_dense_layers=first_dense)
    if not n_exp or first_dense:
        if not r.has("intermediate_size"):
            raise SpecError(f"{where}: Hugging Face config lacks 'intermediate_size', the MLP hidden size of "
                            f"its dense layers (model_type '{mtype}')")
        kw["ffn_intermediate_size"] = r.count("intermediate_size")
    else:
        kw["ffn_intermediate_size"] = 0
    window = r.count("sliding_window", 0)
    if window and types is not None and "sliding_attention" in types:
        kw.update(sliding_window=window, sliding_layers=sum(t == "sliding_attention" for t in types))
    return Model(**kw).validate(where)


def load_model(name_or_path: str | os.PathLike) -> Model:
    path = _resolve(name_or_path, "models")
    if path.suffix == ".json":
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SpecError(f"{path}: not valid JSON: {e}") from None
        return model_from_hf_config(cfg, path.stem, str(path))
    return model_from_dict(read_yaml(path), str(path))


# ----------------------------------------------------------------------------- hardware

def _pytree_dataclass(meta: tuple[str, ...]):
    def wrap(cls):
        data = tuple(f.name for f in dataclasses.fields(cls) if f.name not in meta)
        return jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))
    return wrap


@_pytree_dataclass(meta=("name", "rates", "source", "power_source"))
@dataclasses.dataclass(frozen=True)
class Hardware:
    """One GPU and the fabrics around it, in SI units (FLOP/s, bytes, bytes/s, s).

    Bandwidths are per GPU and per direction. ``scale_up_domain`` is the number of GPUs that
    share the NVLink fabric (8 on HGX, 72 on NVL72); groups larger than that cross the
    scale-out network. The numbers, their YAML keys and units are :data:`HARDWARE_NUMBERS`.
    """
    name: str
    rates: tuple[str, ...]          # precisions with a tensor-core rate, e.g. ("bf16", "fp8")
    bf16_flops: float
    fp8_flops: float
    fp4_flops: float                # 0 when the chip has no FP4 tensor cores
    hbm_bandwidth: float
    hbm_capacity: float
    scale_up_domain: float
    scale_up_bandwidth: float
    scale_up_latency: float
    scale_out_bandwidth: float
    scale_out_latency: float
    source: str = ""
    # Power (:data:`POWER_NUMBERS`, the YAML's optional ``power`` block), NaN when the preset has
    # none: then energy and cost per token are NaN and ``--objective cost|energy`` is refused.
    tdp: float = math.nan               # board power, W
    idle_share: float = math.nan        # share of TDP drawn while not compute- or memory-bound
    system_power: float = math.nan      # CPU, NICs, switches, fans around each GPU, W
    pue: float = math.nan               # facility power / IT power
    power_source: str = ""

    @property
    def has_power(self) -> bool:
        return all(math.isfinite(float(getattr(self, f))) for f in POWER_NUMBERS)

    def peak(self, rate: str):
        return {"bf16": self.bf16_flops, "fp8": self.fp8_flops, "fp4": self.fp4_flops}[rate]

    def replace(self, **kw) -> Hardware:
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class HardwareNumber:
    """One number of :class:`Hardware`: its field (also the name ``--scale`` takes), its YAML key
    (the unit is in the key), SI units per YAML unit, and how reports name it."""
    field: str
    key: str
    scale: float
    label: str
    unit: str
    integer: bool = False       # a count (the scale-up domain): not scaled or differentiated
    optional: bool = False      # may be absent from a preset (0: the chip lacks it)


HARDWARE_NUMBERS: dict[str, HardwareNumber] = {n.field: n for n in (
    HardwareNumber("bf16_flops", "bf16_dense_tflops", FLOPS_PER_TFLOP, "BF16 FLOP/s", "TFLOP/s"),
    HardwareNumber("fp8_flops", "fp8_dense_tflops", FLOPS_PER_TFLOP, "FP8 FLOP/s", "TFLOP/s"),
    HardwareNumber("fp4_flops", "fp4_dense_tflops", FLOPS_PER_TFLOP, "FP4 FLOP/s", "TFLOP/s", optional=True),
    HardwareNumber("hbm_bandwidth", "hbm_bandwidth_tb_s", 1e12, "HBM bandwidth", "TB/s"),
    HardwareNumber("hbm_capacity", "hbm_capacity_gb", BYTES_PER_GB, "HBM capacity", "GB"),
    HardwareNumber("scale_up_domain", "scaleup_domain_gpus", 1.0, "scale-up (NVLink) domain", "GPUs",
                   integer=True),
    HardwareNumber("scale_up_bandwidth", "scaleup_bandwidth_gb_s", BYTES_PER_GB, "scale-up (NVLink) bandwidth",
                   "GB/s"),
    HardwareNumber("scale_up_latency", "scaleup_latency_us", SECONDS_PER_US, "scale-up (NVLink) latency", "us"),
    HardwareNumber("scale_out_bandwidth", "scaleout_bandwidth_gb_s", BYTES_PER_GB, "scale-out bandwidth", "GB/s"),
    HardwareNumber("scale_out_latency", "scaleout_latency_us", SECONDS_PER_US, "scale-out latency", "us"),
)}
# The power of a GPU and what surrounds it: the keys of a hardware YAML's ``power`` block (all
# required when the block is there, with its ``source``); the model that uses them is ``energy.py``.
POWER_NUMBERS: dict[str, HardwareNumber] = {n.field: n for n in (
    HardwareNumber("tdp", "tdp_w", 1.0, "board power (TDP)", "W"),
    HardwareNumber("idle_share", "idle_share_of_tdp", 1.0, "idle share of TDP", "of TDP"),
    HardwareNumber("system_power", "system_power_per_gpu_w", 1.0, "system power per GPU (CPU, NICs, switches)",
                   "W"),
    HardwareNumber("pue", "pue", 1.0, "facility factor (PUE)", ""),
)}
POWER_BY_KEY = {h.key: h for h in POWER_NUMBERS.values()}
# The continuous numbers: what ``--scale``, sensitivity and codesign act on.
CONTINUOUS_HARDWARE = tuple(n for n, h in HARDWARE_NUMBERS.items() if not h.integer)
HARDWARE_BY_KEY = {h.key: h for h in HARDWARE_NUMBERS.values()}


def hardware_number(name: str, where: str = "--scale") -> HardwareNumber:
    """A continuous hardware number named by its field (``hbm_bandwidth``) or YAML key
    (``hbm_bandwidth_tb_s``)."""
    h = HARDWARE_NUMBERS.get(name) or HARDWARE_BY_KEY.get(name)
    if h is None or h.integer:
        raise SpecError(f"{where}: unknown hardware number '{name}'; allowed: {', '.join(CONTINUOUS_HARDWARE)}"
                        f" (or their hardware YAML keys, e.g. hbm_bandwidth_tb_s)")
    return h


def yaml_value(hw: Hardware, name: str) -> float:
    """A hardware number in the units of its YAML key (e.g. TB/s for ``hbm_bandwidth``)."""
    return float(getattr(hw, name)) / HARDWARE_NUMBERS[name].scale


def scale_hardware(hw: Hardware, scales: Mapping[str, float]) -> Hardware:
    """The hardware with each named continuous number (:data:`CONTINUOUS_HARDWARE`) multiplied by
    its factor."""
    if not scales:
        return hw
    # name, rates and source are static (pytree metadata): leaving them unchanged lets the
    # compiled sweep run the scaled hardware without recompiling.
    return dataclasses.replace(hw, **{k: getattr(hw, k) * float(f) for k, f in scales.items()})


def hardware_from_dict(data: Mapping, where: str) -> Hardware:
    r = _Reader(data, where)
    kw: dict[str, Any] = dict(name=r.str("name"), source=r.str("source", ""))
    for h in HARDWARE_NUMBERS.values():
        v = r.num(h.key, 0.0 if h.optional else None, positive=not h.optional, min_value=0, integer=h.integer)
        kw[h.field] = float(v) * h.scale
    pw = r.sub("power")
    if pw is not None:
        kw.update(power_from_reader(pw))
    r.finish()
    kw["rates"] = tuple(p for p in ("bf16", "fp8", "fp4") if kw[f"{p}_flops"] > 0)
    return Hardware(**kw)


def _power_number(r: _Reader, h: HardwareNumber, required: bool = True) -> float | None:
    """One power number, checked: TDP positive, system power >= 0, idle share in [0, 1], PUE >= 1."""
    if h.field == "tdp":
        return r.num(h.key, required=required)
    if h.field == "pue":
        return r.num(h.key, required=required, min_value=1.0)
    if h.field == "idle_share":
        v = r.data.get(h.key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1:
            raise SpecError(f"{r.where}: key '{h.key}' = {v!r} is a share of TDP: it must be between 0 and 1")
    return r.num(h.key, required=required, positive=False, min_value=0.0)


def power_from_reader(r: _Reader) -> dict[str, Any]:
    """The ``power`` block of a hardware YAML as :class:`Hardware` fields (W, shares)."""
    kw: dict[str, Any] = {h.field: _power_number(r, h) * h.scale for h in POWER_NUMBERS.values()}
    kw["power_source"] = r.str("source")
    r.finish()
    return kw


def apply_hardware_overrides(hw: Hardware, overrides: Mapping, where: str) -> Hardware:
    r = _Reader(overrides, where)
    kw = {}
    for key in overrides:
        if key in HARDWARE_BY_KEY:
            h = HARDWARE_BY_KEY[key]
            kw[h.field] = r.num(key, integer=h.integer) * h.scale
        elif key in POWER_BY_KEY:
            h = POWER_BY_KEY[key]
            kw[h.field] = _power_number(r, h) * h.scale
    r.finish()
    return hw.replace(**kw)


def load_hardware(name_or_path: str | os.PathLike) -> Hardware:
    path = _resolve(name_or_path, "hardware")
    return hardware_from_dict(read_yaml(path), str(path))


def check_precision(hw: Hardware, prec: Precision, where: str = "precision") -> None:
    for rate in {prec.gemm_rate, prec.attn_rate}:
        if rate not in hw.rates:
            raise SpecError(f"{where}: precision '{prec.name}' needs {rate} tensor cores, which "
                            f"hardware '{hw.name}' lacks; it supports: {', '.join(hw.rates)}")


# ----------------------------------------------------------------------------- workload

@_pytree_dataclass(meta=("draft_tokens",))
@dataclasses.dataclass(frozen=True)
class Workload:
    """Traffic: prompt and output lengths in tokens (leaves, so they can be differentiated), and
    how it is decoded: ``draft_tokens`` speculative tokens drafted per decode step (0: off; static,
    it shapes the step) and the ``acceptance`` rate of each drafted token given the ones before it
    were accepted (a leaf). A step then yields ``1 + a + ... + a^k`` tokens on average.
    ``prefix_hit``: the share of each prompt already in the engine's prefix cache (shared system
    prompts, multi-turn history); prefill computes only the rest, which still attends to it all.
    Lengths drawn from a distribution (``traffic.Traffic.workload_fields``): ``isl``/``osl`` are the
    means, ``isl_cv2`` the prompt length's squared coefficient of variation (causal prefill
    attention grows with ``E[isl^2]``) and ``decode_context_excess`` how far the time-weighted
    context a decode step reads exceeds ``isl + osl / 2``; both 0 for fixed lengths."""
    isl: float = 1024.0
    osl: float = 1024.0
    acceptance: float = 0.0
    draft_tokens: int = 0
    prefix_hit: float = 0.0
    isl_cv2: float = 0.0
    decode_context_excess: float = 0.0

    @property
    def prompt_tokens(self):
        """Prompt tokens prefill computes: those not in the prefix cache (at least one)."""
        return jnp.maximum(self.isl * (1.0 - self.prefix_hit), 1.0)

    @property
    def prefill_key_span(self):
        """Mean keys a computed prompt token attends to: the cached prefix plus, causally, half
        of the computed part; token-weighted over prompt lengths, so times ``E[isl^2] / E[isl]^2
        = 1 + isl_cv2``."""
        return (self.isl * self.prefix_hit + self.prompt_tokens / 2.0) * (1.0 + self.isl_cv2)

    @property
    def decode_kv_len(self):
        """Mean cached context a decode step reads per request: the prompt plus half the answer,
        time-weighted over lengths (``+ decode_context_excess``)."""
        return self.isl + self.osl / 2.0 + self.decode_context_excess

    @property
    def tokens_per_step(self):
        """Mean tokens a decode step yields: 1 without speculation; with ``k`` drafted tokens
        accepted in order with probability ``a`` each, ``sum_{i<=k} a^i = (1 - a^(k+1)) / (1 - a)``."""
        k = self.draft_tokens
        if not k:
            return 1.0
        a = jnp.clip(self.acceptance, 0.0, 0.999)
        return (1.0 - a ** (k + 1)) / (1.0 - a)


@dataclasses.dataclass(frozen=True)
class SLA:
    min_tokens_per_user: float = 0.0   # tokens/s/user floor
    max_ttft_s: float = math.inf


# ----------------------------------------------------------------------------- experiment

DEFAULT_CHUNKS = (256, 512, 1024, 2048, 4096, 8192)
MAX_DRAFT_TOKENS = 16
DEFAULT_EXPERIMENT = "gpt-1.8t-moe-64gpu"

# Serving engines whose fitted overheads profiles carry (``params.for_backend``).
BACKENDS = ("trtllm", "vllm", "sglang")
# Aggregated scheduling policies (one function each in ``serving.SCHEDULERS``): prompt chunks
# inside decode iterations, prompts alone before decode (staggered arrivals), or lock-step waves
# of identical requests.
SCHEDULER_NAMES = ("mixed", "prefill_first", "wave")
# Each backend's default policy: TensorRT-LLM and vLLM mix prompt chunks into decode iterations;
# SGLang runs prefill first, in lock-step waves under the benchmarks' fixed lengths (why wave and
# not prefill_first: benchmarks/serving_validation.md, "SGLang: lock-step waves or staggered
# prefill-first").
DEFAULT_SCHEDULER = {"trtllm": "mixed", "vllm": "mixed", "sglang": "wave"}


def scheduler_for(name: str, where: str = "scheduler") -> str:
    """The scheduling policy ``name`` is, or the default policy of the backend it names."""
    if name in SCHEDULER_NAMES:
        return name
    if name in DEFAULT_SCHEDULER:
        return DEFAULT_SCHEDULER[name]
    raise SpecError(f"{where}: '{name}' is neither a scheduler ({', '.join(SCHEDULER_NAMES)}) nor a backend "
                    f"({', '.join(BACKENDS)})")


# The measured data's system names (kernel tables, serving CSVs and aiconfigurator's system files)
# -> hardware presets: the one map every loader uses (``calibrate.kernels.default_kernels_dir``,
# ``calibrate.serving_data``). Blackwell Ultra (b300_sxm, gb300) has presets but no kernel tables;
# its profiles are derived (``jaxplan fit --derive-from``).
SYSTEMS = {"h100_sxm": "h100-sxm", "h200_sxm": "h200-sxm", "b200_sxm": "b200", "gb200": "gb200-nvl72",
           "b300_sxm": "b300", "gb300": "gb300-nvl72"}


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    model: Model
    hardware: Hardware
    gpus: int
    precision: Precision
    workload: Workload
    sla: SLA
    chunk_sizes: tuple[int, ...] = DEFAULT_CHUNKS
    max_batch: int = 4096
    backend: str = "trtllm"
    params_file: str | None = None
    scheduler: str | None = None          # None: the backend's default (DEFAULT_SCHEDULER)
    traffic: Traffic | None = None        # None: a closed loop of the workload's fixed lengths

    @property
    def load(self) -> Traffic:
        """The traffic, with the workload's fixed lengths where none was given."""
        if self.traffic is not None:
            return self.traffic
        return Traffic().with_lengths(float(self.workload.isl), float(self.workload.osl))

    @property
    def scheduler_name(self) -> str:
        """The aggregated scheduling policy: the chosen one, else the backend's default."""
        return self.scheduler or DEFAULT_SCHEDULER[self.backend]


def _check_gpus(gpus, where):
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise SpecError(f"{where}: key 'gpus' must be a positive whole number, got {gpus!r}")
    if gpus > MAX_GPUS:
        raise SpecError(f"{where}: key 'gpus' = {gpus:,} is more than jaxplan plans for (at most {MAX_GPUS:,})")
    return gpus


def experiment_path(name_or_path: str | os.PathLike | None = None) -> Path:
    """An experiment YAML: a file, else a preset name (default: :data:`DEFAULT_EXPERIMENT`)."""
    if name_or_path is None:
        name_or_path = DEFAULT_EXPERIMENT
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise SpecError(f"experiment file '{p}' " + ("is a folder, not a YAML file" if p.is_dir() else
                                                        "does not exist"))
        return p
    preset = config_file("experiments", str(name_or_path))
    if preset is None:
        raise SpecError(f"experiment '{name_or_path}' is neither a file nor a preset; presets: "
                        f"{', '.join(preset_names('experiments'))}")
    return preset


def load_experiment(path: str | os.PathLike | None = None, **overrides) -> Experiment:
    """Read an experiment: a YAML file or a preset name (default: the GPT-1.8T-MoE study).
    Keyword overrides (the CLI's flags: model, hardware, gpus, isl, osl, precision,
    min_tokens_per_user, max_ttft, scheduler, draft_tokens, acceptance, prefix_hit, rate) replace its
    values; ``None`` leaves a value as the file has it. ``rate``: Poisson arrivals at that many
    requests/s in place of the file's load."""
    path = experiment_path(path)
    return experiment_from_dict(read_yaml(path), str(path), path.stem, **overrides)


def experiment(model: str | os.PathLike | Model, hardware: str | os.PathLike | Hardware, gpus: int, *,
               precision: str = "bf16", isl: int = 1024, osl: int = 1024, min_tokens_per_user: float = 0.0,
               max_ttft: float = math.inf, backend: str = "trtllm", scheduler: str | None = None,
               chunk_sizes=DEFAULT_CHUNKS, max_batch: int = 4096, draft_tokens: int = 0,
               acceptance: float = 0.0, prefix_hit: float = 0.0, params: str | None = None,
               hardware_overrides: Mapping | None = None, traffic: Mapping | None = None,
               rate: float | None = None, name: str = "experiment") -> Experiment:
    """An experiment built in code, checked exactly as an experiment YAML is: ``model`` and
    ``hardware`` are preset names, files (a model may be a Hugging Face ``config.json``) or loaded
    specs; lengths are tokens; the SLA is ``min_tokens_per_user`` tokens/s per user and a
    ``max_ttft`` in seconds. ``traffic``: as the YAML's ``traffic:`` mapping (length distributions,
    load; see :func:`jaxplan.traffic.traffic_from_dict`); ``rate``: Poisson arrivals at that many
    requests/s (an open loop) instead of the closed loop."""
    data: dict[str, Any] = {"name": name, "gpus": gpus, "precision": precision, "backend": backend,
                            "workload": {"isl_tokens": isl, "osl_tokens": osl, "prefix_hit": prefix_hit},
                            "search": {"chunk_sizes": list(chunk_sizes), "max_batch": max_batch}}
    if min_tokens_per_user or math.isfinite(max_ttft):
        data["sla"] = {"min_tokens_per_s_per_user": min_tokens_per_user}
        if math.isfinite(max_ttft):
            data["sla"]["max_ttft_s"] = max_ttft
    if draft_tokens or acceptance:
        data["speculative"] = {"draft_tokens": draft_tokens, "acceptance": acceptance}
    if scheduler is not None:
        data["scheduler"] = scheduler
    if params is not None:
        data["params"] = str(params)
    if hardware_overrides:
        data["hardware_overrides"] = dict(hardware_overrides)
    if traffic is not None:
        data["traffic"] = dict(traffic)
    loaded = {}
    for key, value, cls in (("model", model, Model), ("hardware", hardware, Hardware)):
        if isinstance(value, cls):
            loaded[key] = value
        else:
            data[key] = str(value)
    return experiment_from_dict(data, "experiment()", name, rate=rate, **{f"{k}_spec": v for k, v in loaded.items()})


def experiment_from_dict(data: Mapping, where: str, default_name: str, *, model_spec: Model | None = None,
                         hardware_spec: Hardware | None = None, **overrides) -> Experiment:
    """An experiment from its YAML mapping (see :func:`load_experiment`); ``model_spec`` and
    ``hardware_spec`` stand in for the ``model`` and ``hardware`` keys."""
    r = _Reader(data, where)
    model_name = overrides.get("model") or (None if model_spec is not None else r.str("model"))
    hw_name = overrides.get("hardware") or (None if hardware_spec is not None else r.str("hardware"))
    r.used.update({"model", "hardware"})
    model = load_model(model_name) if model_name else model_spec
    hw = load_hardware(hw_name) if hw_name else hardware_spec
    hw_over = r.sub("hardware_overrides")
    if hw_over is not None and not overrides.get("hardware"):
        hw = apply_hardware_overrides(hw, hw_over.data, f"{where} [hardware_overrides]")
    gpus = overrides.get("gpus")
    gpus = _check_gpus(r.num("gpus", integer=True, positive=False) if gpus is None else gpus,
                       "--gpus" if overrides.get("gpus") is not None else where)
    r.used.update({"precision", "gpus"})
    prec_name = overrides.get("precision") or r.str("precision", allowed=tuple(PRECISIONS))
    prec = get_precision(prec_name, "--precision" if overrides.get("precision") else where)
    check_precision(hw, prec, where)
    wl = r.sub("workload", required=True)
    wl.used.update({"isl_tokens", "osl_tokens"})
    tr_data = r.data.get("traffic")
    r.used.add("traffic")
    # with lengths under traffic:, the workload's fixed lengths may be left out
    gives = set(tr_data) if isinstance(tr_data, Mapping) else set()
    has_isl, has_osl = bool(gives & {"isl", "lengths_csv"}), bool(gives & {"osl", "lengths_csv"})
    isl = overrides.get("isl") or wl.num("isl_tokens", 1024 if has_isl else None, integer=True)
    osl = overrides.get("osl") or wl.num("osl_tokens", 1024 if has_osl else None, integer=True)
    base_dir = Path(where).parent if Path(where).is_file() else None
    traffic = (traffic_from_dict(tr_data, where, base_dir, isl, osl) if tr_data is not None
               else Traffic().with_lengths(isl, osl))
    traffic = traffic.with_lengths(overrides.get("isl"), overrides.get("osl"))
    if overrides.get("rate") is not None:
        traffic = traffic.with_rate(overrides["rate"])
    lengths = traffic.workload_fields()
    isl, osl = lengths["isl"], lengths["osl"]
    hit = wl.num("prefix_hit", 0.0, positive=False, min_value=0)
    wl.finish()
    if overrides.get("prefix_hit") is not None:
        hit = overrides["prefix_hit"]
    if not 0.0 <= hit < 1.0:
        raise SpecError(f"{where if overrides.get('prefix_hit') is None else '--prefix-hit'}: prefix_hit must be "
                        f"in [0, 1) (the share of each prompt already in the prefix cache), got {hit}")
    for key, v in (("--isl", isl), ("--osl", osl)):
        if not 0 < v <= MAX_TOKENS:
            raise SpecError(f"{key} must be a positive number of tokens up to {MAX_TOKENS:,}, got {v}")
    spec = r.sub("speculative")
    draft, accept = 0, 0.0
    if spec is not None:
        draft = spec.num("draft_tokens", 0, integer=True, positive=False, min_value=0)
        accept = spec.num("acceptance", 0.0, positive=False, min_value=0)
        spec.finish()
    if overrides.get("draft_tokens") is not None:
        draft = overrides["draft_tokens"]
    if overrides.get("acceptance") is not None:
        accept = overrides["acceptance"]
    where_spec = f"{where} [speculative]" if spec is not None else "--draft-tokens/--acceptance"
    if draft > MAX_DRAFT_TOKENS:
        raise SpecError(f"{where_spec}: draft_tokens {draft} is more than {MAX_DRAFT_TOKENS}")
    if not 0.0 <= accept < 1.0:
        raise SpecError(f"{where_spec}: acceptance must be in [0, 1) (the probability a drafted token is "
                        f"accepted), got {accept}")
    if accept and not draft:
        raise SpecError(f"{where_spec}: an acceptance rate ({accept:g}) needs draft tokens (draft_tokens / "
                        f"--draft-tokens K > 0): without speculative decoding nothing is accepted")
    sla_r = r.sub("sla")
    if sla_r:
        sla_r.used.update({"min_tokens_per_s_per_user", "max_ttft_s"})
    sla = SLA(
        min_tokens_per_user=overrides.get("min_tokens_per_user")
        if overrides.get("min_tokens_per_user") is not None
        else (sla_r.num("min_tokens_per_s_per_user", 0.0, positive=False, min_value=0) if sla_r else 0.0),
        max_ttft_s=overrides.get("max_ttft") if overrides.get("max_ttft") is not None
        else (sla_r.num("max_ttft_s", math.inf) if sla_r else math.inf))
    if sla_r:
        sla_r.finish()
    search = r.sub("search")
    chunks, max_batch = DEFAULT_CHUNKS, 4096
    if search is not None:
        raw = search._get("chunk_sizes", list(DEFAULT_CHUNKS), False)
        if not isinstance(raw, list) or not raw or not all(isinstance(x, int) and not isinstance(x, bool)
                                                          and x > 0 for x in raw):
            raise SpecError(f"{where} [search]: key 'chunk_sizes' must be a list of positive whole "
                            f"numbers, got {raw!r}")
        chunks = tuple(sorted(set(raw)))
        max_batch = search.num("max_batch", 4096, integer=True)
        search.finish()
    backend = r.str("backend", "trtllm", allowed=BACKENDS)
    scheduler = r.str("scheduler", allowed=SCHEDULER_NAMES) if "scheduler" in r.data else None
    scheduler = overrides.get("scheduler") or scheduler
    if scheduler not in (None, *SCHEDULER_NAMES):
        raise SpecError(f"--scheduler '{scheduler}'; allowed: {', '.join(SCHEDULER_NAMES)}")
    params_file = r.str("params", "") or None      # a profile YAML path; "" / absent: the hardware's
    r.finish(also_allowed=("description", "name"))
    name = r.data.get("name") if isinstance(r.data.get("name"), str) else default_name
    return Experiment(name=name, model=model, hardware=hw, gpus=gpus, precision=prec,
                      workload=Workload(float(isl), float(osl), float(accept), int(draft), float(hit),
                                        lengths["isl_cv2"], lengths["decode_context_excess"]), sla=sla,
                      chunk_sizes=chunks,
                      max_batch=max_batch, backend=backend, params_file=params_file, scheduler=scheduler,
                      traffic=traffic)
