"""Power, energy and cost per token of a layout.

The power model, per GPU (numbers: the ``power`` block of a hardware YAML, :data:`specs.POWER_NUMBERS`):

- A GPU draws its idle power ``idle = idle_share * TDP`` whenever it is part of a running engine,
  and up to TDP while its tensor cores or its HBM bound the time: over an iteration,
  ``P_gpu = idle + (TDP - idle) * busy``, where ``busy`` is the share of the iteration's time spent
  in compute- or memory-bound ops (``Cost.compute + Cost.memory`` over the iteration's time; time in
  communication, host overhead and pipeline bubbles counts as idle). ``busy`` is in [0, 1], so a
  GPU never draws more than its TDP.
- Around each GPU: ``system_power`` (CPUs, NICs, NVSwitches, fans, the GPU's share of the network
  switches), drawn all the time.
- The facility: ``P_facility = (P_gpu + system_power) * PUE`` per GPU.

Per output token: ``joules_per_token = P_facility / tokens_per_s_per_gpu`` and tokens per second per
megawatt of facility power ``1e6 / joules_per_token``. Dollars per million output tokens come from
a cost file (:func:`load_costs`, ``configs/tco/default.yaml``): an all-in rental price per GPU-hour,
or a purchase price amortized over years plus the electricity the facility draws.

All functions are plain arithmetic of their inputs: they work on numpy arrays, on traced JAX values
(differentiable) and inside ``vmap``.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import jax.numpy as jnp

from .cost import Cost
from .specs import Hardware, SpecError, _Reader, _resolve, read_yaml

SECONDS_PER_HOUR = 3600.0
HOURS_PER_YEAR = 8760.0
TOKENS_PER_MTOKEN = 1e6
WATTS_PER_MW = 1e6
OBJECTIVES = ("throughput", "cost", "energy")
# objective -> (column, larger is better)
OBJECTIVE_COLUMNS = {"throughput": ("tokens_per_s_per_gpu", True), "cost": ("usd_per_mtoken", False),
                     "energy": ("joules_per_token", False)}


# ----------------------------------------------------------------------------- power

def busy_share(cost: Cost, active=1.0):
    """Share of an iteration's time a GPU is compute- or memory-bound: ``(compute + memory) / total``
    of the iteration's cost, times ``active``, the share of the iteration a GPU has work at all
    (with pipeline parallelism and fewer micro-batches than stages, ``n / pp``)."""
    total = cost.total()
    return jnp.clip((cost.compute + cost.memory) / jnp.maximum(total, 1e-30) * active, 0.0, 1.0)


def gpu_power(hw: Hardware, busy):
    """Board power of one GPU, W: idle power plus the rest of TDP in proportion to ``busy``."""
    idle = hw.tdp * hw.idle_share
    return idle + (hw.tdp - idle) * busy


def facility_power_per_gpu(hw: Hardware, busy):
    """Facility power per GPU, W: (GPU + the system around it) x PUE."""
    return (gpu_power(hw, busy) + hw.system_power) * hw.pue


def joules_per_token(hw: Hardware, busy, tokens_per_s_per_gpu):
    """Facility energy per output token, J."""
    return facility_power_per_gpu(hw, busy) / tokens_per_s_per_gpu


def tokens_per_s_per_mw(hw: Hardware, busy, tokens_per_s_per_gpu):
    """Output tokens/s per MW of facility power."""
    return tokens_per_s_per_gpu * WATTS_PER_MW / facility_power_per_gpu(hw, busy)


def disagg_busy_share(prefill_gpus, prefill_busy, prefill_utilization, decode_gpus, decode_busy):
    """GPU-weighted busy share of a disaggregated deployment: a prefill worker runs iterations
    ``prefill_utilization`` of the time (busy ``prefill_busy`` of each) and waits the rest; a decode
    worker always runs. ``prefill_gpus``/``decode_gpus``: GPUs in each pool (workers x GPUs each).
    Board power is linear in the busy share, so the pool-weighted busy share gives the mean power."""
    return ((prefill_gpus * prefill_utilization * prefill_busy + decode_gpus * decode_busy)
            / (prefill_gpus + decode_gpus))


def power_metrics(hw: Hardware, busy, tokens_per_s_per_gpu) -> dict:
    """The energy columns of a sweep from the busy share and the throughput per GPU."""
    return {"busy_share": busy, "gpu_power_w": gpu_power(hw, busy),
            "facility_power_per_gpu_w": facility_power_per_gpu(hw, busy),
            "joules_per_token": joules_per_token(hw, busy, tokens_per_s_per_gpu),
            "tokens_per_s_per_mw": tokens_per_s_per_mw(hw, busy, tokens_per_s_per_gpu)}


ENERGY_COLUMNS = ("busy_share", "gpu_power_w", "facility_power_per_gpu_w", "joules_per_token",
                  "tokens_per_s_per_mw", "usd_per_mtoken")


# ----------------------------------------------------------------------------- cost

@dataclasses.dataclass(frozen=True)
class GpuCost:
    """The price of one GPU (all-in: its share of the server, rack and network): either rented at
    ``gpu_hour_usd`` per hour, electricity included, or bought at ``capex_usd``."""
    gpu_hour_usd: float | None = None
    capex_usd: float | None = None


@dataclasses.dataclass(frozen=True)
class Costs:
    """A cost file: prices per GPU by hardware name, the amortization period and the electricity
    price (used with ``capex_usd``)."""
    gpus: dict[str, GpuCost]
    amortization_years: float
    electricity_usd_per_kwh: float
    currency: str
    source: str

    def gpu(self, hw: Hardware) -> GpuCost:
        c = self.gpus.get(hw.name)
        if c is None:
            raise SpecError(f"{self.source} [hardware]: no price for hardware '{hw.name}'; priced: "
                            f"{', '.join(sorted(self.gpus))} (add '{hw.name}: {{capex_per_gpu_usd: ...}}' or "
                            f"'{{gpu_hour_usd: ...}}')")
        return c


COST_KEYS = ("capex_per_gpu_usd", "gpu_hour_usd")


def load_costs(name_or_path: str | os.PathLike | None = None) -> Costs:
    """Read a cost file (default: the preset ``configs/tco/default.yaml``; a name is a preset in
    ``tco/``). Keys: ``hardware: {name: {capex_per_gpu_usd | gpu_hour_usd}}``, ``amortization_years``
    and ``electricity_usd_per_kwh`` (both needed when a GPU has a purchase price), ``currency``,
    ``description``."""
    path = _resolve(name_or_path or "default", "tco")
    where = str(path)
    r = _Reader(read_yaml(Path(path)), where)
    r.str("description", "")
    currency = r.str("currency", "USD")
    years = r.num("amortization_years", required=False)
    kwh = r.num("electricity_usd_per_kwh", required=False, positive=False, min_value=0.0)
    hw = r.sub("hardware", required=True)
    if not hw.data:
        raise SpecError(f"{where}: key 'hardware' must map hardware names to prices, e.g. "
                        f"'h100-sxm: {{capex_per_gpu_usd: 35000}}'")
    gpus = {}
    for name in hw.data:
        e = hw.sub(str(name))
        given = [k for k in COST_KEYS if k in e.data]
        if len(given) != 1:
            raise SpecError(f"{e.where}: give exactly one of {', '.join(COST_KEYS)} (the price of one GPU, "
                            f"all-in), got {', '.join(map(str, e.data)) or 'none'}")
        if given[0] == "gpu_hour_usd":
            gpus[str(name)] = GpuCost(gpu_hour_usd=e.num("gpu_hour_usd"))
        else:
            gpus[str(name)] = GpuCost(capex_usd=e.num("capex_per_gpu_usd"))
            for key, v in (("amortization_years", years), ("electricity_usd_per_kwh", kwh)):
                if v is None:
                    raise SpecError(f"{where}: missing required key '{key}' (hardware '{name}' has a purchase "
                                    f"price, capex_per_gpu_usd)")
        e.finish()
    hw.finish()
    r.finish()
    return Costs(gpus, years if years is not None else math.nan, kwh if kwh is not None else math.nan,
                 currency, where)


def usd_per_gpu_hour(costs: Costs, hw: Hardware, facility_w):
    """What one GPU costs per hour: its rental price, or its purchase price over the amortization
    period plus the electricity its facility power (W) draws."""
    c = costs.gpu(hw)
    if c.gpu_hour_usd is not None:
        return c.gpu_hour_usd + jnp.zeros_like(facility_w)   # electricity included (and power not needed)
    return c.capex_usd / (costs.amortization_years * HOURS_PER_YEAR) + facility_w / 1e3 * costs.electricity_usd_per_kwh


def usd_per_mtoken(costs: Costs, hw: Hardware, busy, tokens_per_s_per_gpu):
    """Dollars (the file's currency) per million output tokens."""
    hourly = usd_per_gpu_hour(costs, hw, facility_power_per_gpu(hw, busy))
    return hourly / (tokens_per_s_per_gpu * SECONDS_PER_HOUR) * TOKENS_PER_MTOKEN


def require_power(hw: Hardware, what: str) -> None:
    """Refuse ``what`` (an objective, a metric) when the hardware has no power block."""
    if not hw.has_power:
        raise SpecError(f"hardware '{hw.name}' has no 'power' block (keys: tdp_w, idle_share_of_tdp, "
                        f"system_power_per_gpu_w, pue, source), which {what} needs; add it to its YAML "
                        f"(configs/hardware/h100-sxm.yaml shows one)")
