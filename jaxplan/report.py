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
                      "requests_per_s", "decode_batch", "prefill_saturated", "chunk_iter_s", "decode_iter_s")


def _fmt(v) -> str:
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


def frontier_rows(columns, idx) -> list[dict]:
    rows = []
    for i in idx:
        r = {k: columns[k][i] for k, _, _ in FRONTIER_TABLE}
        r["tpot_s"] = f"{1e3 * float(columns['tpot_s'][i]):.1f}"
        for k in ("tp", "pp", "ep", "dp", "adp", "batch", "chunk"):
            r[k] = int(r[k])
        rows.append(r)
    return rows


def layout_label(r: dict) -> str:
    parts = [f"{k.upper()}{int(r[k])}" for k in ("tp", "pp", "ep", "dp") if int(r[k]) > 1]
    if "adp" in r and int(r["adp"]) != int(r["ep"]):
        parts.append(f"ADP{int(r['adp'])}")
    return "·".join(parts or ["TP1"]) + f" B{int(r['batch'])} C{int(r['chunk'])}"


def plot_frontier(path: Path, columns: dict, frontier_idx, best: int | None, title: str,
                  min_tokens_per_user: float = 0.0, extra: dict | None = None):
    """Every feasible layout faintly, the frontier highlighted, the SLA pick marked.

    ``extra``: optional {label: (user, gpu)} frontiers to overlay (e.g. disaggregated)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feas = np.asarray(columns["feasible"], bool)
    u, g = np.asarray(columns["tokens_per_s_per_user"]), np.asarray(columns["tokens_per_s_per_gpu"])
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    ax.scatter(u[feas], g[feas], s=6, alpha=0.15, color="tab:gray", label=f"{feas.sum():,} feasible layouts")
    fi = np.asarray(frontier_idx, int)
    if fi.size:
        ax.plot(u[fi], g[fi], "-o", color="tab:blue", ms=3.5, lw=1.6, label="Pareto frontier")
    for label, (xu, xg) in (extra or {}).items():
        ax.plot(xu, xg, "-s", ms=3.5, lw=1.6, label=label)
    if min_tokens_per_user > 0:
        ax.axvline(min_tokens_per_user, color="tab:red", ls="--", lw=1, alpha=0.7,
                   label=f"SLA: ≥ {min_tokens_per_user:g} tokens/s/user")
    if best is not None:
        r = {k: columns[k][best] for k in ("tp", "pp", "ep", "dp", "adp", "batch", "chunk")}
        ax.plot([u[best]], [g[best]], marker="*", ms=16, color="tab:orange", mec="k", ls="none",
                label=f"best at SLA: {layout_label(r)}")
    ax.set_xlabel("interactivity (output tokens/s per user)")
    ax.set_ylabel("throughput (output tokens/s per GPU)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_json(path: Path, obj) -> None:
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
    Path(path).write_text(json.dumps(conv(obj), indent=2) + "\n")
