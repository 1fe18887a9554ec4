"""Error statistics of predictions against measurements, one definition for every report
(kernel fits, kernel validation, serving validation, serving fits). Errors are fractions
(0.1 = 10%); reports print them as percentages."""
from __future__ import annotations

import math

import numpy as np


def ape(pred, meas) -> np.ndarray:
    """Absolute percentage error, as a fraction: |pred / meas - 1|."""
    return np.abs(np.asarray(pred, np.float64) / np.asarray(meas, np.float64) - 1.0)


def error_stats(pred, meas) -> dict:
    """Count, mean (MAPE), median and 90th percentile of the absolute percentage errors of the
    finite pairs, and the shares within 10% and 25%; NaN where there is none."""
    err = ape(pred, meas)
    err = err[np.isfinite(err)]
    if err.size == 0:
        return {"n": 0, "mape": math.nan, "median": math.nan, "p90": math.nan, "within10": math.nan,
                "within25": math.nan}
    return {"n": int(err.size), "mape": float(err.mean()), "median": float(np.median(err)),
            "p90": float(np.percentile(err, 90)), "within10": float((err <= 0.10).mean()),
            "within25": float((err <= 0.25).mean())}
