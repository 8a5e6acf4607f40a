"""Fidelity, calibration and logit scale: the pure functions on constructed inputs, then the job end to end."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdsweep import cli, evaluation
from kdsweep.config import load_config
from kdsweep.evaluation import expected_calibration_error, fidelity, logit_scale

ROOT = Path(__file__).resolve().parents[1]


def probabilities(confidences, k=5):
    """Rows whose largest probability (class 0) is the given confidence, the rest spread evenly."""
    rows = []
    for c in confidences:
        rest = (1 - c) / (k - 1)
        assert rest < c
        rows.append([c] + [rest] * (k - 1))
    return torch.tensor(rows, dtype=torch.float64)


def reference_ece(probs, labels, bins):
    """Guo et al.'s definition, bin by bin, in plain Python."""
    confidence, predicted = probs.max(1)
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidence.tolist()) if (low < c <= high) or (b == 0 and c == 0)]
        if members:
            accuracy = sum(int(predicted[i] == labels[i]) for i in members) / len(members)
            mean_confidence = sum(confidence[i].item() for i in members) / len(members)
            total += len(members) / len(labels) * abs(accuracy - mean_confidence)
    return 100 * total


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = probabilities([0.8] * 10)
    labels = torch.tensor([0] * 8 + [1, 2])  # 80% correct at 80% confidence
    assert expected_calibration_error(probs, labels, 15) == pytest.approx(0, abs=1e-12)
    assert expected_calibration_error(probs, torch.zeros(10, dtype=torch.long), 15) == pytest.approx(20)


def test_ece_two_bins_by_hand():
    # bin (0, 0.5]: 4 images at confidence 0.4, 1 correct -> |0.25 - 0.4| = 0.15, weight 0.4
    # bin (0.5, 1]: 6 images at confidence 0.9, 5 correct -> |5/6 - 0.9| = 1/15, weight 0.6
    probs = torch.cat([probabilities([0.4] * 4, k=3), probabilities([0.9] * 6, k=3)])
    labels = torch.tensor([0, 1, 1, 2, 0, 0, 0, 0, 0, 1])
    assert expected_calibration_error(probs, labels, 2) == pytest.approx(100 * (0.4 * 0.15 + 0.6 / 15))
    # one bin: |accuracy - mean confidence| over everything
    assert expected_calibration_error(probs, labels, 1) == pytest.approx(100 * abs(0.6 - 0.7))
    # bins are upper-inclusive: 0.5 belongs to the first of two
    half = torch.tensor([[0.5, 0.5], [0.75, 0.25]], dtype=torch.float64)
    assert expected_calibration_error(half, torch.tensor([1, 0]), 2) == pytest.approx(100 * (0.5 * 0.5 + 0.5 * 0.25))


def test_ece_matches_the_definition_on_random_predictions():
    generator = torch.Generator().manual_seed(0)
    probs = F.softmax(3 * torch.randn(500, 10, generator=generator, dtype=torch.float64), 1)
    labels = torch.randint(10, (500,), generator=generator)
    for bins in (1, 7, 15):
        assert expected_calibration_error(probs, labels, bins) == pytest.approx(reference_ece(probs, labels, bins))
    with pytest.raises(ValueError, match="bins"):
        expected_calibration_error(probs, labels, 0)


def test_fidelity_of_identical_logits():
    logits = torch.randn(20, 10, generator=torch.Generator().manual_seed(1))
    assert fidelity(logits, logits) == {"agreement": 100.0, "kl_to_teacher": 0.0}
    # softmax ignores a constant shift: still the same distributions
    shifted = fidelity(logits + 3.0, logits)
    assert shifted["agreement"] == 100 and shifted["kl_to_teacher"] == pytest.approx(0, abs=1e-12)


def test_fidelity_known_kl_and_direction():
    # image 1: teacher p = (1/2, 1/2), student q = (3/4, 1/4): KL(p || q) = ln(4/3) / 2; both argmax 0
    # image 2: teacher softmax(2, 0), student softmax(0, 2): KL = 2 tanh(1); argmaxes differ
    teacher = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    student = torch.tensor([[math.log(3), 0.0], [0.0, 2.0]])
    result = fidelity(student, teacher)
    assert result["agreement"] == 50.0
    assert result["kl_to_teacher"] == pytest.approx((math.log(4 / 3) / 2 + 2 * math.tanh(1)) / 2)
    # KL(teacher || student), not the reverse: image 1 alone tells them apart
    assert fidelity(student[:1], teacher[:1])["kl_to_teacher"] == pytest.approx(math.log(4 / 3) / 2)
    reverse = 0.75 * math.log(1.5) - 0.25 * math.log(2)
    assert fidelity(teacher[:1], student[:1])["kl_to_teacher"] == pytest.approx(reverse)
    # an extreme teacher: probabilities that underflow to 0 add nothing, never NaN
    assert math.isfinite(fidelity(torch.tensor([[0.0, 0.0]]), torch.tensor([[1000.0, 0.0]]))["kl_to_teacher"])


def test_logit_scale_and_calibration_on_known_logits():
    logits = torch.tensor([[3.0, 4.0], [0.0, -1.0]])
    assert logit_scale(logits) == {"max_logit": pytest.approx(2.0), "logit_norm": pytest.approx(3.0)}
    result = evaluation.calibration(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), 15)
    assert result["nll"] == pytest.approx(math.log(2))
    assert result["ece"] == pytest.approx(0)  # confidence 0.5, argmax class 0 right half the time


def test_evaluate_run_in_batches_and_against_itself():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    images = torch.randint(0, 256, (50, 3, 2, 2), dtype=torch.uint8)
    labels = torch.randint(4, (50,))
    result = evaluation.evaluate_run(model, teacher, images, labels, batch_size=7, ece_bins=10)
    assert result == pytest.approx(evaluation.evaluate_run(model, teacher, images, labels, batch_size=64, ece_bins=10))
    with torch.no_grad():
        logits = model(images.float() / 255)
    assert result["test_acc"] == 100 * int((logits.argmax(1) == labels).sum()) / 50
    assert result["nll"] == pytest.approx(F.cross_entropy(logits, labels).item())
    assert result["n"] == 50 and result["ece_bins"] == 10
    own = evaluation.evaluate_run(teacher, teacher, images, labels, batch_size=7, ece_bins=10)
    assert own["agreement"] == 100 and own["kl_to_teacher"] == 0


# ---------------------------------------------------------------- the commands, in-process on the digits


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Two finished (untrained) run folders on 40 digits, as train.py leaves them: a student and a teacher."""
    from kdsweep import data, io, naming
    from kdsweep.models import build_model, save_model
    from kdsweep.train import evaluate

    folder = tmp_path_factory.mktemp("evaluation")
    tiny = folder / "tiny.yaml"
    tiny.write_text(json.dumps({"dataset": {"name": "digits", "subset": 40},
                                "runtime": {"device": "cpu", "threads": 1},
                                "training": {"eval_batch_size": 16},
                                "attacks": {"pgd": {"steps": 3}}}))
    configs = [str(ROOT / "config.yaml"), str(tiny)]
    config = load_config(configs)
    splits = data.load_splits(config["dataset"])
    runs = {}
    for role, seed, temperature, soft_weight in (("teacher", 0, None, None), ("kd", 1, 4.0, 0.9)):
        torch.manual_seed(seed)
        model = build_model("mobilenet_v3_small", splits.num_classes, [0.5] * 3, [0.25] * 3).eval()
        run = folder / naming.run_path(role, "mobilenet_v3_small", seed, temperature, soft_weight)
        save_model(run / "model.pt", model, "mobilenet_v3_small", splits.num_classes)
        test_loss, test_acc = evaluate(model, splits.test.images, splits.test.labels, 16)
        io.write_json(run / "metrics.json", {
            "role": role, "dataset": "digits", "model": "mobilenet_v3_small", "seed": seed,
            "temperature": temperature, "soft_weight": soft_weight, "test_acc": test_acc,
            "test_loss": test_loss, "config": {"dataset": config["dataset"]}})
        runs[role] = run
    return folder, configs, runs


def main(configs, *args):
    cli.main([str(a) for a in (*args[:1], *(x for c in configs for x in ("--config", c)), *args[1:])])


def test_evaluate_command_writes_the_documented_keys(finished):
    folder, configs, runs = finished
    out = folder / "evaluation" / "kd" / f"{runs['kd'].name}.json"
    main(configs, "evaluate", "--run", runs["kd"], "--teacher", runs["teacher"], "--out", out)
    result = json.loads(out.read_text())
    documented = {"run", "role", "dataset", "model", "temperature", "soft_weight", "seed", "teacher_run",
                  "teacher_model", "n", "test_acc", "test_acc_metrics", "agreement", "kl_to_teacher", "ece",
                  "ece_bins", "nll", "max_logit", "logit_norm", "seconds", "device", "precision", "runtime", "slurm"}
    assert set(result) == documented
    for key in documented:
        assert f"  {key}" in evaluation.__doc__ or f", {key}" in evaluation.__doc__, key
    metrics = json.loads((runs["kd"] / "metrics.json").read_text())
    assert result["test_acc"] == metrics["test_acc"] == result["test_acc_metrics"]
    assert (result["role"], result["temperature"], result["n"], result["ece_bins"]) == ("kd", 4.0, 40, 15)
    assert 0 <= result["agreement"] <= 100 and result["kl_to_teacher"] > 0 and result["logit_norm"] > 0
    assert not list(out.parent.glob(".*"))  # written atomically, no temp file left

    own = folder / "teacher.json"
    main(configs, "evaluate", "--run", runs["teacher"], "--teacher", runs["teacher"], "--out", own)
    own = json.loads(own.read_text())
    assert own["agreement"] == 100 and own["kl_to_teacher"] == 0


def test_evaluate_refuses_unfinished_runs_and_other_datasets(finished, capsys, tmp_path):
    _, configs, runs = finished
    cases = [(["--run", tmp_path, "--teacher", runs["teacher"]], "not finished"),
             (["--run", runs["kd"], "--teacher", tmp_path / "none"], "teacher run"),
             (["--run", runs["kd"], "--teacher", runs["teacher"], "dataset.subset=30"], "dataset.subset")]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(configs, "evaluate", *args[:4], "--out", tmp_path / "x.json", *args[4:])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("kdsweep: error: ") and message in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_attack_command_runs_pgd_with_the_config_parameters(finished, capsys):
    folder, configs, runs = finished
    results = {}
    for attack in ("fgsm", "pgd"):
        out = folder / "attacks" / "kd" / runs["kd"].name / f"{attack}_eps0.1.json"
        main(configs, "attack", "--run", runs["kd"], "--attack", attack, "--epsilon", 0.1, "--out", out)
        results[attack] = json.loads(out.read_text())
    assert results["fgsm"]["attack"] == "fgsm" and results["fgsm"]["params"] == {}
    assert results["pgd"]["attack"] == "pgd"
    assert results["pgd"]["params"] == {"steps": 3, "relative_step_size": 0.25, "random_start": True, "seed": 0}
    assert results["pgd"]["clean_acc"] == results["fgsm"]["clean_acc"]
    assert results["pgd"]["clean_acc"] == json.loads((runs["kd"] / "metrics.json").read_text())["test_acc"]
    assert "PGD eps=0.1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(configs, "attack", "--run", runs["kd"], "--attack", "pgd", "--epsilon", 0.1,
             "--out", folder / "off.json", "attacks.pgd=null")
    assert "switched off" in capsys.readouterr().err
