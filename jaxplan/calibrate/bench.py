"""Measure the local JAX devices into the layout of NVIDIA's TensorRT-LLM kernel tables.

``measure`` times GEMMs, an HBM copy, prefill and decode attention and the four
collectives on the devices JAX sees; ``report.write_bench`` writes ONE CSV whose rows carry a column
``kernel_table`` (``gemm_perf``, ``context_attention_perf``, ``generation_attention_perf``,
``nccl_perf``, ``mem_copy_perf``) followed by the union of those tables' columns, named and
encoded as in ``../shared/data/kernels/<gpu>/<table>.csv.gz`` (blank where a column does not
apply to the row). Latency is in milliseconds, as there. A sidecar ``<out>.meta.yaml`` records
the device, the versions, the date, the timing method and what was skipped.

Conventions copied from the shared tables:

* ``gemm_perf``: ``gemm_dtype`` is ``bfloat16`` (BF16 inputs and output) or ``fp8``
  (``float8_e4m3fn`` inputs, BF16 output; only on GPUs of compute capability >= 8.9);
  ``m`` = tokens, the weight is ``n x k``.
* ``context_attention_perf``: causal prefill over ``isl`` tokens, ``step = 0``,
  ``window_size = 0``, ``beam_width = 1``.
* ``generation_attention_perf``: one new query token per sequence. As in the shared tables
  (where ``isl`` is always 1), ``isl = 1`` and ``step = kv_len - 1``: the KV cache read holds
  ``isl + step = kv_len`` tokens.
* ``nccl_perf``: ``nccl_dtype`` ``half`` (float16) or ``int8``; ``num_gpus`` = devices in the
  collective; ``message_size`` in elements as nccl-tests' "size": the whole logical tensor
  (the per-device buffer of all_reduce and alltoall, the gathered output of all_gather, the
  input of reduce_scatter). This matches the H100 rows, whose bus bandwidths come out near
  NVLink's only under that reading.
* ``mem_copy_perf`` (no counterpart in the shared data): ``message_size`` = bytes copied
  (read once and written once), ``op_name = mem_copy``.

CLI: ``jaxplan bench [--quick] [--out FILE.csv]``.
"""
from __future__ import annotations

import datetime as _dt
import functools
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..specs import SpecError

# ----------------------------------------------------------------------------- table layout

COMMON_COLUMNS = ["framework", "version", "device", "op_name", "kernel_source"]
_ATTN_COLUMNS = ["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim",
                 "window_size", "beam_width", "attn_dtype", "kv_cache_dtype", "step"]
TABLE_COLUMNS: dict[str, list[str]] = {
    "gemm_perf": COMMON_COLUMNS + ["gemm_dtype", "m", "n", "k", "latency"],
    "context_attention_perf": COMMON_COLUMNS + _ATTN_COLUMNS + ["latency"],
    "generation_attention_perf": COMMON_COLUMNS + _ATTN_COLUMNS + ["latency"],
    "nccl_perf": COMMON_COLUMNS + ["nccl_dtype", "num_gpus", "message_size", "latency"],
    "mem_copy_perf": COMMON_COLUMNS + ["message_size", "latency"],
}
KERNEL_TABLES = list(TABLE_COLUMNS)


def _union_columns() -> list[str]:
    cols: list[str] = ["kernel_table"]
    for table_cols in TABLE_COLUMNS.values():
        for c in table_cols:
            if c != "latency" and c not in cols:
                cols.append(c)
    return cols + ["latency"]


CSV_COLUMNS = _union_columns()
FRAMEWORK = "JAX"
KERNEL_SOURCE = "jax-xla"

# Llama-3.1 8B and 70B: the projections whose GEMMs dominate a dense decoder layer.
LLAMA_SHAPES = {
    "llama-3.1-8b": dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128),
    "llama-3.1-70b": dict(hidden=8192, intermediate=28672, heads=64, kv_heads=8, head_dim=128),
}
TP_SIZES = (1, 2, 4, 8)

# L2 per GPU (bytes), to size the buffer rotation: inputs rotate through enough buffers
# that their total exceeds twice the L2, so no case is timed out of a warm cache.
_L2_BYTES = [("H100", 50 << 20), ("H200", 50 << 20), ("H800", 50 << 20), ("H20", 60 << 20),
             ("GB200", 126 << 20), ("B200", 126 << 20), ("B100", 126 << 20),
             ("A100", 40 << 20), ("A800", 40 << 20), ("L40", 96 << 20), ("L4", 48 << 20),
             ("4090", 72 << 20)]
_L2_DEFAULT_GPU = 128 << 20


def gemm_shapes() -> list[tuple[int, int]]:
    """(n, k) of the Llama-3.1-8B/70B projections per GPU at TP 1, 2, 4 and 8.

    QKV and gate+up are column-parallel (n / tp; KV heads are replicated once tp exceeds
    them), O and down row-parallel (k / tp).
    """
    pairs: list[tuple[int, int]] = []
    for cfg in LLAMA_SHAPES.values():
        h, i, nh, kvh, d = (cfg[x] for x in ("hidden", "intermediate", "heads", "kv_heads",
                                             "head_dim"))
        for tp in TP_SIZES:
            q_heads, kv_heads = nh // tp, max(kvh // tp, 1)
            for nk in [((q_heads + 2 * kv_heads) * d, h),  # qkv
                       (h, q_heads * d),                    # o
                       (2 * i // tp, h),                    # gate + up
                       (h, i // tp)]:                       # down
                if nk not in pairs:
                    pairs.append(nk)
    return pairs


def attention_heads() -> list[tuple[int, int]]:
    """(num_heads, num_key_value_heads) per GPU of Llama-3.1-8B/70B at TP 1, 2, 4, 8."""
    out: list[tuple[int, int]] = []
    for cfg in LLAMA_SHAPES.values():
        for tp in TP_SIZES:
            hk = (cfg["heads"] // tp, max(cfg["kv_heads"] // tp, 1))
            if hk not in out:
                out.append(hk)
    return out


def _pow2(lo: int, hi: int) -> list[int]:
    return [1 << e for e in range(int(math.log2(lo)), int(math.log2(hi)) + 1)]


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how hard."""
    gemm_pairs: tuple[tuple[int, int], ...]
    gemm_m: tuple[int, ...]
    copy_bytes: tuple[int, ...]
    attn_heads: tuple[tuple[int, int], ...]
    head_dim: int
    ctx_isl: tuple[int, ...]
    ctx_batch: tuple[int, ...]
    ctx_max_tokens: int          # batch * isl cap for prefill
    gen_kv_len: tuple[int, ...]
    gen_batch: tuple[int, ...]
    nccl_sizes: tuple[int, ...]  # elements
    nccl_dtypes: tuple[str, ...]
    repeats: int
    target_sample_s: float       # wall time aimed at per timing sample (GPU)
    max_inner: int
    max_unroll: int

    @staticmethod
    def quick() -> BenchConfig:
        return BenchConfig(
            gemm_pairs=((256, 256), (512, 256), (512, 512)), gemm_m=(1, 16, 256),
            copy_bytes=(1 << 16, 1 << 20, 1 << 22),
            attn_heads=((8, 2),), head_dim=128, ctx_isl=(64, 128), ctx_batch=(1, 2),
            ctx_max_tokens=128, gen_kv_len=(64, 256), gen_batch=(1, 4),
            nccl_sizes=(1 << 10, 1 << 16), nccl_dtypes=("half",),
            repeats=3, target_sample_s=2e-4, max_inner=20, max_unroll=4)

    @staticmethod
    def full() -> BenchConfig:
        return BenchConfig(
            gemm_pairs=tuple(gemm_shapes()), gemm_m=tuple(_pow2(1, 16384)),
            copy_bytes=tuple(_pow2(1 << 20, 1 << 30)),
            attn_heads=tuple(attention_heads()), head_dim=128,
            ctx_isl=tuple(_pow2(128, 16384)), ctx_batch=tuple(_pow2(1, 64)),
            ctx_max_tokens=65536,
            gen_kv_len=tuple(_pow2(64, 131072)), gen_batch=tuple(_pow2(1, 256)),
            nccl_sizes=tuple(_pow2(256, 1 << 28)), nccl_dtypes=("half", "int8"),
            repeats=9, target_sample_s=2e-3, max_inner=200, max_unroll=8)


# Share of a time budget given to each kind, in the order they run; what one kind leaves
# unused (or a skipped kind's share) passes on to the next.
# Collectives run just before the GEMMs, so that on one GPU their share goes to the GEMMs.
_KIND_ORDER = ["mem_copy_perf", "generation_attention_perf", "context_attention_perf",
               "nccl_perf", "gemm_perf"]
_BUDGET_SHARE = {"mem_copy_perf": 0.05, "generation_attention_perf": 0.15,
                 "context_attention_perf": 0.2, "nccl_perf": 0.15, "gemm_perf": 0.45}


def _coarse_to_fine_rank(values: Sequence[Any]) -> dict[Any, int]:
    """Rank values so that the first ranks span the range: ends, then midpoints, ..."""
    vals = list(values)
    rank: dict[Any, int] = {}
    if not vals:
        return rank
    rank[vals[0]] = 0
    rank.setdefault(vals[-1], 0)
    level = 1
    segs = [(0, len(vals) - 1)]
    while segs:
        nxt = []
        for lo, hi in segs:
            if hi - lo < 2:
                continue
            mid = (lo + hi) // 2
            rank.setdefault(vals[mid], level)
            nxt += [(lo, mid), (mid, hi)]
        segs = nxt
        level += 1
    return rank


def _order_cases(cases: list[dict], axes: Sequence[tuple[str, Sequence[Any]]]) -> list[dict]:
    """Stable-sort cases coarse-to-fine over the given axes, so that a run cut short by its
    time budget still covers each axis's range evenly."""
    ranks = {name: _coarse_to_fine_rank(vals) for name, vals in axes}
    return sorted(cases, key=lambda c: max(ranks[a].get(c[a], 0) for a in ranks))


# ----------------------------------------------------------------------------- device facts

@dataclass
class DeviceInfo:
    devices: list
    platform: str
    kind: str
    count: int
    compute_capability: str | None
    l2_bytes: int
    mem_cap_bytes: int

    @staticmethod
    def detect() -> DeviceInfo:
        devs = jax.devices()
        d0 = devs[0]
        platform = d0.platform
        kind = str(getattr(d0, "device_kind", platform))
        cc = getattr(d0, "compute_capability", None)
        if platform == "gpu":
            l2 = next((b for key, b in _L2_BYTES if key in kind), _L2_DEFAULT_GPU)
        else:
            l2 = 0  # CPU/TPU: two buffers are rotated
        limit = None
        try:
            stats = d0.memory_stats() or {}
            limit = stats.get("bytes_limit")
        except Exception:  # noqa: BLE001  (memory_stats is unimplemented on some backends)
            limit = None
        # Working set one case may hold: a share of the device memory, or 1 GiB on the host.
        cap = int(0.3 * limit) if limit else (1 << 30)
        return DeviceInfo(devs, platform, kind, len(devs), None if cc is None else str(cc),
                          l2, cap)

    @property
    def fp8_ok(self) -> bool:
        if self.platform != "gpu" or not self.compute_capability:
            return False
        try:
            major, minor = (int(x) for x in self.compute_capability.split(".")[:2])
        except ValueError:
            return False
        return (major, minor) >= (8, 9)


# ----------------------------------------------------------------------------- timing

class CaseSkipped(Exception):
    """A case that cannot run here (too large, unsupported); the reason goes to the meta."""


@functools.cache
def _maker(shape: tuple[int, ...], dtype_name: str, sharding: Any) -> Callable:
    dtype = jnp.dtype(dtype_name)

    def make(key):
        x = jax.random.normal(key, shape, jnp.bfloat16)
        if jnp.issubdtype(dtype, jnp.integer):
            x = x * 16
        return x.astype(dtype)
    return jax.jit(make, out_shardings=sharding)


def _rand(shape: Sequence[int], dtype: Any, seed: int, sharding: Any = None) -> jax.Array:
    key = jax.random.key(seed)
    return _maker(tuple(int(s) for s in shape), jnp.dtype(dtype).name, sharding)(key)


@dataclass
class Timer:
    info: DeviceInfo
    cfg: BenchConfig
    seed: int = 0

    def plan(self, set_bytes: int, allow_unroll: bool = True) -> tuple[int, int]:
        """(buffer sets, ops per XLA program) for one case."""
        cap = self.info.mem_cap_bytes
        if set_bytes > cap:
            raise CaseSkipped(f"working set {set_bytes / 2**30:.2f} GiB over cap "
                              f"{cap / 2**30:.2f} GiB")
        if self.info.platform == "gpu":
            nbuf = max(2, math.ceil(2 * self.info.l2_bytes / max(set_bytes, 1)))
            nbuf = min(nbuf, 64, cap // max(set_bytes, 1))
            if nbuf < 2 and set_bytes < 4 * self.info.l2_bytes:
                raise CaseSkipped("cannot hold two buffer sets")
            nbuf = max(nbuf, 1)
            unroll = min(nbuf, self.cfg.max_unroll) if allow_unroll else 1
        else:
            nbuf = 2 if 2 * set_bytes <= cap else 1
            unroll = 1
        nbuf = max(unroll, (nbuf // unroll) * unroll)
        return nbuf, unroll

    def measure(self, op: Callable, make_set: Callable[[int], tuple], set_bytes: int,
                allow_unroll: bool = True, jit_op: bool = True) -> float:
        """Median latency in ms of one ``op(*set)``.

        ``op`` is jitted once per case with ``unroll`` independent copies of it in one
        program (GPU; one elsewhere); inputs rotate through pre-allocated buffer sets.
        """
        nbuf, unroll = self.plan(set_bytes, allow_unroll)
        sets = []
        for _ in range(nbuf):
            self.seed += 16
            sets.append(make_set(self.seed))
        groups = [tuple(sets[g * unroll:(g + 1) * unroll]) for g in range(nbuf // unroll)]
        del sets

        if unroll == 1:
            fn = jax.jit(op) if jit_op else op
            call = lambda grp: fn(*grp[0])  # noqa: E731
        else:
            fn = jax.jit(lambda grp: tuple(op(*s) for s in grp))
            call = fn

        # Warm-up: compile, then run each of the first two groups once.
        jax.block_until_ready(call(groups[0]))
        for g in groups[:2]:
            jax.block_until_ready(call(g))

        sync_each = self.info.platform != "gpu"  # host backends may overlap queued calls
        t0 = time.perf_counter()
        jax.block_until_ready(call(groups[min(1, len(groups) - 1)]))
        est = max(time.perf_counter() - t0, 1e-7)
        inner = 1 if sync_each else int(min(max(1, math.ceil(self.cfg.target_sample_s / est)),
                                             self.cfg.max_inner))
        # Each queued call keeps its outputs alive until the sample ends: stay under the cap.
        inner = max(1, min(inner, self.info.mem_cap_bytes // max(unroll * set_bytes, 1)))
        samples = []
        idx = 0
        for _ in range(self.cfg.repeats):
            outs = []
            t0 = time.perf_counter()
            for _ in range(inner):
                outs.append(call(groups[idx % len(groups)]))
                idx += 1
            jax.block_until_ready(outs)
            samples.append((time.perf_counter() - t0) / (inner * unroll))
            del outs
        del groups
        return statistics.median(samples) * 1e3


# ----------------------------------------------------------------------------- benchmarks

@dataclass
class Kind:
    table: str
    cases: list[dict]
    run_case: Callable[[dict], dict | None]
    notes: list[str] = field(default_factory=list)


def _gemm_kind(info: DeviceInfo, cfg: BenchConfig, timer: Timer) -> Kind:
    dtypes = ["bfloat16"] + (["fp8"] if info.fp8_ok else [])
    notes = [] if info.fp8_ok else [
        f"fp8 GEMMs skipped: need a GPU of compute capability >= 8.9 "
        f"(platform {info.platform}, compute capability {info.compute_capability})"]
    cases = [dict(gemm_dtype=dt, m=m, n=n, k=k, pair=(n, k))
             for m in cfg.gemm_m for dt in dtypes for (n, k) in cfg.gemm_pairs]
    cases = _order_cases(cases, [("m", cfg.gemm_m)])
    dims = (((1,), (1,)), ((), ()))

    def op(a, b):  # a: [m, k], b: [n, k] (weight, K-major as cuBLASLt FP8 wants)
        return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.bfloat16)

    def run(c: dict) -> dict:
        m, n, k = c["m"], c["n"], c["k"]
        in_dt = jnp.float8_e4m3fn if c["gemm_dtype"] == "fp8" else jnp.bfloat16
        isz = jnp.dtype(in_dt).itemsize
        set_bytes = (m * k + n * k) * isz + m * n * 2
        lat = timer.measure(op, lambda s: (_rand((m, k), in_dt, s), _rand((n, k), in_dt, s + 7)),
                            set_bytes)
        return dict(op_name="gemm", kernel_source=KERNEL_SOURCE, gemm_dtype=c["gemm_dtype"],
                    m=m, n=n, k=k, latency=lat)
    return Kind("gemm_perf", cases, run, notes)


def _copy_kind(info: DeviceInfo, cfg: BenchConfig, timer: Timer) -> Kind:
    cases = _order_cases([dict(message_size=b) for b in cfg.copy_bytes],
                         [("message_size", cfg.copy_bytes)])

    def run(c: dict) -> dict:
        nbytes = c["message_size"]
        n = nbytes // 2
        lat = timer.measure(jnp.copy, lambda s: (_rand((n,), jnp.bfloat16, s),), 2 * nbytes)
        return dict(op_name="mem_copy", kernel_source=KERNEL_SOURCE, message_size=nbytes,
                    latency=lat)
    return Kind("mem_copy_perf", cases, run)


def _attn_row(op_name: str, source: str, b: int, isl: int, h: int, hkv: int, d: int,
              step: int, lat: float) -> dict:
    return dict(op_name=op_name, kernel_source=source, batch_size=b, isl=isl, num_heads=h,
                num_key_value_heads=hkv, head_dim=d, window_size=0, beam_width=1,
                attn_dtype="bfloat16", kv_cache_dtype="bfloat16", step=step, latency=lat)


def _context_kind(info: DeviceInfo, cfg: BenchConfig, timer: Timer) -> Kind:
    d = cfg.head_dim
    cases = [dict(heads=hk, isl=s, batch_size=b)
             for hk in cfg.attn_heads for s in cfg.ctx_isl for b in cfg.ctx_batch
             if b * s <= cfg.ctx_max_tokens]
    cases = _order_cases(cases, [("isl", cfg.ctx_isl), ("batch_size", cfg.ctx_batch)])
    # On GPU try cuDNN flash attention first (what a JAX server would use), XLA otherwise.
    impls = ["cudnn", "xla"] if info.platform == "gpu" else ["xla"]
    notes = []
    if info.platform == "gpu":
        notes.append("prefill attention: implementation='cudnn' where it runs "
                     "(kernel_source jax-cudnn), else 'xla' (kernel_source jax-xla)")

    def run(c: dict) -> dict:
        (h, hkv), s, b = c["heads"], c["isl"], c["batch_size"]
        qkv_bytes = (b * s * (2 * h + 2 * hkv) * d) * 2
        last: Exception | None = None
        for impl in impls:
            set_bytes = qkv_bytes
            if impl == "xla":  # materializes the [b, h, s, s] scores (f32) and probabilities
                set_bytes += b * h * s * s * 6
            op = functools.partial(jax.nn.dot_product_attention, is_causal=True,
                                   implementation=impl)

            def make(seed, b=b, s=s, h=h, hkv=hkv):
                return (_rand((b, s, h, d), jnp.bfloat16, seed),
                        _rand((b, s, hkv, d), jnp.bfloat16, seed + 3),
                        _rand((b, s, hkv, d), jnp.bfloat16, seed + 5))
            try:
                lat = timer.measure(op, make, set_bytes)
            except CaseSkipped:
                raise
            except Exception as e:  # noqa: BLE001  (cuDNN rejects some shapes)
                last = e
                continue
            return _attn_row("context_attention", f"jax-{impl}", b, s, h, hkv, d, 0, lat)
        assert last is not None
        raise last
    return Kind("context_attention_perf", cases, run, notes)


def _decode_attention(q, k, v):
    """q: [b, hkv, group, d]; k, v: [b, s, hkv, d] -> [b, hkv, group, d]."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("bhgd,bshd->bhgs", q, k, preferred_element_type=jnp.float32) * scale
    p = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhgs,bshd->bhgd", p, v,
                      preferred_element_type=jnp.float32).astype(q.dtype)


def _generation_kind(info: DeviceInfo, cfg: BenchConfig, timer: Timer) -> Kind:
    d = cfg.head_dim
    cases = [dict(heads=hk, kv_len=s, batch_size=b)
             for hk in cfg.attn_heads for s in cfg.gen_kv_len for b in cfg.gen_batch
             if 2 * b * s * hk[1] * d * 2 <= info.mem_cap_bytes // 2]
    cases = _order_cases(cases, [("kv_len", cfg.gen_kv_len), ("batch_size", cfg.gen_batch)])

    def run(c: dict) -> dict:
        (h, hkv), s, b = c["heads"], c["kv_len"], c["batch_size"]
        g = h // hkv
        set_bytes = (2 * b * s * hkv * d + 2 * b * h * d) * 2 + b * h * s * 6

        def make(seed):
            return (_rand((b, hkv, g, d), jnp.bfloat16, seed),
                    _rand((b, s, hkv, d), jnp.bfloat16, seed + 3),
                    _rand((b, s, hkv, d), jnp.bfloat16, seed + 5))
        lat = timer.measure(_decode_attention, make, set_bytes)
        return _attn_row("generation_attention", KERNEL_SOURCE, b, 1, h, hkv, d, s - 1, lat)
    return Kind("generation_attention_perf", cases, run)


def _shard_map():
    sm = getattr(jax, "shard_map", None)
    if sm is not None:
        return sm, "check_vma"
    from jax.experimental.shard_map import shard_map as sm  # older jax
    return sm, "check_rep"


_NCCL_DTYPES = {"half": jnp.float16, "int8": jnp.int8, "bfloat16": jnp.bfloat16,
                "float": jnp.float32}
NCCL_OPS = ("all_reduce", "all_gather", "reduce_scatter", "alltoall")


def _nccl_kind(info: DeviceInfo, cfg: BenchConfig, timer: Timer) -> Kind:
    n = info.count
    if n < 2:
        return Kind("nccl_perf", [], lambda c: None,
                    [f"collectives skipped: only {n} device"])
    mesh = Mesh(np.array(info.devices), ("x",))
    sharding = NamedSharding(mesh, P("x"))
    shard_map, check_kw = _shard_map()

    def body(name):
        if name == "all_reduce":
            return lambda x: jax.lax.psum(x, "x")
        if name == "all_gather":
            return lambda x: jax.lax.all_gather(x, "x", tiled=True)
        if name == "reduce_scatter":
            return lambda x: jax.lax.psum_scatter(x, "x", scatter_dimension=0, tiled=True)
        return lambda x: jax.lax.all_to_all(x, "x", 0, 0, tiled=True)

    ops = {name: jax.jit(shard_map(body(name), mesh=mesh, in_specs=P("x"), out_specs=P("x"),
                                   **{check_kw: False}))
           for name in NCCL_OPS}
    sizes = tuple(sorted({max(n, (sz // n) * n) for sz in cfg.nccl_sizes}))
    cases = [dict(op_name=o, nccl_dtype=dt, message_size=sz)
             for sz in sizes for dt in cfg.nccl_dtypes for o in NCCL_OPS]
    cases = _order_cases(cases, [("message_size", sizes)])

    def run(c: dict) -> dict:
        name, sz = c["op_name"], c["message_size"]
        dtype = _NCCL_DTYPES[c["nccl_dtype"]]
        isz = jnp.dtype(dtype).itemsize
        per_dev_in = sz // n if name == "all_gather" else sz
        per_dev_out = sz // n if name == "reduce_scatter" else sz
        set_bytes = (per_dev_in + per_dev_out) * isz  # per device
        lat = timer.measure(ops[name],
                            lambda s: (_rand((n * per_dev_in,), dtype, s, sharding),),
                            set_bytes, allow_unroll=False, jit_op=False)
        return dict(op_name=name, kernel_source=KERNEL_SOURCE, nccl_dtype=c["nccl_dtype"],
                    num_gpus=n, message_size=sz, latency=lat)
    return Kind("nccl_perf", cases, run)


_KIND_BUILDERS = {
    "mem_copy_perf": _copy_kind,
    "generation_attention_perf": _generation_kind,
    "context_attention_perf": _context_kind,
    "nccl_perf": _nccl_kind,
    "gemm_perf": _gemm_kind,
}


# ----------------------------------------------------------------------------- progress

class _Progress:
    def __init__(self, enabled_tty: bool, stream=None):
        self.tty = enabled_tty
        self.stream = stream or sys.stderr
        self._width = 0

    def update(self, table: str, done: int, total: int, label: str = "") -> None:
        if not self.tty or total == 0:
            return
        bar_w = 24
        filled = int(bar_w * done / total)
        line = (f"bench {table:<26} [{'#' * filled}{'.' * (bar_w - filled)}] "
                f"{done}/{total} {label}")[:110]
        pad = max(self._width - len(line), 0)
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def finish(self, table: str, total: int, rows: int, skipped: int, errors: int,
               not_run: int, seconds: float, notes: Sequence[str]) -> None:
        msg = (f"bench {table}: {rows}/{total} cases measured, {skipped} skipped, "
               f"{errors} errors, {not_run} not run (time budget), {seconds:.1f} s")
        if notes:
            msg += " [" + "; ".join(notes) + "]"
        if self.tty:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(msg + "\n")
        self.stream.flush()


# ----------------------------------------------------------------------------- driver

TIMING_METHOD = (
    "Per case: the op is jitted once per shape; warm-up = compile + one call on each of the "
    "first two buffer sets. Inputs rotate through pre-allocated buffer sets (on GPU enough "
    "that their total exceeds 2x the L2 size, at most 64; 2 on other backends). On GPU one "
    "XLA program runs `unroll` (<= max_unroll) independent copies of the op, each on its own "
    "buffer set, and a sample is the host wall time of `inner` back-to-back asynchronous "
    "calls (sized to ~target_sample_s) closed by block_until_ready, divided by the ops run; "
    "on other backends a sample is one call closed by block_until_ready. Latency = median of "
    "`repeats` samples, in milliseconds. Collectives run one per program (unroll 1) under "
    "shard_map over all local devices.")


def measure(quick: bool = False, progress: bool | None = None, *, time_budget_s: float | None = None,
            kinds: Iterable[str] | None = None) -> Iterator[tuple[str, dict]]:
    """Measure the local devices, yielding ``("meta", metadata)`` first and after every table
    (``metadata["complete"]`` turns true at the end) and ``("row", row)`` for each measured case
    (the kernel-table columns, :data:`CSV_COLUMNS`). ``report.write_bench`` writes them as they
    come, so a killed run leaves its finished rows.

    ``quick`` runs a tiny grid (seconds on a CPU). ``progress`` None shows a bar when stderr
    is a terminal and one summary line per kind otherwise. ``time_budget_s`` caps the
    measuring time: each kind gets a share (cases run coarse-to-fine, so a cut grid is
    still even) and passes what it leaves on. ``kinds`` restricts the tables measured.
    """
    kinds = None if kinds is None else [k.strip() for k in kinds if k.strip()]
    unknown = set(kinds or ()) - set(_KIND_ORDER)
    if unknown:       # refused here, before anything is measured or written
        raise SpecError(f"--kinds: unknown kernel tables {sorted(unknown)}; known: {', '.join(_KIND_ORDER)}")
    wanted = list(_KIND_ORDER) if kinds is None else [k for k in _KIND_ORDER if k in kinds]
    return _measure(quick, progress, time_budget_s, wanted)


def _measure(quick: bool, progress: bool | None, time_budget_s: float | None,
             wanted: list[str]) -> Iterator[tuple[str, dict]]:
    cfg = BenchConfig.quick() if quick else BenchConfig.full()
    info = DeviceInfo.detect()
    timer = Timer(info, cfg)
    tty = sys.stderr.isatty() if progress is None else bool(progress)
    prog = _Progress(tty)

    t_start = time.perf_counter()
    meta: dict[str, Any] = {
        "framework": FRAMEWORK,
        "device_name": str(info.devices[0]),
        "device_kind": info.kind,
        "platform": info.platform,
        "device_count": info.count,
        "compute_capability": info.compute_capability,
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(jaxlib, "__version__", "unknown"),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": bool(quick),
        "time_budget_s": time_budget_s,
        "latency_unit": "ms",
        "timing_method": TIMING_METHOD,
        "repeats": cfg.repeats,
        "target_sample_s": cfg.target_sample_s,
        "max_unroll": cfg.max_unroll,
        "l2_bytes_assumed": info.l2_bytes,
        "working_set_cap_bytes": info.mem_cap_bytes,
        "conventions": {
            "generation_attention_perf": "isl = 1, step = kv_len - 1 (KV cache holds isl + "
                                         "step tokens), as in the TensorRT-LLM tables",
            "nccl_perf": "message_size = elements of the whole logical tensor (nccl-tests "
                         "size): all_reduce/alltoall per-device buffer, all_gather output, "
                         "reduce_scatter input",
            "mem_copy_perf": "message_size = bytes copied (each read once, written once)",
        },
        "complete": False,
        "tables": {},
        "notes": [],
        "errors": [],
    }
    yield "meta", meta

    carry = 0.0
    for table in wanted:
        kind = _KIND_BUILDERS[table](info, cfg, timer)
        meta["notes"] += kind.notes
        budget = None
        if time_budget_s is not None:
            share = _BUDGET_SHARE[table] / sum(_BUDGET_SHARE[t] for t in wanted)
            budget = share * time_budget_s + carry
        t0 = time.perf_counter()
        rows = skipped = errors = not_run = 0
        skip_reasons: dict[str, int] = {}
        total = len(kind.cases)
        for i, case in enumerate(kind.cases):
            if budget is not None and time.perf_counter() - t0 > budget:
                not_run = total - i
                break
            label = " ".join(f"{k}={v}" for k, v in case.items() if k != "pair")
            prog.update(table, i, total, label)
            try:
                row = kind.run_case(case)
            except CaseSkipped as e:
                skipped += 1
                skip_reasons[str(e)] = skip_reasons.get(str(e), 0) + 1
                continue
            except Exception as e:  # noqa: BLE001  (one bad case must not end the run)
                errors += 1
                if len(meta["errors"]) < 30:
                    meta["errors"].append(f"{table} {label}: {type(e).__name__}: "
                                          f"{str(e)[:300]}")
                continue
            if row is None:
                continue
            yield "row", {"kernel_table": table, "framework": FRAMEWORK, "version": jax.__version__,
                          "device": info.kind, **row}
            rows += 1
        prog.update(table, total - not_run, total)
        elapsed = time.perf_counter() - t0
        if budget is not None:
            carry = max(budget - elapsed, 0.0)
        prog.finish(table, total, rows, skipped, errors, not_run, elapsed, kind.notes)
        meta["tables"][table] = {"cases": total, "rows": rows, "skipped": skipped,
                                 "skip_reasons": skip_reasons, "errors": errors,
                                 "not_run_time_budget": not_run,
                                 "seconds": round(elapsed, 3)}
        yield "meta", meta
        jax.clear_caches()
        _maker.cache_clear()

    meta["complete"] = True
    meta["elapsed_s"] = round(time.perf_counter() - t_start, 3)
    yield "meta", meta
