"""Traffic: how long prompts and answers are, and how requests arrive.

Lengths are a distribution each (``fixed``, ``uniform``, ``lognormal`` with a mean and a spread =
standard deviation / mean, or ``empirical``: the rows of a CSV of ``(isl, osl)`` pairs, kept
paired). The load is a closed loop of N clients (N is the layout's batch, as the sweep sets it:
today's model, the default), or an open loop at a request rate: Poisson arrivals, or the
timestamps of a trace file.

The cost model prices one request of fixed lengths. Where a cost is linear in a length its mean
is enough; where it is not, :meth:`Traffic.workload_fields` hands the cost model the moment that
cost needs:

- GEMMs, KV-cache writes, tokens/s: linear in the lengths, so ``E[isl]`` and ``E[osl]``.
- Causal attention in prefill: a prompt of ``s`` tokens costs ``~ s^2 / 2`` key visits, so the mean
  key span of a prefill *token* is ``E[isl^2] / (2 E[isl]) = (1 + cv^2) E[isl] / 2``, carried as
  ``Workload.isl_cv2`` (squared coefficient of variation of the prompt length).
- Decode attention reads the cached context of each decoding request; a request is in decode for
  ``osl`` steps, so a decode step sees the *time-weighted* context ``E[osl (isl + osl / 2)] / E[osl]
  = E[isl] + E[osl] / 2 + (Cov(isl, osl) + Var(osl) / 2) / E[osl]``, carried as the excess over
  ``E[isl] + E[osl] / 2`` (``Workload.decode_context_excess``).
- KV memory of the admitted batch: linear in the context, ``E[isl] + E[osl]`` (the means).

Fixed lengths give ``isl_cv2 = decode_context_excess = 0``, and the cost model is then exactly
today's (``x * (1 + 0)`` and ``x + 0`` are exact in floating point).

This module reads and checks traffic (YAML mapping, CSV files) and answers questions about it
(moments, quantiles, samples, arrival times); :mod:`jaxplan.openloop` prices it and
:mod:`jaxplan.simulate` replays it.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from statistics import NormalDist

import numpy as np

from .errors import SpecError

LENGTH_KINDS = ("fixed", "uniform", "lognormal", "empirical")
LOAD_KINDS = ("closed", "poisson", "trace")
MAX_TOKENS = 100_000_000            # as specs.MAX_TOKENS: per prompt or answer
MAX_RATE = 1e9                      # requests/s: beyond any real deployment
QUANTILE_POINTS = 64                # equal-probability points standing for a length distribution
TIMESTAMP_COLUMNS = ("timestamp_s", "arrival_s", "time_s", "timestamp")
MAX_REPORTED_ROWS = 5               # bad rows named in a message; the rest are counted


@dataclasses.dataclass(frozen=True)
class Lengths:
    """One length distribution, in tokens. ``fixed``: ``mean``; ``uniform``: ``low`` to ``high``;
    ``lognormal``: ``mean`` and ``spread`` (standard deviation / mean); ``empirical``: ``values``."""
    kind: str = "fixed"
    mean: float = 1024.0
    spread: float = 0.0
    low: float = 0.0
    high: float = 0.0
    values: tuple[float, ...] = ()

    def moments(self) -> tuple[float, float]:
        """``(E[x], E[x^2])``, exact for the parametric kinds (not from samples)."""
        if self.kind == "fixed":
            return self.mean, self.mean ** 2
        if self.kind == "uniform":
            a, b = self.low, self.high
            return (a + b) / 2.0, (a * a + a * b + b * b) / 3.0
        if self.kind == "lognormal":
            return self.mean, self.mean ** 2 * (1.0 + self.spread ** 2)
        v = np.asarray(self.values, np.float64)
        return float(v.mean()), float((v * v).mean())

    def quantiles(self, k: int = QUANTILE_POINTS) -> np.ndarray:
        """``k`` equal-probability points (the quantiles at ``(i + 1/2) / k``): the distribution
        as a sum over points, for percentiles of quantities that depend on the length."""
        u = (np.arange(k) + 0.5) / k
        if self.kind == "fixed":
            return np.full(k, self.mean)
        if self.kind == "uniform":
            return self.low + (self.high - self.low) * u
        if self.kind == "lognormal":
            s2 = math.log1p(self.spread ** 2)
            mu = math.log(self.mean) - s2 / 2.0
            z = np.asarray([NormalDist().inv_cdf(x) for x in u])
            return np.exp(mu + math.sqrt(s2) * z)
        return np.quantile(np.asarray(self.values, np.float64), u)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` lengths drawn at random (whole tokens, at least one)."""
        if self.kind == "fixed":
            x = np.full(n, self.mean)
        elif self.kind == "uniform":
            x = rng.uniform(self.low, self.high, n)
        elif self.kind == "lognormal":
            s2 = math.log1p(self.spread ** 2)
            x = rng.lognormal(math.log(self.mean) - s2 / 2.0, math.sqrt(s2), n)
        else:
            x = rng.choice(np.asarray(self.values, np.float64), n)
        return np.maximum(np.round(x), 1.0)

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.mean:g}"
        if self.kind == "uniform":
            return f"uniform {self.low:g}-{self.high:g}"
        if self.kind == "lognormal":
            return f"lognormal mean {self.mean:g} spread {self.spread:g}"
        return f"empirical ({len(self.values)} rows, mean {self.moments()[0]:.0f})"


@dataclasses.dataclass(frozen=True)
class Traffic:
    """Prompt (``isl``) and output (``osl``) lengths and the load. ``paired``: the two empirical
    lists are rows of one file (drawn together). ``load``: ``closed`` (N = the layout's batch),
    ``poisson`` at ``rate`` requests/s, or ``trace`` (``arrivals``: the trace's timestamps from 0;
    ``rate`` its mean rate). ``skipped``: rows of the files read that were left out, with why."""
    isl: Lengths = Lengths()
    osl: Lengths = Lengths()
    paired: bool = False
    load: str = "closed"
    rate: float = 0.0
    arrivals: tuple[float, ...] = ()
    source: str = ""
    skipped: tuple[str, ...] = ()

    @property
    def open_loop(self) -> bool:
        return self.load != "closed"

    @property
    def fixed_lengths(self) -> bool:
        return self.isl.kind == "fixed" and self.osl.kind == "fixed"

    @property
    def arrival_cv2(self) -> float:
        """Squared coefficient of variation of the inter-arrival times: 1 for Poisson arrivals,
        measured for a trace (what Kingman's G/G/1 formula in :mod:`jaxplan.openloop` needs)."""
        if self.load != "trace" or len(self.arrivals) < 3:
            return 1.0
        gaps = np.diff(np.asarray(self.arrivals, np.float64))
        m = gaps.mean()
        return float(gaps.var() / (m * m)) if m > 0 else 1.0

    def cross_moment(self) -> float:
        """``E[isl * osl]``: from the rows when paired, else the lengths are independent."""
        if self.paired:
            return float(np.mean(np.asarray(self.isl.values) * np.asarray(self.osl.values)))
        return self.isl.moments()[0] * self.osl.moments()[0]

    def workload_fields(self) -> dict[str, float]:
        """The cost model's fixed-length stand-in (module docstring): mean lengths, the prompt
        length's squared coefficient of variation (prefill attention ~ ``E[isl^2]``) and the
        excess of the time-weighted decode context over ``E[isl] + E[osl] / 2`` (decode
        attention). Zeros for fixed lengths."""
        i1, i2 = self.isl.moments()
        o1, o2 = self.osl.moments()
        if self.fixed_lengths:
            return {"isl": i1, "osl": o1, "isl_cv2": 0.0, "decode_context_excess": 0.0}
        cov = self.cross_moment() - i1 * o1
        return {"isl": i1, "osl": o1, "isl_cv2": max(i2 / (i1 * i1) - 1.0, 0.0),
                "decode_context_excess": max((cov + (o2 - o1 * o1) / 2.0) / o1, 0.0)}

    def with_rate(self, rate: float, where: str = "--rate") -> Traffic:
        """The same lengths at Poisson arrivals of ``rate`` requests/s."""
        return dataclasses.replace(self, load="poisson", rate=check_rate(rate, where), arrivals=())

    def with_lengths(self, isl: float | None = None, osl: float | None = None) -> Traffic:
        """Fixed prompt and/or output lengths in place of the distributions (``--isl``/``--osl``)."""
        t = self
        if isl is not None:
            t = dataclasses.replace(t, isl=Lengths("fixed", float(isl)), paired=False)
        if osl is not None:
            t = dataclasses.replace(t, osl=Lengths("fixed", float(osl)), paired=False)
        return t

    def sample_lengths(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (isl, osl) pairs drawn at random (paired rows drawn together)."""
        if self.paired:
            idx = rng.integers(0, len(self.isl.values), n)
            return (np.asarray(self.isl.values, np.float64)[idx], np.asarray(self.osl.values, np.float64)[idx])
        return self.isl.sample(rng, n), self.osl.sample(rng, n)

    def arrival_times(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` arrival times (s from 0): Poisson at ``rate``, or the trace's (repeated end to end
        if ``n`` is more than it holds). A closed loop has none (:mod:`jaxplan.simulate` runs it
        by its clients)."""
        if self.load == "poisson":
            return np.cumsum(rng.exponential(1.0 / self.rate, n))
        if self.load == "trace":
            a = np.asarray(self.arrivals, np.float64)
            span = a[-1] + (a[-1] - a[0]) / max(len(a) - 1, 1)
            reps = -(-n // len(a))
            return (a[None, :] + span * np.arange(reps)[:, None]).ravel()[:n]
        raise SpecError("a closed loop has no arrival times; give a rate (--rate R, traffic: load: poisson) "
                        "or a trace")

    def describe(self) -> str:
        """One line: the load model and the lengths (titles, summary.json)."""
        load = {"closed": "closed loop (N clients = batch)",
                "poisson": f"open loop, Poisson at {self.rate:g} req/s",
                "trace": f"open loop, trace {Path(self.source).name or 'file'} ({len(self.arrivals)} arrivals, "
                         f"{self.rate:.3g} req/s)"}[self.load]
        return f"{load}; ISL {self.isl.describe()}, OSL {self.osl.describe()}"

    def summary(self) -> dict:
        return {"load": self.load, "rate_rps": self.rate if self.open_loop else None,
                "arrival_cv2": self.arrival_cv2 if self.open_loop else None,
                "isl": dataclasses.asdict(self.isl) | {"values": len(self.isl.values)},
                "osl": dataclasses.asdict(self.osl) | {"values": len(self.osl.values)},
                "source": self.source or None, "skipped_rows": len(self.skipped),
                "description": self.describe()}


# ----------------------------------------------------------------------------- checks

def check_rate(rate, where: str) -> float:
    """A request rate: a finite positive number of requests/s."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise SpecError(f"{where}: the request rate must be a positive number of requests/s, got {rate!r}")
    if rate > MAX_RATE:
        raise SpecError(f"{where}: the request rate {rate:g} requests/s is beyond any real deployment "
                        f"(at most {MAX_RATE:g})")
    return float(rate)


def check_percentile(q, where: str) -> float:
    """A percentile strictly between 0 and 100 (P0 and P100 of an unbounded wait do not exist)."""
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or not 0.0 < q < 100.0:
        raise SpecError(f"{where}: a percentile must be a number strictly between 0 and 100, got {q!r}")
    return float(q)


def check_share(s, where: str) -> float:
    """A share of requests in (0, 1]."""
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0.0 < s <= 1.0:
        raise SpecError(f"{where}: the share of requests must be in (0, 1], got {s!r}")
    return float(s)


def _length_number(v, where: str, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"{where}: key '{key}' must be a number of tokens, got {v!r}")
    if not 0 < v <= MAX_TOKENS:
        raise SpecError(f"{where}: key '{key}' must be a positive number of tokens up to {MAX_TOKENS:,}, got {v!r}")
    return float(v)


def lengths_from(v, where: str) -> Lengths:
    """A length from YAML: a number (fixed) or ``{distribution: fixed|uniform|lognormal, ...}``."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return Lengths("fixed", _length_number(v, where, "value"))
    if not isinstance(v, Mapping):
        raise SpecError(f"{where}: expected a number of tokens or a mapping with 'distribution' "
                        f"({', '.join(k for k in LENGTH_KINDS if k != 'empirical')}), got {v!r}")
    kind = v.get("distribution", "fixed")
    keys = {"fixed": ("mean",), "uniform": ("low", "high"), "lognormal": ("mean", "spread")}
    if kind not in keys:
        raise SpecError(f"{where}: key 'distribution' is {kind!r}; allowed: fixed, uniform, lognormal "
                        "(empirical lengths: traffic key 'lengths_csv')")
    unknown = set(v) - {"distribution", *keys[kind]}
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} for a {kind} length; "
                        f"allowed keys: distribution, {', '.join(keys[kind])}")
    for k in keys[kind]:
        if k not in v:
            raise SpecError(f"{where}: a {kind} length needs key '{k}'")
    if kind == "fixed":
        return Lengths("fixed", _length_number(v["mean"], where, "mean"))
    if kind == "uniform":
        lo, hi = _length_number(v["low"], where, "low"), _length_number(v["high"], where, "high")
        if hi < lo:
            raise SpecError(f"{where}: key 'high' ({hi:g}) is below key 'low' ({lo:g})")
        return Lengths("uniform", (lo + hi) / 2.0, low=lo, high=hi)
    s = v["spread"]
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0 or s > 100:
        raise SpecError(f"{where}: key 'spread' (standard deviation / mean) must be a number in [0, 100], got {s!r}")
    return Lengths("lognormal", _length_number(v["mean"], where, "mean"), spread=float(s))


def _bad_rows_text(bad: list[str]) -> str:
    more = f"; and {len(bad) - MAX_REPORTED_ROWS} more" if len(bad) > MAX_REPORTED_ROWS else ""
    return "; ".join(bad[:MAX_REPORTED_ROWS]) + more


def _read_rows(path: Path, where: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise SpecError(f"{where}: file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SpecError(f"{where}: '{path}' cannot be read as a CSV text file ({type(e).__name__}: {e})") from None
    numbered = [(i + 1, r) for i, r in enumerate(rows) if r and any(c.strip() for c in r)]
    if not numbered:
        raise SpecError(f"{where}: '{path}' is empty (expected a header row and at least one data row)")
    header = [c.strip().lower() for c in numbered[0][1]]
    return header, numbered[1:]


def _parse_rows(path: Path, where: str, columns: dict[str, int], rows, positive: dict[str, bool]):
    """Numbers of ``columns`` (name -> index) row by row; bad rows are skipped and described."""
    good: dict[str, list[float]] = {k: [] for k in columns}
    bad: list[str] = []
    for line, r in rows:
        vals, why = {}, None
        for k, i in columns.items():
            cell = r[i].strip() if i < len(r) else ""
            try:
                x = float(cell)
            except ValueError:
                why = f"line {line}: {k} {cell!r} is not a number"
                break
            if not math.isfinite(x) or (x <= 0 if positive[k] else x < 0) or x > (MAX_TOKENS if positive[k]
                                                                                    else math.inf):
                why = f"line {line}: {k} {cell!r} is out of range"
                break
            vals[k] = x
        if why:
            bad.append(why)
        else:
            for k, x in vals.items():
                good[k].append(x)
    if not good[next(iter(columns))]:
        raise SpecError(f"{where}: '{path}' has no usable data row ({len(bad)} bad: {_bad_rows_text(bad)})")
    return good, tuple(f"{path.name} {b}" for b in bad)


def load_lengths(path: str | os.PathLike, where: str = "lengths_csv") -> tuple[Lengths, Lengths, tuple[str, ...]]:
    """``(isl, osl, skipped)`` from a CSV with columns ``isl`` and ``osl`` (one request a row, kept
    paired). Rows that do not parse are left out and described in ``skipped``."""
    path = Path(path)
    header, rows = _read_rows(path, where)
    missing = [c for c in ("isl", "osl") if c not in header]
    if missing:
        raise SpecError(f"{where}: '{path}' has no column {', '.join(missing)} (header: {', '.join(header)}); "
                        "expected columns isl, osl")
    good, skipped = _parse_rows(path, where, {"isl": header.index("isl"), "osl": header.index("osl")}, rows,
                                {"isl": True, "osl": True})
    return (Lengths("empirical", float(np.mean(good["isl"])), values=tuple(good["isl"])),
            Lengths("empirical", float(np.mean(good["osl"])), values=tuple(good["osl"])), skipped)


def load_trace(path: str | os.PathLike, where: str = "trace") -> Traffic:
    """An open-loop trace: a CSV with a timestamp column (seconds; one of
    ``timestamp_s, arrival_s, time_s, timestamp``) and optionally ``isl`` and ``osl`` (then the
    lengths are the trace's, paired). Bad rows are left out and listed in ``skipped``; the
    timestamps are sorted and shifted to start at 0. At least two good rows are needed (a rate)."""
    path = Path(path)
    header, rows = _read_rows(path, where)
    tcol = next((c for c in TIMESTAMP_COLUMNS if c in header), None)
    if tcol is None:
        raise SpecError(f"{where}: '{path}' has no timestamp column (header: {', '.join(header)}); "
                        f"expected one of {', '.join(TIMESTAMP_COLUMNS)}")
    cols = {tcol: header.index(tcol)}
    has_lengths = "isl" in header and "osl" in header
    if has_lengths:
        cols |= {"isl": header.index("isl"), "osl": header.index("osl")}
    good, skipped = _parse_rows(path, where, cols, rows, {tcol: False, "isl": True, "osl": True})
    t = np.sort(np.asarray(good[tcol], np.float64))
    if len(t) < 2 or t[-1] <= t[0]:
        raise SpecError(f"{where}: '{path}' needs at least two distinct timestamps to give a rate, got {len(t)} "
                        "usable row(s)" + (f" ({_bad_rows_text(list(skipped))})" if skipped else ""))
    t = t - t[0]
    rate = (len(t) - 1) / t[-1]
    kw = {}
    if has_lengths:
        kw = {"isl": Lengths("empirical", float(np.mean(good["isl"])), values=tuple(good["isl"])),
              "osl": Lengths("empirical", float(np.mean(good["osl"])), values=tuple(good["osl"])), "paired": True}
    return Traffic(load="trace", rate=float(check_rate(rate, f"{where} '{path}'")), arrivals=tuple(t.tolist()),
                   source=str(path), skipped=skipped, **kw)


def traffic_from_dict(data, where: str, base_dir: Path | None = None, isl: float | None = None,
                      osl: float | None = None) -> Traffic:
    """The experiment YAML's ``traffic:`` mapping::

        traffic:
          isl: {distribution: lognormal, mean: 2048, spread: 0.6}   # or a number, or uniform low/high
          osl: {distribution: uniform, low: 128, high: 512}
          lengths_csv: lengths.csv          # instead of isl/osl: (isl, osl) rows, paired
          load: {kind: poisson, rate_rps: 40}   # or {kind: trace, file: trace.csv}, or closed (default)

    ``isl``/``osl``: the workload's fixed lengths, used where the traffic gives none. Files are
    relative to ``base_dir`` (the experiment file's folder)."""
    where = f"{where} [traffic]"
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: expected a mapping (keys isl, osl, lengths_csv, load), got {data!r}")
    unknown = set(data) - {"isl", "osl", "lengths_csv", "load"}
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed keys: isl, "
                        "lengths_csv, load, osl")

    def resolve(f, key):
        if not isinstance(f, str) or not f:
            raise SpecError(f"{where}: key '{key}' must be a file path, got {f!r}")
        p = Path(f)
        return p if p.is_absolute() or base_dir is None else base_dir / p

    t = Traffic(isl=Lengths("fixed", float(isl or 1024.0)), osl=Lengths("fixed", float(osl or 1024.0)))
    skipped: tuple[str, ...] = ()
    if "lengths_csv" in data:
        if "isl" in data or "osl" in data:
            raise SpecError(f"{where}: give either 'lengths_csv' or 'isl'/'osl', not both")
        li, lo, skipped = load_lengths(resolve(data["lengths_csv"], "lengths_csv"), f"{where} key 'lengths_csv'")
        t = dataclasses.replace(t, isl=li, osl=lo, paired=True, source=str(data["lengths_csv"]))
    for key in ("isl", "osl"):
        if key in data:
            t = dataclasses.replace(t, **{key: lengths_from(data[key], f"{where} key '{key}'")})
    load = data.get("load", "closed")
    if load == "closed" or load is None:
        return dataclasses.replace(t, skipped=skipped)
    if not isinstance(load, Mapping) or load.get("kind") not in LOAD_KINDS:
        raise SpecError(f"{where}: key 'load' must be 'closed' or a mapping with 'kind' one of "
                        f"{', '.join(LOAD_KINDS)}, got {load!r}")
    kind = load["kind"]
    allowed = {"closed": {"kind"}, "poisson": {"kind", "rate_rps"}, "trace": {"kind", "file"}}[kind]
    if set(load) - allowed:
        raise SpecError(f"{where} [load]: unknown key(s) {', '.join(sorted(map(str, set(load) - allowed)))}; "
                        f"allowed keys for {kind}: {', '.join(sorted(allowed))}")
    if kind == "closed":
        return dataclasses.replace(t, skipped=skipped)
    if kind == "poisson":
        if "rate_rps" not in load:
            raise SpecError(f"{where} [load]: Poisson arrivals need key 'rate_rps' (requests/s)")
        rate = check_rate(load["rate_rps"], f"{where} [load] key 'rate_rps'")
        return dataclasses.replace(t, load="poisson", rate=rate, skipped=skipped)
    if "file" not in load:
        raise SpecError(f"{where} [load]: a trace needs key 'file' (a CSV with a timestamp_s column)")
    tr = load_trace(resolve(load["file"], "file"), f"{where} [load] key 'file'")
    if tr.paired and not ("lengths_csv" in data or "isl" in data or "osl" in data):
        return dataclasses.replace(tr, skipped=skipped + tr.skipped)
    return dataclasses.replace(t, load="trace", rate=tr.rate, arrivals=tr.arrivals, source=tr.source,
                               skipped=skipped + tr.skipped)
