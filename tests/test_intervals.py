"""kdsweep.intervals (paired gains, Student-t intervals, the spread of noise) and the sensitivity table.

Every expected number is computed by hand here (t quantiles from a printed t table, d2 constants of
quality control), on constructed values; comparisons use pytest.approx.
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from fake_runs import write_run
from kdsweep.intervals import adjust, expected_range, holm, interval, paired_differences, paired_gain, t_quantile
from kdsweep.tables import write_tables
from kdsweep.tables.markdown import gain_cells, yes_no

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


def test_the_p_value_is_the_paired_t_tests():
    """p of paired_gain is scipy's one-sample t-test of the gains against 0 (the paired t-test, ttest_rel of the
    two sides), below 0.05 exactly where the 95% interval excludes 0."""
    kd, hard = {0: 91.0, 1: 92.5, 2: 90.0, 3: 93.0}, {0: 90.0, 1: 90.0, 2: 89.5, 3: 90.5}
    got = paired_gain(kd, hard)
    assert got["p"] == pytest.approx(scipy_stats.ttest_rel(list(kd.values()), list(hard.values())).pvalue, rel=1e-12)
    assert got["p"] == pytest.approx(scipy_stats.ttest_1samp([1.0, 2.5, 0.5, 2.5], 0.0).pvalue, rel=1e-12)
    assert (got["p"] < 0.05) == got["excludes_zero"]
    wide = paired_gain({0: 91.0, 1: 89.0, 2: 92.0}, {0: 90.0, 1: 90.0, 2: 90.0})
    assert wide["p"] > 0.05 and not wide["excludes_zero"]
    assert paired_gain({0: 92.0, 1: 92.0}, {0: 90.0, 1: 90.0})["p"] == 0.0  # equal gains of 2: the interval [2, 2]
    assert math.isnan(paired_gain({0: 92.0}, {0: 90.0})["p"])  # one pair: no test


def holm_by_hand(pvalues):
    """Holm (1979) as the procedure reads: test the smallest p at 0.05 / m, the next at 0.05 / (m - 1), ... The
    adjusted p of the i-th smallest (from 0) is max over j <= i of (m - j) p_(j), capped at 1."""
    ranked = sorted((p, i) for i, p in enumerate(pvalues))
    out = [0.0] * len(pvalues)
    for rank, (_, i) in enumerate(ranked):
        out[i] = min(1.0, max((len(pvalues) - j) * ranked[j][0] for j in range(rank + 1)))
    return out


def test_holm_against_the_procedure_written_out():
    # a textbook family: 0.01, 0.04, 0.03, 0.005 -> 0.03, 0.06, 0.06, 0.02
    assert holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    generator = np.random.default_rng(3)
    for m in (1, 2, 5, 20):
        pvalues = generator.uniform(0, 0.2, m)
        assert holm(pvalues).tolist() == pytest.approx(holm_by_hand(list(pvalues)))
    # a NaN is no test: it stays NaN and m counts the others
    got = holm([0.01, float("nan"), 0.02])
    assert math.isnan(got[1]) and got[[0, 2]].tolist() == pytest.approx([0.02, 0.02])


def test_a_family_gets_holm_p_values_and_bonferroni_intervals():
    """Three comparisons with intervals and one without (one pair): m = 3. Each adjusted interval is the gain's
    mean +- t(1 - 0.05 / (2 * 3), n - 1) sd / sqrt(n); the verdict is Holm's p < 0.05; a row without an
    interval gets none."""
    gains = [[2.0, 2.5, 3.0, 2.2], [0.5, -0.5, 1.0, 0.2], [1.0, 1.2, 0.9, 1.1], [4.0]]
    rows = [{f"gain_{key}": value for key, value in paired_gain(dict(enumerate(g)), dict.fromkeys(range(len(g)), 0.0)).items()}
            for g in gains]
    table = adjust(pd.DataFrame(rows))
    assert table["family_size"].eq(3).all()
    p = [scipy_stats.ttest_1samp(g, 0.0).pvalue for g in gains[:3]]
    assert table["gain_p_holm"].iloc[:3].tolist() == pytest.approx(holm_by_hand(p))
    t = scipy_stats.t.ppf(1 - 0.05 / 6, 3)
    for i, g in enumerate(gains[:3]):
        half = t * np.std(g, ddof=1) / 2
        assert (table["gain_low_adj"].iloc[i], table["gain_high_adj"].iloc[i]) == pytest.approx(
            (np.mean(g) - half, np.mean(g) + half))
        assert table["gain_excludes_zero_adj"].iloc[i] == (holm_by_hand(p)[i] < 0.05)
        assert table["gain_high_adj"].iloc[i] - table["gain_low_adj"].iloc[i] > table["gain_high"].iloc[i] - table["gain_low"].iloc[i]
    last = table.iloc[3]
    assert last[["gain_p_holm", "gain_low_adj", "gain_high_adj"]].isna().all() and last["gain_excludes_zero_adj"] is None
    # a Bonferroni interval that excludes 0 always comes with Holm's p < 0.05
    for _, row in table.iloc[:3].iterrows():
        if row["gain_low_adj"] > 0 or row["gain_high_adj"] < 0:
            assert row["gain_p_holm"] < 0.05


def test_markdown_verdicts_read_numpy_booleans():
    """pandas hands a column of booleans back as numpy.bool_, and numpy.True_ is not True: the cells read any
    truth value."""
    assert np.True_ is not True and yes_no(np.True_) == "yes" and yes_no(np.False_) == "no"
    assert yes_no(None) == "–" and yes_no(float("nan")) == "–" and yes_no(True) == "yes"
    row = pd.Series({"gain_mean": np.float64(1.5), "gain_n": np.int64(3), "gain_low": np.float64(0.5),
                     "gain_high": np.float64(2.5), "gain_excludes_zero": np.bool_(True), "gain_p": np.float64(0.01),
                     "gain_low_adj": np.float64(0.1), "gain_high_adj": np.float64(2.9), "gain_p_holm": np.float64(0.03),
                     "gain_excludes_zero_adj": np.bool_(True)})
    assert gain_cells(row) == ["+1.50", "[+0.50, +2.50]", "[+0.10, +2.90]", "3", "0.010", "0.030", "yes"]
    row["gain_excludes_zero_adj"] = np.bool_(False)
    assert gain_cells(row)[-1] == "no"
    from_csv = pd.DataFrame({"gain_excludes_zero_adj": [True, False]})["gain_excludes_zero_adj"]
    assert [yes_no(value) for value in from_csv] == ["yes", "no"]


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
