"""The app layer's output: every file jaxplan writes (CSV, JSON, YAML, PNG) and the words and
tables it prints. The library returns numbers, names and rows; this module words them."""
from __future__ import annotations

import collections
import contextlib
import csv
import json
import math
import os
import sys
import textwrap
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from .calibrate.serving_data import unmapped_counts
from .calibrate.serving_predict import FAR_OFF, summarize
from .calibrate.stats import error_stats
from .params import profile_text
from .specs import HARDWARE_NUMBERS, Experiment, Hardware, SpecError
from .stream import HIST_BINS, HIST_RANGE, ExploreResult
from .sweep import AGG_COLUMNS, DISAGG_COLUMNS, INT_COLUMNS, Plan, row


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    return "nan" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.6g}")


# ----------------------------------------------------------------------------- atomic outputs
#
# Every file is written under a temporary name in its folder and renamed into place when complete
# (os.replace is atomic on one file system), so a killed run never leaves a truncated file under
# a final name. A run's folder gets its marker file (summary.json, ...) last, after the old marker
# and the old outputs are removed first: a folder with a marker is a complete run.

PENDING: set[Path] = set()          # temporary files being written (removed on an interrupt)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """A temporary path beside ``path``; renamed to ``path`` when the block completes, removed if
    it fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    PENDING.add(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        PENDING.discard(tmp)
        tmp.unlink(missing_ok=True)


def remove_pending() -> None:
    """Delete the temporary files of writes in progress (after an interrupt)."""
    for tmp in list(PENDING):
        tmp.unlink(missing_ok=True)
        PENDING.discard(tmp)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _writable_dir(d: Path, flag: str, what: Path) -> None:
    """Create folder ``d`` if needed and prove a file can be written in it; SpecError otherwise."""
    for parent in (d, *d.parents):
        if parent.exists():
            if not parent.is_dir():
                raise SpecError(f"{flag} '{what}': '{parent}' is a file, not a folder")
            break
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".jaxplan-write-test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SpecError(f"{flag} '{what}': cannot write there ({e.strerror or e})") from None


def prepare_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Check, before any work, that ``path`` is (or can become) a folder jaxplan can write in."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SpecError(f"{flag} '{path}' is a file; give a folder")
    _writable_dir(path, flag, path)
    return path


def prepare_out_file(path: str | Path, flag: str = "--out") -> Path:
    """Check, before any work, that a file can be written at ``path`` (not a folder; its folder
    writable)."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{flag} '{path}' is a folder; give a file name")
    _writable_dir(path.parent, flag, path)
    return path


def save_params(params: Mapping, path: str | Path, meta: Mapping | None = None) -> Path:
    """Write a parameter profile (``params.profile_text``), e.g. what ``jaxplan fit`` fitted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, profile_text(params, meta))


def start_run(out: str | Path, outputs: Sequence[str]) -> Path:
    """Make the output folder ready for a run whose files are ``outputs``, its marker (written last)
    first: remove the marker of an earlier run, then its other outputs, so that the folder never
    mixes two runs under a marker."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in outputs:
        (out / name).unlink(missing_ok=True)
    return out


def write_csv(path: Path, columns: dict[str, np.ndarray], names: Sequence[str], rows: Iterable[int] | None = None):
    names = [n for n in names if n in columns]
    idx = range(len(columns[names[0]])) if rows is None else rows
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for i in idx:
            w.writerow([_fmt(columns[n][i]) for n in names])


def table(rows: list[dict], cols: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table. ``cols``: (key, header, format)."""
    head = [h for _, h, _ in cols]
    body = [[format(r[k], f) if f else str(r[k]) for k, _, f in cols] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = "  ".join(h.rjust(w) for h, w in zip(head, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(out)


FRONTIER_TABLE = (("tp", "TP", "d"), ("pp", "PP", "d"), ("ep", "EP", "d"), ("dp", "DP", "d"), ("adp", "ADP", "d"),
                  ("batch", "batch", "d"), ("chunk", "chunk", "d"),
                  ("tokens_per_s_per_user", "tok/s/user", ".1f"), ("tokens_per_s_per_gpu", "tok/s/GPU", ".1f"),
                  ("ttft_s", "TTFT s", ".2f"), ("tpot_s", "TPOT ms", "")
                  , ("memory_per_gpu_gb", "mem GB", ".0f"))


OPEN_TABLE = (("tp", "TP", "d"), ("pp", "PP", "d"), ("ep", "EP", "d"), ("dp", "DP", "d"), ("adp", "ADP", "d"),
              ("batch", "batch", "d"), ("chunk", "chunk", "d"), ("rate_rps", "req/s", ".2f"),
              ("utilization", "util", ".2f"), ("tokens_per_s_per_gpu", "tok/s/GPU", ".1f"),
              ("ttft_p50_s", "TTFT p50 s", ".3f"), ("ttft_p99_s", "TTFT p99 s", ".3f"), ("tpot_s", "TPOT ms", ""),
              ("tpot_p90_s", "TPOT p90 ms", ".1f"))


DISAGG_TABLE = (("prefill", "prefill worker", ""), ("prefill_workers", "x", "d"),
                ("decode", "decode worker", ""), ("decode_workers", "y", "d"), ("gpus_used", "GPUs", "d"),
                ("tokens_per_s_per_user", "tok/s/user", ".1f"), ("tokens_per_s_per_gpu", "tok/s/GPU", ".1f"),
                ("ttft_s", "TTFT s", ".2f"), ("tpot_s", "TPOT ms", ""), ("kv_transfer_s", "KV ms", ""))


def _parallel_label(r: dict, prefix: str = "") -> str:
    def g(k):
        return int(r[prefix + k])
    parts = [f"{k.upper()}{g(k)}" for k in ("tp", "pp", "ep") if g(k) > 1]
    if not prefix and g("dp") > 1:
        parts.insert(3, f"DP{g('dp')}")
    if g("adp") != g("ep"):
        parts.append(f"ADP{g('adp')}")
    return "·".join(parts or ["TP1"])


def layout_label(r: dict) -> str:
    return _parallel_label(r) + f" B{int(r['batch'])} C{int(r['chunk'])}"


def disagg_label(r: dict) -> str:
    return (f"prefill {int(r['prefill_workers'])}x[{_parallel_label(r, 'prefill_')} B{int(r['prefill_batch'])} "
            f"C{int(r['prefill_chunk'])}] + "
            f"decode {int(r['decode_workers'])}x[{_parallel_label(r, 'decode_')} B{int(r['decode_batch'])}]")


def label(r: dict) -> str:
    return disagg_label(r) if r.get("mode") == "disagg" else layout_label(r)


def frontier_rows(columns, idx, spec=FRONTIER_TABLE) -> list[dict]:
    rows = []
    for i in idx:
        r = {k: columns[k][i] for k in columns}
        out = {k: r[k] for k, _, _ in spec if k in r}
        out["tpot_s"] = f"{1e3 * float(columns['tpot_s'][i]):.1f}"
        if spec is OPEN_TABLE:
            out["tpot_p90_s"] = 1e3 * float(columns["tpot_p90_s"][i])
        if spec is DISAGG_TABLE:
            out["prefill"] = f"{_parallel_label(r, 'prefill_')} B{int(r['prefill_batch'])} C{int(r['prefill_chunk'])}"
            out["decode"] = f"{_parallel_label(r, 'decode_')} B{int(r['decode_batch'])}"
            out["kv_transfer_s"] = f"{1e3 * float(r['kv_transfer_s']):.1f}"
        for k in INT_COLUMNS & set(out):
            out[k] = int(out[k])
        rows.append(out)
    return rows


# Above this many feasible layouts frontier.png draws their density, not a point each.
DENSITY_ABOVE = 20_000


def layout_density(user, gpu) -> np.ndarray:
    """Counts of layouts on the streamed sweep's log10 grid (``stream.HIST_RANGE``), [user, gpu]."""
    (u0, u1), (g0, g1) = HIST_RANGE
    lu = np.clip(np.log10(np.maximum(user, 1e-30)), u0, u1 - 1e-9)
    lg = np.clip(np.log10(np.maximum(gpu, 1e-30)), g0, g1 - 1e-9)
    h, _, _ = np.histogram2d(lu, lg, bins=HIST_BINS, range=HIST_RANGE)
    return h


def _draw_density(ax, hist) -> None:
    """Layouts per cell of the log grid, shaded on a log colour scale, the axes cut to where there are any."""
    from matplotlib.colors import LogNorm
    hist = np.asarray(hist, float)
    (u0, u1), (g0, g1) = HIST_RANGE
    ue, ge = 10 ** np.linspace(u0, u1, hist.shape[0] + 1), 10 ** np.linspace(g0, g1, hist.shape[1] + 1)
    total = int(hist.sum())
    if not total:
        return
    m = ax.pcolormesh(ue, ge, np.where(hist > 0, hist, np.nan).T, cmap="Greys", norm=LogNorm(vmin=1),
                      shading="flat", alpha=0.6, rasterized=True)
    iu, ig = np.nonzero(hist)
    ax.set_xlim(0, ue[iu.max() + 1] * 1.02)
    ax.set_ylim(0, ge[ig.max() + 1] * 1.02)
    ax.figure.colorbar(m, ax=ax, pad=0.01, label=f"layouts per cell (of {total:,} feasible)")


def plot_frontier(path: Path, columns: dict, frontier_idx, best: int | None, title: str,
                  min_tokens_per_user: float = 0.0, extra: dict | None = None, max_ttft_s: float = float("inf"),
                  density=None):
    """Every feasible layout faintly (their density when there are many), the frontier
    highlighted, the SLA pick marked.

    ``extra``: optional {label: (user, gpu)} frontiers to overlay (e.g. disaggregated);
    ``density``: counts on the ``stream.HIST_RANGE`` grid (a streamed sweep's) instead of the points."""

    feas = np.asarray(columns["feasible"], bool)
    u = np.asarray(columns["tokens_per_s_per_user"], float)
    g = np.asarray(columns["tokens_per_s_per_gpu"], float)
    fig, ax = figure(figsize=(8, 5.5), dpi=120)
    if density is None and feas.sum() > DENSITY_ABOVE:
        density = layout_density(u[feas], g[feas])
    if density is not None:
        _draw_density(ax, density)
    else:
        ax.scatter(u[feas], g[feas], s=6, alpha=0.15, color="tab:gray", label=f"{feas.sum():,} feasible layouts")
    fi = np.asarray(frontier_idx, int)
    if fi.size:
        ax.plot(u[fi], g[fi], "-o", color="tab:blue", ms=3.5, lw=1.6, label="Pareto frontier")
    for name, (xu, xg) in (extra or {}).items():
        ax.plot(xu, xg, "-s", ms=3.5, lw=1.6, label=name)
    if min_tokens_per_user > 0:
        ttft = f", TTFT ≤ {max_ttft_s:g} s (the frontier ignores TTFT)" if math.isfinite(max_ttft_s) else ""
        ax.axvline(min_tokens_per_user, color="tab:red", ls="--", lw=1, alpha=0.7,
                   label=f"SLA: ≥ {min_tokens_per_user:g} tokens/s/user{ttft}")
    if best is not None:
        r = {k: columns[k][best] for k in columns}
        ax.plot([u[best]], [g[best]], marker="*", ms=16, color="tab:orange", mec="k", ls="none",
                label=f"best at SLA: {label(r)}")
    ax.set_xlabel("interactivity (output tokens/s per user)")
    ax.set_ylabel("throughput (output tokens/s per GPU)")
    ax.set_title(wrap(title), fontsize=10)
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------- progress

def progress_line(done: int, total: int, seconds: float, what: str = "layouts") -> str:
    """``evaluated 1,200,000 of 7,200,000 layouts (17%) at 2,400,000/s, about 2.5 s left``."""
    rate = done / max(seconds, 1e-9)
    left = (total - done) / rate if rate > 0 and done < total else 0.0
    eta = f", about {left:.0f} s left" if done < total else f" in {seconds:.1f} s"
    return f"evaluated {done:,} of {total:,} {what} ({100 * done / max(total, 1):.0f}%) at {rate:,.0f}/s{eta}"


def progress_printer(what: str = "layouts", stream=None, every_s: float = 10.0):
    """A ``progress(done, total, seconds)`` callback for streamed sweeps: one line redrawn in place
    on a terminal, else a line every ``every_s`` seconds and at the end."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    last = [-math.inf]

    def show(done, total, seconds):
        now = time.monotonic()
        end = done >= total
        if tty:
            print("\r  " + progress_line(done, total, seconds, what), end="\n" if end else "", file=stream, flush=True)
        elif end or now - last[0] >= every_s:
            print("  " + progress_line(done, total, seconds, what), file=stream, flush=True)
            last[0] = now
    return show


def kept_text(plan: Plan) -> str:
    """What layouts.csv holds when a streamed sweep did not keep every layout."""
    parts = []
    for mode, r in plan.results.items():
        if r.kept < r.n:
            parts.append(f"{mode}: {r.kept:,} of {r.n:,}")
    if not parts:
        return ""
    return ("streamed: layouts.csv holds the rows kept (the frontier, the best at the SLA, any sample; "
            + "; ".join(parts) + "); --write-layouts all writes every layout (memory and disk grow with the "
              "space), sample:N adds N drawn at random")


def figure(nrows: int = 1, ncols: int = 1, **kw):
    """(figure, axes) drawn without pyplot: no global backend switch, so a notebook's inline
    figures keep working after jaxplan writes a PNG. ``kw``: figsize, dpi, gridspec_kw."""
    from matplotlib.figure import Figure
    grid = kw.pop("gridspec_kw", None)
    fig = Figure(**kw)
    return fig, fig.subplots(nrows, ncols, gridspec_kw=grid)


def wrap(title: str, width: int = 90) -> str:
    return "\n".join(textwrap.wrap(title, width))


def write_json(path: Path, obj) -> None:
    write_text(path, to_json(obj))


def save_figure(fig, path, **kw) -> Path:
    """Write a matplotlib figure as PNG through a temporary file."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **kw)
    return Path(path)


def to_json(obj) -> str:
    """JSON text with numpy scalars converted and non-finite floats as null."""
    def conv(o):
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating, float)):
            f = float(o)
            return None if not math.isfinite(f) else f
        if isinstance(o, np.bool_):
            return bool(o)
        if isinstance(o, np.ndarray):
            return [conv(x) for x in o.tolist()]
        if isinstance(o, dict):
            return {k: conv(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [conv(v) for v in o]
        return o
    return json.dumps(conv(obj), indent=2) + "\n"


# ----------------------------------------------------------------------------- names of inputs

WORKLOAD_LABELS = {"isl": "input length (ISL)", "osl": "output length (OSL)",
                   "acceptance": "speculative acceptance rate", "prefix_hit": "prefix-cache hit share"}


def label_of(kind: str, name: str) -> str:
    """How reports name a sensitivity input (hardware number, workload number or parameter)."""
    if kind == "hardware":
        return HARDWARE_NUMBERS[name].label
    if kind == "workload":
        return WORKLOAD_LABELS[name]
    return name


def display_value(kind: str, name: str, value: float) -> str:
    """A sensitivity input's value in the units of its hardware YAML key (others as they are)."""
    if kind == "hardware":
        return f"{value / HARDWARE_NUMBERS[name].scale:g} {unit_of(name)}"
    return f"{value:g}"


def unit_of(name: str) -> str:
    """Unit of a hardware number's YAML key, e.g. 'TB/s' for hbm_bandwidth."""
    return HARDWARE_NUMBERS[name].unit


def scaled_label(hw_name: str, scales: Mapping[str, float]) -> str:
    return hw_name + (" (" + ", ".join(f"{k} x{f:g}" for k, f in scales.items()) + ")" if scales else "")


def title(exp: Experiment, scales: Mapping[str, float] | None = None, gpus: str | None = None) -> str:
    """One line naming an experiment: model, GPUs (``gpus``: in place of the count), precision,
    lengths, decoding features."""
    wl = exp.workload
    spec = (f", speculative {wl.draft_tokens} draft tokens at {100 * wl.acceptance:.0f}% acceptance "
            f"({float(wl.tokens_per_step):.2f} tokens/step)" if wl.draft_tokens else "")
    if wl.prefix_hit:
        spec += f", {100 * wl.prefix_hit:.0f}% of each prompt cached"
    load = exp.load
    lengths = (f"ISL {int(wl.isl)} / OSL {int(wl.osl)}" if load.fixed_lengths
               else f"ISL {load.isl.describe()} / OSL {load.osl.describe()}")
    how = "" if not load.open_loop else ("; open loop, Poisson at " f"{load.rate:g} req/s" if load.load == "poisson"
                                         else f"; open loop, trace at {load.rate:.3g} req/s")
    return (f"{exp.model.name} on {gpus or exp.gpus} × {scaled_label(exp.hardware.name, scales or {})}, "
            f"{exp.precision.name}, {lengths}{spec}{how}")


def sla_text(exp: Experiment) -> str:
    return f"≥ {exp.sla.min_tokens_per_user:g} tokens/s/user, TTFT ≤ {exp.sla.max_ttft_s:g} s"


def row_label(r: dict | None, none: str = "none meets the SLA") -> str:
    """:func:`label` of a row, or ``none`` where there is no row."""
    return none if r is None else label(r)


def plot_sensitivity(path: Path, at_best: list[dict], title: str, top_params: int = 12):
    """Bar charts of d log(tokens/s/GPU) / d log(x) at the best layout: hardware and workload on the
    left, the largest fitted-parameter elasticities on the right."""
    key = "elasticity_tokens_per_s_per_gpu"
    left = sorted([r for r in at_best if r["kind"] != "param"], key=lambda r: abs(r[key]))
    right = sorted([r for r in at_best if r["kind"] == "param"], key=lambda r: abs(r[key]))[-top_params:]
    fig, axes = figure(1, 2, figsize=(12, 5), dpi=120)
    for ax, recs, sub in ((axes[0], left, "hardware and workload"), (axes[1], right, "fitted efficiency parameters")):
        vals = [r[key] for r in recs]
        ax.barh([label_of(r["kind"], r["name"]) for r in recs], vals,
                color=["tab:green" if v >= 0 else "tab:red" for v in vals])
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("elasticity of tokens/s/GPU (% per +1%)")
        ax.set_title(sub, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(wrap(title, 140), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_sensitivity_frontier(path: Path, records: list[dict], columns: dict, frontier_idx, title: str,
                              best: int | None = None):
    """Elasticity of tokens/s/GPU to each hardware number along the frontier, by interactivity."""
    key = "elasticity_tokens_per_s_per_gpu"
    fi = np.asarray(frontier_idx, int)
    u = np.asarray(columns["tokens_per_s_per_user"], float)
    by = {(r["row"], r["name"]): r[key] for r in records if r["kind"] == "hardware"}
    fig, ax = figure(figsize=(8, 5), dpi=120)
    for name in (n for n, h in HARDWARE_NUMBERS.items() if not h.integer):
        e = np.asarray([by.get((int(i), name), 0.0) for i in fi])
        if np.abs(e).max(initial=0.0) < 1e-3:
            continue
        ax.plot(u[fi], e, "-o", ms=3, lw=1.4, label=label_of("hardware", name))
    if best is not None:
        ax.axvline(u[best], color="tab:orange", ls="--", lw=1, label="best at SLA")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("interactivity of the frontier point (tokens/s per user)")
    ax.set_ylabel("elasticity of tokens/s/GPU")
    ax.set_title(wrap(title), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_codesign(path: Path, res, title: str):
    """Tokens/s/GPU along the co-design trajectory (layout switches marked) and the budget shares."""
    t = [codesign_step(r) for r in res.trajectory]
    steps = [r["step"] for r in t]
    fig, (a1, a2) = figure(1, 2, figsize=(12, 4.5), dpi=120)
    a1.plot(steps, [r["tokens_per_s_per_gpu"] for r in t], "-o", ms=3)
    for prev, r in zip(t[:-1], t[1:]):
        if r["layout"] != prev["layout"]:
            a1.axvline(r["step"], color="tab:gray", lw=0.6, ls=":")
    b = t[res.best_step]
    a1.plot([b["step"]], [b["tokens_per_s_per_gpu"]], "*", ms=14, color="tab:orange", mec="k",
            label=f"best: {b['layout']}")
    a1.set_xlabel("step (dotted: the best layout switches)")
    a1.set_ylabel("tokens/s/GPU at the SLA")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    for n in res.names:
        a2.plot(steps, [100 * r["shares"][n] for r in t], "-", label=HARDWARE_NUMBERS[n].label)
    a2.set_xlabel("step")
    a2.set_ylabel("share of the budget (%)")
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8)
    fig.suptitle(wrap(title, 140), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------- jaxplan sweep

def write_plan(plan: Plan, out: str | Path) -> list[Path]:
    """The files of ``jaxplan sweep``: ``layouts.csv`` (every evaluated layout; of a streamed sweep,
    the rows it kept), ``frontier.csv``, ``frontier.png``, ``frontier_cost.png`` (where the hardware
    has a power block) and ``summary.json``."""
    out = start_run(out, ("summary.json", "layouts.csv", "frontier.csv", "frontier.png", "frontier_cost.png"))
    exp, cols, front, best = plan.experiment, plan.columns, plan.frontier, plan.best
    names = (AGG_COLUMNS if plan.serving == "agg" else DISAGG_COLUMNS) + tuple(plan.extra_columns)
    write_csv(out / "layouts.csv", cols, names)
    write_csv(out / "frontier.csv", cols, names, rows=front)
    extra = {}
    if len(plan.results) > 1 or plan.baseline:
        tag = " (what-if)" if plan.baseline else ""
        for mode, r in plan.results.items():
            fi = r.frontier
            extra[f"{mode} frontier{tag}"] = (r.columns["tokens_per_s_per_user"][fi],
                                              r.columns["tokens_per_s_per_gpu"][fi])
        for mode, r in plan.baseline.items():
            fi = r.frontier
            extra[f"{mode} frontier, {plan.base_experiment.hardware.name} as shipped"] = (
                r.columns["tokens_per_s_per_user"][fi], r.columns["tokens_per_s_per_gpu"][fi])
    hists = [r.hist for r in plan.results.values() if getattr(r, "hist", None) is not None]
    density = None
    if hists:            # streamed: every layout's density; add any materialized mode's points to it
        density = sum(np.asarray(h, float) for h in hists)
        for r in plan.results.values():
            if getattr(r, "hist", None) is None and r.kept:
                f = np.asarray(r.columns["feasible"], bool)
                density = density + layout_density(np.asarray(r.columns["tokens_per_s_per_user"], float)[f],
                                                   np.asarray(r.columns["tokens_per_s_per_gpu"], float)[f])
    name = title(exp, plan.scales)
    if plan.notes.get("percentile_sla"):
        name += f"; SLA {plan.notes['percentile_sla']}; objective {plan.notes.get('objective', 'throughput')}"
    plot_frontier(out / "frontier.png", cols, [] if extra else front, best, name,
                  exp.sla.min_tokens_per_user, extra=extra, max_ttft_s=exp.sla.max_ttft_s, density=density)
    files = [out / n for n in ("layouts.csv", "frontier.csv", "summary.json", "frontier.png")]
    if plot_cost_frontier(out / "frontier_cost.png", plan.results, plan.best_row, name,
                          exp.sla.min_tokens_per_user, plan.costs):
        files.append(out / "frontier_cost.png")
    write_json(out / "summary.json", plan.summary())
    return files


def energy_text(r: Mapping, costs=None) -> str:
    """One line of a layout's power, energy and cost per token."""
    def num(k):
        v = r.get(k)
        return float(v) if v is not None else math.nan
    if not math.isfinite(num("joules_per_token")):
        return "energy and cost: unknown (the hardware YAML has no power block)"
    cur = costs.currency if costs is not None else "USD"
    usd = num("usd_per_mtoken")
    return (f"{num('busy_share'):.0%} busy, {num('gpu_power_w'):.0f} W per GPU board, "
            f"{num('facility_power_per_gpu_w'):.0f} W per GPU at the facility; {num('joules_per_token'):.2f} J/token, "
            f"{num('tokens_per_s_per_mw'):,.0f} tokens/s per MW"
            + (f", {usd:.3f} {cur}/Mtoken" if math.isfinite(usd) else ", cost: no price for this hardware"))


def plot_cost_frontier(path: Path, results: Mapping, best_row: Mapping | None, title_text: str,
                       min_tokens_per_user: float = 0.0, costs=None) -> bool:
    """``frontier_cost.png``: per serving mode, the lowest $/Mtoken and the most tokens/s per MW at
    each interactivity (the frontiers of each metric against tokens/s/user), the SLA pick marked.
    Returns False (draws nothing) when no layout has an energy figure."""
    panels = (("usd_per_mtoken", f"{costs.currency if costs else 'USD'} per million output tokens", False),
              ("tokens_per_s_per_mw", "output tokens/s per MW (facility)", True))
    if not any(np.isfinite(np.asarray(r.columns.get("joules_per_token", []), float)).any() for r in results.values()):
        return False
    fig, axes = figure(1, 2, figsize=(12, 5), dpi=110)
    for ax, (col, ylabel, larger) in zip(axes, panels):
        for mode, r in results.items():
            c = r.columns
            ok = np.asarray(c["feasible"], bool) & np.isfinite(np.asarray(c[col], float))
            if not ok.any():
                continue
            u = np.asarray(c["tokens_per_s_per_user"], float)[ok]
            v = np.asarray(c[col], float)[ok]
            ax.scatter(u, v, s=5, alpha=0.12, label=f"{mode}: {ok.sum():,} feasible")
            # frontier: best value among points at or above each interactivity
            order = np.argsort(-u)
            best = (np.maximum if larger else np.minimum).accumulate(v[order])
            keep = np.r_[True, best[1:] != best[:-1]]
            ax.plot(u[order][keep], best[keep], "-o", ms=3, lw=1.5, label=f"{mode} frontier")
        if best_row is not None and best_row.get(col) is not None and math.isfinite(float(best_row[col])):
            ax.plot([best_row["tokens_per_s_per_user"]], [best_row[col]], marker="*", ms=15, color="tab:orange",
                    mec="k", ls="none", label=f"SLA pick: {label(best_row)}")
        if min_tokens_per_user > 0:
            ax.axvline(min_tokens_per_user, color="tab:red", ls="--", lw=1, alpha=0.7)
        ax.set_xlabel("interactivity (output tokens/s per user)")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(wrap(title_text, 140), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return True


# ----------------------------------------------------------------------------- jaxplan sensitivity

def switch_record(s: dict) -> dict:
    """A sensitivity re-sweep record as reports show it: the new layout by its label."""
    return {**s, "new_layout": row_label(s["new_layout"])}


def write_sensitivity(res, exp: Experiment, out: str | Path, *, serving: str, scales: Mapping, params_source: str,
                      seconds: float, disagg_key: Sequence[str] = ()) -> Path:
    """``sensitivity.csv`` (elasticities at every frontier point and the best), ``sensitivity.json``,
    ``sensitivity.png`` (at the best) and ``sensitivity_frontier.png``."""
    out = start_run(out, ("sensitivity.json", "sensitivity.csv", "sensitivity.png", "sensitivity_frontier.png"))
    cols, best = res.sweep.columns, res.best
    on_front = set(int(i) for i in res.sweep.frontier)
    rows_csv = []
    for r in res.records:
        i = r["row"]
        rows_csv.append({"layout": label(row(cols, i)), "is_best_at_sla": int(i == best),
                         "on_frontier": int(i in on_front),
                         **{k: cols[k][i] for k in ("tp", "pp", "ep", "dp", "adp", "batch", "chunk") + tuple(disagg_key)
                            + ("tokens_per_s_per_user", "tokens_per_s_per_gpu", "ttft_s")},
                         **{k: r[k] for k in ("kind", "name", "value")},
                         **{k: r[k] for k in r if k.startswith("elasticity_")}})
    names = list(rows_csv[0]) if rows_csv else ["layout"]
    write_csv(out / "sensitivity.csv", {k: [x[k] for x in rows_csv] for k in names}, names)
    name = title(exp, scales)
    summary = {"experiment": exp.name, "hardware": exp.hardware.name, "hardware_scales": dict(scales),
               "serving": serving, "params_source": params_source,
               "sla": {"min_tokens_per_s_per_user": exp.sla.min_tokens_per_user, "max_ttft_s": exp.sla.max_ttft_s},
               "frontier_points": len(res.sweep.frontier), "seconds": seconds,
               "switches_at_plus_minus_10pct": [switch_record(s) for s in res.switches]}
    if best is None:
        plot_sensitivity_frontier(out / "sensitivity_frontier.png", res.records, cols, res.sweep.frontier,
                                  f"elasticities along the frontier: {name}")
        write_json(out / "sensitivity.json", summary | {"best_at_sla": None})
        return out
    best_row = row(cols, best)
    at_best = [r for r in res.records if r["row"] == best]
    summary["best_at_sla"] = best_row
    summary["elasticities_at_best"] = {f"{r['kind']}:{r['name']}": {k: r[k] for k in r if k.startswith("elasticity_")}
                                       for r in at_best}
    plot_sensitivity(out / "sensitivity.png", at_best,
                     f"d log(tokens/s/GPU) / d log(x) at {label(best_row)} — {name}")
    plot_sensitivity_frontier(out / "sensitivity_frontier.png", res.records, cols, res.sweep.frontier,
                              f"elasticities along the frontier: {name}", best=best)
    write_json(out / "sensitivity.json", summary)
    return out


# ----------------------------------------------------------------------------- jaxplan codesign

def hardware_yaml(hw: Hardware, source_note: str) -> str:
    """The hardware as a preset YAML (usable with ``--hardware FILE``)."""
    body = {"name": f"{hw.name}-codesign", "source": source_note}
    for h in HARDWARE_NUMBERS.values():
        v = float(getattr(hw, h.field)) / h.scale
        if h.optional and v == 0:
            continue
        body[h.key] = int(round(v)) if h.integer else float(f"{v:.6g}")
    return yaml.safe_dump(body, sort_keys=False)


def codesign_step(rec: dict) -> dict:
    """A co-design trajectory step as reports show it: the layout by its label."""
    return {**rec, "layout": row_label(rec.get("layout"))}


def write_codesign(res, exp: Experiment, prices, out: str | Path, *, serving: str, seconds: float) -> dict:
    """``trajectory.csv``, ``codesign_hardware.yaml``, ``codesign.png`` and ``codesign.json``;
    returns the summary written to the JSON."""
    out = start_run(out, ("codesign.json", "trajectory.csv", "codesign_hardware.yaml", "codesign.png"))
    cur = f" {prices.currency}" if prices.currency else ""
    traj_cols = {"step": [], "tokens_per_s_per_gpu": [], "tokens_per_s_per_user": [], "ttft_s": [], "layout": []}
    for n in res.names:
        traj_cols[HARDWARE_NUMBERS[n].key] = []
        traj_cols[f"share_{n}"] = []
        traj_cols[f"elasticity_{n}"] = []
    for r in map(codesign_step, res.trajectory):
        for k in ("step", "tokens_per_s_per_gpu", "tokens_per_s_per_user", "ttft_s", "layout"):
            traj_cols[k].append(r.get(k))
        for n in res.names:
            traj_cols[HARDWARE_NUMBERS[n].key].append(r["values"][n])
            traj_cols[f"share_{n}"].append(r["shares"][n])
            traj_cols[f"elasticity_{n}"].append(r["elasticities"].get(n))
    write_csv(out / "trajectory.csv", traj_cols, list(traj_cols))
    write_text(out / "codesign_hardware.yaml",
        f"# jaxplan codesign of {exp.hardware.name} for {exp.name}: best of {len(res.trajectory)} steps "
        f"(step {res.best_step}); budget {res.budget:,.0f}{cur} per GPU over {', '.join(res.names)}\n"
        + hardware_yaml(res.final_hardware, f"jaxplan codesign from {exp.hardware.name}, prices {prices.source}"))
    plot_codesign(out / "codesign.png", res, f"codesign: {title(exp)}, SLA {sla_text(exp)}")
    s, f = codesign_step(res.start), codesign_step(res.final)
    summary = {"experiment": exp.name, "hardware": exp.hardware.name, "serving": serving, "prices": prices.source,
               "budget": res.budget, "currency": prices.currency, "steps": len(res.trajectory),
               "best_step": res.best_step, "seconds": seconds, "start": s, "final": f,
               "gain": f["tokens_per_s_per_gpu"] / s["tokens_per_s_per_gpu"] if s["tokens_per_s_per_gpu"] else None}
    write_json(out / "codesign.json", summary)
    return summary


# ----------------------------------------------------------------------------- jaxplan validate --serving

def serving_error_table(rows: list[dict], by: Sequence[str]) -> str:
    """Plain-text table of TTFT and TPOT error statistics per group (percentages)."""
    def pct(v):
        return "-" if not math.isfinite(v) else f"{100 * v:.1f}"
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
    return table(out, cols)


def serving_error_markdown(rows: list[dict], by: Sequence[str]) -> str:
    """The same statistics as a Markdown table (whole percentages)."""
    def pct(v):
        return "–" if not math.isfinite(v) else f"{100 * v:.0f}"
    head = list(by) + ["n", "TTFT MAPE %", "TTFT med %", "TTFT ≤10 %", "TTFT ≤25 %",
                       "TPOT MAPE %", "TPOT med %", "TPOT ≤10 %", "TPOT ≤25 %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [str(r[k]) for k in by] + [str(r["n"])] + [pct(r[f"{m}_{s}"]) for m in ("ttft", "tpot")
                                                         for s in ("mape", "median", "within10", "within25")]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _validation_layout_columns(cases, pred) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for c in cases:
        a = c.layout if c.mode == "agg" else None
        for f in ("tp", "pp", "ep", "adp", "batch", "chunk"):
            out.setdefault(f, []).append(float(getattr(a, f)) if a is not None else math.nan)
        out.setdefault("replicas", []).append(c.replicas if a is not None else math.nan)
        for pool, lay, w in (("prefill", c.prefill, c.prefill_workers), ("decode", c.decode, c.decode_workers)):
            for f in ("tp", "pp", "ep", "adp"):
                out.setdefault(f"{pool}_{f}", []).append(float(getattr(lay, f)) if lay is not None else math.nan)
            out.setdefault(f"{pool}_workers", []).append(w if lay is not None else math.nan)
        out.setdefault("prefill_chunk", []).append(float(c.prefill.chunk) if c.prefill is not None else math.nan)
        out.setdefault("cross_network", []).append(float(c.cross_network))
        out.setdefault("gpus", []).append(float(c.gpus))
        out.setdefault("note", []).append(c.note)
    res = {k: np.asarray(v, object if k == "note" else np.float64) for k, v in out.items()}
    res["predicted_decode_batch"] = np.asarray(pred["decode_batch"])
    res["predicted_requests_per_s"] = np.asarray(pred["requests_per_s"])
    for pool in ("prefill", "decode"):
        res[f"predicted_{pool}_workers"] = np.asarray(pred.get(f"{pool}_workers", np.full(len(cases), np.nan)))
    return res


VALIDATION_CSV_COLUMNS = (
    "id", "model", "system", "backend", "mode", "isl", "osl", "concurrency", "replicas", "gpus",
    "tp", "pp", "ep", "adp", "batch", "chunk",
    "prefill_workers", "prefill_tp", "prefill_pp", "prefill_ep", "prefill_adp", "prefill_chunk",
    "decode_workers", "decode_tp", "decode_pp", "decode_ep", "decode_adp", "cross_network",
    "measured_ttft_ms", "predicted_ttft_ms", "ttft_ape", "measured_tpot_ms", "predicted_tpot_ms",
    "tpot_ape", "predicted_decode_batch", "predicted_requests_per_s", "predicted_prefill_workers",
    "predicted_decode_workers", "far_off", "note")


def write_serving_predictions(path, v) -> Path:
    """``predictions.csv`` of a serving validation: each mapped row, its layout, measured and predicted."""
    path = Path(path)
    cols = {**v.table, **_validation_layout_columns(v.cases, v.pred)}

    def fmt(x):
        if isinstance(x, str):
            return x
        x = float(x)
        if math.isnan(x):
            return ""
        return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.6g}"

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(VALIDATION_CSV_COLUMNS)
        for i in range(len(v.cases)):
            w.writerow([fmt(cols[k][i]) for k in VALIDATION_CSV_COLUMNS])
    return path


def write_unmapped(path, unmapped) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("id", "model_path", "system", "backend", "mode", "reason", "detail"))
        for u in unmapped:
            w.writerow((u.id, u.model_path, u.system, u.backend, u.mode, u.reason, u.detail))
    return path


def plot_serving_scatter(path, tab: Mapping[str, np.ndarray], color_by: str = "mode", name: str = "") -> Path:
    """Log-log predicted vs measured, TTFT and TPOT panels, with y = x and the ±25% band."""
    from matplotlib import rcParams
    fig, axes = figure(1, 2, figsize=(12, 5.5), dpi=110)
    cats = sorted(set(tab[color_by].tolist()))
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m, what in ((axes[0], "ttft", "TTFT (ms)"), (axes[1], "tpot", "TPOT (ms)")):
        meas, pred = np.asarray(tab[f"measured_{m}_ms"], float), np.asarray(tab[f"predicted_{m}_ms"], float)
        ok = np.isfinite(meas) & np.isfinite(pred) & (meas > 0) & (pred > 0)
        for j, c in enumerate(cats):
            sel = ok & (tab[color_by] == c)
            st = error_stats(pred[sel], meas[sel])
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
        ax.set_xlabel(f"measured {what}")
        ax.set_ylabel(f"predicted {what}")
        st = error_stats(pred[ok], meas[ok])
        ax.set_title(f"{m.upper()}: MAPE {100 * st['mape']:.0f}%, median {100 * st['median']:.0f}%, "
                     f"within 25%: {100 * st['within25']:.0f}%", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left")
    if name:
        fig.suptitle(name, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return Path(path)


def far_off_markdown(t) -> str:
    """Counts of the unique rows predicted more than FAR_OFF x off, per reason
    (``serving_predict.far_off_reasons``) and (model, backend, mode); the rows are in predictions.csv."""
    counts = collections.Counter((t["far_off"][i], t["model"][i], t["backend"][i], t["mode"][i])
                                 for i in range(len(t["id"])) if t["unique"][i] and t["far_off"][i])
    lines = ["| reason | model | backend | mode | rows |", "|---|---|---|---|---|"]
    lines += [f"| {r} | {m} | {b} | {mo} | {n} |" for (r, m, b, mo), n in sorted(counts.items())]
    return "\n".join(lines) if counts else "none"


def validation_markdown(v) -> str:
    """The error tables as Markdown: per (system, backend, mode), per model, per (mode, how the
    worker counts are known), and over unique measurements; then the unmapped rows by reason."""
    t = v.table
    parts = ["## Per system, backend and mode", serving_error_markdown(v.summary, ("system", "backend", "mode")),
             "## Per model", serving_error_markdown(summarize(t, ("model",)), ("model",)),
             "## Disaggregated worker counts: given in the CSV or derived (blank -> 1)",
             serving_error_markdown(summarize(t, ("mode", "described")), ("mode", "described")),
             f"## Unique measurements only ({int(t['unique'].sum())} of {len(t['id'])} rows)",
             serving_error_markdown(summarize(t, ("system", "backend", "mode"), mask=t["unique"]),
                                    ("system", "backend", "mode")),
             f"## Predictions more than {FAR_OFF:g}x off (unique measurements), by reason",
             far_off_markdown(t),
             "## Unmapped rows",
             "\n".join(["| reason | rows | example |", "|---|---|---|"]
                       + [f"| {r} | {n} | {ex.replace('|', '/')} |" for r, n, ex in unmapped_counts(v.unmapped)])]
    parts.append("\nParameters: " + "; ".join(f"{k}: {s}" for k, s in sorted(v.params_source.items())))
    return "\n\n".join(parts) + "\n"


def write_validation(v, out_dir) -> dict[str, Path]:
    """The files of ``jaxplan validate --serving``: predictions.csv, unmapped.csv, the scatter plots
    by mode and by backend, and summary.md (last: the mark of a complete run)."""
    out = start_run(out_dir, ("summary.md", "predictions.csv", "unmapped.csv", "serving_scatter.png",
                              "serving_scatter_by_backend.png"))
    files = {"predictions": write_serving_predictions(out / "predictions.csv", v),
             "unmapped": write_unmapped(out / "unmapped.csv", v.unmapped),
             "scatter": plot_serving_scatter(out / "serving_scatter.png", v.table, "mode",
                                             "jaxplan serving validation: " + "; ".join(
                                                 f"{k}: {Path(s).name if '/' in s else s}"
                                                 for k, s in sorted(v.params_source.items())))}
    plot_serving_scatter(out / "serving_scatter_by_backend.png", v.table, "backend")
    files["scatter_by_backend"] = out / "serving_scatter_by_backend.png"
    files["summary"] = out / "summary.md"
    write_text(files["summary"], validation_markdown(v))
    return files


def serving_fit_text(rep: Mapping) -> str:
    """What ``jaxplan fit --serving`` prints: the fitted overheads and the train and holdout errors
    before and after."""
    info = rep["fit"]
    lines = [f"serving fit ({' + '.join(m.upper() for m in info['metrics'])}) on {rep['train_rows']} "
             f"{rep['train_system']} rows"
             + (f" (the fit saw a subsample of {info['n_cases']})" if info["subsampled"] else "")
             + f", {rep['holdout_system']} holdout {rep['holdout_rows']} rows; {info['seconds']:.1f} s",
             "fitted: " + ", ".join(f"{k} = {1e3 * v:.3g} ms" for k, v in info["fitted"].items())]
    for kind, per_backend in rep.get("overhead_fits", {}).items():
        for b, d in per_backend.items():
            loss = f"; loss {d['loss_before']:.3f} -> {d['loss_after']:.3f}" if "loss_after" in d else ""
            lines.append(f"{kind}_overhead_{b}_s on {d['rows']} {d['mode']} TTFT rows: {d['status']}{loss}")
    for which in ("train", "holdout"):
        if f"{which}_before" not in rep:
            continue
        b, a = rep[f"{which}_before"], rep[f"{which}_after"]
        lines.append(f"\n{which}: loss (mean squared log ratio) {b['loss']:.4f} -> {a['loss']:.4f}")
        for when, r in (("before", b), ("after", a)):
            lines.append(f"  {when}:")
            lines.append("  " + serving_error_table(r["summary"], ("backend", "mode")).replace("\n", "\n  "))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- kernels: fit, validate, bench

def kernel_error_table(report: Mapping) -> str:
    """Kernel-fit figures per kind and set (train / holdout / all), in percent."""
    lines = [f"{'kind':<22} {'set':<8} {'rows':>8} {'MAPE%':>7} {'median%':>8} {'p90%':>7}"]
    for kind, sets in report.items():
        for name in ("train", "holdout", "all"):
            if name not in sets:
                continue
            s = sets[name]
            if not s["n"]:
                lines.append(f"{kind:<22} {name:<8} {0:>8} {'-':>7} {'-':>8} {'-':>7}")
                continue
            lines.append(f"{kind:<22} {name:<8} {s['n']:>8,} {100 * s['mape']:>7.1f} {100 * s['median']:>8.1f} "
                         f"{100 * s['p90']:>7.1f}")
    return "\n".join(lines)


def kernel_variant_lines(report: Mapping) -> str:
    """Kernel-validation figures per kind and variant (dtype, routing, ...), in percent."""
    return "\n".join(f"    {kind:<20} {var:<34} {st['n']:>8,} {100 * st['mape']:>7.1f} {100 * st['median']:>8.1f} "
                     f"{100 * st['p90']:>7.1f}"
                     for kind, v in report.items() for var, st in v["by_variant"].items())


def write_kernel_predictions(path, meas, pred: Mapping) -> Path:
    """One row per mapped kernel measurement: its features, measured and predicted ms, APE %."""
    path = Path(path)
    feat = sorted({k for kind in pred for k in meas.kinds[kind].x})
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["kind", "table", "variant", "group", *feat, "measured_ms", "predicted_ms", "ape_pct"])
        for kind, pr in pred.items():
            rows = meas.kinds[kind]
            cols = [rows.x.get(k, np.full(len(rows), np.nan)) for k in feat]
            for i in range(len(rows)):
                w.writerow([kind, rows.table[i], rows.variant[i], rows.group[i],
                            *(f"{c[i]:.6g}" if c[i] == c[i] else "" for c in cols),
                            f"{rows.seconds[i] * 1e3:.6g}", f"{pr[i] * 1e3:.6g}",
                            f"{abs(pr[i] / rows.seconds[i] - 1) * 100:.3g}"])
    return path


def plot_kernel_predictions(path, meas, pred: Mapping, name: str = "", max_points: int = 20000, axes=None):
    """Log-log scatter of predicted vs measured time per kind with the y = x line (on ``axes`` if
    given, e.g. in a notebook, else written to ``path``)."""
    fig = None
    if axes is None:
        fig, axes = figure(figsize=(7, 6))
    lo, hi = np.inf, 0.0
    for i, (kind, pr) in enumerate(pred.items()):
        meas_s = meas.kinds[kind].seconds
        idx = np.arange(len(meas_s))
        if len(idx) > max_points:        # even thinning for a readable plot (deterministic)
            idx = idx[:: int(np.ceil(len(idx) / max_points))]
        axes.scatter(meas_s[idx] * 1e3, pr[idx] * 1e3, s=2, alpha=0.35, label=kind, color=f"C{i % 10}")
        lo, hi = min(lo, meas_s.min(), pr.min()), max(hi, meas_s.max(), pr.max())
    axes.plot([lo * 1e3, hi * 1e3], [lo * 1e3, hi * 1e3], "k-", lw=1, label="y = x")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("measured (ms)")
    axes.set_ylabel("predicted (ms)")
    axes.set_title(name)
    axes.legend(markerscale=4, fontsize=8)
    if fig is not None:
        fig.tight_layout()
        save_figure(fig, path, dpi=120)
    return path


def write_kernel_validation(kv, out) -> list[Path]:
    """``predictions.csv`` and ``predicted_vs_measured.png`` of a kernel validation."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_kernel_predictions(out / "predictions.csv", kv.meas, kv.pred)
    plot_kernel_predictions(out / "predicted_vs_measured.png", kv.meas, kv.pred,
                            name=f"{Path(kv.file).name} on {kv.hardware.name}")
    return [out / "predictions.csv", out / "predicted_vs_measured.png"]


def bench_meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.yaml")


def write_bench(out: str | Path, events, columns: Sequence[str]) -> Path:
    """Write ``jaxplan bench``'s measurements as they come (``calibrate.bench.measure`` events): the
    CSV row by row, flushed, and ``<out>.meta.yaml`` after every table, so a killed run leaves its
    finished rows and says how far it got."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta_file = bench_meta_path(out)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="raise")
        writer.writeheader()
        fh.flush()
        for kind, obj in events:
            if kind == "row":
                writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in obj.items()})
                fh.flush()
            else:
                write_text(meta_file, yaml.safe_dump(obj, sort_keys=False))
    return out


# ----------------------------------------------------------------------------- jaxplan explore

EXPLORE_FIELDS = ("tp", "pp", "ep", "dp", "adp", "batch", "chunk", "tokens_per_s_per_gpu", "tokens_per_s_per_user",
                  "ttft_s", "memory_per_gpu_gb")


def explore_columns(res: ExploreResult) -> tuple[dict[str, np.ndarray], list[str]]:
    """One row per grid point: its coordinates (YAML units), counts, and the best layout at the SLA."""
    axes = list(res.axes)
    names = axes + ["layouts", "feasible", "meeting_sla"] + [f"best_{k}" if k in ("tp", "pp", "ep", "dp", "adp",
                                                                                   "batch", "chunk") else k
                                                               for k in EXPLORE_FIELDS]
    cols: dict[str, list] = {n: [] for n in names}
    for r in res.rows:
        for a in axes:
            cols[a].append(r[a])
        for k in ("layouts", "feasible", "meeting_sla"):
            cols[k].append(r[k])
        b = r["best"] or {}
        for k, n in zip(EXPLORE_FIELDS, names[len(axes) + 3:]):
            cols[n].append(b.get(k))
    return {k: np.asarray(v, dtype=object) for k, v in cols.items()}, names


def _grid_value(v) -> str:
    return f"{v:,}" if isinstance(v, (int, np.integer)) else f"{v:g}"


def explore_table(res: ExploreResult) -> str:
    """A line per grid point: its coordinates and the best layout at the SLA."""
    rows = []
    for r in res.rows:
        b = r["best"]
        rows.append({**{a: _grid_value(r[a]) for a in res.axes}, "best": label(b) if b else "none meets the SLA",
                     "gpu": f"{b['tokens_per_s_per_gpu']:.1f}" if b else "-",
                     "user": f"{b['tokens_per_s_per_user']:.1f}" if b else "-", "n": f"{r['layouts']:,}"})
    return table(rows, [(a, a, "") for a in res.axes] + [("n", "layouts", ""), ("best", "best at SLA", ""),
                                                          ("gpu", "tok/s/GPU", ""), ("user", "tok/s/user", "")])


def _axis_label(field: str) -> str:
    if field == "gpus":
        return "GPU budget"
    h = HARDWARE_NUMBERS[field]
    return f"{h.label} ({h.unit})"


def plot_explore(path: Path, res: ExploreResult, x: str, y: str, title_text: str) -> Path:
    """Heatmap of the best tokens/s/GPU at the SLA over two grid axes (the best over any others)."""
    xs, ys = list(res.axes[x]), list(res.axes[y])
    z = np.full((len(ys), len(xs)), np.nan)
    for r in res.rows:
        v = (r["best"] or {}).get("tokens_per_s_per_gpu", np.nan)
        i, j = ys.index(r[y]), xs.index(r[x])
        z[i, j] = v if np.isnan(z[i, j]) else max(z[i, j], v)
    fig, ax = figure(figsize=(1.2 * len(xs) + 3.5, 0.6 * len(ys) + 2.8), dpi=120)
    m = ax.imshow(z, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(xs)), [_grid_value(v) for v in xs])
    ax.set_yticks(range(len(ys)), [_grid_value(v) for v in ys])
    for i in range(len(ys)):
        for j in range(len(xs)):
            ax.text(j, i, "-" if np.isnan(z[i, j]) else f"{z[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="w" if np.isnan(z[i, j]) or z[i, j] < np.nanmean(z) else "k")
    ax.set_xlabel(_axis_label(x))
    ax.set_ylabel(_axis_label(y))
    others = [a for a in res.axes if a not in (x, y) and len(res.axes[a]) > 1]
    ax.set_title(wrap(title_text + (f"; best over {', '.join(others)}" if others else ""), 70), fontsize=9)
    fig.colorbar(m, ax=ax, label="best tokens/s/GPU at the SLA (- : none meets it)")
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- jaxplan simulate

SIM_COLUMNS = ("arrival_s", "isl", "osl", "queue_s", "ttft_s", "tpot_s", "e2e_s")


def plot_simulation(path: Path, requests: Mapping, title: str, analytic: Mapping | None = None) -> Path:
    """The simulated TTFT and TPOT distributions (CDFs), the analytical percentiles marked."""
    fig, axes = figure(1, 2, figsize=(11, 4.2), dpi=120)
    for ax, key, unit, scale in ((axes[0], "ttft", "s", 1.0), (axes[1], "tpot", "ms", 1e3)):
        x = np.sort(np.asarray(requests[f"{key}_s"], float)) * scale
        ax.plot(x, np.arange(1, len(x) + 1) / max(len(x), 1), color="tab:blue", lw=1.6, label="simulated")
        for q, mk in ((50, "o"), (90, "s"), (99, "^")):
            if analytic and np.isfinite(analytic.get(f"{key}_p{q}_s", np.nan)):
                ax.plot([analytic[f"{key}_p{q}_s"] * scale], [q / 100], marker=mk, color="tab:orange", ls="none",
                        label=f"analytical P{q}")
        ax.set_xlabel(f"{key.upper()} ({unit})")
        ax.set_ylabel("share of requests")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(wrap(title, 140), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def write_explore(res: ExploreResult, exp: Experiment, out: str | Path, heatmap: tuple[str, str] | None) -> list[Path]:
    """``explore.csv`` (a row per grid point), ``explore.png`` (heatmap over two axes) and
    ``explore.json`` (the grid, counts, timings; written last)."""
    out = start_run(out, ("explore.json", "explore.csv", "explore.png"))
    cols, names = explore_columns(res)
    write_csv(out / "explore.csv", cols, names)
    paths = [out / "explore.csv"]
    if heatmap:
        paths.append(plot_explore(out / "explore.png", res, heatmap[0], heatmap[1],
                                  f"{title(exp, gpus='N' if 'gpus' in res.axes else None)}: best tokens/s/GPU "
                                  f"at the SLA ({sla_text(exp)})"))
    write_json(out / "explore.json", {"experiment": exp.name, "model": exp.model.name, "hardware": exp.hardware.name,
                                      "axes": res.axes, "layouts": res.layouts, "params_source": res.params_source,
                                      "seconds": {"compile": res.compile_s, "evaluate": res.evaluate_s},
                                      "points": [{**{a: r[a] for a in res.axes}, "layouts": r["layouts"],
                                                  "feasible": r["feasible"], "meeting_sla": r["meeting_sla"],
                                                  "best_at_sla": r["best"]} for r in res.rows]})
    return paths + [out / "explore.json"]


def write_simulation(res, out: str | Path, title_text: str, analytic: Mapping | None = None) -> list[Path]:
    """The files of ``jaxplan simulate``: ``requests.csv`` (per request, after the warm-up),
    ``summary.json`` (simulated and, if given, analytical percentiles) and ``distribution.png``."""
    out = start_run(out, ("requests.csv", "summary.json", "distribution.png"))
    write_csv(out / "requests.csv", res.requests, SIM_COLUMNS)
    write_json(out / "summary.json", {"simulated": res.summary, "analytical": dict(analytic) if analytic else None,
                                      "title": title_text})
    plot_simulation(out / "distribution.png", res.requests, title_text, analytic)
    return [out / n for n in ("requests.csv", "summary.json", "distribution.png")]
