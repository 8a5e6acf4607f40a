"""Fidelity, calibration and logit scale: the pure functions on constructed inputs, then the job end to end."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import kd_run
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
    """The same tensor twice: the same computation on both sides, so the KL is exactly 0 (kept exact).
    The shifted copy is the same distribution along another arithmetic path: 0 up to rounding only."""
    logits = torch.randn(20, 10, generator=torch.Generator().manual_seed(1))
    assert fidelity(logits, logits) == {"agreement": 100.0, "kl_to_teacher": 0.0}
    # softmax ignores a constant shift: still the same distributions, up to the float32 rounding of
    # the shift (IEEE, the same everywhere) and log_softmax's rounding along the two paths: a KL of
    # at most ~1e-13 here, of either sign before the clamp at 0, so [0, 1e-12] on any processor.
    shifted = fidelity(logits + 3.0, logits)
    assert shifted["agreement"] == 100 and 0 <= shifted["kl_to_teacher"] <= 1e-12


def raw_kl_per_image(student, teacher):
    """KL(teacher || student) per image along fidelity's arithmetic, without its clamp at 0."""
    log_student, log_teacher = F.log_softmax(student.double(), 1), F.log_softmax(teacher.double(), 1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(1)


def test_fidelity_clamps_rounding_below_zero_at_zero():
    """Equal distributions written along two paths (logits and logits + 3 in float64): the KL is 0,
    computed as 0 plus rounding of either sign. Whether a given image's raw sum comes out negative
    depends on the processor's float path, so that is only a precondition, reported; what always
    holds is that fidelity returns a KL >= 0 and 0 up to rounding, image by image and on average."""
    logits = 3 * torch.randn(400, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shifted = logits + 3.0
    raw = raw_kl_per_image(shifted, logits)
    assert raw.abs().max().item() < 1e-12  # the construction: equal distributions up to rounding
    negative = (raw < 0).nonzero().flatten().tolist()
    # On the x86 machines this was written on about a third of the rows are negative (-1e-16); the
    # chance that none of 400 is, on any float path, is negligible, but it is not asserted.
    print(f"{len(negative)} of {len(raw)} raw per-image KLs are below 0 here (min {raw.min().item():.3g})")
    for i in range(len(logits)):
        kl = fidelity(shifted[i:i + 1], logits[i:i + 1])["kl_to_teacher"]
        assert 0 <= kl <= 1e-12, (i, kl)
        if i in negative:
            assert kl == 0.0, (i, kl)  # clamped, not the raw negative value
    # The mean is over clamped images: >= 0 even for a batch of only negative raw values.
    if negative:
        assert raw[negative].mean().item() < 0
        assert fidelity(shifted[negative], logits[negative])["kl_to_teacher"] == 0.0
    assert 0 <= fidelity(shifted, logits)["kl_to_teacher"] <= 1e-12
    # Genuinely different distributions are not touched by the clamp.
    other = logits.flip(1)
    assert fidelity(other, logits)["kl_to_teacher"] == pytest.approx(raw_kl_per_image(other, logits).mean().item(),
                                                                     rel=1e-12)


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
    """Batches of 7 and of 64 are different computations: the float32 logits differ by a few ulps
    (2e-8 on the machine this was written on), so the measures are compared with a tolerance, and the
    argmax-based ones (test_acc, agreement) and the ECE bins are first shown to be far from a flip.
    The teacher evaluated against itself is the same computation on both sides: exact."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    images = torch.randint(0, 256, (50, 3, 2, 2), dtype=torch.uint8)
    labels = torch.randint(4, (50,))
    with torch.no_grad():
        logits = model(images.float() / 255)
        teacher_logits = teacher(images.float() / 255)
    # Rounding moves these logits (|z| < 2) by ~1e-7 at most: no argmax can flip when the top two
    # logits are 1e-3 apart (0.013 here), no top-1 confidence can change ECE bin 1e-4 from an edge.
    for z in (logits, teacher_logits):
        top2 = z.topk(2, 1).values
        assert (top2[:, 0] - top2[:, 1]).min().item() > 1e-3
    confidence = F.softmax(logits.double(), 1).max(1).values * 10
    assert (confidence - confidence.round()).abs().min().item() > 1e-4
    result = evaluation.evaluate_run(model, teacher, images, labels, batch_size=7, ece_bins=10)
    other = evaluation.evaluate_run(model, teacher, images, labels, batch_size=64, ece_bins=10)
    # per class: counts of argmaxes, none near a tie, so exactly equal; and a plain loop's
    assert (result.pop("class_n"), result.pop("class_acc")) == (other.pop("class_n"), other.pop("class_acc"))
    # Every measure moves by at most ~1e-7 x its size under ~1e-7 changes of the logits: rel=1e-6.
    assert result == pytest.approx(other, rel=1e-6)
    assert result["test_acc"] == 100 * int((logits.argmax(1) == labels).sum()) / 50  # no argmax near a tie
    assert result["nll"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert result["n"] == 50 and result["ece_bins"] == 10
    own = evaluation.evaluate_run(teacher, teacher, images, labels, batch_size=7, ece_bins=10)
    assert own["agreement"] == 100 and own["kl_to_teacher"] == 0


def test_accuracy_per_class_is_counted_class_by_class():
    """Against a plain loop over the images; a class without test images has no accuracy, and the worst class is
    the lowest of those that have one."""
    logits = torch.tensor([[3.0, 1, 0, 0], [0, 2, 1, 0], [0, 0, 5, 1], [1, 0, 0, 0], [0, 0, 1, 2], [0, 4, 0, 0]])
    labels = torch.tensor([0, 1, 1, 0, 1, 2])
    result = evaluation.per_class_accuracy(logits, labels)
    expected_n, expected_acc = [], []
    for c in range(4):
        mine = [i for i in range(len(labels)) if labels[i] == c]
        expected_n.append(len(mine))
        expected_acc.append(100 * sum(int(logits[i].argmax() == c) for i in mine) / len(mine) if mine else None)
    assert result == {"class_n": expected_n, "class_acc": expected_acc, "worst_class_acc": 0.0}
    assert expected_acc == [100.0, 100 / 3, 0.0, None]


# ---------------------------------------------------------------- the commands, in-process on the digits


SWAPPED = (0, 1)  # the student is the teacher with the last layer's rows of these two classes exchanged


def swap_classes(model, a, b):
    """The model with output classes a and b exchanged (rows of its last layer): its logits are the
    original's with those two columns swapped."""
    last = model.net.classifier[-1]
    with torch.no_grad():
        for tensor in (last.weight, last.bias):
            tensor[[a, b]] = tensor[[b, a]].clone()
    return model


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Two finished run folders on 40 digits, as train.py leaves them: a teacher trained for a few
    steps (so that its logits have margins far above rounding) and a student that is that teacher
    with classes 0 and 1 swapped, so that it differs from it by construction and its agreement and KL
    are known from the teacher's logits alone."""
    from kdsweep import io, split
    from kdsweep.models import build_model, save_model
    from kdsweep.evaluation import loss_and_accuracy

    folder = tmp_path_factory.mktemp("evaluation")
    tiny = folder / "tiny.yaml"
    tiny.write_text(json.dumps({"dataset": {"name": "digits", "subset": 40},
                                "runtime": {"device": "cpu", "threads": 1},
                                "training": {"eval_batch_size": 16},
                                "attacks": {"pgd": {"steps": 3}}}))
    configs = [str(ROOT / "config.yaml"), str(tiny)]
    config = load_config(configs)
    # The jobs run with runtime.threads = 1: so does the test accuracy written below, so that it is
    # the same computation as the jobs' (CPU kernels can change with the thread count).
    torch.set_num_threads(1)
    splits = split.load_splits(config["dataset"])
    torch.manual_seed(0)
    teacher = build_model("mobilenet_v3_small", splits.num_classes, [0.5] * 3, [0.25] * 3, bn_momentum=0.5)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=0.01)
    images, labels = splits.train.images.float() / 255, splits.train.labels
    for _ in range(10):  # about a second; 55% test accuracy, the top two logits >= 0.06 apart
        optimizer.zero_grad()
        F.cross_entropy(teacher(images), labels).backward()
        optimizer.step()
    teacher.eval()
    student = swap_classes(copy.deepcopy(teacher), *SWAPPED)
    runs = {}
    for role, model, seed, temperature, soft_weight in (("teacher", teacher, 0, None, None),
                                                        ("kd", student, 1, 4.0, 0.9)):
        run = folder / kd_run(role, "mobilenet_v3_small", seed, temperature, soft_weight).folder
        save_model(run / "model.pt", model, "mobilenet_v3_small", splits.num_classes)
        test_loss, test_acc = loss_and_accuracy(model, splits.test.images, splits.test.labels, 16)
        io.write_json(run / "metrics.json", {
            "role": role, "dataset": "digits", "model": "mobilenet_v3_small", "seed": seed,
            "temperature": temperature, "soft_weight": soft_weight, "test_acc": test_acc,
            "test_loss": test_loss, "config": {"dataset": config["dataset"]}, "config_hash": f"hash-{role}"})
        runs[role] = run
    # the teacher's test logits, as the jobs compute them (same weights, batches and threads)
    return folder, configs, runs, evaluation.predict(teacher, splits.test.images, 16).double()


def main(configs, *args):
    cli.main([str(a) for a in (*args[:1], *(x for c in configs for x in ("--config", c)), *args[1:])])


def test_evaluate_command_writes_the_documented_keys(finished):
    """The student differs from the teacher by construction (classes 0 and 1 swapped), so its agreement
    and KL are computed here from the teacher's logits by hand (another path: a tolerance) and hold by
    a wide margin. test_acc against metrics.json, and the teacher against itself, are the same
    computation twice on this machine (same weights, batches, threads): exact."""
    folder, configs, runs, teacher = finished
    out = folder / "evaluation" / "kd" / f"{runs['kd'].name}.json"
    main(configs, "evaluate", "--run", runs["kd"], "--teacher", runs["teacher"], "--out", out)
    result = json.loads(out.read_text())
    documented = {"run", "role", "dataset", "model", "temperature", "soft_weight", "seed", "teacher_run",
                  "teacher_model", "n", "test_acc", "test_acc_metrics", "agreement", "kl_to_teacher", "ece",
                  "ece_bins", "nll", "max_logit", "logit_norm", "class_n", "class_acc", "worst_class_acc", "seconds",
                  "device", "precision", "runtime", "slurm", "run_hash", "model_digest", "teacher_run_hash"}
    assert set(result) == documented
    for key in documented:
        assert f"  {key}" in evaluation.__doc__ or f", {key}" in evaluation.__doc__, key
    metrics = json.loads((runs["kd"] / "metrics.json").read_text())
    # the version it measured: this run's hash, the teacher's
    assert (result["run_hash"], result["teacher_run_hash"]) == ("hash-kd", "hash-teacher")
    assert result["test_acc"] == metrics["test_acc"] == result["test_acc_metrics"]
    assert (result["role"], result["temperature"], result["n"], result["ece_bins"]) == ("kd", 4.0, 40, 15)

    # What the swap gives, from the teacher's logits: the top two logits are far apart (so rounding
    # flips no argmax), the student agrees exactly where the teacher picks neither swapped class,
    # and KL(p || p with p0, p1 swapped) = (p0 - p1) (log p0 - log p1) per image.
    top2 = teacher.topk(2, 1).values
    assert (top2[:, 0] - top2[:, 1]).min().item() > 1e-3  # 0.06 on the machine this was written on
    swapped = torch.isin(teacher.argmax(1), torch.tensor(SWAPPED))
    assert 0 < swapped.sum() < len(swapped)  # the construction is not degenerate (15 of 40 here)
    assert result["agreement"] == pytest.approx(100 * (1 - swapped.double().mean().item()), rel=1e-12)
    log_p = F.log_softmax(teacher, 1)
    a, b = SWAPPED
    kl = ((log_p[:, a].exp() - log_p[:, b].exp()) * (log_p[:, a] - log_p[:, b])).mean().item()
    assert kl > 1e-3  # about 3 here: orders of magnitude above any rounding (1e-16)
    # The job's student logits are the teacher's swapped up to float32 rounding (its last layer's
    # rows moved): logits of up to ~20 move by ~2e-6 at most, and a KL by at most that much per
    # image (its gradient in the logits, q - p, has an L1 norm <= 2): < 2e-6 of a KL of ~3.
    assert result["kl_to_teacher"] == pytest.approx(kl, rel=1e-5)
    assert result["logit_norm"] == pytest.approx(torch.linalg.vector_norm(teacher, dim=1).mean().item(), rel=1e-6)
    assert result["logit_norm"] > 1  # trained logits: several units, not the untrained network's ~0.005
    assert not list(out.parent.glob(".*"))  # written atomically, no temp file left

    own = folder / "teacher.json"
    main(configs, "evaluate", "--run", runs["teacher"], "--teacher", runs["teacher"], "--out", own)
    own = json.loads(own.read_text())
    assert own["agreement"] == 100 and own["kl_to_teacher"] == 0


def test_evaluate_refuses_unfinished_runs_and_other_datasets(finished, capsys, tmp_path):
    _, configs, runs, _ = finished
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
    """The three clean accuracies are one forward pass of the same weights on the same batches with the
    same threads, with or without autograd recording (the same CPU kernels): exact. The student's top
    two logits are >= 1e-3 apart (see the test above), so no argmax is near a tie anyway."""
    folder, configs, runs, _ = finished
    results = {}
    for attack in ("fgsm", "pgd"):
        out = folder / "attacks" / "kd" / runs["kd"].name / f"{attack}_eps0.1.json"
        main(configs, "attack", "--run", runs["kd"], "--attack", attack, "--epsilon", 0.1, "--out", out)
        results[attack] = json.loads(out.read_text())
    assert results["fgsm"]["attack"] == "fgsm" and results["fgsm"]["params"] == {}
    assert results["pgd"]["attack"] == "pgd"
    assert results["pgd"]["params"] == {"loss": "ce", "steps": 3, "relative_step_size": 0.25, "random_start": True,
                                        "restarts": 1, "seed": 0}
    assert results["pgd"]["clean_acc"] == results["fgsm"]["clean_acc"]
    assert results["pgd"]["clean_acc"] == json.loads((runs["kd"] / "metrics.json").read_text())["test_acc"]
    assert "PGD eps=0.1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(configs, "attack", "--run", runs["kd"], "--attack", "pgd", "--epsilon", 0.1,
             "--out", folder / "off.json", "attacks.pgd=null")
    assert "switched off" in capsys.readouterr().err


def test_the_attack_job_of_a_run_writes_every_attack_its_worst_case_its_masking_checks_and_its_evaluation(
        finished, capsys):
    """`attack --out-dir` (the workflow's one job per run), cheap settings: every attack's file and the worst case's
    per epsilon, the run's evaluation, the masking record last. The worst case is the AND of its attacks' masks
    image by image; FGSM on every test image keeps the run's test accuracy as its clean accuracy (the same
    computation on the CPU); the subset is the same images in every file; the evaluation is the `evaluate`
    command's, field by field."""
    from kdsweep.records import AttackResult, Evaluation, Masking

    folder, configs, runs, _ = finished
    out, masking = folder / "suite" / "kd", folder / "suite" / "masking.json"
    evaluated = folder / "suite" / "evaluation.json"
    settings = ["epsilons=[0.05, 0.1]", "attacks.apgd_ce.steps=3", "attacks.apgd_dlr.steps=3", "attacks.apgd_t={steps: 3, targets: 2, seed: 0}",
                "attacks.square.queries=5", "robustness.subset.size=25"]
    main(configs, "attack", "--run", runs["kd"], "--out-dir", out, "--masking", masking, "--teacher", runs["teacher"],
         "--evaluation", evaluated, *settings)
    names = ["fgsm", "pgd", "apgd_ce", "apgd_dlr", "apgd_t", "square", "worst"]
    assert sorted(path.name for path in out.iterdir()) == sorted(f"{n}_eps{e}.json" for n in names for e in (0.05, 0.1))
    metrics = json.loads((runs["kd"] / "metrics.json").read_text())
    for epsilon in (0.05, 0.1):
        results = {name: AttackResult.read(out / f"{name}_eps{epsilon}.json") for name in names}
        assert results["fgsm"].clean_acc == metrics["test_acc"] and results["fgsm"].n == 40
        assert results["fgsm"].subset is None and results["fgsm"].precision == "fp32"
        subset = results["worst"].mask("examples")
        assert subset.sum() == 25 and results["worst"].subset == {"size": 25, "seed": 0}
        assert all(np.array_equal(results[name].mask("examples"), subset) for name in ("apgd_t", "square", "worst"))
        members = [results[name].mask() for name in ("apgd_ce", "apgd_dlr", "apgd_t", "square")]
        assert np.array_equal(results["worst"].mask(), np.logical_and.reduce(members) & subset)
        assert results["worst"].params == {"attacks": ["apgd_ce", "apgd_dlr", "apgd_t", "square"]}
        assert results["worst"].adv_acc == 100 * results["worst"].mask().sum() / 25
        assert sum(results["worst"].class_n) == 25 and results["worst"].run_hash == "hash-kd"
    record = Masking.read(masking)
    assert [(t.source, t.epsilon) for t in record.transfer] == [("teacher", 0.05), ("teacher", 0.1)]
    assert record.transfer[0].source_hash == "hash-teacher" and record.transfer[0].n == 25
    assert set(record.large_epsilon["accuracy"]) == {"pgd"} and record.large_epsilon["epsilon"] == 0.5
    checks = {check.check for check in record.checks}
    assert checks == {"rises_with_epsilon", "iterative_above_single_step", "headline_above_reference",
                      "white_box_above_transfer", "gradient_free_beats_gradient", "large_epsilon"}
    assert record.suspected == (not all(check.passed for check in record.checks))
    assert "masking checks" in capsys.readouterr().out
    main(configs, "evaluate", "--run", runs["kd"], "--teacher", runs["teacher"], "--out", folder / "suite" / "alone.json")
    alone, together = Evaluation.read(folder / "suite" / "alone.json").as_dict(), Evaluation.read(evaluated).as_dict()
    assert together["agreement"] < 100 and together["teacher_run_hash"] == "hash-teacher"
    assert {k: v for k, v in together.items() if k != "seconds"} == {k: v for k, v in alone.items() if k != "seconds"}
    # a student's evaluation needs its teacher: one sentence, before any attack
    with pytest.raises(SystemExit):
        main(configs, "attack", "--run", runs["kd"], "--out-dir", folder / "x", "--masking", folder / "x.json",
             "--evaluation", folder / "x-evaluation.json", *settings)
    assert "give the teacher's run folder as --teacher" in capsys.readouterr().err
    assert not (folder / "x").exists() and not (folder / "x-evaluation.json").exists()
    with pytest.raises(SystemExit):  # one form or the other
        main(configs, "attack", "--run", runs["kd"], "--out-dir", out, "--epsilon", 0.1)
    assert "not --attack, --epsilon or --out" in capsys.readouterr().err
