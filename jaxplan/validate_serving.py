"""Validate (and calibrate) the serving model against measured deployments.

Reads serving measurements in the format of ``../shared/data/serving/silicon_hopper.csv``
(NVIDIA aiconfigurator's closed-loop benchmarks of TensorRT-LLM, vLLM and SGLang on H100/H200),
maps every row onto a jaxplan model, hardware, precision and layout, predicts its TTFT and TPOT
with :func:`jaxplan.serving.evaluate` (aggregated rows) or :func:`jaxplan.serving.evaluate_disagg`
(disaggregated rows), and reports the errors. A row that cannot be mapped is kept in the
``unmapped`` list with its reason; nothing is dropped silently.

Mapping rules (each is a modelling assumption, stated where it is applied):

* ``model_path``: a preset in ``configs/models`` whose name matches the repository's last path
  component (case-folded, ``-Instruct``/``-FP8`` suffixes and a ``Meta-`` prefix ignored), else
  the Hugging Face ``config.json`` of the same name in ``<data>/model_configs``.
* ``system``: ``h100_sxm`` -> ``h100-sxm``, ``h200_sxm`` -> ``h200-sxm``.
* ``precision``: ``fp8`` -> fp8; blank -> bf16; ``fp4`` -> fp4 where the GPU has FP4 tensor cores,
  else mxfp4 (gpt-oss ships MXFP4 weights; Hopper dequantizes them to BF16); ``int4`` -> int4.
* Layout of a pool: stage GPUs ``S = tp_size * attention_dp_size`` (blank adp = 1). MoE models:
  ``S`` must equal ``moe_tp_size * moe_ep_size`` and the layout is ``Layout(tp=moe_tp, pp,
  ep=moe_ep, adp=attention_dp_size)``. Dense models: ``Layout(tp=tp_size, ep=1, adp=1)`` (their
  moe_* columns are ignored; some rows carry 0 there).
* Batch: aiconfigurator's ``batch_size`` counts requests per attention-DP rank (in every row that
  has attention-DP > 1, ``silicon_concurrency = batch_size * attention_dp_size``), so the
  replica's batch is ``batch_size * attention_dp_size``. Where the concurrency is a multiple of
  that, the benchmark ran ``N / batch`` identical replicas; each sees ``batch`` requests.
* Chunk: the backend's default prefill token budget per iteration (:data:`CHUNK`).
* Disaggregated rows: ``N`` from ``silicon_concurrency=N`` in ``silicon_data_source``; where it
  is absent, ``N = decode_batch_size * decode_attention_dp_size * decode_num_workers`` (this
  identity holds in all 36 rows that carry both). Blank ``*_num_workers`` are derived by
  ``serving.evaluate_disagg`` as a deployment would be sized: the fewest decode workers whose KV
  caches hold all N requests, and prefill workers rate-matched to them at 80% utilization. The
  per-pool batch is not read: ``evaluate_disagg`` derives the decode batch from ``N``.
  ``cross_network``: the deployment's GPUs, ``x * G_prefill + y * G_decode``, exceed one
  scale-up domain, so the KV cache crosses the scale-out network.
* Benchmark TTFT (both modes): the rows are short closed-loop runs, so each client's first request
  belongs to a cold-start wave (:func:`benchmark_ttft`; ``serving.cold_start_ttft`` aggregated,
  ``serving.disagg_cold_start_ttft`` disaggregated), mixed in for
  :data:`BENCHMARK_REQUESTS_PER_CLIENT` requests per client. ``steady_ttft_s`` is the steady state.

Prediction: the cases are grouped by (model architecture, precision, mode); each group's function
is ``jit(vmap(...))`` over rows, compiled once for a fixed padded size, and called once per
(hardware, backend) with ``params.for_backend(params, backend)``.

Serving-level fit (:func:`fit_serving`): only the per-backend ``step_overhead_<b>_s`` and
``layer_overhead_<b>_s`` are optimized. Both enter every round time as one additive scalar,
``o = step + num_layers * layer`` (``serving.round_costs`` adds the step overhead once and
``cost.layer_costs`` one layer overhead per layer), so each row's prediction is a function of its
own ``o`` alone. The fit tabulates that function exactly with the compiled forward model on a
log grid of ``o`` and optimizes through a log-log interpolation of the table; the Adam step
(Optax, jit-compiled, masked to the serving keys) then costs microseconds. Autodiff straight
through ``evaluate`` is correct too but compiles for 10-30 s per model on a 2-core CPU.
:func:`fit_ttft_overheads` then fits each backend's per-request TTFT overheads the same way (one
table per backend, a 1-D Adam fit): the front end's on the aggregated rows, the disaggregation
protocol's on the disaggregated rows.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import math
import re
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .layouts import check_parallel
from .params import BACKENDS, PARAM_SPECS, for_backend, from_raw, params_for, to_raw
from .serving import CHEAP_COMPILER_OPTIONS, Layout, disagg_cold_start_ttft, evaluate_disagg
from .specs import (Hardware, Model, Precision, SpecError, Workload, check_precision, config_root,
                    get_precision, load_hardware, load_model)

# Default prefill token budget per iteration of each backend, used as the chunk: TensorRT-LLM
# ``max_num_tokens`` (8192 in the LLM API's BuildConfig default), vLLM ``max_num_batched_tokens``
# (8192 with chunked prefill in the V1 engine's online-serving default), SGLang
# ``chunked_prefill_size`` (8192 on GPUs with >= 80 GB in recent releases). Assumption: the
# benchmarks left these at their defaults (the CSV does not record them).
CHUNK = {"trtllm": 8192, "vllm": 8192, "sglang": 8192}

SYSTEM_TO_HARDWARE = {"h100_sxm": "h100-sxm", "h200_sxm": "h200-sxm"}
TRAIN_SYSTEM, HOLDOUT_SYSTEM = "h100_sxm", "h200_sxm"   # issue 3: fit on H100, hold out H200

# The serving-level terms fit_serving may optimize.
SERVING_KEYS = tuple(f"{kind}_overhead_{b}_s" for b in BACKENDS for kind in ("step", "layer"))

REQUIRED_COLUMNS = ("id", "silicon_data_source", "backend", "model_path", "system", "precision", "mode",
                    "isl", "osl", "silicon_ttft_ms", "silicon_tpot_ms")
AGG_COLUMNS = ("batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size")
POOL_COLUMNS = ("num_workers", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size")
DISAGG_COLUMNS = tuple(f"{pool}_{c}" for pool in ("prefill", "decode") for c in POOL_COLUMNS + ("batch_size",))

PAD_MULTIPLE = 16
MS = 1e-3


def default_data_dir() -> Path:
    """``../shared/data`` beside the repository that holds the package (the same folder as
    ``Path(jaxplan.__file__).resolve().parents[1].parent / "shared" / "data"``; this module's own
    path is used because an editable install can leave ``jaxplan.__file__`` unset)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ----------------------------------------------------------------------------- cases

@dataclasses.dataclass(frozen=True)
class ServingCase:
    """One measured deployment mapped onto jaxplan. Layouts hold float32 scalars (they vmap)."""
    id: str
    model_path: str
    model: Model
    system: str
    hardware: Hardware
    precision: Precision
    backend: str
    mode: str                       # "agg" or "disagg"
    isl: float
    osl: float
    concurrency: float              # N: requests in flight over the whole benchmark
    ttft_ms: float                  # measured
    tpot_ms: float
    layout: Layout | None = None    # agg: one replica
    replicas: float = 1.0           # agg: N / layout.batch
    prefill: Layout | None = None   # disagg pools (dp = 1 each)
    decode: Layout | None = None
    prefill_workers: float = 1.0
    decode_workers: float = 1.0
    cross_network: bool = False
    note: str = ""                  # derivations applied to this row

    @property
    def gpus(self) -> float:
        if self.mode == "agg":
            lay = self.layout
            return lay.tp * lay.ep * lay.pp * self.replicas
        return (self.prefill_workers * self.prefill.tp * self.prefill.ep * self.prefill.pp
                + self.decode_workers * self.decode.tp * self.decode.ep * self.decode.pp)


@dataclasses.dataclass(frozen=True)
class Unmapped:
    id: str
    reason: str           # a category; counts are printed per reason
    detail: str = ""
    model_path: str = ""
    system: str = ""
    backend: str = ""
    mode: str = ""


class _Skip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _norm_name(s: str) -> str:
    s = s.lower()
    changed = True
    while changed:
        changed = False
        for suf in ("-instruct", "-fp8", "-v0.1"):
            if s.endswith(suf):
                s, changed = s[: -len(suf)], True
    return s[len("meta-"):] if s.startswith("meta-") else s


class _Resolver:
    """Caches the model and hardware lookups of one load."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self._models: dict[str, Model | _Skip] = {}
        self._hw: dict[str, Hardware] = {}
        try:
            self.presets = {_norm_name(p.stem): p.stem for p in (config_root() / "models").glob("*.yaml")}
        except SpecError:
            self.presets = {}
        cfg_dir = data_dir / "model_configs"
        self.configs = {p.stem: p for p in sorted(cfg_dir.glob("*.json"))} if cfg_dir.is_dir() else {}

    def model(self, model_path: str) -> Model:
        if model_path not in self._models:
            self._models[model_path] = self._load_model(model_path)
        m = self._models[model_path]
        if isinstance(m, _Skip):
            raise m
        return m

    def _load_model(self, model_path: str):
        last = model_path.rstrip("/").split("/")[-1]
        key = _norm_name(last)
        try:
            if key in self.presets:
                return load_model(self.presets[key])
            if last in self.configs:
                return load_model(self.configs[last])
            by_norm = {_norm_name(k): p for k, p in self.configs.items()}
            if key in by_norm:
                return load_model(by_norm[key])
        except SpecError as e:
            return _Skip("model rejected by the loader", str(e))
        return _Skip("no preset or Hugging Face config for the model",
                     f"'{model_path}': no configs/models preset matches '{key}' and no "
                     f"{self.data_dir / 'model_configs' / (last + '.json')}")

    def hardware(self, system: str) -> Hardware:
        if system not in SYSTEM_TO_HARDWARE:
            raise _Skip("unknown system", f"system '{system}'; known: {', '.join(SYSTEM_TO_HARDWARE)}")
        name = SYSTEM_TO_HARDWARE[system]
        if name not in self._hw:
            self._hw[name] = load_hardware(name)
        return self._hw[name]


def map_precision(value: str, hw: Hardware) -> Precision:
    v = (value or "").strip().lower()
    if v in ("", "bf16", "bfloat16", "fp16", "float16"):
        name = "bf16"
    elif v == "fp8":
        name = "fp8"
    elif v in ("fp4", "nvfp4", "mxfp4"):
        # Hopper has no FP4 tensor cores: the 4-bit weights (gpt-oss's MXFP4) are dequantized to BF16.
        name = "fp4" if (v != "mxfp4" and "fp4" in hw.rates) else "mxfp4"
    elif v in ("int4", "int4_wo"):
        name = "int4"
    else:
        raise _Skip("unknown precision", f"precision '{value}'")
    prec = get_precision(name)
    try:
        check_precision(hw, prec)
    except SpecError as e:
        raise _Skip("precision not supported by the hardware", str(e)) from None
    return prec


def _num(row: Mapping, col: str):
    v = (row.get(col) or "").strip()
    if v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        raise _Skip("non-numeric field", f"column '{col}' = {v!r}") from None
    if not math.isfinite(f):
        raise _Skip("non-numeric field", f"column '{col}' = {v!r}")
    return f


def _int(row, col, default=None):
    v = _num(row, col)
    if v is None:
        return default
    if not float(v).is_integer():
        raise _Skip("non-integer layout field", f"column '{col}' = {v}")
    return int(v)


def pool_layout(row: Mapping, prefix: str, model: Model, where: str, batch_per_rank: float,
                chunk: float) -> Layout:
    """The Layout of one pool (agg replica, prefill or decode worker) from its ``prefix``ed columns.

    ``batch_per_rank``: requests per attention-DP rank (the replica batch is that times adp)."""
    tp = _int(row, prefix + "tp_size")
    pp = _int(row, prefix + "pp_size", 1)
    adp = _int(row, prefix + "attention_dp_size", 1)
    if not tp or tp < 1 or pp < 1 or adp < 1:
        raise _Skip("missing or zero tp_size/pp_size/attention_dp_size",
                    f"{prefix}tp_size={tp}, {prefix}pp_size={pp}, {prefix}attention_dp_size={adp}")
    stage = tp * adp
    pool = prefix.rstrip("_") or "replica"
    if model.is_moe:
        mtp, mep = _int(row, prefix + "moe_tp_size"), _int(row, prefix + "moe_ep_size")
        if not mtp or not mep:
            raise _Skip("MoE model with moe_tp_size/moe_ep_size blank or 0",
                        f"{prefix}moe_tp_size={mtp}, {prefix}moe_ep_size={mep}")
        if mtp * mep != stage:
            raise _Skip("stage GPUs tp_size*attention_dp_size != moe_tp_size*moe_ep_size",
                        f"{pool}: {tp}*{adp} = {stage} but {mtp}*{mep} = {mtp * mep}")
        ltp, lep, ladp = mtp, mep, adp
    else:
        if adp != 1:
            raise _Skip("dense model with attention_dp_size > 1", f"{prefix}attention_dp_size={adp}")
        ltp, lep, ladp = tp, 1, 1
    try:
        check_parallel(model, stage * pp, ltp, pp, lep, 1, ladp, where=where)
    except SpecError as e:
        raise _Skip("layout rejected by check_parallel", str(e)) from None
    f = np.float32
    return Layout(tp=f(ltp), pp=f(pp), ep=f(lep), dp=f(1), batch=f(batch_per_rank * ladp), chunk=f(chunk),
                  adp=f(ladp))


_CONCURRENCY = re.compile(r"silicon_concurrency=(\d+(?:\.\d+)?)")


def _concurrency(row) -> float | None:
    m = _CONCURRENCY.search(row.get("silicon_data_source") or "")
    return float(m.group(1)) if m else None


def map_row(row: Mapping, res: _Resolver) -> ServingCase:
    """One CSV row -> ServingCase, or raise _Skip with the reason."""
    rid = row["id"]
    mode = (row.get("mode") or "").strip()
    backend = (row.get("backend") or "").strip()
    if mode not in ("agg", "disagg"):
        raise _Skip("unknown mode", f"mode '{mode}'")
    if backend not in BACKENDS:
        raise _Skip("unknown backend", f"backend '{backend}'; known: {', '.join(BACKENDS)}")
    model = res.model(row["model_path"])
    hw = res.hardware(row["system"])
    prec = map_precision(row.get("precision", ""), hw)
    isl, osl = _num(row, "isl"), _num(row, "osl")
    ttft, tpot = _num(row, "silicon_ttft_ms"), _num(row, "silicon_tpot_ms")
    if not (isl and osl and isl > 0 and osl > 0):
        raise _Skip("missing isl/osl", f"isl={isl}, osl={osl}")
    if not (ttft and tpot and ttft > 0 and tpot > 0):
        raise _Skip("missing or non-positive measured TTFT/TPOT", f"ttft={ttft}, tpot={tpot}")
    n = _concurrency(row)
    chunk = float(CHUNK[backend])
    common = dict(id=rid, model_path=row["model_path"], model=model, system=row["system"], hardware=hw,
                  precision=prec, backend=backend, mode=mode, isl=isl, osl=osl, ttft_ms=ttft, tpot_ms=tpot)
    if mode == "agg":
        b = _int(row, "batch_size")
        if not b or b < 1:
            raise _Skip("missing batch_size", f"batch_size={b}")
        lay = pool_layout(row, "", model, rid, b, chunk)
        note = ""
        if n is None:
            n, note = float(lay.batch), "concurrency absent: N = batch_size * attention_dp_size"
        replicas = n / float(lay.batch)
        if replicas < 1 - 1e-9:
            raise _Skip("concurrency below the replica batch",
                        f"N={n:g} < batch_size*attention_dp_size={float(lay.batch):g}")
        if abs(replicas - round(replicas)) > 1e-9:
            raise _Skip("concurrency not a multiple of the replica batch",
                        f"N={n:g}, batch_size*attention_dp_size={float(lay.batch):g}")
        return ServingCase(**common, concurrency=n, layout=lay, replicas=float(round(replicas)), note=note)
    # disaggregated
    pre = pool_layout(row, "prefill_", model, rid, 1.0, chunk)
    dec = pool_layout(row, "decode_", model, rid, 1.0, 0.0)
    x = _int(row, "prefill_num_workers") or 0       # 0: evaluate_disagg derives the count
    y = _int(row, "decode_num_workers") or 0
    note = []
    if not (row.get("prefill_num_workers") or "").strip() or not (row.get("decode_num_workers") or "").strip():
        note.append("blank *_num_workers -> derived")
    if n is None:
        db = _int(row, "decode_batch_size")
        if not db:
            raise _Skip("disagg row without concurrency or decode_batch_size", "")
        n = float(db * dec.adp * max(y, 1))
        note.append("concurrency absent: N = decode_batch_size * decode_attention_dp_size * decode_num_workers")
    # (derived worker counts are at least one of each)
    g = max(x, 1) * pre.tp * pre.ep * pre.pp + max(y, 1) * dec.tp * dec.ep * dec.pp
    return ServingCase(**common, concurrency=float(n), prefill=pre, decode=dec,
                       prefill_workers=float(x), decode_workers=float(y),
                       cross_network=bool(g > hw.scaleup_domain), note="; ".join(note))


def load_serving(path, data_dir=None) -> tuple[list[ServingCase], list[Unmapped]]:
    """Read a serving CSV; return (mapped cases, unmapped rows with their reasons).

    Raises SpecError when the file is missing or lacks required columns."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"serving file '{path}' does not exist")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or ())
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise SpecError(f"{path}: missing required column(s) {', '.join(missing)}; "
                            f"the format is that of silicon_hopper.csv")
        rows = list(reader)
    modes = {r.get("mode") for r in rows}
    need = (AGG_COLUMNS if "agg" in modes else ()) + (DISAGG_COLUMNS if "disagg" in modes else ())
    missing = [c for c in need if c not in cols]
    if missing:
        raise SpecError(f"{path}: missing column(s) {', '.join(missing)} needed by its "
                        f"{'/'.join(sorted(m for m in modes if m))} rows")
    res = _Resolver(data_dir)
    cases, unmapped = [], []
    for i, row in enumerate(rows):
        if not (row.get("id") or "").strip():
            row["id"] = f"row{i + 2}"          # the line number, header = 1
        try:
            cases.append(map_row(row, res))
        except _Skip as e:
            unmapped.append(Unmapped(row["id"], e.reason, e.detail, row.get("model_path", ""),
                                     row.get("system", ""), row.get("backend", ""), row.get("mode", "")))
    return cases, unmapped


def measurement_key(c: ServingCase) -> tuple:
    """Rows that report the same measurement (the CSV merges several exports of one database:
    e.g. a ``dsr1_..._cfgN`` row and ``2026_03_25_...``/``2026_04_06_...`` rows of DeepSeek-R1 carry
    identical TTFT and TPOT) share this key."""
    return (c.system, c.backend, c.mode, c.isl, c.osl, c.concurrency, f"{c.ttft_ms:.6g}", f"{c.tpot_ms:.6g}")


def unique_mask(cases: Sequence[ServingCase]) -> np.ndarray:
    """One row per measurement: the most completely described one (worker counts and concurrency
    given, no derived fields), else the first."""
    best: dict[tuple, int] = {}
    for i, c in enumerate(cases):
        k = measurement_key(c)
        if k not in best or (cases[best[k]].note and not c.note):
            best[k] = i
    mask = np.zeros(len(cases), bool)
    mask[list(best.values())] = True
    return mask


def unmapped_counts(unmapped: Sequence[Unmapped]) -> list[tuple[str, int, str]]:
    """(reason, count, example detail), most frequent first."""
    c = collections.Counter(u.reason for u in unmapped)
    ex = {}
    for u in unmapped:
        ex.setdefault(u.reason, f"{u.model_path} {u.backend} {u.mode}: {u.detail}")
    return [(r, n, ex[r]) for r, n in c.most_common()]


# ----------------------------------------------------------------------------- prediction

def _arch_key(model: Model) -> Model:
    """Models that differ only in name/source share one compiled function (DeepSeek-V3 and -R1)."""
    return dataclasses.replace(model, name="", source="")


OUT_KEYS_AGG = ("ttft_s", "tpot_s", "requests_per_s", "decode_batch", "prefill_saturated", "memory_per_gpu_gb",
                "feasible", "steady_ttft_s")
OUT_KEYS_DISAGG = ("ttft_s", "tpot_s", "requests_per_s", "decode_batch", "kv_transfer_s", "prefill_latency_s",
                   "prefill_utilization", "steady_ttft_s")
# evaluate() names the solved number of decoding requests "decoding_requests" (older: "decode_batch").
_ALIASES = {"decode_batch": ("decode_batch", "decoding_requests")}


def _pick(m: Mapping, keys) -> dict:
    out = {}
    for k in keys:
        for name in _ALIASES.get(k, (k,)):
            if name in m:
                out[k] = jnp.asarray(m[name], jnp.float32)
                break
        else:
            out[k] = jnp.full(jnp.shape(m["ttft_s"]), jnp.nan, jnp.float32)
    return out


def scheduler_of(backend: str, schedulers: Mapping[str, str] | None = None) -> str:
    """The aggregated scheduling policy a backend's rows are predicted with: ``schedulers[backend]``
    where given, else ``serving.SCHEDULERS`` (mixed prefill/decode batches for TensorRT-LLM and
    vLLM, lock-step prefill-first waves for SGLang)."""
    from . import serving
    return serving.scheduler_name((schedulers or {}).get(backend, backend))


@functools.lru_cache(maxsize=None)
def agg_evaluator(model: Model, prec: Precision, scheduler: str = "mixed"):
    """``f(params, hardware, isl[n], osl[n], Layout[n]) -> dict of [n]``: jit(vmap(evaluate)) with
    the serving model's scheduling policy ``scheduler`` (see :func:`scheduler_of`)."""
    from .serving import EVALUATORS, cold_start_ttft
    metric_fn = EVALUATORS[scheduler]

    def one(p, hw, isl, osl, lay):
        wl = Workload(isl, osl)
        m = metric_fn(p, hw, model, prec, wl, lay)
        out = _pick(m, OUT_KEYS_AGG)
        out["steady_ttft_s"] = out["ttft_s"]
        cold = cold_start_ttft(p, hw, model, prec, wl, lay, m, scheduler)
        out["ttft_s"] = benchmark_ttft({**m, "cold_start_ttft_s": cold})
        return out
    return jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0, 0)), compiler_options=CHEAP_COMPILER_OPTIONS)


# The measured rows are short closed-loop benchmarks: N clients start at once, so the first of the
# few requests each client sends arrive together (a cold-start wave whose prompts queue), and the
# later ones arrive staggered (steady state). Their mean TTFT mixes the two. The number of
# requests per client is not in the CSV; 4 minimizes the aggregated TensorRT-LLM + vLLM TTFT MAPE
# of the H100 rows (grid 2, 3, 4, 5, 6, 8: 61.1, 45.2, 42.1, 43.0, 45.4, 50.9%); on the H200 rows,
# not used to choose it: 79.4, 53.5, 44.7, 41.9, 41.6, 44.9% (steady state alone, W = infinity:
# about 60%). Planning (``sweep``) reports the steady state; this applies to validation only.
BENCHMARK_REQUESTS_PER_CLIENT = 4.0


def benchmark_ttft(m: Mapping, requests_per_client: float = BENCHMARK_REQUESTS_PER_CLIENT):
    """Mean TTFT of a closed-loop benchmark whose clients each send ``requests_per_client``
    requests: one cold-start wave, the rest in steady state. Where ``m`` flags the prefill as
    saturated (aggregated rows) the queue (Little's law) already sets TTFT."""
    ttft, cold = m["ttft_s"], m["cold_start_ttft_s"]
    mixed = ttft + jnp.maximum(cold - ttft, 0.0) / requests_per_client
    return jnp.where(m["prefill_saturated"], ttft, mixed) if "prefill_saturated" in m else mixed


@functools.lru_cache(maxsize=None)
def disagg_evaluator(model: Model, prec: Precision):
    """``f(params, hardware, isl, osl, prefill Layout, decode Layout, x, y, N, cross) -> dict``,
    all per-row arrays: jit(vmap(evaluate_disagg))."""
    def one(p, hw, isl, osl, pre, dec, x, y, n, cross):
        m = evaluate_disagg(p, hw, model, prec, Workload(isl, osl), pre, dec, x, y, n, cross)
        out = _pick(m, OUT_KEYS_DISAGG)
        out["steady_ttft_s"] = out["ttft_s"]
        # Same benchmark as the aggregated rows: one cold-start wave per client, the rest steady.
        # No switch at prefill saturation: the wave only counts where it exceeds the steady
        # state's own queue (switching it off at utilization >= 0.98 changes no row; switching
        # it off wherever Little's law sets TTFT takes the disagg TTFT MAPE from 53 to 78%).
        out["ttft_s"] = benchmark_ttft({**m, "cold_start_ttft_s": disagg_cold_start_ttft(m, n)})
        return out
    return jax.jit(jax.vmap(one, in_axes=(None, None) + (0,) * 8), compiler_options=CHEAP_COMPILER_OPTIONS)


@dataclasses.dataclass
class _Group:
    """Cases sharing one compiled function and one (hardware, backend): one call."""
    fn_key: tuple            # (arch model, precision, mode, scheduler)
    hardware: Hardware
    backend: str
    idx: np.ndarray          # indices into the case list
    args: tuple              # padded per-row arrays


def _stack_layouts(lays: Sequence[Layout]) -> Layout:
    return Layout(*(np.asarray([float(getattr(l, f)) for l in lays], np.float32) for f in Layout._fields))


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    idx = np.minimum(np.arange(size), len(a) - 1)
    return np.asarray(a)[idx]


# Padded size last used per function: a later, smaller set of cases (a subsample, a holdout)
# pads up to it and reuses the compiled executable instead of compiling a new shape.
_PAD_SIZES: dict[tuple, int] = {}


def build_groups(cases: Sequence[ServingCase], pad_multiple: int = PAD_MULTIPLE,
                 schedulers: Mapping[str, str] | None = None) -> list[_Group]:
    """Group cases by (architecture, precision, mode, scheduler) x (hardware, backend) and pad every group of
    one function to the same size (a multiple of ``pad_multiple``, at least the size this function
    was compiled for before), so each function compiles once. ``schedulers``: backend -> scheduler
    for the aggregated rows (:func:`scheduler_of`)."""
    by_fn: dict[tuple, dict[tuple, list[int]]] = {}
    for i, c in enumerate(cases):
        fk = (_arch_key(c.model), c.precision, c.mode, scheduler_of(c.backend, schedulers) if c.mode == "agg" else "")
        by_fn.setdefault(fk, {}).setdefault((c.hardware.name, c.backend), []).append(i)
    groups = []
    for fk, subs in by_fn.items():
        size = max(len(v) for v in subs.values())
        size = max(int(math.ceil(size / pad_multiple) * pad_multiple), _PAD_SIZES.get(fk, 0))
        _PAD_SIZES[fk] = size
        for (hw_name, backend), idx in subs.items():
            idx = np.asarray(idx)
            cs = [cases[i] for i in idx]
            isl = _pad(np.asarray([c.isl for c in cs], np.float32), size)
            osl = _pad(np.asarray([c.osl for c in cs], np.float32), size)
            if fk[2] == "agg":
                lay = _stack_layouts([c.layout for c in cs])
                args = (isl, osl, Layout(*(_pad(v, size) for v in lay)))
            else:
                pre = _stack_layouts([c.prefill for c in cs])
                dec = _stack_layouts([c.decode for c in cs])
                f32 = lambda vals: _pad(np.asarray(vals, np.float32), size)  # noqa: E731
                args = (isl, osl, Layout(*(_pad(v, size) for v in pre)), Layout(*(_pad(v, size) for v in dec)),
                        f32([c.prefill_workers for c in cs]), f32([c.decode_workers for c in cs]),
                        f32([c.concurrency for c in cs]), _pad(np.asarray([c.cross_network for c in cs]), size))
            groups.append(_Group(fk, cs[0].hardware, backend, idx, args))
    return groups


def _traced_hardware(hw: Hardware) -> Hardware:
    """``hw`` with its static name and source blanked: they are pytree metadata, so H100 and H200
    would otherwise compile separately although only their (traced) numbers differ. The cost model
    never reads them; ``rates`` (which selects code paths) is kept."""
    return dataclasses.replace(hw, name="", source="")


def _call(group: _Group, p) -> dict[str, np.ndarray]:
    model, prec, mode, scheduler = group.fn_key
    fn = agg_evaluator(model, prec, scheduler) if mode == "agg" else disagg_evaluator(model, prec)
    out = jax.device_get(fn(p, _traced_hardware(group.hardware), *group.args))
    n = len(group.idx)
    return {k: np.asarray(v)[:n] for k, v in out.items()}


def resolve_params(cases: Sequence[ServingCase], params=None, override=None) -> dict[str, tuple[dict, str]]:
    """hardware name -> (params, source). ``params`` (a dict) is used for every hardware; else
    ``params_for(hardware, override)``: the override file, the shipped profile, or the defaults."""
    out = {}
    for hw_name in sorted({c.hardware.name for c in cases}):
        out[hw_name] = (dict(params), "given") if params is not None else params_for(hw_name, override)
    return out


def predict(cases: Sequence[ServingCase], params=None, override=None, groups=None,
            schedulers: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """Predicted metrics for every case (arrays aligned with ``cases``; seconds).

    ``params``: one params dict for all hardware, or None for ``params_for`` per hardware (see
    :func:`resolve_params`); or a mapping hardware name -> params dict. ``schedulers``: backend ->
    scheduler of its aggregated rows, where not the backend's default (ignored with ``groups``)."""
    if params is not None and all(isinstance(v, Mapping) for v in params.values()):
        by_hw = {k: dict(v) for k, v in params.items()}
    else:
        by_hw = {k: v[0] for k, v in resolve_params(cases, params, override).items()}
    groups = build_groups(cases, schedulers=schedulers) if groups is None else groups
    keys = sorted(set(OUT_KEYS_AGG) | set(OUT_KEYS_DISAGG))
    out = {k: np.full(len(cases), np.nan, np.float64) for k in keys}
    for g in groups:
        p = for_backend(by_hw[g.hardware.name], g.backend)
        for k, v in _call(g, p).items():
            out[k][g.idx] = v
    return out


# ----------------------------------------------------------------------------- error statistics

def ape(pred, meas) -> np.ndarray:
    """Absolute percentage error, as a fraction: |pred / meas - 1|."""
    return np.abs(np.asarray(pred, np.float64) / np.asarray(meas, np.float64) - 1.0)


def error_stats(err: np.ndarray) -> dict:
    err = np.asarray(err, np.float64)
    err = err[np.isfinite(err)]
    if err.size == 0:
        return {"n": 0, "mape": math.nan, "median": math.nan, "within10": math.nan, "within25": math.nan}
    return {"n": int(err.size), "mape": float(err.mean()), "median": float(np.median(err)),
            "within10": float((err <= 0.10).mean()), "within25": float((err <= 0.25).mean())}


def prediction_table(cases: Sequence[ServingCase], pred: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-row columns (measured, predicted, APE, signed log error) for reports and CSV."""
    c = cases
    t_meas = np.asarray([x.ttft_ms for x in c])
    p_meas = np.asarray([x.tpot_ms for x in c])
    t_pred = np.asarray(pred["ttft_s"]) / MS
    p_pred = np.asarray(pred["tpot_s"]) / MS
    return {"id": np.asarray([x.id for x in c], object),
            "model": np.asarray([x.model_path.split("/")[-1] for x in c], object),
            "system": np.asarray([x.system for x in c], object),
            "backend": np.asarray([x.backend for x in c], object),
            "mode": np.asarray([x.mode for x in c], object),
            "described": np.asarray(["derived" if "blank *_num_workers" in x.note else "given" for x in c], object),
            "unique": unique_mask(c),
            "isl": np.asarray([x.isl for x in c]), "osl": np.asarray([x.osl for x in c]),
            "concurrency": np.asarray([x.concurrency for x in c]),
            "measured_ttft_ms": t_meas, "predicted_ttft_ms": t_pred, "ttft_ape": ape(t_pred, t_meas),
            "measured_tpot_ms": p_meas, "predicted_tpot_ms": p_pred, "tpot_ape": ape(p_pred, p_meas)}


def summarize(table: Mapping[str, np.ndarray], by: Sequence[str] = ("system", "backend", "mode"),
              mask: np.ndarray | None = None) -> list[dict]:
    """Error statistics of TTFT and TPOT per group of ``by`` columns, then 'overall'."""
    n = len(table["id"])
    mask = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
    keys = [tuple(table[k][i] for k in by) for i in range(n)]
    rows = []
    for key in sorted({k for k, m in zip(keys, mask) if m}):
        sel = mask & np.asarray([k == key for k in keys])
        rows.append(_stat_row(dict(zip(by, key)), table, sel))
    rows.append(_stat_row({k: ("overall" if i == 0 else "") for i, k in enumerate(by)}, table, mask))
    return rows


def _stat_row(label: dict, table, sel) -> dict:
    t, p = error_stats(table["ttft_ape"][sel]), error_stats(table["tpot_ape"][sel])
    return {**label, "n": t["n"], **{f"ttft_{k}": v for k, v in t.items() if k != "n"},
            **{f"tpot_{k}": v for k, v in p.items() if k != "n"}}


def format_summary(rows: list[dict], by: Sequence[str]) -> str:
    from .report import table as text_table
    pct = lambda v: "-" if not math.isfinite(v) else f"{100 * v:.1f}"  # noqa: E731
    out = []
    for r in rows:
        d = {k: str(r[k]) for k in by}
        d["n"] = str(r["n"])
        for m in ("ttft", "tpot"):
            for s in ("mape", "median", "within10", "within25"):
                d[f"{m}_{s}"] = pct(r[f"{m}_{s}"])
        out.append(d)
    cols = [(k, k, "") for k in by] + [("n", "n", "")] + [
        (f"{m}_{s}", f"{m.upper()} {h}", "") for m in ("ttft", "tpot")
        for s, h in (("mape", "MAPE%"), ("median", "med%"), ("within10", "≤10%"), ("within25", "≤25%"))]
    return text_table(out, cols)


def format_markdown(rows: list[dict], by: Sequence[str]) -> str:
    pct = lambda v: "–" if not math.isfinite(v) else f"{100 * v:.0f}"  # noqa: E731
    head = list(by) + ["n", "TTFT MAPE %", "TTFT med %", "TTFT ≤10 %", "TTFT ≤25 %",
                       "TPOT MAPE %", "TPOT med %", "TPOT ≤10 %", "TPOT ≤25 %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [str(r[k]) for k in by] + [str(r["n"])] + [pct(r[f"{m}_{s}"]) for m in ("ttft", "tpot")
                                                         for s in ("mape", "median", "within10", "within25")]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- outputs

def _layout_columns(cases: Sequence[ServingCase], pred) -> dict[str, np.ndarray]:
    out: dict[str, list] = collections.defaultdict(list)
    for c in cases:
        a = c.layout if c.mode == "agg" else None
        for f in ("tp", "pp", "ep", "adp", "batch", "chunk"):
            out[f].append(float(getattr(a, f)) if a is not None else math.nan)
        out["replicas"].append(c.replicas if a is not None else math.nan)
        for pool, lay, w in (("prefill", c.prefill, c.prefill_workers), ("decode", c.decode, c.decode_workers)):
            for f in ("tp", "pp", "ep", "adp"):
                out[f"{pool}_{f}"].append(float(getattr(lay, f)) if lay is not None else math.nan)
            out[f"{pool}_workers"].append(w if lay is not None else math.nan)
        out["prefill_chunk"].append(float(c.prefill.chunk) if c.prefill is not None else math.nan)
        out["cross_network"].append(float(c.cross_network))
        out["gpus"].append(float(c.gpus))
        out["note"].append(c.note)
    res = {k: np.asarray(v, object if k == "note" else np.float64) for k, v in out.items()}
    res["predicted_decode_batch"] = np.asarray(pred["decode_batch"])
    res["predicted_requests_per_s"] = np.asarray(pred["requests_per_s"])
    return res


CSV_COLUMNS = ("id", "model", "system", "backend", "mode", "isl", "osl", "concurrency", "replicas", "gpus",
               "tp", "pp", "ep", "adp", "batch", "chunk",
               "prefill_workers", "prefill_tp", "prefill_pp", "prefill_ep", "prefill_adp", "prefill_chunk",
               "decode_workers", "decode_tp", "decode_pp", "decode_ep", "decode_adp", "cross_network",
               "measured_ttft_ms", "predicted_ttft_ms", "ttft_ape", "measured_tpot_ms", "predicted_tpot_ms",
               "tpot_ape", "predicted_decode_batch", "predicted_requests_per_s", "note")


def write_predictions(path, cases: Sequence[ServingCase], pred) -> Path:
    path = Path(path)
    cols = {**prediction_table(cases, pred), **_layout_columns(cases, pred)}

    def fmt(v):
        if isinstance(v, str):
            return v
        v = float(v)
        if math.isnan(v):
            return ""
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.6g}"

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for i in range(len(cases)):
            w.writerow([fmt(cols[k][i]) for k in CSV_COLUMNS])
    return path


def write_unmapped(path, unmapped: Sequence[Unmapped]) -> Path:
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("id", "model_path", "system", "backend", "mode", "reason", "detail"))
        for u in unmapped:
            w.writerow((u.id, u.model_path, u.system, u.backend, u.mode, u.reason, u.detail))
    return path


def plot_scatter(path, table: Mapping[str, np.ndarray], color_by: str = "mode", title: str = "") -> Path:
    """Log-log predicted vs measured, TTFT and TPOT panels, with y = x and the ±25% band."""
    import matplotlib

    from .report import figure

    fig, axes = figure(1, 2, figsize=(12, 5.5), dpi=110)
    cats = sorted(set(table[color_by].tolist()))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m, label in ((axes[0], "ttft", "TTFT (ms)"), (axes[1], "tpot", "TPOT (ms)")):
        meas, pred = np.asarray(table[f"measured_{m}_ms"], float), np.asarray(table[f"predicted_{m}_ms"], float)
        ok = np.isfinite(meas) & np.isfinite(pred) & (meas > 0) & (pred > 0)
        for j, c in enumerate(cats):
            sel = ok & (table[color_by] == c)
            st = error_stats(ape(pred[sel], meas[sel]))
            ax.scatter(meas[sel], pred[sel], s=9, alpha=0.55, color=colors[j % len(colors)],
                       label=f"{c} (n={st['n']}, MAPE {100 * st['mape']:.0f}%)")
        if ok.any():
            lo = min(meas[ok].min(), pred[ok].min()) / 1.5
            hi = max(meas[ok].max(), pred[ok].max()) * 1.5
            xs = np.geomspace(lo, hi, 50)
            ax.plot(xs, xs, "k-", lw=1, label="y = x")
            ax.fill_between(xs, xs * 0.75, xs * 1.25, color="k", alpha=0.08, label="±25%")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"measured {label}")
        ax.set_ylabel(f"predicted {label}")
        st = error_stats(ape(pred[ok], meas[ok]))
        ax.set_title(f"{m.upper()}: MAPE {100 * st['mape']:.0f}%, median {100 * st['median']:.0f}%, "
                     f"within 25%: {100 * st['within25']:.0f}%", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


@dataclasses.dataclass
class Validation:
    cases: list
    unmapped: list
    pred: dict
    table: dict
    summary: list
    params_source: dict


def validate(cases: Sequence[ServingCase], unmapped: Sequence[Unmapped] = (), params=None,
             override=None, schedulers: Mapping[str, str] | None = None) -> Validation:
    srcs = {k: v[1] for k, v in resolve_params(cases, params, override).items()} if params is None else \
        {c.hardware.name: "given" for c in cases}
    pred = predict(cases, params, override, schedulers=schedulers)
    table = prediction_table(cases, pred)
    return Validation(list(cases), list(unmapped), pred, table, summarize(table), srcs)


def write_outputs(v: Validation, out_dir) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"predictions": write_predictions(out / "predictions.csv", v.cases, v.pred),
             "unmapped": write_unmapped(out / "unmapped.csv", v.unmapped),
             "scatter": plot_scatter(out / "serving_scatter.png", v.table, "mode",
                                     "jaxplan serving validation: " + "; ".join(
                                         f"{k}: {Path(s).name if '/' in s else s}"
                                         for k, s in sorted(v.params_source.items())))}
    plot_scatter(out / "serving_scatter_by_backend.png", v.table, "backend")
    files["scatter_by_backend"] = out / "serving_scatter_by_backend.png"
    files["summary"] = out / "summary.md"
    files["summary"].write_text(summary_markdown(v))
    return files


def summary_markdown(v: Validation) -> str:
    """The error tables as Markdown: per (system, backend, mode), per model, per (mode, how the
    worker counts are known), and over unique measurements; then the unmapped rows by reason."""
    t = v.table
    parts = ["## Per system, backend and mode", format_markdown(v.summary, ("system", "backend", "mode")),
             "## Per model", format_markdown(summarize(t, ("model",)), ("model",)),
             "## Disaggregated worker counts: given in the CSV or derived (blank -> 1)",
             format_markdown(summarize(t, ("mode", "described")), ("mode", "described")),
             f"## Unique measurements only ({int(t['unique'].sum())} of {len(t['id'])} rows)",
             format_markdown(summarize(t, ("system", "backend", "mode"), mask=t["unique"]),
                             ("system", "backend", "mode")),
             "## Unmapped rows",
             "\n".join(["| reason | rows | example |", "|---|---|---|"]
                       + [f"| {r} | {n} | {ex.replace('|', '/')} |" for r, n, ex in unmapped_counts(v.unmapped)])]
    parts.append("\nParameters: " + "; ".join(f"{k}: {s}" for k, s in sorted(v.params_source.items())))
    return "\n\n".join(parts) + "\n"


def parse_schedulers(items: Sequence[str] | None) -> dict[str, str]:
    """``["sglang=prefill_first", ...]`` (``jaxplan validate --scheduler``) -> backend -> scheduler."""
    from .specs import SCHEDULER_NAMES
    out = {}
    for item in items or ():
        backend, sep, name = item.partition("=")
        if not sep or backend not in BACKENDS or name not in SCHEDULER_NAMES:
            raise SpecError(f"--scheduler '{item}': expected BACKEND=SCHEDULER with BACKEND one of "
                            f"{', '.join(BACKENDS)} and SCHEDULER one of {', '.join(SCHEDULER_NAMES)}")
        out[backend] = name
    return out


def validate_serving_command(args) -> int:
    """``jaxplan validate --serving FILE [--params FILE] [--out DIR]``."""
    path = getattr(args, "serving", None)
    if not path:
        raise SpecError("validate: give --serving FILE.csv")
    override = getattr(args, "params", None)
    if override and not Path(override).is_file():
        raise SpecError(f"params file '{override}' does not exist")
    out = Path(getattr(args, "out", None) or "out/validate")
    t0 = time.perf_counter()
    cases, unmapped = load_serving(path)
    print(f"jaxplan validate: {len(cases) + len(unmapped)} rows in {path}: {len(cases)} mapped, "
          f"{len(unmapped)} unmapped", file=sys.stderr)
    for reason, n, example in unmapped_counts(unmapped):
        print(f"  unmapped {n:4d}: {reason}  (e.g. {example})", file=sys.stderr)
    if not cases:
        raise SpecError(f"{path}: no row could be mapped; see the reasons above")
    schedulers = parse_schedulers(getattr(args, "scheduler", None))
    v = validate(cases, unmapped, None, override, schedulers)
    for backend, name in sorted(schedulers.items()):
        print(f"  aggregated {backend} rows: scheduler {name} (default {scheduler_of(backend)})", file=sys.stderr)
    for hw, src in sorted(v.params_source.items()):
        print(f"  parameters for {hw}: {src}", file=sys.stderr)
    files = write_outputs(v, out)
    print(format_summary(v.summary, ("system", "backend", "mode")))
    print()
    print(format_summary(summarize(v.table, ("model",)), ("model",)))
    print()
    print(f"unique measurements only ({int(v.table['unique'].sum())} of {len(v.cases)} mapped rows; "
          f"the file repeats some measurements under several ids):")
    print(format_summary(summarize(v.table, ("mode",), mask=v.table["unique"]), ("mode",)))
    print(f"\nwrote {', '.join(str(p) for p in files.values())} ({time.perf_counter() - t0:.1f} s)",
          file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- serving-level fit

OVERHEAD_GRID = np.geomspace(1e-6, 0.25, 48)   # seconds of fixed time per round


def tabulate_overhead(cases: Sequence[ServingCase], params, grid: np.ndarray = OVERHEAD_GRID,
                      groups=None) -> tuple[np.ndarray, np.ndarray]:
    """TTFT and TPOT of every case (seconds) as functions of its per-round fixed time
    ``o = step_overhead + num_layers * layer_overhead``: arrays [cases, len(grid)].

    Exact at the grid points (the compiled forward model with step_overhead = o, layer = 0)."""
    groups = build_groups(cases) if groups is None else groups
    ttft = np.zeros((len(cases), len(grid)))
    tpot = np.zeros((len(cases), len(grid)))
    by_hw = params if all(isinstance(v, Mapping) for v in params.values()) else None
    for g in groups:
        base = for_backend(by_hw[g.hardware.name] if by_hw else params, g.backend)
        for j, o in enumerate(grid):
            p = dict(base)
            p["step_overhead_s"] = jnp.float32(o)
            p["layer_overhead_s"] = jnp.float32(0.0)
            r = _call(g, p)
            ttft[g.idx, j], tpot[g.idx, j] = r["ttft_s"], r["tpot_s"]
    return ttft, tpot


def _interp_log(logo, loggrid, table_log):
    """Row-wise linear interpolation in (log o, log t): logo [n], table_log [n, G]."""
    g = loggrid.shape[0]
    j = jnp.clip(jnp.searchsorted(loggrid, logo) - 1, 0, g - 2)
    x0, x1 = loggrid[j], loggrid[j + 1]
    w = (logo - x0) / (x1 - x0)
    rows = jnp.arange(table_log.shape[0])
    return (1 - w) * table_log[rows, j] + w * table_log[rows, j + 1]


def _case_overhead(p, backend_idx, layers):
    step = jnp.stack([p[f"step_overhead_{b}_s"] for b in BACKENDS])
    layer = jnp.stack([p[f"layer_overhead_{b}_s"] for b in BACKENDS])
    return step[backend_idx] + layers * layer[backend_idx]


def subsample(cases: Sequence[ServingCase], max_cases: int | None, seed: int = 0) -> list[ServingCase]:
    """A deterministic subsample of at most ``max_cases``, stratified over (model, backend, mode)."""
    if not max_cases or len(cases) <= max_cases:
        return list(cases)
    rng = np.random.default_rng(seed)
    strata: dict[tuple, list[int]] = collections.defaultdict(list)
    for i, c in enumerate(cases):
        strata[(c.model.name, c.backend, c.mode)].append(i)
    keys = sorted(strata)
    for k in keys:
        rng.shuffle(strata[k])
    picked, r = [], 0
    while len(picked) < max_cases:          # round robin over strata
        took = False
        for k in keys:
            if r < len(strata[k]) and len(picked) < max_cases:
                picked.append(strata[k][r])
                took = True
        if not took:
            break
        r += 1
    return [cases[i] for i in sorted(picked)]


def serving_loss(cases: Sequence[ServingCase], pred) -> float:
    """Mean squared log ratio of predicted to measured, over TTFT and TPOT of every case."""
    t = np.log(np.asarray(pred["ttft_s"]) / (np.asarray([c.ttft_ms for c in cases]) * MS))
    q = np.log(np.asarray(pred["tpot_s"]) / (np.asarray([c.tpot_ms for c in cases]) * MS))
    return float(np.mean(np.concatenate([t, q]) ** 2))


def fit_serving(params, cases: Sequence[ServingCase], keys: Iterable[str] = SERVING_KEYS, steps: int = 300,
                seed: int = 0, *, lr: float = 0.05, max_cases: int | None = None,
                metrics: Sequence[str] = ("ttft", "tpot")) -> tuple[dict, dict]:
    """Fit the serving-level overheads ``keys`` to the measured TTFT and TPOT of ``cases``.

    Adam (Optax) in the unconstrained space of ``params.to_raw``, one jit-compiled step, the
    gradient of every other parameter masked to zero; loss: mean squared log ratio of predicted
    to measured TTFT and TPOT. ``params`` is one params dict (used for every case) or a mapping
    hardware name -> params dict; the fitted keys are shared. ``max_cases``: deterministic
    stratified subsample (``seed``); ``metrics``: which of TTFT and TPOT enter the loss (both by
    default). Returns (fitted params, info)."""
    import optax

    metrics = tuple(metrics)
    if not metrics or any(m not in ("ttft", "tpot") for m in metrics):
        raise SpecError(f"fit_serving: metrics must be a non-empty subset of ttft, tpot; got {metrics}")

    keys = tuple(keys)
    bad = [k for k in keys if k not in SERVING_KEYS]
    if bad:
        raise SpecError(f"fit_serving fits serving-level overheads only; not allowed: {', '.join(bad)}; "
                        f"allowed: {', '.join(SERVING_KEYS)}")
    t0 = time.perf_counter()
    multi = all(isinstance(v, Mapping) for v in params.values())
    base = {k: dict(v) for k, v in params.items()} if multi else dict(params)
    train = subsample(cases, max_cases, seed)
    groups = build_groups(train)
    ttft_tab, tpot_tab = tabulate_overhead(train, base, OVERHEAD_GRID, groups)
    t1 = time.perf_counter()
    loggrid = jnp.asarray(np.log(OVERHEAD_GRID), jnp.float32)
    lt = jnp.asarray(np.log(ttft_tab), jnp.float32)
    lq = jnp.asarray(np.log(tpot_tab), jnp.float32)
    mt = jnp.asarray(np.log([c.ttft_ms * MS for c in train]), jnp.float32)
    mq = jnp.asarray(np.log([c.tpot_ms * MS for c in train]), jnp.float32)
    bidx = jnp.asarray([BACKENDS.index(c.backend) for c in train])
    layers = jnp.asarray([c.model.num_layers for c in train], jnp.float32)
    ref = next(iter(base.values())) if multi else base
    raw0 = to_raw({k: ref[k] for k in PARAM_SPECS if k in ref})
    mask = {k: jnp.float32(k in keys) for k in raw0}

    def loss_fn(raw):
        p = from_raw(raw)
        logo = jnp.log(_case_overhead(p, bidx, layers))
        errs = []
        if "ttft" in metrics:
            errs.append(_interp_log(logo, loggrid, lt) - mt)
        if "tpot" in metrics:
            errs.append(_interp_log(logo, loggrid, lq) - mq)
        return jnp.mean(jnp.concatenate(errs) ** 2)

    opt = optax.adam(lr)

    @jax.jit
    def step(raw, state):
        loss, g = jax.value_and_grad(loss_fn)(raw)
        g = {k: v * mask[k] for k, v in g.items()}           # only the serving keys move
        upd, state = opt.update(g, state, raw)
        return optax.apply_updates(raw, upd), state, loss

    raw, state = raw0, opt.init(raw0)
    history = []
    for _ in range(steps):
        raw, state, loss = step(raw, state)
        history.append(float(loss))
    final = from_raw(raw)
    fitted = {k: final[k] for k in keys}
    loss_after_table = float(loss_fn(raw))
    if multi:
        out = {hw: {**p, **fitted} for hw, p in base.items()}
    else:
        out = {**base, **fitted}
    info = {"n_cases": len(train), "n_given": len(cases), "subsampled": len(train) < len(cases),
            "loss_before": float(loss_fn(raw0)), "loss_after": loss_after_table, "history": history,
            "fitted": {k: float(v) for k, v in fitted.items()}, "tabulate_s": t1 - t0,
            "seconds": time.perf_counter() - t0, "grid_points": len(OVERHEAD_GRID), "metrics": metrics}
    return out, info


# Per-backend per-request TTFT overheads, each a 1-D fit of the TTFT of that backend's rows
# through an exact table on a log grid (as for the step overhead):
# - ``request_overhead_<b>_s`` (aggregated rows): the serving front end before and after the engine
#   (HTTP, tokenization, hand-off, streaming the first token back);
# - ``disagg_overhead_<b>_s`` (disaggregated rows): the disaggregation protocol (routing, KV-receiver
#   allocation, transfer handshake) beyond prefill, KV transfer and queueing.
TTFT_OVERHEAD_MODES = {"request": "agg", "disagg": "disagg"}
MIN_OVERHEAD_ROWS = 8


def overhead_grid(kind: str) -> np.ndarray:
    spec = PARAM_SPECS[f"{kind}_overhead_s"]
    return np.geomspace(spec.lo, spec.hi, 49)


def fit_ttft_overheads(params, cases: Sequence[ServingCase], kind: str = "disagg", steps: int = 300,
                       lr: float = 0.1, min_rows: int = MIN_OVERHEAD_ROWS) -> tuple[dict, dict]:
    """Fit each backend's ``<kind>_overhead_<b>_s`` (kind ``request``: aggregated rows; ``disagg``:
    disaggregated rows) to the measured TTFT of its ``cases`` (Optax Adam on log o through a
    log-log interpolated table of the benchmark TTFT over :func:`overhead_grid`).

    Loss: mean absolute log ratio, not squared: these TTFTs carry a heavy tail of one-off stalls
    (11 s at N = 64 beside 0.7 s rows of the same disaggregated deployment; repeated runs that
    differ 2x), and a per-request constant should fit the typical request. On the SGLang disagg
    rows the squared loss gives 0.36 s (H100 TTFT MAPE 60%, H200 48%), the absolute one 0.25 s
    (49%, 43%; 0.1 s: 54%, 44%). A backend keeps its current value when it has fewer than
    ``min_rows`` rows, or when the fit ends at a bound of the parameter's range: then no
    per-request constant explains its rows and pinning one at the bound would only move the error
    elsewhere. ``params``: one params dict or hardware name -> params dict. Returns (fitted values
    of the accepted keys, per-backend report)."""
    import optax

    if kind not in TTFT_OVERHEAD_MODES:
        raise SpecError(f"fit_ttft_overheads: kind '{kind}'; allowed: {', '.join(TTFT_OVERHEAD_MODES)}")
    grid = overhead_grid(kind)
    multi = all(isinstance(v, Mapping) for v in params.values())
    by_hw = {k: dict(v) for k, v in params.items()} if multi else None
    rows = [c for c in cases if c.mode == TTFT_OVERHEAD_MODES[kind]]
    loggrid = jnp.asarray(np.log(grid), jnp.float32)
    ref = next(iter(by_hw.values())) if multi else params
    fitted, report = {}, {}
    for b in BACKENDS:
        sub = [c for c in rows if c.backend == b]
        key = f"{kind}_overhead_{b}_s"
        start = float(ref[key])
        if len(sub) < min_rows:
            report[b] = {"rows": len(sub), "status": f"kept {start:.3g} s: {len(sub)} rows < {min_rows}"}
            continue
        groups = build_groups(sub)
        table = np.zeros((len(sub), len(grid)))
        for j, o in enumerate(grid):
            set_o = lambda p: {**p, key: np.float32(o)}  # noqa: E731
            p = {h: set_o(v) for h, v in by_hw.items()} if multi else set_o(params)
            table[:, j] = predict(sub, p, groups=groups)["ttft_s"]
        lt = jnp.asarray(np.log(table), jnp.float32)
        mt = jnp.asarray(np.log([c.ttft_ms * MS for c in sub]), jnp.float32)

        def loss_fn(logo):
            return jnp.mean(jnp.abs(_interp_log(jnp.full(len(sub), logo), loggrid, lt) - mt))

        opt = optax.adam(optax.cosine_decay_schedule(lr, steps))

        @jax.jit
        def step(logo, state):
            loss, g = jax.value_and_grad(loss_fn)(logo)
            upd, state = opt.update(g, state, logo)
            return jnp.clip(optax.apply_updates(logo, upd), loggrid[0], loggrid[-1]), state, loss

        logo = jnp.float32(math.log(start))
        state = opt.init(logo)
        for _ in range(steps):
            logo, state, _ = step(logo, state)
        o = float(jnp.exp(logo))
        info = {"rows": len(sub), "start_s": start, "fit_s": o, "loss_before": float(loss_fn(jnp.log(start))),
                "loss": "mean |log(pred / measured)|", "loss_after": float(loss_fn(logo))}
        if not grid[0] * 1.02 < o < grid[-1] / 1.02:
            info["status"] = (f"kept {start:.3g} s: the fit ends at the bound {o:.3g} s (no per-request "
                              f"constant explains these rows)")
        else:
            info["status"] = f"fitted {start:.3g} -> {o:.3g} s"
            fitted[key] = jnp.float32(o)
        report[b] = info
    return fitted, report


def serving_fit(params, serving_path, hardware: str | None = None, *, steps: int = 300, seed: int = 0,
                max_cases: int | None = None, data_dir=None, holdout_params=None,
                metrics: Sequence[str] = ("ttft", "tpot"), ttft_overheads: bool = True) -> tuple[dict, dict]:
    """``jaxplan fit --serving FILE``: fit the per-backend overheads on the H100 rows of FILE and
    report H200 rows as holdout. Returns (params with the fitted overheads, report dict). The
    step/layer overheads are fitted on ``metrics`` of all train rows, then (``ttft_overheads``)
    each backend's request overhead on its aggregated rows' TTFT and its disaggregation overhead
    on its disaggregated rows' TTFT (:func:`fit_ttft_overheads`).

    ``params``: the (kernel-fitted) parameters used for every row; ``holdout_params`` (default:
    ``params``) for the H200 rows, with the fitted overheads copied in. ``hardware`` is accepted
    for the fit command's hook and only recorded."""
    cases, unmapped = load_serving(serving_path, data_dir)
    train = [c for c in cases if c.system == TRAIN_SYSTEM]
    hold = [c for c in cases if c.system == HOLDOUT_SYSTEM]
    if not train:
        raise SpecError(f"{serving_path}: no mapped {TRAIN_SYSTEM} rows to fit the serving overheads on")
    hold_base = dict(holdout_params if holdout_params is not None else params)
    by_hw_before = {"h100-sxm": dict(params), "h200-sxm": hold_base}
    fitted, info = fit_serving(params, train, SERVING_KEYS, steps, seed, max_cases=max_cases, metrics=metrics)
    # Then each backend's per-request TTFT overheads, with the step and layer overheads just
    # fitted: the front end's on the aggregated rows' TTFT, then the disaggregation protocol's on
    # the disaggregated rows' TTFT (which the front end's is part of).
    overhead_info, moved = {}, list(SERVING_KEYS)
    for kind in (TTFT_OVERHEAD_MODES if ttft_overheads else ()):
        got, overhead_info[kind] = fit_ttft_overheads(fitted, train, kind)
        fitted = {**fitted, **got}
        moved += sorted(got)
    by_hw_after = {"h100-sxm": fitted, "h200-sxm": {**hold_base, **{k: fitted[k] for k in moved}}}
    report = {"hardware": hardware, "serving_file": str(serving_path), "fit": info,
              "overhead_fits": overhead_info, "fitted_keys": moved, "unmapped": len(unmapped),
              "train_rows": len(train), "holdout_rows": len(hold)}
    for label, subset in (("train", train), ("holdout", hold)):
        if not subset:
            continue
        for when, by_hw in (("before", by_hw_before), ("after", by_hw_after)):
            pred = predict(subset, by_hw)
            table = prediction_table(subset, pred)
            report[f"{label}_{when}"] = {"loss": serving_loss(subset, pred),
                                         "summary": summarize(table, ("backend", "mode"))}
    report["text"] = format_fit_report(report)
    return fitted, report


def format_fit_report(report: Mapping) -> str:
    info = report["fit"]
    lines = [f"serving fit ({' + '.join(m.upper() for m in info['metrics'])}) on {report['train_rows']} "
             f"{TRAIN_SYSTEM} rows"
             + (f" (the fit saw a subsample of {info['n_cases']})" if info["subsampled"] else "")
             + f", {HOLDOUT_SYSTEM} holdout {report['holdout_rows']} rows; {info['seconds']:.1f} s",
             "fitted: " + ", ".join(f"{k} = {1e3 * v:.3g} ms" for k, v in info["fitted"].items())]
    for kind, per_backend in report.get("overhead_fits", {}).items():
        for b, d in per_backend.items():
            loss = f"; loss {d['loss_before']:.3f} -> {d['loss_after']:.3f}" if "loss_after" in d else ""
            lines.append(f"{kind}_overhead_{b}_s on {d['rows']} {TTFT_OVERHEAD_MODES[kind]} TTFT rows: "
                         f"{d['status']}{loss}")
    for label in ("train", "holdout"):
        if f"{label}_before" not in report:
            continue
        b, a = report[f"{label}_before"], report[f"{label}_after"]
        lines.append(f"\n{label}: loss (mean squared log ratio) {b['loss']:.4f} -> {a['loss']:.4f}")
        for when, r in (("before", b), ("after", a)):
            lines.append(f"  {when}:")
            lines.append("  " + format_summary(r["summary"], ("backend", "mode")).replace("\n", "\n  "))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- memory

def memory_batch_cap(cases: Sequence[ServingCase], params=None, override=None) -> np.ndarray:
    """Most requests per replica whose KV cache fits beside the weights, from the cost model's
    memory (affine in the batch: two evaluations give the slope, as ``sweep.max_batch`` does).
    NaN for disagg rows; 0 where even the weights do not fit."""
    from .cost import memory_per_gpu

    by_hw = {k: v[0] for k, v in resolve_params(cases, params, override).items()}
    out = np.full(len(cases), np.nan)
    grp: dict[tuple, list[int]] = collections.defaultdict(list)
    for i, c in enumerate(cases):
        if c.mode == "agg":
            grp[(_arch_key(c.model), c.precision, c.hardware.name)].append(i)
    for (model, prec, hw_name), idx in grp.items():
        cs = [cases[i] for i in idx]
        col = lambda f: np.asarray([float(getattr(c.layout, f)) for c in cs], np.float32)  # noqa: E731
        isl = np.asarray([c.isl for c in cs], np.float32)
        osl = np.asarray([c.osl for c in cs], np.float32)
        p = by_hw[hw_name]

        def mem(b):
            m = memory_per_gpu(p, cs[0].hardware, model, prec, isl, osl, col("tp"), col("ep"), col("adp"),
                               col("pp"), b, col("chunk"))
            return np.asarray(m["total"], np.float64), np.asarray(m["capacity"], np.float64)

        m0, cap = mem(np.zeros(len(cs), np.float32))
        m1, _ = mem(np.ones(len(cs), np.float32))
        out[idx] = np.maximum(np.floor((cap - m0) / np.maximum(m1 - m0, 1e-9)), 0.0)
    return out
