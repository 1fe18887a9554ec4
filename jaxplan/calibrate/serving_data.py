"""Measured serving deployments mapped onto jaxplan: one :class:`ServingCase` per CSV row.

Reads serving measurements in the format of ``../shared/data/serving/silicon_hopper.csv``
(NVIDIA aiconfigurator's closed-loop benchmarks of TensorRT-LLM, vLLM and SGLang) and maps every
row onto a jaxplan model, hardware, precision and layout. A row that cannot be mapped is kept in
the ``unmapped`` list with its reason; nothing is dropped silently. Prediction is
:mod:`jaxplan.calibrate.serving_predict`, the serving-level fit :mod:`jaxplan.calibrate.serving_fit`.

Mapping rules (each is a modelling assumption, stated where it is applied):

* ``model_path``: a preset in ``configs/models`` whose name matches the repository's last path
  component (case-folded; quantization and re-release suffixes ``-Instruct``, ``-FP8``,
  ``-NVFP4``, ``-FP4``, ``-MXFP4``, ``-v0.1``, ``-0528``, ``-0324`` and a ``Meta-`` prefix
  ignored; renamed releases of one architecture aliased, :data:`ARCHITECTURE_ALIASES`:
  DeepSeek-V3.1 -> DeepSeek-V3), else the Hugging Face ``config.json`` of the same name in
  ``<data>/model_configs``. So ``nvidia/DeepSeek-R1-NVFP4`` is DeepSeek-R1 at fp4.
* ``system``: the data's system names map to presets by ``specs.SYSTEMS``.
* ``precision``: ``fp8`` -> fp8; blank -> the checkpoint name's (``-NVFP4`` fp4, ``-FP8`` fp8),
  else bf16; ``fp4`` -> fp4 where the GPU has FP4 tensor cores,
  else mxfp4 (gpt-oss ships MXFP4 weights; Hopper dequantizes them to BF16); ``int4`` -> int4.
* Layout of a pool (:func:`pool_parallelism`, which states the engines' semantics): stage GPUs
  ``S = tp_size * attention_dp_size``. MoE models: ``S`` must equal ``moe_tp_size *
  moe_ep_size`` and the layout is ``Layout(tp=moe_tp, pp, ep=moe_ep, adp=attention_dp_size)``;
  a blank or 0 ``attention_dp_size`` is ``moe_tp * moe_ep / tp_size`` (engine data parallel),
  blank or 0 MoE columns are MoE-TP over ``S``. Dense models: ``Layout(tp=tp_size, ep=1,
  adp=1)`` (their moe_* columns are ignored; some rows carry 0 there). Attention TP need not
  divide the heads (padded, ``cost.heads_per_gpu``).
* Batch: aiconfigurator's ``batch_size`` counts requests per attention-DP rank (in every row that
  has attention-DP > 1, ``silicon_concurrency = batch_size * attention_dp_size``, except rows
  where ``N = batch_size``: there it counts the replica), so the
  replica's batch is ``batch_size * attention_dp_size``. Where the concurrency is a multiple of
  that, the benchmark ran ``N / batch`` identical replicas; each sees ``batch`` requests.
* Chunk: the backend's default prefill token budget per iteration (:data:`CHUNK`).
* Disaggregated rows: ``N`` from ``silicon_concurrency=N`` in ``silicon_data_source``; where it
  is absent, ``N = decode_batch_size * decode_attention_dp_size * decode_num_workers`` (this
  identity holds in all 36 rows that carry both). Blank ``*_num_workers`` are derived by
  ``serving.evaluate_disagg`` as a deployment would be sized: decode workers each running the
  knee batch (``serving.decode_knee_batch``: the largest whose step is at most 3 one-request
  steps, capped by its KV cache), and prefill workers rate-matched to them at 80% utilization. The
  per-pool batch is not read: ``evaluate_disagg`` derives the decode batch from ``N``.
  ``cross_network``: the deployment's GPUs, ``x * G_prefill + y * G_decode``, exceed one
  scale-up domain, so the KV cache crosses the scale-out network.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..layouts import Layout, check_parallel
from ..specs import (
    BACKENDS,
    SYSTEMS,
    Hardware,
    Model,
    Precision,
    SpecError,
    check_precision,
    get_precision,
    load_hardware,
    load_model,
    preset_names,
)
from .kernels import data_dir as default_data_dir

# Default prefill token budget per iteration of each backend, used as the chunk: TensorRT-LLM
# ``max_num_tokens`` (8192 in the LLM API's BuildConfig default), vLLM ``max_num_batched_tokens``
# (8192 with chunked prefill in the V1 engine's online-serving default), SGLang
# ``chunked_prefill_size`` (8192 on GPUs with >= 80 GB in recent releases). Assumption: the
# benchmarks left these at their defaults (the CSV does not record them).
CHUNK = {"trtllm": 8192, "vllm": 8192, "sglang": 8192}

REQUIRED_COLUMNS = ("id", "silicon_data_source", "backend", "model_path", "system", "precision", "mode",
                    "isl", "osl", "silicon_ttft_ms", "silicon_tpot_ms")
AGG_COLUMNS = ("batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size")
POOL_COLUMNS = ("num_workers", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size")
DISAGG_COLUMNS = tuple(f"{pool}_{c}" for pool in ("prefill", "decode") for c in POOL_COLUMNS + ("batch_size",))

MS = 1e-3


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
    draft_tokens: int = 0           # speculative decoding assumed for the row (serving_predict.speculation_rule)
    acceptance: float = 0.0

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


# Checkpoint-name suffixes that name a quantization or a re-release of the same architecture, and
# renamed releases of one architecture: ``nvidia/DeepSeek-R1-NVFP4`` is DeepSeek-R1's architecture
# at NVFP4, ``DeepSeek-V3.1`` is DeepSeek-V3's (same config.json shapes; V3.1 changed the training
# and the chat template, not the network). DeepSeek-V3.2 is not aliased: its sparse attention is
# another architecture.
CHECKPOINT_SUFFIXES = ("-instruct", "-fp8", "-v0.1", "-nvfp4", "-fp4", "-mxfp4", "-0528", "-0324")
ARCHITECTURE_ALIASES = {"deepseek-v3.1": "deepseek-v3", "deepseek-v3.1-terminus": "deepseek-v3"}
# The precision a checkpoint's name gives, where the row's precision column is blank.
CHECKPOINT_PRECISION = (("-nvfp4", "fp4"), ("-mxfp4", "mxfp4"), ("-fp4", "fp4"), ("-fp8", "fp8"))


def _norm_name(s: str) -> str:
    s = s.lower()
    changed = True
    while changed:
        changed = False
        for suf in CHECKPOINT_SUFFIXES:
            if s.endswith(suf):
                s, changed = s[: -len(suf)], True
    s = s[len("meta-"):] if s.startswith("meta-") else s
    return ARCHITECTURE_ALIASES.get(s, s)


def checkpoint_precision(model_path: str) -> str:
    """The precision named by a checkpoint's suffix (``nvidia/Qwen3-32B-NVFP4`` -> ``fp4``), else ''."""
    last = model_path.rstrip("/").split("/")[-1].lower()
    for suf, name in CHECKPOINT_PRECISION:
        if suf in last:
            return name
    return ""


class _Resolver:
    """Caches the model and hardware lookups of one load."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self._models: dict[str, Model | _Skip] = {}
        self._hw: dict[str, Hardware] = {}
        self.presets = {_norm_name(name): name for name in preset_names("models")}
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
        if not self.configs:
            raise SpecError(f"'{model_path}' needs a Hugging Face config.json and the measured data's "
                            f"model_configs folder is not at {self.data_dir / 'model_configs'}: give "
                            f"--data DIR (or set JAXPLAN_DATA) to the folder holding model_configs/")
        return _Skip("no preset or Hugging Face config for the model",
                     f"'{model_path}': no configs/models preset matches '{key}' and no "
                     f"{self.data_dir / 'model_configs' / (last + '.json')}")

    def hardware(self, system: str) -> Hardware:
        if system not in SYSTEMS:
            raise _Skip("unknown system", f"system '{system}'; known: {', '.join(SYSTEMS)}")
        name = SYSTEMS[system]
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


def pool_parallelism(row: Mapping, prefix: str, model: Model) -> tuple[int, int, int, int, list[str]]:
    """``(tp, ep, adp, pp, notes)`` of one pool as the engine runs it, from its ``prefix``ed columns.

    What the engines do with their arguments (the rule for rows that leave a column blank or 0):

    * SGLang: ``--tp N`` is the GPUs of one model replica; ``--enable-dp-attention --dp D`` splits
      them into ``D`` attention groups of ``N / D`` GPUs, each with its own requests, while the
      MoE layers stay sharded over all ``N`` (tensor-parallel, or expert-parallel with ``--ep``).
    * TensorRT-LLM: ``enable_attention_dp`` gives every GPU of the ``tp_size`` group its own
      attention (attention-DP = the group); ``moe_tensor_parallel_size x
      moe_expert_parallel_size`` shard the experts over the same GPUs (default: MoE TP = tp_size).
    * vLLM: ``--data-parallel-size D --tensor-parallel-size T`` runs ``D`` attention replicas of
      ``T`` GPUs; the MoE layers of all ``D x T`` GPUs form one group, tensor-parallel by default
      and expert-parallel with ``--enable-expert-parallel``.

    aiconfigurator's columns record attention ``tp_size`` and ``attention_dp_size`` per group and
    ``moe_tp_size x moe_ep_size`` over the whole replica. So: ``attention_dp_size`` blank or 0 means
    "not recorded", and it is ``moe_tp_size * moe_ep_size / tp_size`` for MoE models (1 where the
    MoE columns are blank, and for dense models); ``moe_tp_size``/``moe_ep_size`` blank or 0 mean
    the engines' default, experts tensor-parallel over the replica's ``tp_size *
    attention_dp_size`` GPUs. Attention TP that does not divide the query heads is what the engine
    pads: the busiest GPU holds ``ceil(heads / tp)`` heads (``cost.heads_per_gpu``); KV heads are
    replicated once TP exceeds them."""
    tp = _int(row, prefix + "tp_size")
    pp = _int(row, prefix + "pp_size", 1) or 1
    adp = _int(row, prefix + "attention_dp_size")
    pool = prefix.rstrip("_") or "replica"
    notes = []
    if not tp or tp < 1 or pp < 1 or (adp is not None and adp < 0):
        raise _Skip("missing or zero tp_size/pp_size (the GPUs of one attention group)",
                    f"{prefix}tp_size={tp}, {prefix}pp_size={pp}: give the engine's --tp / tensor_parallel_size")
    if not model.is_moe:
        if adp and adp != 1:
            raise _Skip("dense model with attention_dp_size > 1",
                        f"{prefix}attention_dp_size={adp}: list each data-parallel replica as its own replica "
                        f"(attention_dp_size 1, the concurrency counts all)")
        return tp, 1, 1, pp, notes
    mtp, mep = _int(row, prefix + "moe_tp_size") or 0, _int(row, prefix + "moe_ep_size") or 0
    if not adp:
        if mtp and mep and (mtp * mep) % tp == 0:
            adp = mtp * mep // tp
            if adp > 1:
                notes.append(f"{pool} attention_dp_size blank: {mtp}*{mep}/{tp} = {adp} (engine data parallel)")
        else:
            adp = 1
    stage = tp * adp
    if not mtp or not mep:
        if mtp and not mep and stage % mtp == 0:
            mep = stage // mtp
        elif mep and not mtp and stage % mep == 0:
            mtp = stage // mep
        else:
            mtp, mep = stage, 1
        notes.append(f"{pool} moe_tp/ep blank: MoE tensor-parallel over the {stage} GPUs (engine default)")
    if mtp * mep != stage:
        raise _Skip("stage GPUs tp_size*attention_dp_size != moe_tp_size*moe_ep_size",
                    f"{pool}: {tp}*{adp} = {stage} but {mtp}*{mep} = {mtp * mep}: the MoE layers must shard over "
                    f"the replica's GPUs; fix attention_dp_size or moe_tp_size/moe_ep_size")
    return mtp, mep, adp, pp, notes


def pool_layout(row: Mapping, prefix: str, model: Model, where: str, batch_per_rank: float,
                chunk: float, parallel=None) -> Layout:
    """The Layout of one pool (agg replica, prefill or decode worker) from its ``prefix``ed columns
    (:func:`pool_parallelism`, or ``parallel`` already read from them).

    ``batch_per_rank``: requests per attention-DP rank (the replica batch is that times adp)."""
    ltp, lep, ladp, pp, _ = parallel or pool_parallelism(row, prefix, model)
    try:
        check_parallel(model, ltp * lep * pp, ltp, pp, lep, 1, ladp, where=where, heads=False)
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
    prec = map_precision((row.get("precision") or "").strip() or checkpoint_precision(row["model_path"]), hw)
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
        par = pool_parallelism(row, "", model)
        notes = par[4]
        adp = par[2]
        if n is not None and adp > 1 and n < b * adp and n == b:
            # a few exports count the replica's requests in batch_size (N = batch_size, not
            # batch_size * attention_dp_size): each attention group then holds N / adp
            b = b / adp
            notes.append("batch_size counts the replica (N = batch_size): per attention group N / adp")
        lay = pool_layout(row, "", model, rid, b, chunk, par)
        if n is None:
            n = float(lay.batch)
            notes.append("concurrency absent: N = batch_size * attention_dp_size")
        note = "; ".join(notes)
        replicas = n / float(lay.batch)
        if replicas < 1 - 1e-9:
            raise _Skip("concurrency below the replica batch",
                        f"N={n:g} < batch_size*attention_dp_size={float(lay.batch):g}")
        if abs(replicas - round(replicas)) > 1e-9:
            raise _Skip("concurrency not a multiple of the replica batch",
                        f"N={n:g}, batch_size*attention_dp_size={float(lay.batch):g}")
        return ServingCase(**common, concurrency=n, layout=lay, replicas=float(round(replicas)), note=note)
    # disaggregated
    ppar, dpar = pool_parallelism(row, "prefill_", model), pool_parallelism(row, "decode_", model)
    pre = pool_layout(row, "prefill_", model, rid, 1.0, chunk, ppar)
    dec = pool_layout(row, "decode_", model, rid, 1.0, 0.0, dpar)
    x = _int(row, "prefill_num_workers") or 0       # 0: evaluate_disagg derives the count
    y = _int(row, "decode_num_workers") or 0
    note = ppar[4] + dpar[4]
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
                       cross_network=bool(g > hw.scale_up_domain), note="; ".join(note))


def load_serving(path, data_dir=None) -> tuple[list[ServingCase], list[Unmapped]]:
    """Read a serving CSV; return (mapped cases, unmapped rows with their reasons).

    Raises SpecError when the file is missing or lacks required columns."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"serving file '{path}' does not exist")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = set(reader.fieldnames or ())
            missing = [c for c in REQUIRED_COLUMNS if c not in cols]
            if missing:
                raise SpecError(f"{path}: missing required column(s) {', '.join(missing)}; "
                                f"the format is that of silicon_hopper.csv")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise SpecError(f"{path}: not a text CSV of serving measurements ({e})") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.strerror or e})") from None
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


SPECULATION_NOTE = "speculative decoding assumed"


def derivations(c: ServingCase) -> str:
    """The row's notes on fields derived because the CSV left them blank (the note without what
    the validator assumed about how the row was decoded, ``serving_predict.speculation_rule``)."""
    return c.note.split(SPECULATION_NOTE)[0].rstrip("; ")      # that assumption is appended last


def unique_mask(cases: Sequence[ServingCase]) -> np.ndarray:
    """One row per measurement: the most completely described one (worker counts and concurrency
    given, no derived fields), else the first."""
    best: dict[tuple, int] = {}
    for i, c in enumerate(cases):
        k = measurement_key(c)
        if k not in best or (derivations(cases[best[k]]) and not derivations(c)):
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
