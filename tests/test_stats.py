"""kdsweep.stats (paired gains, Student-t intervals, the spread of noise) and the sensitivity table.

Every expected number is computed by hand here (t quantiles from a printed t table, d2 constants of
quality control), on constructed values; comparisons use pytest.approx.
"""

import math

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from fake_runs import write_run
from kdsweep.stats import expected_range, interval, paired_differences, paired_gain, t_quantile
from kdsweep.tables import write_tables

T_975 = {2: 12.706204736174707, 3: 4.302652729911275, 4: 3.182446305284263}  # t(0.975, n - 1), t tables


def test_t_quantile_is_the_two_sided_95_percent_quantile():
    for n, expected in T_975.items():
        assert t_quantile(n) == pytest.approx(expected, rel=1e-9)
        assert t_quantile(n) == pytest.approx(scipy_stats.t.ppf(0.975, n - 1), rel=1e-12)
    assert math.isnan(t_quantile(1)) and math.isnan(t_quantile(0))


def test_interval_by_hand():
    # mean 3, sample sd sqrt((4 + 1 + 0 + 9) / 3)
    got = interval([1.0, 2.0, 3.0, 6.0])
    sd = math.sqrt(14 / 3)
    half = T_975[4] * sd / 2
    assert got["n"] == 4
    assert (got["mean"], got["std"], got["ci95"]) == pytest.approx((3.0, sd, half))
    assert (got["low"], got["high"]) == pytest.approx((3.0 - half, 3.0 + half))
    assert got["excludes_zero"] is False  # 3 - 3.44 < 0
    # scipy's own interval agrees
    low, high = scipy_stats.t.interval(0.95, 3, loc=3.0, scale=sd / 2)
    assert (got["low"], got["high"]) == pytest.approx((low, high))


def test_paired_gain_pairs_by_seed_and_leaves_unpaired_seeds_out():
    kd = {0: 90.0, 1: 91.0, 2: 92.0, 5: 99.0}  # seed 5 has no baseline
    hard = {0: 88.0, 1: 90.0, 2: 89.0, 3: 70.0}  # seed 3 has no distilled run
    assert paired_differences(kd, hard).to_dict() == pytest.approx({0: 2.0, 1: 1.0, 2: 3.0})
    got = paired_gain(kd, hard)
    half = T_975[3] * 1.0 / math.sqrt(3)  # gains 2, 1, 3: mean 2, sd 1
    assert got["n"] == 3 and got["seeds"] == [0, 1, 2]
    assert (got["mean"], got["std"], got["ci95"], got["low"], got["high"]) == pytest.approx(
        (2.0, 1.0, half, 2.0 - half, 2.0 + half))
    assert got["excludes_zero"] is False  # 2 - 2.48 < 0
    # a consistent gain (2, 2.5, 3: sd 0.5, half 1.24) excludes 0; so does a consistent loss
    assert paired_gain({0: 92.0, 1: 92.5, 2: 93.0}, {0: 90.0, 1: 90.0, 2: 90.0})["excludes_zero"] is True
    loss = paired_gain(pd.Series({0: 87.0, 1: 88.0, 2: 86.0}), pd.Series({0: 90.0, 1: 90.0, 2: 90.0}))
    assert loss["excludes_zero"] is True and loss["high"] < 0


def test_one_pair_gives_n_1_and_no_interval():
    got = paired_gain({0: 91.5, 1: 93.0}, {0: 90.0})
    assert got["n"] == 1 and got["mean"] == pytest.approx(1.5)
    for key in ("std", "ci95", "low", "high"):
        assert math.isnan(got[key]), key
    assert got["excludes_zero"] is None  # neither yes nor no
    none = paired_gain({1: 90.0}, {0: 90.0})
    assert none["n"] == 0 and math.isnan(none["mean"]) and none["seeds"] == []


def test_missing_values_are_not_pairs_and_a_seed_twice_is_refused():
    got = paired_gain({0: 91.0, 1: float("nan"), 2: 93.0}, {0: 90.0, 1: 90.0, 2: 90.0})
    assert got["n"] == 2 and got["seeds"] == [0, 2]
    with pytest.raises(ValueError, match="seed"):
        paired_differences(pd.Series([1.0, 2.0], index=[0, 0]), {0: 1.0})


def test_expected_range_is_the_d2_constant():
    # E[range] of 2 and 3 standard normals: 2 / sqrt(pi) and 3 / sqrt(pi); 7 and 8: the d2 table (3 decimals)
    assert expected_range(2) == pytest.approx(2 / math.sqrt(math.pi), rel=1e-7)
    assert expected_range(3) == pytest.approx(3 / math.sqrt(math.pi), rel=1e-7)
    assert expected_range(7) == pytest.approx(2.704, abs=5e-4)
    assert expected_range(8) == pytest.approx(2.847, abs=5e-4)
    assert expected_range(1) == 0.0


def test_sensitivity_spread_against_the_seed_to_seed_sd(tmp_path):
    """Two seeds per point. resnet18 moves 0.2 over w at T = 4 (flat), mobilenet 6 (sensitive); every
    point's two seeds differ by 1 (sd 1/sqrt(2)): the ratio and the noise-alone spread say which is which."""
    offsets = (-0.5, 0.5)
    means = {"resnet18": {0.3: 90.0, 0.9: 90.2}, "mobilenet_v3_small": {0.3: 84.0, 0.9: 78.0}}
    for model, by_weight in means.items():
        for w, mean in by_weight.items():
            for seed, offset in enumerate(offsets):
                write_run(tmp_path, "kd", model, seed, 4.0, w, val_acc=mean, test_acc=mean + offset)
    write_tables(tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "sensitivity.csv")
    sd = 1 / math.sqrt(2)
    noise = expected_range(2) * sd / math.sqrt(2)
    rows = table[table["varied"] == "soft_weight"].set_index("model")
    assert set(table["varied"]) == {"soft_weight"}  # one temperature: no spread over T, no whole grid
    for model, spread in (("resnet18", 0.2), ("mobilenet_v3_small", 6.0)):
        row = rows.loc[model]
        assert row["temperature"] == 4 and row["points"] == 2 and row["seeds_per_point"] == 2
        assert (row["spread"], row["seed_sd"], row["seed_sd_df"]) == pytest.approx((spread, sd, 2))
        assert (row["ratio"], row["noise_spread"]) == pytest.approx((spread / sd, noise))
        assert row["seed_sd_from"] == "grid"
    assert rows.loc["resnet18", "spread"] < rows.loc["resnet18", "noise_spread"]  # 0.2 against 0.80
    assert rows.loc["mobilenet_v3_small", "spread"] > 5 * rows.loc["mobilenet_v3_small", "noise_spread"]
    md = (tmp_path / "tables" / "sensitivity.md").read_text()
    assert "| cifar10 | mobilenet_v3_small | soft_weight | T = 4 | 2 | 78.00–84.00 | 6.00 | 0.71 (2) | 8.5 |" in md


def test_sensitivity_with_one_seed_per_point_takes_the_sd_from_other_runs(tmp_path):
    """One seed per grid point: no seed-to-seed SD there. The confirmation's distilled runs (two fresh seeds
    at one point: 80, 82) and the hard-target runs (three seeds: 75, 76, 77) estimate it, pooled:
    sqrt((1 * 2 + 2 * 1) / 3). Without them the table says there is none."""
    for w, mean in ((0.3, 81.0), (0.9, 78.0)):
        write_run(tmp_path, "kd", "mobilenet_v3_small", 0, 4.0, w, val_acc=mean, test_acc=mean)
    write_tables(tmp_path)
    row = pd.read_csv(tmp_path / "tables" / "sensitivity.csv").iloc[0]
    assert row["seed_sd_df"] == 0 and math.isnan(row["seed_sd"]) and math.isnan(row["ratio"])
    assert "– (one seed per point)" in (tmp_path / "tables" / "sensitivity.md").read_text()
    for seed, acc in ((10, 80.0), (11, 82.0)):
        write_run(tmp_path, "confirm", "mobilenet_v3_small", seed, 4.0, 0.3, test_acc=acc)
    for seed, acc in ((0, 75.0), (10, 76.0), (11, 77.0)):
        write_run(tmp_path, "baseline" if seed == 0 else "confirm", "mobilenet_v3_small", seed, test_acc=acc)
    write_tables(tmp_path)
    row = pd.read_csv(tmp_path / "tables" / "sensitivity.csv").iloc[0]
    assert row["spread"] == pytest.approx(3.0)  # the grid's own points only
    assert (row["seed_sd"], row["seed_sd_df"]) == pytest.approx((math.sqrt(4 / 3), 3))
    assert row["seed_sd_from"] == "confirmation and hard-target runs"
    assert row["noise_spread"] == pytest.approx(expected_range(2) * math.sqrt(4 / 3))
