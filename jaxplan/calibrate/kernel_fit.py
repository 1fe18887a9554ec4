"""Fit the cost model's efficiency parameters to measured kernel latencies with Optax.

The loss is a Huber loss of the log ratio of predicted to measured time, ``x = log t_pred -
log t_meas``: ``x**2`` for ``|x| <= 0.1``, linear beyond (:func:`residual_loss`), averaged per
kernel kind and then over kinds (each kind counts equally, however many rows it has). Parameters
are optimized in the unconstrained space of :func:`jaxplan.params.to_raw` by Adam from the
defaults, in one jit-compiled step over fixed-shape arrays; the run is deterministic (fixed
subsample seed, fixed initial point, fixed step count).

Parameters that no training row depends on (their gradient is exactly zero: serving overheads,
memory, scale-out collectives, FP4 rates on Hopper, ...) are frozen at their current values.

Holdout: whole shape groups are held out (GEMM: (n, k) pairs; attention: (heads, kv_heads,
head_dim); MLA: (heads, isl); MoE: (hidden, inter, experts, top_k); collectives: message-size
bands), about 20%, chosen by a hash of the group key. Train and holdout figures are computed on
every mapped row; the optimizer sees a stratified subsample of the train rows when a kind has more
than ``max_rows_per_kind``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..params import default_params, from_raw, load_params, params_for, to_raw
from ..specs import Hardware, SpecError, load_hardware
from .kernels import KINDS, KindRows, Measurements, default_kernels_dir, holdout_groups, load_kernels, predict_seconds
from .stats import error_stats

DEFAULT_STEPS = 1500
DEFAULT_LR = 0.05
DEFAULT_MAX_ROWS_PER_KIND = 12000
HOLDOUT_FRAC = 0.2
MIN_GROUPS = 5          # fewer groups than this: the holdout key is refined (see _group_keys)
# Serving-level and memory parameters: kernels never constrain them (kept even if a gradient leaks).
NEVER_FIT = ("step_overhead", "layer_overhead", "mem_usable_frac", "mem_reserve_gb")


def _never_fit(name: str) -> bool:
    return name.startswith(NEVER_FIT)

# Loss weight of each kind relative to the others (default 1: every kind counts equally, whatever its
# row count). The batched MLA matmuls are GEMMs on a different kernel (cuBLAS batched: a ~4 us floor
# against ~2.5 us) sharing the GEMM parameters; at full weight their 850 rows would pull the shared
# kernel latency of 100,000 GEMM rows, so they count a twentieth.
KIND_WEIGHTS = {"mla_bmm": 0.05}

# Where the fit starts for the kernel-shape terms whose defaults are neutral (off): physical first
# guesses (H100 magnitudes), so that the optimizer starts inside the region where each term acts.
FIT_INIT = {
    "kernel_latency_s": 2.5e-6, "roofline_sharpness": 2.0, "gemm_m_half": 30.0, "gemm_nk_half": 4.0,
    **{f"gemm_k_extra_{r}": 100.0 for r in ("bf16", "fp8", "fp4", "fp8_block")},
    **{f"gemm_wave_elems_{r}": 6e5 for r in ("bf16", "fp8", "fp4", "fp8_block")},
    "gemm_splitk_min_k_bf16": 3000.0, "gemm_splitk_min_k_fp8": 5000.0,
    "gemm_splitk_min_k_fp4": 1e5, "gemm_splitk_min_k_fp8_block": 1e5,
    **{f"gemm_quant_bytes_{r}": 6.0 for r in ("fp8", "fp4", "fp8_block")},
    "gemm_quant_latency_fp8_s": 1e-5, "gemm_quant_latency_fp4_s": 4e-6, "gemm_quant_latency_fp8_block_s": 2e-6,
    "attn_q_half": 1.0, "attn_seq_tile": 50.0, "attn_softmax_dim": 40.0, "attn_prefill_k_overhead": 150.0,
    "attn_prefill_wave_rows": 5000.0, "attn_prefill_tile_s": 2e-6, "attn_prefill_latency_s": 1e-5,
    "mla_prefill_latency_s": 1e-5, "attn_decode_group_pad": 9.0, "attn_decode_k_overhead": 300.0,
    "attn_decode_latency_s": 5e-6, "mla_decode_latency_s": 8e-6,
    "moe_m_half": 20.0, "moe_k_overhead": 400.0, "moe_pair_s": 1e-9, "moe_latency_s": 2e-5,
    "moe_eff_scale_fp8": 0.7, "moe_eff_scale_fp4": 0.7, "moe_eff_scale_fp8_block": 0.5,
    "moe_imbalance_powerlaw_101": 0.5, "moe_imbalance_powerlaw_12": 0.7,
    "attn_eff_scale_fp8": 0.75, "allreduce_oneshot_latency_s": 1e-6, "allreduce_latency_nvlink_s": 2e-6,
    "allreduce_nvls_share": 0.5,
}



# ----------------------------------------------------------------------------- split and subsample

def _group_keys(rows: KindRows) -> np.ndarray:
    """Holdout keys of a kind's rows. When a kind has fewer than MIN_GROUPS shape groups (B200 MoE
    tables cover two model shapes), the key is refined by the parallel layout of the row
    (moe_tp x moe_ep) so that a holdout still exists."""
    g = rows.group
    if len(set(g.tolist())) >= MIN_GROUPS or rows.kind != "moe":
        return g
    tp = rows.x["tp"].astype(int).astype(str)
    ep = rows.x["ep"].astype(int).astype(str)
    return np.array([f"{a}|tp{b}|ep{c}" for a, b, c in zip(g, tp, ep)])


@dataclasses.dataclass
class Split:
    train: np.ndarray            # row indices
    holdout: np.ndarray
    holdout_groups: set
    train_groups: set
    keys: np.ndarray


def split_rows(rows: KindRows, frac: float = HOLDOUT_FRAC) -> Split:
    keys = _group_keys(rows)
    hold = holdout_groups(keys.tolist(), frac, salt=rows.kind)
    is_hold = np.isin(keys, sorted(hold)) if hold else np.zeros(len(keys), bool)
    return Split(np.nonzero(~is_hold)[0], np.nonzero(is_hold)[0], hold,
                 set(keys[~is_hold].tolist()), keys)


def stratified_subsample(idx: np.ndarray, keys: np.ndarray, cap: int, seed: int, salt: str = "") -> np.ndarray:
    """At most ``cap`` of the rows ``idx``, each group keeping its share (at least one row)."""
    if cap is None or len(idx) <= cap:
        return np.sort(idx)
    rng = np.random.default_rng([seed, int.from_bytes(salt.encode()[:8].ljust(8, b"\0"), "little")])
    k = keys[idx]
    out = []
    for g in sorted(set(k.tolist())):
        members = idx[k == g]
        take = max(1, int(round(cap * len(members) / len(idx))))
        out.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(out))


# ----------------------------------------------------------------------------- arrays for jit

def _bucket_arrays(rows: KindRows, idx: np.ndarray, weight: float):
    """[(kind, static, x, log_measured, weight)] for the rows idx, one entry per static bucket."""
    sub = rows.take(idx)
    out = []
    for static, b in sub.buckets():
        x = {k: jnp.asarray(v[b], jnp.float32) for k, v in sub.x.items() if np.all(np.isfinite(v[b]))}
        out.append((rows.kind, tuple(sorted(static.items())),
                    x, jnp.asarray(np.log(sub.seconds[b]), jnp.float32),
                    jnp.full(len(b), weight, jnp.float32)))
    return out


def _predict_buckets(p, hw, statics, xs):
    outs = []
    for (kind, static), x in zip(statics, xs):
        t = predict_seconds(kind, p, hw, x, dict(static))
        outs.append(jnp.log(jnp.maximum(t, 1e-12)))
    return outs


def predict_measurements(params, hw, meas: Measurements, kinds=None) -> dict:
    """Predicted seconds (numpy) of every mapped row: kind -> array aligned with meas.kinds[kind]."""
    kinds = [k for k in meas.kinds if kinds is None or k in kinds]
    statics, xs, index = [], [], []
    for kind in kinds:
        rows = meas.kinds[kind]
        for static, b in rows.buckets():
            statics.append((kind, tuple(sorted(static.items()))))
            xs.append({k: jnp.asarray(v[b], jnp.float32) for k, v in rows.x.items() if np.all(np.isfinite(v[b]))})
            index.append((kind, b))
    p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    fn = jax.jit(lambda p, hw, xs: _predict_buckets(p, hw, statics, xs))
    logs = fn(p, hw, xs)
    out = {k: np.full(len(meas.kinds[k]), np.nan) for k in kinds}
    for (kind, b), lg in zip(index, logs):
        out[kind][b] = np.exp(np.asarray(lg, np.float64))
    return out


# ----------------------------------------------------------------------------- the fit

@dataclasses.dataclass
class FitResult:
    params: dict
    report: dict                  # kind -> {"train": stats, "holdout": stats}
    losses: list
    fitted: list                  # names of params that were optimized
    frozen: list
    subsample: dict               # kind -> (rows optimized on, train rows)
    seconds: dict
    splits: dict
    meas: Measurements


# The kernel tables carry one-off spikes (the same shape measured 2x apart, an isolated row at 5x
# its neighbours), and a squared loss lets them drag the bulk. A Huber loss on the log ratio
# (quadratic within HUBER_DELTA ~ 10%, linear beyond) bounds a row's pull; how delta was chosen and
# what it did on each GPU: benchmarks/fit_report.md.
HUBER_DELTA = 0.1


def residual_loss(x):
    """Huber loss of a log ratio ``x``: ``x**2`` within :data:`HUBER_DELTA`, then linear with the
    same slope (``delta * (2|x| - delta)``), so it equals the squared loss for small errors."""
    a = jnp.abs(x)
    return jnp.where(a <= HUBER_DELTA, x ** 2, HUBER_DELTA * (2 * a - HUBER_DELTA))


def fit_measurements(meas: Measurements, hw, *, steps: int = DEFAULT_STEPS, seed: int = 0, lr: float = DEFAULT_LR,
                     max_rows_per_kind: int | None = DEFAULT_MAX_ROWS_PER_KIND, init=None,
                     kinds=None, equal_kind_weights: bool = True, log=print) -> FitResult:
    """Fit params to already-loaded measurements on hardware ``hw``. Deterministic for a given seed."""
    t0 = time.perf_counter()
    kinds = [k for k in KINDS if k in meas.kinds and (kinds is None or k in kinds)]
    if not kinds:
        raise SpecError("no mapped kernel rows to fit (see the unmapped reasons above)")
    splits, sub = {}, {}
    buckets = []
    for kind in kinds:
        rows = meas.kinds[kind]
        sp = split_rows(rows)
        splits[kind] = sp
        if not len(sp.train):
            continue
        idx = stratified_subsample(sp.train, sp.keys, max_rows_per_kind, seed, salt=kind)
        sub[kind] = (len(idx), len(sp.train))
        w = (1.0 / len(idx) if equal_kind_weights else 1.0) * KIND_WEIGHTS.get(kind, 1.0)
        buckets += _bucket_arrays(rows, idx, w)
    total_w = sum(float(b[4].sum()) for b in buckets)
    statics = [(b[0], b[1]) for b in buckets]
    data = [(b[2], b[3], b[4] / total_w) for b in buckets]

    keep = default_params() if init is None else dict(init)     # what frozen params keep
    if init is None:
        init = default_params()
        init.update({k: v for k, v in FIT_INIT.items() if k in init})
    p0 = {k: jnp.asarray(v, jnp.float32) for k, v in init.items()}
    raw0 = to_raw(p0)
    opt = optax.adam(optax.cosine_decay_schedule(lr, max(steps, 1), alpha=0.05))

    def loss_fn(raw, data):
        p = from_raw(raw)
        logs = _predict_buckets(p, hw, statics, [d[0] for d in data])
        return sum(jnp.sum(w * residual_loss(lp - lm)) for lp, (_, lm, w) in zip(logs, data))

    @jax.jit
    def step(raw, opt_state, data, mask):
        loss, g_all = jax.value_and_grad(loss_fn)(raw, data)
        g = {k: jnp.where(mask[k] > 0, jnp.nan_to_num(v), 0.0) for k, v in g_all.items()}
        upd, opt_state = opt.update(g, opt_state, raw)
        return optax.apply_updates(raw, upd), opt_state, loss, g_all

    raw = raw0
    opt_state = opt.init(raw)
    zero = {k: jnp.zeros((), jnp.float32) for k in raw}
    t1 = time.perf_counter()
    # Probe: gradients with every parameter masked, to find the ones the data constrains.
    _, _, loss0, g0 = step(raw, opt_state, data, zero)
    loss0 = float(loss0)
    t_compile = time.perf_counter() - t1
    fitted = sorted(k for k, v in g0.items() if float(v) != 0.0 and not _never_fit(k))
    frozen = sorted(set(raw) - set(fitted))
    mask = {k: jnp.asarray(1.0 if k in fitted else 0.0, jnp.float32) for k in raw}
    losses = [loss0]
    t2 = time.perf_counter()
    for _ in range(steps):
        raw, opt_state, loss, _ = step(raw, opt_state, data, mask)
        losses.append(loss)
    losses = [float(v) for v in jax.device_get(losses)]
    t_opt = time.perf_counter() - t2
    phys = from_raw(raw)
    params = {k: jnp.asarray(phys[k] if k in fitted else keep[k], jnp.float32) for k in raw}

    t3 = time.perf_counter()
    report = evaluate_report(params, hw, meas, splits, kinds)
    t_eval = time.perf_counter() - t3
    seconds = {"compile_and_probe": round(t_compile, 2), "optimize": round(t_opt, 2),
               "evaluate": round(t_eval, 2), "total": round(time.perf_counter() - t0, 2)}
    return FitResult(params, report, losses, fitted, frozen, sub, seconds, splits, meas)


def evaluate_report(params, hw, meas: Measurements, splits=None, kinds=None) -> dict:
    """kind -> {"train": stats, "holdout": stats} (or {"all": stats} without ``splits``)."""
    pred = predict_measurements(params, hw, meas, kinds)
    report = {}
    for kind, pr in pred.items():
        rows = meas.kinds[kind]
        if splits is None or kind not in splits:
            report[kind] = {"all": error_stats(pr, rows.seconds)}
            continue
        sp = splits[kind]
        report[kind] = {"train": error_stats(pr[sp.train], rows.seconds[sp.train]),
                        "holdout": error_stats(pr[sp.holdout], rows.seconds[sp.holdout])}
    return report


def fit_profile(hardware_name: str, kernels_dir=None, steps: int = DEFAULT_STEPS, seed: int = 0, *,
                max_rows_per_kind: int | None = DEFAULT_MAX_ROWS_PER_KIND, lr: float = DEFAULT_LR,
                log=print, return_result: bool = False):
    """Load one GPU's kernel tables (or a bench CSV), fit, and return ``(params, report)`` (or the
    whole :class:`FitResult` with ``return_result``). ``kernels_dir`` defaults to the shared tables
    of the hardware (``kernels.default_kernels_dir``); ``log`` receives progress lines."""
    hw = load_hardware(hardware_name)
    path = Path(kernels_dir) if kernels_dir is not None else default_kernels_dir(hw.name)
    t0 = time.perf_counter()
    meas = load_kernels(path, hw)
    t_load = time.perf_counter() - t0
    if log:
        log(meas.summary())
    res = fit_measurements(meas, hw, steps=steps, seed=seed, lr=lr, max_rows_per_kind=max_rows_per_kind, log=log)
    res.seconds["load"] = round(t_load, 2)
    if log:
        subs = [f"{k} {a:,} of {b:,}" for k, (a, b) in res.subsample.items() if a < b]
        if subs:
            log(f"subsampled (stratified by holdout group, seed {seed}) train rows: {'; '.join(subs)}")
        log(f"fitted {len(res.fitted)} params ({', '.join(res.fitted)}); frozen {len(res.frozen)}")
        log(f"loss {res.losses[0]:.4f} -> {res.losses[-1]:.4f} in {steps} steps; seconds: {res.seconds}")
    return res if return_result else (res.params, res.report)


# ----------------------------------------------------------------------------- profile metadata

def _pct(v) -> float | None:
    """A fraction as a percentage rounded to 0.01 (None for NaN), as profiles record figures."""
    return None if v != v else round(100.0 * float(v), 2)


def profile_meta(res: FitResult, hw_name: str, source, steps: int, seed: int) -> dict:
    """What a fitted profile records about its fit: tables, date, steps, per-kind figures."""
    try:
        __version__ = version("jaxplan")
    except PackageNotFoundError:          # not installed: read the package attribute
        __version__ = getattr(sys.modules.get("jaxplan"), "__version__", "unknown")
    figures = {kind: {s: {"rows": st["n"], "mape_pct": _pct(st["mape"]), "median_ape_pct": _pct(st["median"]),
                          "p90_ape_pct": _pct(st["p90"])} for s, st in sets.items()}
               for kind, sets in res.report.items()}
    tables = sorted({Path(f).name for f in res.meas.sources})
    manifest = _manifest_versions(source)
    tables = [f"{t} (collected with {manifest[t]})" if t in manifest else t for t in tables]
    # relative to the repository (a committed measurement) or to the folder beside it (../shared)
    src = Path(source).resolve()
    repo = Path(__file__).resolve().parents[2]
    if src.is_relative_to(repo):
        src_label = str(src.relative_to(repo))
    elif src.is_relative_to(repo.parent):
        src_label = "../" + str(src.relative_to(repo.parent))
    else:
        src_label = str(source)
    return {
        "hardware": hw_name,
        "source": src_label,
        "tables": tables,
        "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
        "jaxplan_version": __version__, "jax_version": jax.__version__,
        "loss": f"Huber loss (delta {HUBER_DELTA}) of the log ratio of predicted to measured time, each kernel "
                f"kind weighted equally"
                + (f" (weights {KIND_WEIGHTS})" if KIND_WEIGHTS else ""),
        "optimizer": f"optax.adam, cosine decay from lr {DEFAULT_LR}; init: defaults + kernel_fit.FIT_INIT",
        "steps": steps, "seed": seed,
        "holdout": f"whole shape groups, ~{int(HOLDOUT_FRAC * 100)}% by hash of the group key",
        "subsample": {k: {"optimized_rows": a, "train_rows": b} for k, (a, b) in res.subsample.items()},
        "fit_seconds": res.seconds,
        "rows_not_mapped": [f"{n} rows of {t}: {why}" for (t, why), n in sorted(res.meas.unmapped.items())],
        "fitted": res.fitted,
        "frozen_at_defaults": res.frozen,
        "figures": figures,
    }


def _manifest_versions(source) -> dict:
    """table file name -> 'collected_with' version, from the MANIFEST.tsv above a GPU's table folder."""
    src = Path(source)
    man = (src if src.is_dir() else src.parent).parent / "MANIFEST.tsv"
    out = {}
    if man.is_file():
        for line in man.read_text().splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) >= 3 and Path(parts[0]).parent.name == (src if src.is_dir() else src.parent).name:
                out[Path(parts[0]).name] = parts[2]
    return out


# ----------------------------------------------------------------------------- validation

def _resolve_params(params, hw):
    if params is None:
        return params_for(hw.name)
    if isinstance(params, (str, Path)):
        return load_params(params), str(params)
    return dict(params), "given"


@dataclasses.dataclass
class KernelValidation:
    """Predictions of every mapped row of a kernel table against its measurements."""
    file: str
    hardware: Hardware
    meas: Measurements
    pred: dict                    # kind -> predicted seconds, aligned with meas.kinds[kind]
    report: dict                  # kind -> {"all": stats, "by_variant": {variant: stats}}
    params_source: str


def validate_kernels(file, hardware, params=None) -> KernelValidation:
    """Predict every mapped row of a kernel table (or a bench CSV) and compare with the measurement.

    ``hardware``: preset name, YAML path or a Hardware; ``params``: a params dict, a profile path, or
    None for the hardware's shipped profile (else the defaults)."""
    hw = hardware if isinstance(hardware, Hardware) else load_hardware(hardware)
    p, source = _resolve_params(params, hw)
    meas = load_kernels(Path(file), hw)
    if not meas.kinds:
        raise SpecError(f"{file}: no row could be mapped onto a cost function ({meas.summary()})")
    pred = predict_measurements(p, hw, meas)
    report: dict = {}
    for kind, pr in pred.items():
        rows = meas.kinds[kind]
        report[kind] = {"all": error_stats(pr, rows.seconds),
                        "by_variant": {v: error_stats(pr[rows.variant == v], rows.seconds[rows.variant == v])
                                       for v in sorted(set(rows.variant.tolist()))}}
    return KernelValidation(str(file), hw, meas, pred, report, source)
