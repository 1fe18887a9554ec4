"""Writing and printing results: CSV, JSON, tables and the frontier plot."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

LAYOUT_CSV_COLUMNS = ("tp", "pp", "ep", "dp", "adp", "batch", "chunk", "feasible", "ttft_s", "tpot_s",
                      "tokens_per_s_per_user", "tokens_per_s_per_gpu", "memory_per_gpu_gb", "on_frontier",
                      "requests_per_s", "decoding_requests", "admitted_requests", "prefill_tokens_per_iter",
                      "prefill_saturated", "chunk_iter_s", "decode_iter_s")


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


def write_csv(path: Path, columns: dict[str, np.ndarray], names: Sequence[str], rows: Iterable[int] | None = None):
    names = [n for n in names if n in columns]
    idx = range(len(columns[names[0]])) if rows is None else rows
    with open(path, "w", newline="") as f:
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


DISAGG_TABLE = (("prefill", "prefill worker", ""), ("prefill_workers", "x", "d"),
                ("decode", "decode worker", ""), ("decode_workers", "y", "d"), ("gpus_used", "GPUs", "d"),
                ("tokens_per_s_per_user", "tok/s/user", ".1f"), ("tokens_per_s_per_gpu", "tok/s/GPU", ".1f"),
                ("ttft_s", "TTFT s", ".2f"), ("tpot_s", "TPOT ms", ""), ("kv_transfer_s", "KV ms", ""))
MODE_CSV_COLUMNS = ("mode",) + LAYOUT_CSV_COLUMNS + (
    "prefill_tp", "prefill_pp", "prefill_ep", "prefill_adp", "prefill_chunk", "prefill_batch", "prefill_workers",
    "decode_tp", "decode_pp", "decode_ep", "decode_adp", "decode_batch", "decode_workers", "gpus_used",
    "kv_transfer_s", "prefill_utilization", "prefill_latency_s")
INT_FIELDS = {"tp", "pp", "ep", "dp", "adp", "batch", "chunk", "prefill_workers", "decode_workers", "gpus_used"}


def _parallel_label(r: dict, prefix: str = "") -> str:
    g = lambda k: int(r[prefix + k])
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
        if spec is DISAGG_TABLE:
            out["prefill"] = f"{_parallel_label(r, 'prefill_')} B{int(r['prefill_batch'])} C{int(r['prefill_chunk'])}"
            out["decode"] = f"{_parallel_label(r, 'decode_')} B{int(r['decode_batch'])}"
            out["kv_transfer_s"] = f"{1e3 * float(r['kv_transfer_s']):.1f}"
        for k in INT_FIELDS & set(out):
            out[k] = int(out[k])
        rows.append(out)
    return rows


def row(columns: dict, i: int) -> dict:
    return {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in columns.items()}


def merge_results(results: dict) -> tuple[dict, np.ndarray, int | None]:
    """One table of every mode's layouts (union of columns, None where a column does not apply),
    each mode's frontier, and the overall SLA pick (the best of the modes' picks)."""
    n = {m: r.n for m, r in results.items()}
    total = sum(n.values())
    keys = []
    for r in results.values():
        keys += [k for k in r.columns if k not in keys]
    cols = {}
    for k in keys:
        parts = []
        for m, r in results.items():
            v = r.columns.get(k)
            parts.append(np.asarray(v, dtype=object) if v is not None else np.full(n[m], None, dtype=object))
        cols[k] = np.concatenate(parts) if parts else np.zeros(0)
    cols["mode"] = np.concatenate([np.full(n[m], m, dtype=object) for m in results])
    for k in ("feasible", "on_frontier"):
        cols[k] = cols[k].astype(bool)
    for k in ("tokens_per_s_per_user", "tokens_per_s_per_gpu", "ttft_s", "tpot_s", "memory_per_gpu_gb"):
        cols[k] = cols[k].astype(np.float64)
    offsets = np.cumsum([0] + list(n.values()))[:-1]
    front = np.concatenate([r.frontier + o for r, o in zip(results.values(), offsets)]) if total else np.zeros(0, int)
    picks = [r.best + o for r, o in zip(results.values(), offsets) if r.best is not None]
    best = max(picks, key=lambda i: cols["tokens_per_s_per_gpu"][i]) if picks else None
    return cols, front.astype(int), best


def plot_frontier(path: Path, columns: dict, frontier_idx, best: int | None, title: str,
                  min_tokens_per_user: float = 0.0, extra: dict | None = None, max_ttft_s: float = float("inf")):
    """Every feasible layout faintly, the frontier highlighted, the SLA pick marked.

    ``extra``: optional {label: (user, gpu)} frontiers to overlay (e.g. disaggregated)."""

    feas = np.asarray(columns["feasible"], bool)
    u = np.asarray(columns["tokens_per_s_per_user"], float)
    g = np.asarray(columns["tokens_per_s_per_gpu"], float)
    fig, ax = figure(figsize=(8, 5.5), dpi=120)
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
    fig.savefig(path)


def figure(nrows: int = 1, ncols: int = 1, **kw):
    """(figure, axes) drawn without pyplot: no global backend switch, so a notebook's inline
    figures keep working after jaxplan writes a PNG. ``kw``: figsize, dpi, gridspec_kw."""
    from matplotlib.figure import Figure
    grid = kw.pop("gridspec_kw", None)
    fig = Figure(**kw)
    return fig, fig.subplots(nrows, ncols, gridspec_kw=grid)


def wrap(title: str, width: int = 90) -> str:
    import textwrap
    return "\n".join(textwrap.wrap(title, width))


def write_json(path: Path, obj) -> None:
    Path(path).write_text(to_json(obj))


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


# ----------------------------------------------------------------------------- sensitivity

UNITS = (("_tflops", "TFLOP/s"), ("_tb_s", "TB/s"), ("_gb_s", "GB/s"), ("_gb", "GB"), ("_us", "us"))


def display_value(kind: str, name: str, value: float) -> str:
    """A sensitivity input's value in the units of its hardware YAML key (others as they are)."""
    if kind == "hardware":
        from .sensitivity import yaml_scale
        return f"{value / yaml_scale(name):g} {unit_of(name)}"
    return f"{value:g}"


def unit_of(name: str) -> str:
    """Unit of a hardware number's YAML key, e.g. 'TB/s' for hbm_bandwidth."""
    from .sensitivity import HARDWARE_NUMBERS
    key = HARDWARE_NUMBERS[name][1]
    return next(u for suffix, u in UNITS if key.endswith(suffix))


def plot_sensitivity(path: Path, at_best: list[dict], title: str, top_params: int = 12):
    """Bar charts of d log(tokens/s/GPU) / d log(x) at the best layout: hardware and workload on the
    left, the largest fitted-parameter elasticities on the right."""
    from .sensitivity import label_of

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
    fig.savefig(path)


def plot_sensitivity_frontier(path: Path, records: list[dict], columns: dict, frontier_idx, title: str,
                              best: int | None = None):
    """Elasticity of tokens/s/GPU to each hardware number along the frontier, by interactivity."""
    from .sensitivity import HARDWARE_NUMBERS, label_of

    key = "elasticity_tokens_per_s_per_gpu"
    fi = np.asarray(frontier_idx, int)
    u = np.asarray(columns["tokens_per_s_per_user"], float)
    by = {(r["row"], r["name"]): r[key] for r in records if r["kind"] == "hardware"}
    fig, ax = figure(figsize=(8, 5), dpi=120)
    for name in HARDWARE_NUMBERS:
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
    fig.savefig(path)


def plot_codesign(path: Path, res, title: str):
    """Tokens/s/GPU along the co-design trajectory (layout switches marked) and the budget shares."""
    from .sensitivity import HARDWARE_NUMBERS

    t = res.trajectory
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
        a2.plot(steps, [100 * r["shares"][n] for r in t], "-", label=HARDWARE_NUMBERS[n][2])
    a2.set_xlabel("step")
    a2.set_ylabel("share of the budget (%)")
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8)
    fig.suptitle(wrap(title, 140), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
