"""Statistics of a comparison over seeds: paired gains with Student-t intervals, and the spread noise alone gives.

A distilled student and its hard-target baseline trained with the same seed start from the
same initial weights and see the same data order (kdsweep.train seeds both from the run's seed);
the gain of seed s is KD(s) - baseline(s), and the seeds are the sample. `paired_gain` pairs the two by seed (a seed
without both is left out; `n` says how many pairs there are), and gives the gain's mean,
standard deviation (n - 1 in the denominator), n, and the 95% Student-t interval
mean +- t(0.975, n - 1) * sd / sqrt(n), with whether it excludes 0. With one pair (or none)
there is no interval: std, ci95, low, high and excludes_zero are NaN / None, never a width of 0.

`paired_gain` also gives `p`, the two-sided p-value of the paired t-test of the same gains against 0
(scipy.stats.ttest_1samp's: the test whose 95% interval is the one above, so p < 0.05 exactly when the
interval excludes 0; NaN without an interval).

Multiplicity (`adjust`). A table of paired comparisons is one family of tests: with m unadjusted 95%
intervals, about m / 20 exclude 0 by chance. Over a family of m comparisons with an interval (n >= 2):
- `p_holm`: Holm's step-down adjustment of the p-values (controls the family-wise error rate, the chance
  of any false "excludes 0", at 5% under any dependence between the rows);
- `low_adj`, `high_adj`: the Bonferroni simultaneous intervals, each at level 1 - 0.05 / m, so that all m
  hold together with probability >= 95%. Holm's p is never above Bonferroni's m * p, so an adjusted
  interval that excludes 0 always comes with p_holm < 0.05 (Holm can reject where the interval still
  touches 0, never the other way round);
- `excludes_zero_adj`: p_holm < 0.05, the verdict the tables and the headline use.
scipy.stats has no Holm (its false_discovery_control is Benjamini-Hochberg's, which controls the false
discovery rate instead), so `holm` is the procedure's three lines of numpy.

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
GAIN_FIELDS = ("mean", "std", "n", "ci95", "low", "high", "excludes_zero", "p")
# what `adjust` adds to each row of a family (with the prefix of the gain's columns)
ADJUSTED_FIELDS = ("p_holm", "low_adj", "high_adj", "excludes_zero_adj")


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
                "excludes_zero": None, "p": math.nan}
    std = float(values.std(ddof=1))
    half = half_width(std, n, level)
    low, high = mean - half, mean + half
    # the paired t-test from the same mean and sd as the interval (scipy.stats.ttest_1samp's p, which the tests
    # check; computed here from them so that p < 0.05 exactly where the interval excludes 0, also for gains
    # nearly equal, where ttest_1samp warns of cancellation). All gains equal: the interval is the point itself
    # and t infinite: p is 0 where that point is not 0, and 1 where it is, as the interval says.
    p = float(2 * _scipy.t.sf(abs(mean) / (std / math.sqrt(n)), n - 1)) if std > 0 else float(mean == 0)
    return {"mean": mean, "std": std, "n": n, "ci95": half, "low": low, "high": high,
            "excludes_zero": bool(low > 0 or high < 0), "p": p}


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


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values of a family (NaN entries are no tests: left NaN, not counted in m).
    Sorted ascending, the i-th (from 0) of m becomes max over j <= i of min(1, (m - j) * p_(j))."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def adjust(table: pd.DataFrame, prefix: str = "gain", level: float = LEVEL) -> pd.DataFrame:
    """The table (one family: every row with an interval is one comparison) with `<prefix>_p_holm`,
    `_low_adj`, `_high_adj` (Bonferroni simultaneous intervals) and `_excludes_zero_adj` (module docstring)
    and `family_size`, m. Rows without an interval (n < 2) get NaN / None and do not count."""
    table = table.copy()
    n = table[f"{prefix}_n"].astype(float)
    tested = (n >= 2) & table[f"{prefix}_std"].notna()
    m = int(tested.sum())
    table["family_size"] = m
    table[f"{prefix}_p_holm"] = holm(table[f"{prefix}_p"].where(tested).astype(float))
    if m:
        half = half_width(table[f"{prefix}_std"].astype(float), n, 1 - (1 - level) / m).where(tested)
    else:
        half = pd.Series(np.nan, index=table.index)
    table[f"{prefix}_low_adj"] = table[f"{prefix}_mean"] - half
    table[f"{prefix}_high_adj"] = table[f"{prefix}_mean"] + half
    table[f"{prefix}_excludes_zero_adj"] = [None if pd.isna(p) else bool(p < 1 - level)
                                            for p in table[f"{prefix}_p_holm"]]
    return table


def expected_range(k: int) -> float:
    """E[max - min] of k independent standard normal draws: the integral of 1 - F^k - (1 - F)^k."""
    if k < 2:
        return 0.0

    def integrand(x):
        cdf = _scipy.norm.cdf(x)
        return 1.0 - cdf ** k - (1.0 - cdf) ** k

    value, _ = integrate.quad(integrand, -np.inf, np.inf)
    return float(value)
