"""The reference study's reported numbers (kdsweep/reference.yaml) and the vs_reference table."""

from pathlib import Path

import pandas as pd
import pytest

from fake_runs import write_attack, write_run
from kdsweep import io
from kdsweep.config import load_config
from kdsweep.tables import write_tables
from kdsweep.tables.choices import best_point
from kdsweep.tables.reference import reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_reported_numbers_are_the_dissertations_and_add_up():
    ref = reference()
    table1 = ref["table1"]["models"]
    # Table I and Tables II / IV as printed
    assert table1["resnet50"]["clean"] == 91.36 and table1["resnet18"]["fgsm"][0.05] == 19.97
    assert table1["mobilenet_v3_small"] == {"clean": 81.35, "fgsm": {0.01: 61.25, 0.05: 12.19, 0.1: 3.07}}
    assert (ref["optimal"]["mobilenet_v3_small"]["temperature"], ref["optimal"]["mobilenet_v3_small"]["soft_weight"]) \
        == (4, 0.3)
    assert (ref["optimal"]["resnet18"]["temperature"], ref["optimal"]["resnet18"]["soft_weight"]) == (6, 0.9)
    # each reported boost is the optimal point's accuracy minus Table I's (both printed to 2 decimals)
    for model, optimal in ref["optimal"].items():
        assert optimal["gain"]["clean"] == pytest.approx(optimal["clean"] - table1[model]["clean"], abs=0.006)
        for eps, value in optimal["fgsm"].items():
            assert optimal["gain"]["fgsm"][eps] == pytest.approx(value - table1[model]["fgsm"][eps], abs=0.006)
    # the reference study is config.yaml's study: its dataset, teacher, students, sweep values and epsilons
    config = load_config([str(ROOT / "config.yaml")])
    study = ref["study"]
    assert (config["dataset"]["name"], config["teacher"]["model"]) == (study["dataset"], study["teacher"])
    assert sorted(config["students"]) == sorted(study["students"]) == sorted(ref["optimal"])
    for optimal in ref["optimal"].values():
        assert optimal["temperature"] in config["temperatures"] and optimal["soft_weight"] in config["soft_weights"]
        assert sorted(optimal["fgsm"]) == sorted(config["epsilons"])


def cifar_study(root, dataset="cifar10", teacher="resnet50", subset=None):
    """A small CIFAR-10 study of resnet18 on seeds 0 and 1, confirmed on seeds 5 and 6 at T = 6, w = 0.9."""
    def run(role, seed, t=None, w=None, val=90.0, test=90.0, model="resnet18"):
        write_run(root, role, model, seed, t, w, val_acc=val, test_acc=test, dataset=dataset, subset=subset)
        write_attack(root, role, model, seed, t, w, 0.01, test - 20, test)

    run("teacher", 0, test=91.0, model=teacher)
    for seed, (hard, kd) in enumerate([(88.0, 90.0), (89.0, 91.5)]):
        run("baseline", seed, test=hard)
        run("kd", seed, 6.0, 0.9, val=92.0 + seed, test=kd)
        run("kd", seed, 1.0, 0.5, val=90.0, test=95.0)  # best on test, not on validation
    dirs = [root / f"runs/kd/resnet18_T{t}_soft{w}_seed{s}" for t, w in (("6", "0.9"), ("1", "0.5")) for s in (0, 1)]
    io.write_json(root / "confirm" / "resnet18.json", best_point(dirs))
    for seed, (hard, kd) in zip((5, 6), [(88.5, 90.5), (89.5, 91.0)]):
        run("confirm", seed, test=hard)
        run("confirm", seed, 6.0, 0.9, test=kd)
    write_tables(root)
    return pd.read_csv(root / "tables" / "vs_reference.csv")


def test_vs_reference_puts_the_reported_numbers_beside_the_studys(tmp_path):
    table = cifar_study(tmp_path)

    def row(model, quantity, measure="clean", epsilon=0.0):
        found = table[(table["model"] == model) & (table["quantity"] == quantity)]
        if measure:
            found = found[(found["measure"] == measure) & (found["epsilon"] == epsilon)]
        assert len(found) == 1, (model, quantity, measure, epsilon)
        return found.iloc[0]

    hard = row("resnet18", "hard-target accuracy")
    assert (hard["reference"], hard["reference_source"]) == (88.80, "Table I")
    assert (hard["this_study"], hard["this_study_n"]) == (pytest.approx(88.5), 2)
    assert row("resnet50", "hard-target accuracy")["this_study"] == pytest.approx(91.0)
    fgsm = row("resnet18", "hard-target accuracy", "fgsm", 0.01)
    assert (fgsm["reference"], fgsm["this_study"]) == (71.09, pytest.approx(68.5))
    assert pd.isna(row("resnet18", "hard-target accuracy", "fgsm", 0.05)["this_study"])  # not run here
    point = row("resnet18", "optimal temperature T", measure="")
    assert (point["reference"], point["this_study"], point["confirmed"]) == (6, 6, 6)
    assert row("resnet18", "optimal soft weight w", measure="")["this_study"] == 0.9
    gain = row("resnet18", "gain over hard targets")
    assert gain["reference"] == 1.92
    assert (gain["this_study"], gain["this_study_n"]) == (pytest.approx(2.25), 2)  # gains 2 and 2.5, paired
    assert (gain["confirmed"], gain["confirmed_n"]) == (pytest.approx(1.75), 2)  # gains 2 and 1.5
    assert gain["confirmed_low"] < gain["confirmed"] < gain["confirmed_high"]
    assert row("resnet18", "distilled accuracy", "fgsm", 0.01)["this_study"] == pytest.approx(70.75)
    assert "mobilenet_v3_small" not in set(table.loc[table["quantity"] != "hard-target accuracy", "model"])
    spread = row("resnet18", "spread over T at w = 0.9")
    assert spread["reference"] == pytest.approx(90.72 - 89.94) and pd.isna(spread["this_study"])
    assert "no two grid points at w = 0.9" in spread["note"]
    md = (tmp_path / "tables" / "vs_reference.md").read_text()
    assert "chosen on TEST accuracy" in md
    assert "| resnet18 | gain over hard targets | clean | 1.92 | Tables IV and V (section V.A.2) | 2.25 (n = 2) [" in md


@pytest.mark.parametrize("study, reason", [
    (dict(dataset="digits"), "this study's dataset is digits; the reference study's is cifar10"),
    (dict(teacher="resnet18"), "this study's teacher is resnet18"),
    (dict(subset=1000), "dataset.subset = 1000"),
])
def test_vs_reference_does_not_apply_to_another_comparison(tmp_path, study, reason):
    table = cifar_study(tmp_path, **study)
    assert table["quantity"].tolist() == ["not applicable"] and reason in table["note"].iloc[0]
    md = (tmp_path / "tables" / "vs_reference.md").read_text()
    assert "\n\nDoes not apply: this study" in md and reason in md
