"""Statistics of a comparison over seeds: paired gains with Student-t intervals, and the spread noise alone gives.

A distilled student and its hard-target baseline trained with the same seed start from the
same initial weights and see the same data order (kdsweep.train seeds both from the run's seed);
the gain of seed s is KD(s) - baseline(s), and the seeds are the sample. `paired_gain` pairs the two by seed (a seed
without both is left out; `n` says how many pairs there are), and gives the gain's mean,
standard deviation (n - 1 in the denominator), n, and the 95% Student-t interval
mean +- t(0.975, n - 1) * sd / sqrt(n), with whether it excludes 0. With one pair (or none)
there is no interval: std, ci95, low, high and excludes_zero are NaN / None, never a width of 0.

`expected_range(k)`: the expected max - min of k independent standard normal draws (d2 of
quality control: 1.128 for 2, 2.704 for 7). k grid cells that do not differ at all, each the
mean of n seeds with seed-to-seed standard deviation sd, still spread by about
expected_range(k) * sd / sqrt(n): the bar a sensitivity has to clear.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import integrate
from scipy import stats as _scipy

LEVEL = 0.95
GAIN_FIELDS = ("mean", "std", "n", "ci95", "low", "high", "excludes_zero")


def t_quantile(n: int, level: float = LEVEL) -> float:
    """The two-sided Student-t quantile of a `level` interval with n - 1 degrees of freedom (NaN for n < 2)."""
    if n < 2:
        return math.nan
    return float(_scipy.t.ppf(0.5 + level / 2, n - 1))


def half_width(std, n, level: float = LEVEL):
    """The half-width of the `level` Student-t interval of a mean, t(0.5 + level / 2, n - 1) * std / sqrt(n):
    of one sample (std and n numbers) or of many (arrays; a pandas Series keeps its index). NaN for n < 2."""
    count = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = _scipy.t.ppf(0.5 + level / 2, count - 1) * np.asarray(std, dtype=float) / np.sqrt(count)
    half = np.where(count >= 2, half, np.nan)
    if isinstance(std, pd.Series):
        return pd.Series(half, index=std.index)
    return float(half) if half.ndim == 0 else half


def interval(values, level: float = LEVEL) -> dict:
    """{mean, std, n, ci95, low, high, excludes_zero} of a sample (NaNs dropped); no interval for n < 2."""
    values = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "std": math.nan, "n": n, "ci95": math.nan, "low": math.nan, "high": math.nan,
                "excludes_zero": None}
    std = float(values.std(ddof=1))
    half = half_width(std, n, level)
    low, high = mean - half, mean + half
    return {"mean": mean, "std": std, "n": n, "ci95": half, "low": low, "high": high,
            "excludes_zero": bool(low > 0 or high < 0)}


def _by_seed(values) -> pd.Series:
    series = pd.Series(values, dtype=float) if isinstance(values, Mapping) else values.astype(float)
    if series.index.has_duplicates:
        raise ValueError(f"more than one value for seed(s) {sorted(set(series.index[series.index.duplicated()]))}")
    return series.dropna()


def paired_differences(kd, hard) -> pd.Series:
    """KD(s) - hard(s) for every seed s with a value on both sides (a mapping or Series: seed -> value)."""
    kd, hard = _by_seed(kd), _by_seed(hard)
    seeds = kd.index.intersection(hard.index).sort_values()
    return (kd[seeds] - hard[seeds]).rename("gain")


def paired_gain(kd, hard, level: float = LEVEL) -> dict:
    """`interval` of the paired differences, and `seeds`: the seeds paired."""
    gains = paired_differences(kd, hard)
    return {**interval(gains.to_numpy(), level), "seeds": [int(s) for s in gains.index]}


def expected_range(k: int) -> float:
    """E[max - min] of k independent standard normal draws: the integral of 1 - F^k - (1 - F)^k."""
    if k < 2:
        return 0.0

    def integrand(x):
        cdf = _scipy.norm.cdf(x)
        return 1.0 - cdf ** k - (1.0 - cdf) ** k

    value, _ = integrate.quad(integrand, -np.inf, np.inf)
    return float(value)
