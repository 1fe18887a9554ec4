"""Measured kernel latencies, loaded into per-kind arrays and mapped onto the cost functions.

Two sources, one format:

* NVIDIA's TensorRT-LLM kernel tables, ``../shared/data/kernels/<gpu>/<table>.csv.gz`` (a folder,
  or one table file whose stem names the table);
* the CSV that ``jaxplan bench`` writes: the same tables' columns plus ``kernel_table``.

Each row is mapped onto one call of a :mod:`jaxplan.cost` op function, with the precision its
dtype columns select and the shape its columns give. A row that cannot be mapped is counted under
its reason (never dropped silently): ``Measurements.unmapped`` maps ``(table, reason)`` to a count.

Data conventions (checked against the tables):

* ``latency`` is in milliseconds; it is stored here in seconds.
* ``gemm_perf``: ``m`` = tokens, the weight is ``n x k``; ``gemm_dtype`` ``bfloat16``/``float16``
  (BF16 rate), ``fp8`` (per-tensor scales) and ``fp8_block`` (128-block scales, DeepGEMM-style),
  both at the FP8 rate, ``nvfp4`` (FP4 rate, Blackwell only).
* ``context_attention_perf``: causal prefill of ``batch_size`` sequences of ``isl`` tokens
  (``step`` = 0); ``window_size`` > 0 caps each query's key span (sliding window).
  ``attn_dtype`` picks the rate of the attention matmuls, ``kv_cache_dtype`` the KV bytes.
* ``generation_attention_perf``: one query token per sequence; ``isl`` is 1 and the cached KV length
  is ``isl + step`` (capped at ``window_size`` when set).
* ``context_mla_perf`` / ``generation_mla_perf``: DeepSeek-V3 MLA geometry (kv_lora_rank 512,
  rope 64, nope 128, v 128) with ``num_heads`` query heads on this GPU; same isl/step conventions.
* ``mla_bmm_perf``: the absorbed per-head matmuls of MLA decode: ``mla_gen_pre`` is
  q_nope[tokens, 128] x W_uk[128, 512] per head, ``mla_gen_post`` latent[tokens, 512] x
  W_uv[512, 128] per head.
* ``moe_perf``: one GPU's share of one MoE layer: ``num_tokens`` tokens of the whole EP group are
  routed over ``num_experts`` experts (top-``topk``); the GPU holds ``num_experts / moe_ep_size``
  experts, each sharded ``moe_tp_size`` ways. ``distribution`` is ``balanced`` or
  ``power_law_<alpha>`` (skewed expert loads; the benchmark puts the busiest experts on the
  measured rank).
* ``custom_allreduce_perf`` / ``nccl_perf``: ``message_size`` is in elements (the per-GPU buffer for
  all-reduce and all-to-all); the element size comes from the dtype column.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import gzip
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from .. import cost
from ..specs import SYSTEMS, Model, Precision, SpecError

MS = 1e-3

# Kinds the fit knows, in report order.
KINDS = ("gemm", "context_attention", "generation_attention", "context_mla", "generation_mla", "mla_bmm",
         "moe", "allreduce", "alltoall", "mem_copy")

# DeepSeek-V3 MLA geometry (Hugging Face config of deepseek-ai/DeepSeek-V3), the model of the MLA tables.
MLA_KV_LORA_RANK = 512
MLA_QK_ROPE_HEAD_DIM = 64
MLA_QK_NOPE_HEAD_DIM = 128
MLA_V_HEAD_DIM = 128

# Bytes per element of the collective dtype columns.
COLLECTIVE_DTYPE_BYTES = {"bfloat16": 2.0, "half": 2.0, "float16": 2.0, "float": 4.0, "float32": 4.0,
                          "int8": 1.0, "fp8": 1.0}

# --- precisions of the dtype columns: (tensor-core rate, weight bytes, quantized-activation bytes)
# NVFP4: 4-bit values + one FP8 scale per 16 = 4.5 bits; MXFP4: one 8-bit scale per 32 = 4.25 bits;
# MXFP8 activations: 8 bits + one 8-bit scale per 32.
GEMM_DTYPES = {
    "bfloat16": ("bf16", 2.0, 2.0),
    "float16": ("bf16", 2.0, 2.0),
    "fp8": ("fp8", 1.0, 1.0),
    "fp8_block": ("fp8", 1.0, 1.0),
    "nvfp4": ("fp4", 4.5 / 8, 4.5 / 8),
}
MOE_DTYPES = {
    **GEMM_DTYPES,
    # weight-only MXFP4 (Hopper): weights dequantized in the kernel, BF16 tensor-core math
    "w4a16_mxfp4": ("bf16", 4.25 / 8, 2.0),
    # MXFP4 weights x MXFP8 activations (Blackwell): the mixed-input MMA runs at the FP8 rate
    "w4a8_mxfp4_mxfp8": ("fp8", 4.25 / 8, 1.0 + 1.0 / 32),
}
# Kernel families whose fitted GEMM parameters differ: the 128-block-scaled FP8 kernels (DeepGEMM-style:
# per-128-k promotion, no split-K) get the ``*_fp8_block`` values in place of the ``*_fp8`` ones.
GEMM_FAMILY = {"bfloat16": "bf16", "float16": "bf16", "fp8": "fp8", "fp8_block": "fp8_block", "nvfp4": "fp4"}
KV_DTYPE_BYTES = {"bfloat16": 2.0, "float16": 2.0, "fp8": 1.0}
# XQA, TensorRT-LLM's decode kernel, serves query groups (heads per KV head) up to this size; larger
# groups fall back to the generic masked-MHA kernel that re-reads K/V per query head (the tables show
# ~20x slower rows at groups 48-128). No preset model has such groups; those rows are not mapped.
XQA_MAX_GROUP = 32
ATTN_DTYPE_RATE = {"bfloat16": "bf16", "float16": "bf16", "fp8": "fp8"}

# The kernel tables' expert routing -> the imbalance parameter that prices it. 'balanced' routes every
# expert the same number of tokens (no excess on the busiest rank); the synthetic power laws put the
# busiest experts on the measured rank.
MOE_ROUTING = {"balanced": 0, "power_law_1.01": 1, "power_law_1.2": 2}
MOE_ROUTING_PARAMS = (None, "moe_imbalance_powerlaw_101", "moe_imbalance_powerlaw_12")

TABLES_NOT_MAPPED = {
    "wideep_moe_perf": "wide-EP MoE with EPLB expert slots (num_slots, rank0_num_tokens): no counterpart in "
                       "cost.moe_experts",
    "trtllm_alltoall_perf": "TensorRT-LLM MoE dispatch/combine kernels: cost.alltoall prices an NCCL-style "
                            "all-to-all, not these one/two-sided NVLink kernels",
}


# ----------------------------------------------------------------------------- containers

@dataclasses.dataclass
class KindRows:
    """The mapped rows of one kind: float64 features, static code-path selectors, measured seconds.

    ``x``: name -> float array (the arguments of the cost call); ``static``: name -> str array, the
    values that select a code path (tensor-core rate, gated MLP, ...), so rows are evaluated in
    buckets of equal static values; ``variant``: a label for reports (dtype, implementation);
    ``group``: the holdout group key of each row; ``table``: the source table."""
    kind: str
    x: dict
    static: dict
    variant: np.ndarray
    group: np.ndarray
    table: np.ndarray
    seconds: np.ndarray

    def __len__(self):
        return len(self.seconds)

    def take(self, idx) -> KindRows:
        idx = np.asarray(idx)
        return KindRows(self.kind, {k: v[idx] for k, v in self.x.items()},
                        {k: v[idx] for k, v in self.static.items()}, self.variant[idx], self.group[idx],
                        self.table[idx], self.seconds[idx])

    @staticmethod
    def concat(parts: list[KindRows]) -> KindRows:
        parts = [q for q in parts if len(q)]
        first = parts[0]
        keys_x = set().union(*(q.x for q in parts))
        keys_s = set().union(*(q.static for q in parts))

        def col(q, k, default):
            return q.x[k] if k in q.x else np.full(len(q), default)
        return KindRows(first.kind,
                        {k: np.concatenate([col(q, k, np.nan) for q in parts]) for k in sorted(keys_x)},
                        {k: np.concatenate([q.static[k] if k in q.static else np.full(len(q), "")
                                            for q in parts]) for k in sorted(keys_s)},
                        np.concatenate([q.variant for q in parts]), np.concatenate([q.group for q in parts]),
                        np.concatenate([q.table for q in parts]), np.concatenate([q.seconds for q in parts]))

    def buckets(self) -> list[tuple[dict, np.ndarray]]:
        """(static values, row indices) for each distinct combination of static columns."""
        if not self.static:
            return [({}, np.arange(len(self)))]
        names = sorted(self.static)
        keys = np.array(["\x1f".join(t) for t in zip(*(self.static[n] for n in names))])
        out = []
        for key in sorted(set(keys.tolist())):
            out.append((dict(zip(names, key.split("\x1f"))), np.nonzero(keys == key)[0]))
        return out


@dataclasses.dataclass
class Measurements:
    kinds: dict                      # kind -> KindRows
    unmapped: collections.Counter    # (table, reason) -> rows
    sources: list                    # files read
    rows_read: int = 0

    def summary(self) -> str:
        lines = [f"read {self.rows_read:,} rows from {len(self.sources)} file(s); mapped: "
                 + ", ".join(f"{k} {len(v):,}" for k, v in self.kinds.items())]
        if self.unmapped:
            lines.append(f"not mapped: {sum(self.unmapped.values()):,} rows")
            for (table, reason), n in sorted(self.unmapped.items()):
                lines.append(f"  {n:>7,}  {table}: {reason}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- reading

def _read_csv(path: Path) -> dict[str, np.ndarray]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="") as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader)
            except StopIteration:
                raise SpecError(f"{path}: empty file (expected a CSV header)") from None
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SpecError(f"{path}: cannot read as CSV: {e}") from None
    rows = [r for r in rows if r]
    cols = {}
    for j, name in enumerate(header):
        cols[name] = np.array([r[j] if j < len(r) else "" for r in rows], dtype=object).astype(str)
    cols["__n__"] = np.array([len(rows)])
    return cols


def _num(cols, name, n):
    if name not in cols:
        return np.full(n, np.nan)
    raw = cols[name]
    out = np.full(n, np.nan)
    ok = raw != ""
    try:
        out[ok] = raw[ok].astype(float)
    except ValueError:
        for i in np.nonzero(ok)[0]:
            try:
                out[i] = float(raw[i])
            except ValueError:
                pass
    return out


def _str(cols, name, n):
    return cols[name] if name in cols else np.full(n, "", dtype=object).astype(str)


class _Mapper:
    """Collects per-row reasons; rows with no reason are mapped."""

    def __init__(self, table: str, n: int):
        self.table, self.n = table, n
        self.reason = np.full(n, "", dtype=object)

    def reject(self, mask, reason):
        mask = np.asarray(mask, bool) & (self.reason == "")
        self.reason[mask] = reason

    def reject_each(self, values, allowed: Mapping, what: str):
        bad = ~np.isin(values, list(allowed))
        for v in sorted(set(values[bad].tolist())):
            self.reject(bad & (values == v), f"{what} '{v}' has no jaxplan precision"
                        if v else f"{what} is blank")

    @property
    def ok(self):
        return self.reason == ""

    def counts(self):
        return collections.Counter((self.table, r) for r in self.reason.tolist() if r)


# Beyond these a row is a typo or an overflow, not a kernel anyone ran: shape columns (tokens,
# sizes, heads, GPUs) stay within a 32-bit count, a latency within a day.
MAX_SHAPE = 2.0**31
MAX_LATENCY_MS = 86_400e3


def _latency(cols, m: _Mapper):
    lat = _num(cols, "latency", m.n)
    m.reject(~np.isfinite(lat) | ~(lat > 0), "latency missing or not positive")
    m.reject(lat > MAX_LATENCY_MS, f"latency beyond {MAX_LATENCY_MS:g} ms")
    return lat * MS


def _need(cols, m: _Mapper, names):
    out = {}
    for name in names:
        v = _num(cols, name, m.n)
        m.reject(~np.isfinite(v), f"column '{name}' missing or not a number")
        m.reject(np.abs(np.nan_to_num(v)) >= MAX_SHAPE, f"column '{name}' beyond any real kernel (>= 2^31)")
        out[name] = v
    return out


def _group(*parts) -> np.ndarray:
    return np.array(["|".join(str(x) for x in t) for t in zip(*parts)], dtype=object).astype(str)


def _fmt_num(a):
    return np.array([f"{v:g}" for v in a], dtype=object).astype(str)


def _mean_keys_per_query(isl, window):
    """Causal attention: query i (1-based) sees min(i, w) keys. Mean over the isl queries."""
    s = isl
    full = (s + 1.0) / 2.0
    on = window > 0
    w = np.where(on, window, 1.0)
    capped = (w * (w + 1.0) / 2.0 + (s - w) * w) / np.maximum(s, 1.0)
    return np.where(on & (s > w), capped, full)


# ----------------------------------------------------------------------------- table mappers

def _map_gemm(table, cols, n):
    m = _Mapper(table, n)
    sec = _latency(cols, m)
    v = _need(cols, m, ["m", "n", "k"])
    m.reject((v["m"] < 1) | (v["n"] < 1) | (v["k"] < 1), "m, n and k must be >= 1")
    dt = _str(cols, "gemm_dtype", n)
    m.reject_each(dt, GEMM_DTYPES, "gemm_dtype")
    rate = np.array([GEMM_DTYPES.get(d, ("", 0, 0))[0] for d in dt], dtype=object).astype(str)
    wb = np.array([GEMM_DTYPES.get(d, ("", 0, 0))[1] for d in dt])
    ab = np.array([GEMM_DTYPES.get(d, ("", 0, 0))[2] for d in dt])
    family = np.array([GEMM_FAMILY.get(d, "") for d in dt], dtype=object).astype(str)
    rows = KindRows("gemm", dict(m=v["m"], n=v["n"], k=v["k"], weight_bytes=wb, qact_bytes=ab),
                    dict(rate=rate, family=family), dt, _group(_fmt_num(v["n"]), _fmt_num(v["k"])),
                    np.full(n, table).astype(str), sec)
    return {"gemm": (rows, m.ok)}, m.counts()


def _attn_common(table, cols, n, m):
    v = _need(cols, m, ["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim"])
    for k in ("batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim"):
        m.reject(v[k] < 1, f"{k} must be >= 1")
    m.reject(np.fmod(v["num_heads"], np.maximum(v["num_key_value_heads"], 1)) != 0,
             "num_heads is not a multiple of num_key_value_heads")
    beam = _num(cols, "beam_width", n)
    m.reject(np.isfinite(beam) & (beam != 1), "beam_width != 1 (beam search) is not modelled")
    win = np.nan_to_num(_num(cols, "window_size", n), nan=0.0)
    step = np.nan_to_num(_num(cols, "step", n), nan=0.0)
    kvd = _str(cols, "kv_cache_dtype", n)
    m.reject_each(kvd, KV_DTYPE_BYTES, "kv_cache_dtype")
    ad = _str(cols, "attn_dtype", n)
    ad = np.where(ad == "", "bfloat16", ad)
    m.reject_each(ad, ATTN_DTYPE_RATE, "attn_dtype")
    kvb = np.array([KV_DTYPE_BYTES.get(d, 0.0) for d in kvd])
    rate = np.array([ATTN_DTYPE_RATE.get(d, "") for d in ad], dtype=object).astype(str)
    return v, win, step, kvb, rate, kvd, ad


def _map_context_attention(table, cols, n):
    m = _Mapper(table, n)
    sec = _latency(cols, m)
    v, win, step, kvb, rate, kvd, ad = _attn_common(table, cols, n, m)
    m.reject(step != 0, "context step != 0 (prefix already cached) is not mapped")
    b, s = v["batch_size"], v["isl"]
    # TensorRT-LLM's context FMHA runs in FP8 whenever the KV cache is FP8 (the tables' 'bfloat16 attn,
    # fp8 kv' rows run at the FP8 rows' speed); its sliding-window variant has no FP8 path (those rows
    # run ~1.5x slower than FP8 once the window cuts in) and is priced at the BF16 rate.
    rate = np.where(kvb == 1.0, "fp8", rate)
    rate = np.where((win > 0) & (s > win), "bf16", rate).astype(str)
    x = dict(q_tokens=b * s, ctx=_mean_keys_per_query(s, win), heads=v["num_heads"],
             kv_heads=v["num_key_value_heads"], head_dim=v["head_dim"], kv_bytes=kvb, batch=b, isl=s,
             window=win)
    variant = _group(np.char.add("attn_", ad.astype(str)), np.char.add("kv_", kvd.astype(str)))
    group = _group(_fmt_num(v["num_heads"]), _fmt_num(v["num_key_value_heads"]), _fmt_num(v["head_dim"]))
    rows = KindRows("context_attention", x, dict(rate=rate), variant, group, np.full(n, table).astype(str), sec)
    return {"context_attention": (rows, m.ok)}, m.counts()


def _map_generation_attention(table, cols, n):
    m = _Mapper(table, n)
    sec = _latency(cols, m)
    v, win, step, kvb, rate, kvd, ad = _attn_common(table, cols, n, m)
    kv_len = v["isl"] + step                 # cached context: isl + step (isl is 1 in the tables)
    kv_len = np.where(win > 0, np.minimum(kv_len, win), kv_len)
    group = v["num_heads"] / np.maximum(v["num_key_value_heads"], 1)
    m.reject(group > XQA_MAX_GROUP, f"query group > {XQA_MAX_GROUP} heads per KV head: TensorRT-LLM falls back "
             "from XQA to the generic masked-MHA kernel, not modelled (no preset model has such groups)")
    rate = np.where(kvb == 1.0, "fp8", rate).astype(str)     # XQA runs FP8 MMAs on an FP8 cache

    x = dict(seqs=v["batch_size"], kv_len=kv_len, heads=v["num_heads"], kv_heads=v["num_key_value_heads"],
             head_dim=v["head_dim"], kv_bytes=kvb, window=win)
    variant = np.char.add("kv_", kvd.astype(str)).astype(str)
    group = _group(_fmt_num(v["num_heads"]), _fmt_num(v["num_key_value_heads"]), _fmt_num(v["head_dim"]))
    rows = KindRows("generation_attention", x, dict(rate=rate), variant, group,
                    np.full(n, table).astype(str), sec)
    return {"generation_attention": (rows, m.ok)}, m.counts()


def _mla_common(table, cols, n, m):
    v = _need(cols, m, ["batch_size", "isl", "num_heads"])
    for k in ("batch_size", "isl", "num_heads"):
        m.reject(v[k] < 1, f"{k} must be >= 1")
    dt = _str(cols, "mla_dtype", n)
    m.reject((dt != "") & (dt != "bfloat16"), "mla_dtype other than bfloat16 is not mapped")
    kvd = _str(cols, "kv_cache_dtype", n)
    m.reject_each(kvd, KV_DTYPE_BYTES, "kv_cache_dtype")
    kvb = np.array([KV_DTYPE_BYTES.get(d, 0.0) for d in kvd])
    step = np.nan_to_num(_num(cols, "step", n), nan=0.0)
    return v, kvb, kvd, step


def _map_context_mla(table, cols, n):
    m = _Mapper(table, n)
    sec = _latency(cols, m)
    v, kvb, kvd, step = _mla_common(table, cols, n, m)
    m.reject(step != 0, "context step != 0 (prefix already cached) is not mapped")
    b, s = v["batch_size"], v["isl"]
    x = dict(q_tokens=b * s, ctx=(s + 1.0) / 2.0, heads=v["num_heads"], kv_bytes=kvb, batch=b, isl=s)
    rows = KindRows("context_mla", x, dict(rate=np.full(n, "bf16").astype(str)),
                    np.char.add("kv_", kvd.astype(str)).astype(str), _group(_fmt_num(v["num_heads"]), _fmt_num(s)),
                    np.full(n, table).astype(str), sec)
    return {"context_mla": (rows, m.ok)}, m.counts()


def _map_generation_mla(table, cols, n):
    m = _Mapper(table, n)
    sec = _latency(cols, m)
    v, kvb, kvd, step = _mla_common(table, cols, n, m)
    kv_len = v["isl"] + step
    x = dict(seqs=v["batch_size"], kv_len=kv_len, heads=v["num_heads"], kv_bytes=kvb)
    rows = KindRows("generation_mla", x, dict(rate=np.full(n, "bf16").astype(str)),
                    np.char.add("kv_", kvd.astype(str)).astype(str),
                    _group(_fmt_num(v["num_heads"]), _fmt_num(kv_len)), np.full(n, table).astype(str), sec)
    return {"generation_mla": (rows, m.ok)}, m.counts()


def _map_mla_bmm(table, cols, n):
    m = _Mapper(table, n)
    sec = _latency(cols, m)
    v = _need(cols, m, ["num_tokens", "num_heads"])
    op = _str(cols, "op_name", n)
    m.reject(~np.isin(op, ["mla_gen_pre", "mla_gen_post"]), "op_name is not mla_gen_pre or mla_gen_post")
    dt = _str(cols, "bmm_dtype", n)
    m.reject_each(dt, {"bfloat16": 0, "fp8": 0}, "bmm_dtype")
    src = _str(cols, "kernel_source", n)
    # FP8 weights; Blackwell's "dequant_bf16" kernel widens them to BF16 before the MMA.
    rate = np.where((dt == "fp8") & (np.char.find(src.astype(str), "dequant_bf16") < 0), "fp8", "bf16")
    wb = np.where(dt == "fp8", 1.0, 2.0)
    pre = op == "mla_gen_pre"
    nn = np.where(pre, MLA_KV_LORA_RANK, MLA_V_HEAD_DIM).astype(float)
    kk = np.where(pre, MLA_QK_NOPE_HEAD_DIM, MLA_KV_LORA_RANK).astype(float)
    x = dict(m=v["num_tokens"], n=nn, k=kk, batch=v["num_heads"], weight_bytes=wb,
             qact_bytes=np.where(rate == "fp8", 1.0, 2.0))
    family = np.where(rate == "bf16", "bf16",
                      np.where(np.char.find(src.astype(str), "block") >= 0, "fp8_block", "fp8")).astype(str)
    rows = KindRows("mla_bmm", x, dict(rate=rate.astype(str), family=family), _group(op, dt),
                    _group(op, _fmt_num(v["num_heads"])), np.full(n, table).astype(str), sec)
    return {"mla_bmm": (rows, m.ok)}, m.counts()


def _map_moe(table, cols, n):
    m = _Mapper(table, n)
    sec = _latency(cols, m)
    names = ["num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size", "moe_ep_size"]
    v = _need(cols, m, names)
    for k in names:
        m.reject(v[k] < 1, f"{k} must be >= 1")
    m.reject(v["topk"] > v["num_experts"], "topk exceeds num_experts")
    m.reject(np.fmod(v["num_experts"], np.maximum(v["moe_ep_size"], 1)) != 0,
             "num_experts is not a multiple of moe_ep_size")
    dt = _str(cols, "moe_dtype", n)
    m.reject_each(dt, MOE_DTYPES, "moe_dtype")
    dist = _str(cols, "distribution", n)
    dist = np.where(dist == "", "balanced", dist)
    alpha = np.zeros(n)
    for d in sorted(set(dist.tolist())):
        sel = dist == d
        if d == "balanced":
            continue
        if d.startswith("power_law_"):
            try:
                alpha[sel] = float(d[len("power_law_"):])
                continue
            except ValueError:
                pass
        m.reject(sel, f"distribution '{d}' is neither balanced nor power_law_<alpha>")
    src = _str(cols, "kernel_source", n)
    gated = np.where(np.char.find(src.astype(str), "nongated") >= 0, "no", "yes")
    spec = [MOE_DTYPES.get(d, ("", 0.0, 0.0)) for d in dt]
    x = dict(tokens=v["num_tokens"], hidden=v["hidden_size"], inter=v["inter_size"], topk=v["topk"],
             experts=v["num_experts"], tp=v["moe_tp_size"], ep=v["moe_ep_size"], alpha=alpha,
             weight_bytes=np.array([s[1] for s in spec]), qact_bytes=np.array([s[2] for s in spec]))
    rate = np.array([s[0] for s in spec], dtype=object).astype(str)
    group = _group(_fmt_num(v["hidden_size"]), _fmt_num(v["inter_size"]), _fmt_num(v["num_experts"]),
                   _fmt_num(v["topk"]))
    routing = np.array([MOE_ROUTING.get(d, -1) for d in dist], dtype=float)
    m.reject(routing < 0, "power-law routing with an exponent other than 1.01 or 1.2 has no fitted imbalance")
    x["routing"] = routing
    family = np.where(dt == "fp8_block", "fp8_block", "").astype(str)
    rows = KindRows("moe", x, dict(rate=rate, gated=gated.astype(str), family=family),
                    _group(dt, dist), group,
                    np.full(n, table).astype(str), sec)
    return {"moe": (rows, m.ok)}, m.counts()


def _size_band(elements):
    """Message-size band for holdout groups: powers of two in steps of 8 (2^0-2^2, 2^3-2^5, ...)."""
    return np.floor(np.log2(np.maximum(elements, 1)) / 3).astype(int)


def _collective(cols, m, n, dtype_col, default_dtype=None):
    """Shared features of a collective row: message bytes (elements x element size), GPU count,
    and the message-size band that groups the holdout. Returns (features, dtype, group)."""
    v = _need(cols, m, ["num_gpus", "message_size"])
    m.reject(v["num_gpus"] < 2, "num_gpus < 2")
    dt = _str(cols, dtype_col, n)
    if default_dtype:
        dt = np.where(dt == "", default_dtype, dt)
    m.reject(~np.isin(dt, list(COLLECTIVE_DTYPE_BYTES)), f"{dtype_col} has no known element size")
    eb = np.array([COLLECTIVE_DTYPE_BYTES.get(d, 0.0) for d in dt])
    x = dict(nbytes=v["message_size"] * eb, n=v["num_gpus"], elements=v["message_size"])
    return x, dt, _group(np.full(n, "band"), _size_band(v["message_size"]))


def _map_custom_allreduce(table, cols, n):
    m = _Mapper(table, n)
    sec = _latency(cols, m)
    x, _, group = _collective(cols, m, n, "allreduce_dtype", "bfloat16")
    rows = KindRows("allreduce", x, dict(impl=np.full(n, "trtllm").astype(str)),
                    np.full(n, "trtllm_custom").astype(str),
                    group, np.full(n, table).astype(str), sec)
    return {"allreduce": (rows, m.ok)}, m.counts()


def _map_nccl(table, cols, n):
    m = _Mapper(table, n)
    sec = _latency(cols, m)
    op = _str(cols, "op_name", n)
    for o in sorted(set(op.tolist()) - {"all_reduce", "alltoall"}):
        m.reject(op == o, f"NCCL {o or 'blank op_name'}: no cost function for it in jaxplan.cost")
    x, dt, group = _collective(cols, m, n, "nccl_dtype")
    tab = np.full(n, table).astype(str)
    variant = np.char.add("nccl_", dt.astype(str)).astype(str)
    ar = KindRows("allreduce", x, dict(impl=np.full(n, "nccl").astype(str)), variant, group, tab, sec)
    a2a = KindRows("alltoall", dict(x), {}, variant, group, tab, sec)
    return {"allreduce": (ar, m.ok & (op == "all_reduce")), "alltoall": (a2a, m.ok & (op == "alltoall"))}, m.counts()


def _map_mem_copy(table, cols, n):
    m = _Mapper(table, n)
    sec = _latency(cols, m)
    v = _need(cols, m, ["message_size"])
    m.reject(v["message_size"] < 1, "message_size must be >= 1")
    x = dict(nbytes=2.0 * v["message_size"])   # message_size bytes read once and written once
    rows = KindRows("mem_copy", x, {}, np.full(n, "copy").astype(str),
                    _group(np.full(n, "band"), _size_band(v["message_size"])), np.full(n, table).astype(str), sec)
    return {"mem_copy": (rows, m.ok)}, m.counts()


MAPPERS: dict[str, Callable] = {
    "gemm_perf": _map_gemm,
    "context_attention_perf": _map_context_attention,
    "generation_attention_perf": _map_generation_attention,
    "context_mla_perf": _map_context_mla,
    "generation_mla_perf": _map_generation_mla,
    "mla_bmm_perf": _map_mla_bmm,
    "moe_perf": _map_moe,
    "custom_allreduce_perf": _map_custom_allreduce,
    "nccl_perf": _map_nccl,
    "mem_copy_perf": _map_mem_copy,
}


def _map_table(table: str, cols: dict, n: int):
    if table in MAPPERS:
        return MAPPERS[table](table, cols, n)
    reason = TABLES_NOT_MAPPED.get(table, "unknown kernel table (no mapping onto a cost function)")
    return {}, collections.Counter({(table, reason): n}) if n else collections.Counter()


def _subset(cols, mask):
    return {k: v[mask] for k, v in cols.items() if k != "__n__"}


class _Acc:
    def __init__(self):
        self.parts = collections.defaultdict(list)
        self.unmapped = collections.Counter()
        self.sources, self.rows = [], 0

    def add(self, table, cols, n):
        mapped, bad = _map_table(table, cols, n)
        self.unmapped.update(bad)
        for kind, (rows, ok) in mapped.items():
            if ok.any():
                self.parts[kind].append(rows.take(np.nonzero(ok)[0]))
        self.rows += n

    def done(self, hardware=None) -> Measurements:
        kinds = {}
        for kind in KINDS:
            if self.parts.get(kind):
                kinds[kind] = KindRows.concat(self.parts[kind])
        meas = Measurements(kinds, self.unmapped, self.sources, self.rows)
        if hardware is not None:
            restrict_to_hardware(meas, hardware)
        return meas


def restrict_to_hardware(meas: Measurements, hw) -> Measurements:
    """Move rows whose tensor-core rate the hardware lacks (FP4 on Hopper) to ``unmapped``."""
    for kind, rows in list(meas.kinds.items()):
        if "rate" not in rows.static:
            continue
        bad = ~np.isin(rows.static["rate"], list(hw.rates))
        if bad.any():
            for r in sorted(set(rows.static["rate"][bad].tolist())):
                sel = bad & (rows.static["rate"] == r)
                for t in sorted(set(rows.table[sel].tolist())):
                    meas.unmapped[(t, f"{r} rate: hardware '{hw.name}' has no {r} tensor cores")] += \
                        int((sel & (rows.table == t)).sum())
            keep = np.nonzero(~bad)[0]
            if len(keep):
                meas.kinds[kind] = rows.take(keep)
            else:
                del meas.kinds[kind]
    return meas


def table_name(path: Path) -> str:
    name = path.name
    for suf in (".csv.gz", ".csv"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return path.stem


def load_kernels_dir(path: str | Path, hardware=None) -> Measurements:
    """Every ``*.csv.gz`` / ``*.csv`` table of one GPU's folder (e.g. ``../shared/data/kernels/h100_sxm``)."""
    path = Path(path)
    if not path.is_dir():
        raise SpecError(f"kernel folder '{path}' does not exist")
    files = sorted(p for p in path.iterdir() if p.name.endswith((".csv.gz", ".csv")))
    if not files:
        raise SpecError(f"kernel folder '{path}' holds no *.csv.gz or *.csv tables")
    acc = _Acc()
    for f in files:
        _add_file(acc, f)
    return acc.done(hardware)


def _add_file(acc: _Acc, path: Path):
    cols = _read_csv(path)
    n = int(cols["__n__"][0])
    acc.sources.append(str(path))
    if "kernel_table" in cols:
        tables = cols["kernel_table"]
        for t in sorted(set(tables.tolist())):
            sel = tables == t
            acc.add(t or "(blank kernel_table)", _subset(cols, sel), int(sel.sum()))
    else:
        acc.add(table_name(path), _subset(cols, np.ones(n, bool)), n)


def load_kernel_file(path: str | Path, hardware=None) -> Measurements:
    """One table (``gemm_perf.csv.gz``: the stem names the table) or one ``jaxplan bench`` CSV
    (its ``kernel_table`` column names each row's table)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"kernel file '{path}' does not exist")
    acc = _Acc()
    _add_file(acc, path)
    return acc.done(hardware)


def load_kernel_files(paths, hardware=None) -> Measurements:
    """Several table files (or bench CSVs) into one Measurements."""
    acc = _Acc()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"kernel file '{path}' does not exist")
        _add_file(acc, path)
    return acc.done(hardware)


def load_bench_csv(path: str | Path, hardware=None) -> Measurements:
    """The CSV written by ``jaxplan bench`` (rows carry ``kernel_table``)."""
    return load_kernel_file(path, hardware)


def load_kernels(path: str | Path, hardware=None) -> Measurements:
    """A folder of tables, one table file, or a bench CSV."""
    path = Path(path)
    return load_kernels_dir(path, hardware) if path.is_dir() else load_kernel_file(path, hardware)


def data_dir() -> Path:
    """The measured data: ``$JAXPLAN_DATA``, else ``../shared/data`` beside the repository that holds
    the package."""
    env = os.environ.get("JAXPLAN_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


def default_kernels_dir(hardware_name: str) -> Path:
    """``<data>/kernels/<system>`` (:func:`data_dir`) of a hardware preset name (``specs.SYSTEMS``)."""
    system = {v: k for k, v in SYSTEMS.items()}.get(hardware_name)
    if system is None:
        raise SpecError(f"no shared kernel tables for hardware '{hardware_name}'; tables exist for "
                        f"{', '.join(SYSTEMS.values())}; give --kernels DIR_OR_FILE")
    return data_dir() / "kernels" / system


# ----------------------------------------------------------------------------- rows -> cost calls

@functools.cache
def _array_model_class():
    @dataclasses.dataclass(frozen=True)
    class ArrayModel(Model):
        """A Model whose shape fields hold one value per table row (arrays): the parameter counts the
        ops read are computed without Model's float() casts."""

        def expert_params(self):
            return self.mlp_matrices * self.hidden_size * self.expert_intermediate_size
    return ArrayModel


@functools.cache
def _base_models():
    """Template models whose shape fields are replaced per row (only the fields the op reads matter)."""
    Model = _array_model_class()
    gqa = Model(name="kernel-table-gqa", num_layers=1, hidden_size=4096, num_heads=32, num_kv_heads=8,
                head_dim=128, ffn_intermediate_size=14336, vocab_size=32000)
    mla = dataclasses.replace(gqa, name="kernel-table-mla (DeepSeek-V3 MLA)", attention="mla", num_heads=128,
                              q_lora_rank=1536, kv_lora_rank=MLA_KV_LORA_RANK,
                              qk_nope_head_dim=MLA_QK_NOPE_HEAD_DIM, qk_rope_head_dim=MLA_QK_ROPE_HEAD_DIM,
                              v_head_dim=MLA_V_HEAD_DIM)
    moe = dataclasses.replace(gqa, name="kernel-table-moe", num_experts=8, top_k=2, expert_intermediate_size=14336,
                              ffn_intermediate_size=0)
    return gqa, mla, moe


def row_precision(rate: str, weight_bytes=2.0, qact_bytes=2.0, kv_bytes=2.0):
    """A Precision whose byte counts may be per-row arrays; ``rate`` (static) picks the tensor cores."""
    return Precision(f"table-{rate}", weight_bytes, rate, kv_bytes, rate, qact_bytes)


GEMM_FAMILY_KEYS = ("gemm_eff_{}", "gemm_k_extra_{}", "gemm_wave_elems_{}", "gemm_splitk_min_k_{}",
                    "gemm_quant_bytes_{}", "gemm_quant_latency_{}_s")


def family_params(kind: str, p: Mapping, static: Mapping, x: Mapping | None = None) -> dict:
    """The parameters as one kernel family of the tables sees them.

    * GEMM rows of the 128-block-scaled FP8 family use the ``*_fp8_block`` values in place of ``*_fp8``;
    * MoE rows: the routing of the table row picks the busiest-rank imbalance (``balanced``: none);
      block-scaled FP8 experts use ``moe_eff_scale_fp8_block``;
    * NCCL all-reduce rows use the ``nccl_allreduce_*`` latency and bandwidth (the ``allreduce_*``
      values are TensorRT-LLM's custom all-reduce, the one its TP layers use)."""
    q = dict(p)
    if kind in ("gemm", "mla_bmm") and static.get("family") == "fp8_block":
        for key in GEMM_FAMILY_KEYS:
            q[key.format("fp8")] = p[key.format("fp8_block")]
    if kind == "moe":
        r = x["routing"] if x is not None and "routing" in x else 0.0
        q["moe_imbalance_per_log2_ep"] = jnp.where(r == 1, p[MOE_ROUTING_PARAMS[1]],
                                                   jnp.where(r == 2, p[MOE_ROUTING_PARAMS[2]], 0.0))
        if static.get("family") == "fp8_block":
            q["moe_eff_scale_fp8"] = p["moe_eff_scale_fp8_block"]
    if kind == "allreduce" and static.get("impl") == "nccl":
        q["allreduce_latency_nvlink_s"] = p["nccl_allreduce_latency_s"]
        q["allreduce_bw_eff_nvlink"] = p["nccl_allreduce_bw_eff"]
        q["allreduce_oneshot_latency_s"] = 1e-2 + 0.0 * p["allreduce_oneshot_latency_s"]   # NCCL: no one-shot
    return q


def predict_seconds(kind: str, p, hw, x: Mapping, static: Mapping):
    """Predicted seconds of rows of one kind and one static bucket: the jaxplan.cost call each row maps to.
    ``x`` holds arrays (numpy or traced); ``static`` the bucket's code-path selectors."""
    gqa, mla, moe = _base_models()
    rate = static.get("rate", "bf16")
    p = family_params(kind, p, static, x)
    if kind in ("gemm", "mla_bmm"):
        prec = row_precision(rate, x["weight_bytes"], x["qact_bytes"])
        return cost.gemm(p, hw, prec, x["m"], x["n"], x["k"], batch=x.get("batch", 1.0)).total()
    if kind == "context_attention":
        model = dataclasses.replace(gqa, num_heads=x["heads"], num_kv_heads=x["kv_heads"], head_dim=x["head_dim"])
        prec = row_precision(rate, kv_bytes=x["kv_bytes"])
        return cost.attention_prefill(p, hw, model, prec, x["q_tokens"], x["ctx"], x["heads"], x["kv_heads"]).total()
    if kind == "generation_attention":
        model = dataclasses.replace(gqa, num_heads=x["heads"], num_kv_heads=x["kv_heads"], head_dim=x["head_dim"])
        prec = row_precision(rate, kv_bytes=x["kv_bytes"])
        return cost.attention_decode(p, hw, model, prec, x["seqs"], x["kv_len"], x["heads"], x["kv_heads"]).total()
    if kind == "context_mla":
        prec = row_precision(rate, kv_bytes=x["kv_bytes"])
        return cost.attention_prefill(p, hw, mla, prec, x["q_tokens"], x["ctx"], x["heads"], 1.0).total()
    if kind == "generation_mla":
        prec = row_precision(rate, kv_bytes=x["kv_bytes"])
        return cost.attention_decode(p, hw, mla, prec, x["seqs"], x["kv_len"], x["heads"], 1.0).total()
    if kind == "moe":
        model = dataclasses.replace(moe, hidden_size=x["hidden"], expert_intermediate_size=x["inter"],
                                    top_k=x["topk"], num_experts=x["experts"],
                                    mlp_gated=static.get("gated", "yes") == "yes")
        prec = row_precision(rate, x["weight_bytes"], x["qact_bytes"])
        return cost.moe_experts(p, hw, model, prec, x["tokens"], x["tp"], x["ep"]).total()
    if kind == "allreduce":
        return cost.allreduce(p, hw, x["nbytes"], x["n"])
    if kind == "alltoall":
        return cost.alltoall(p, hw, x["nbytes"], x["n"], x["n"])
    if kind == "mem_copy":
        # one streaming kernel: bytes over HBM bandwidth plus one kernel's fixed time
        return cost.elementwise(p, hw, x["nbytes"]).total() + p["kernel_latency_s"]
    raise ValueError(f"unknown kind {kind!r}")


# ----------------------------------------------------------------------------- holdout split

def stable_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def holdout_groups(groups, frac: float = 0.2, salt: str = "") -> set:
    """Deterministic choice of whole groups to hold out: the ``round(frac * G)`` groups (at least one
    when there are two or more) with the smallest hash of their key."""
    uniq = sorted(set(groups))
    if len(uniq) < 2 or frac <= 0:
        return set()
    k = min(len(uniq) - 1, max(1, int(round(frac * len(uniq)))))
    ranked = sorted(uniq, key=lambda g: stable_hash(f"{salt}|{g}"))
    return set(ranked[:k])
