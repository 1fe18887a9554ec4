"""Co-design by gradient: spend a budget on hardware numbers so as to maximize tokens/s/GPU at the
SLA.

The priced numbers (e.g. HBM bandwidth, tensor-core FLOP/s, NVLink and scale-out bandwidth) share
the budget: ``value_i = budget * share_i / price_i`` with ``share = softmax(z)`` (plus a small
floor so no number reaches zero), so every point of the search spends exactly the budget. Each
step re-chooses the best layout at the SLA with the batched sweep, takes the exact elasticities of
tokens/s/GPU at that layout (envelope theorem: the gradient of the best throughput is the chosen
layout's own), and lets Optax (Adam) move z uphill. The best layout can switch between steps, so
the objective is piecewise smooth; the best point seen is reported.

Tensor-core rates move together: the same units compute BF16, FP8 and FP4, so pricing one rate
(say ``fp8_dense_tflops``) buys all three in proportion.

What the gradient does not see: HBM capacity acts through which batches fit, a discrete choice, so
its elasticity at a fixed layout is ~0 and the steps starve it; the re-sweeps notice when a layout
stops fitting (the objective falls) but nothing pushes capacity up.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .sensitivity import elasticities, serving_sweep
from .specs import (
    CONTINUOUS_HARDWARE,
    HARDWARE_NUMBERS,
    Experiment,
    Hardware,
    SpecError,
    hardware_number,
    read_yaml,
    yaml_value,
)

RATES = ("bf16_flops", "fp8_flops", "fp4_flops")
PRICEABLE = tuple(n for n in CONTINUOUS_HARDWARE if not n.endswith("_latency"))
SHARE_FLOOR = 1e-4          # no priced number gets less than this share of the budget
DEFAULT_STEPS = 60
DEFAULT_LR = 0.1


@dataclasses.dataclass(frozen=True)
class Prices:
    prices: dict[str, float]     # canonical number -> price per unit of its YAML key
    budget: float | None         # None: what the starting hardware's priced numbers cost
    currency: str
    source: str


def load_prices(path: str | Path) -> Prices:
    """Read a prices YAML: ``prices: {YAML key or number name: price per unit}``, optional
    ``budget``, ``currency`` and ``description``."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"prices file '{path}' does not exist")
    data = read_yaml(path)
    allowed = ("prices", "budget", "currency", "description")
    unknown = set(data) - set(allowed)
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(allowed)}")
    raw = data.get("prices")
    if not isinstance(raw, dict) or not raw:
        raise SpecError(f"{path}: key 'prices' must be a mapping of hardware numbers to prices per unit, e.g. "
                        f"'hbm_bandwidth_tb_s: 2500'")
    prices = {}
    for key, v in raw.items():
        name = hardware_number(str(key), f"{path} [prices]").field
        if name not in PRICEABLE:
            raise SpecError(f"{path} [prices]: '{key}' cannot be bought (spending makes a number larger, and a "
                            f"latency should be smaller); priceable: "
                            + ", ".join(HARDWARE_NUMBERS[n].key for n in PRICEABLE))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise SpecError(f"{path} [prices]: price of '{key}' must be a positive number, got {v!r}")
        if name in prices:
            raise SpecError(f"{path} [prices]: '{key}' is priced twice")
        prices[name] = float(v)
    if sum(n in RATES for n in prices) > 1:
        raise SpecError(f"{path} [prices]: price one tensor-core rate only (the BF16, FP8 and FP4 rates come from "
                        f"the same units and move together)")
    budget = data.get("budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0):
        raise SpecError(f"{path}: key 'budget' must be a positive number, got {budget!r}")
    currency = data.get("currency", "")
    if not isinstance(currency, str):
        raise SpecError(f"{path}: key 'currency' must be a string such as USD, got {currency!r}")
    return Prices(prices, None if budget is None else float(budget), str(currency), str(path))


def spend(hw: Hardware, prices: Mapping[str, float]) -> float:
    return sum(p * yaml_value(hw, n) for n, p in prices.items())


def with_values(hw: Hardware, values: Mapping[str, float]) -> Hardware:
    """The hardware with the priced numbers set (YAML units); a priced tensor-core rate scales all
    three rates by the same factor."""
    kw = {}
    for name, v in values.items():
        if name in RATES:
            factor = v / yaml_value(hw, name)
            kw.update({r: float(getattr(hw, r)) * factor for r in RATES})
        else:
            kw[name] = v * HARDWARE_NUMBERS[name].scale
    return dataclasses.replace(hw, **kw)


def shares(z) -> jax.Array:
    n = z.shape[0]
    return SHARE_FLOOR + (1.0 - n * SHARE_FLOOR) * jax.nn.softmax(z)


def z_for_shares(s: np.ndarray) -> np.ndarray:
    n = len(s)
    return np.log(np.maximum((np.asarray(s) - SHARE_FLOOR) / (1.0 - n * SHARE_FLOOR), 1e-12))


def values_of(z, price_vec, budget):
    """YAML-unit values of the priced numbers when the budget is split by softmax shares."""
    return budget * shares(z) / price_vec


@dataclasses.dataclass
class CodesignResult:
    names: list[str]
    prices: dict[str, float]
    budget: float
    trajectory: list[dict]        # one per step: objective, layout, values, shares
    best_step: int
    final_hardware: Hardware

    @property
    def start(self) -> dict:
        return self.trajectory[0]

    @property
    def final(self) -> dict:
        """The best step seen."""
        return self.trajectory[self.best_step]


def optimize_allocation(objective: Callable[[dict[str, float]], tuple[float, dict[str, float], dict]],
                        names: Sequence[str], prices: Mapping[str, float], budget: float,
                        start_values: Mapping[str, float], steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR,
                        progress: Callable[[int, dict], None] | None = None) -> tuple[list[dict], int]:
    """Gradient ascent (Optax Adam) of a log objective over the split of ``budget``.

    ``objective(values) -> (log objective or None where infeasible, {name: d log obj / d log value},
    info)``. Returns the trajectory and the index of its best step. A step that lands where the
    objective is undefined (no layout meets the SLA) is undone and the learning rate halved."""
    price_vec = jnp.asarray([prices[n] for n in names], jnp.float32)
    s0 = np.asarray([prices[n] * start_values[n] for n in names]) / budget
    z = jnp.asarray(z_for_shares(s0 / s0.sum()), jnp.float32)

    def surrogate(z, e):                  # linearization: sum_i e_i log v_i(z)
        return jnp.sum(e * jnp.log(values_of(z, price_vec, budget)))

    grad = jax.jit(jax.grad(surrogate))
    opt = optax.adam(lr)
    state = opt.init(z)
    traj: list[dict] = []
    best, last_ok, cuts = -1, None, 0           # last_ok: the z of the last feasible step
    for step in range(steps):
        v = np.asarray(values_of(z, price_vec, budget), np.float64)
        values = dict(zip(names, v.tolist()))
        obj, e, info = objective(values)
        rec = {"step": step, "log_objective": obj, "values": values,
               "shares": dict(zip(names, np.asarray(shares(z)).tolist())), "elasticities": e, **info}
        traj.append(rec)
        if progress:
            progress(step, rec)
        if obj is None:
            if last_ok is None:
                raise SpecError("no layout meets the SLA at the starting hardware: relax the SLA or raise the budget")
            cuts += 1
            if cuts > 6:
                break
            z = last_ok
            opt = optax.adam(lr / 2 ** cuts)
            state = opt.init(z)
            continue
        if best < 0 or obj > traj[best]["log_objective"]:
            best = len(traj) - 1
        last_ok = z
        g = grad(z, jnp.asarray([e[n] for n in names], jnp.float32))
        updates, state = opt.update(-g, state, z)          # ascent
        z = optax.apply_updates(z, updates)
    return traj, best


def usable_names(exp: Experiment, prices: Mapping[str, float]) -> tuple[list[str], list[str]]:
    """Priced numbers this experiment can use, and those it cannot (a tensor-core rate the hardware
    lacks, which cannot be scaled from zero)."""
    use, skip = [], []
    for n in prices:
        (skip if yaml_value(exp.hardware, n) <= 0 else use).append(n)
    return use, skip


def run_codesign(exp: Experiment, p: Mapping, prices: Prices, budget: float | None = None,
                 steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, attention_dp: str = "ep",
                 progress: bool = False, serving: str = "agg") -> CodesignResult:
    """Spend ``budget`` on the priced hardware numbers to maximize tokens/s/GPU at the SLA, for
    aggregated layouts or (``serving="disagg"``) disaggregated prefill/decode pools: each step
    re-chooses the best deployment with the batched sweep and follows its exact elasticities. Each
    trajectory step names its best deployment as a row of the sweep's columns (``layout``; None
    where no layout meets the SLA)."""
    sweep = serving_sweep(serving, attention_dp)

    names, skipped = usable_names(exp, prices.prices)
    if skipped:
        print(f"jaxplan codesign: {', '.join(skipped)} priced but zero on {exp.hardware.name}: left out",
              file=sys.stderr)
    if not names:
        raise SpecError(f"{prices.source}: none of the priced numbers can be changed on {exp.hardware.name}")
    pr = {n: prices.prices[n] for n in names}
    hw0 = exp.hardware
    start_values = {n: yaml_value(hw0, n) for n in names}
    start_spend = spend(hw0, pr)
    budget = float(budget or prices.budget or start_spend)
    # start from the hardware as it is, scaled to the budget
    start_values = {n: v * budget / start_spend for n, v in start_values.items()}

    def objective(values):
        hw = with_values(hw0, values)
        e2 = dataclasses.replace(exp, hardware=hw)
        res = sweep(e2, p)
        if res.best is None:
            return None, {}, {"layout": None, "tokens_per_s_per_gpu": 0.0}
        row = res.row(res.best)
        recs = elasticities(p, hw, exp.model, exp.precision, exp.workload, res.columns, np.asarray([res.best]),
                            exp.scheduler_name, serving)
        el = {r["name"]: r["elasticity_tokens_per_s_per_gpu"] for r in recs if r["kind"] == "hardware"}
        # a priced tensor-core rate moves all three rates: its elasticity is their sum
        e = {n: (sum(el[r] for r in RATES) if n in RATES else el[n]) for n in names}
        info = {"layout": row, "tokens_per_s_per_gpu": row["tokens_per_s_per_gpu"],
                "tokens_per_s_per_user": row["tokens_per_s_per_user"], "ttft_s": row["ttft_s"]}
        return math.log(row["tokens_per_s_per_gpu"]), e, info

    def show(step, rec):
        if progress and sys.stderr.isatty():
            print(f"\r  step {step + 1}/{steps}: {rec['tokens_per_s_per_gpu']:.1f} tokens/s/GPU" + " " * 10,
                  end="", file=sys.stderr, flush=True)

    traj, best = optimize_allocation(objective, names, pr, budget, start_values, steps, lr, show)
    if progress and sys.stderr.isatty():
        print(file=sys.stderr)
    return CodesignResult(names, pr, budget, traj, best, with_values(hw0, traj[best]["values"]))
