"""Bring-your-own teacher (kdsweep.teachers) and architectures as axes: checkpoints checked before any job,
loaded as torchvision would run them at the small-image stride, their provenance in every identity; a study of
a new student, a checkpoint teacher and a second teacher through the real workflow on the digits."""

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from conftest import ROOT, copy_of, built_once, job_counts, run_kdsweep, snakemake
from torch import nn

from kdsweep.config import config_hash, load_config
from kdsweep.errors import KdsweepError
from kdsweep.identity import run_identity
from kdsweep.models import build_model, save_model
from kdsweep.plan import Plan, Teacher, teachers
from kdsweep.teachers import check_config, fit, load_into, provenance, read

MEAN, STD = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]
STUDY = ROOT / "tests" / "studies" / "architectures.yaml"


def imagenet_resnet18(path, seed=0, num_classes=1000):
    """A torchvision ResNet-18 state dict of ImageNet's geometry (7x7 stride-2 stem, `num_classes` outputs), as
    torchvision's pretrained weights file holds one; random weights (no download here)."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    torch.save(net.state_dict(), path)
    return net


def test_an_imagenet_checkpoint_needs_fine_tuning_for_other_classes(tmp_path):
    imagenet_resnet18(tmp_path / "r18.pt")
    source = read(str(tmp_path / "r18.pt"))
    with pytest.raises(KdsweepError, match=r"has a head for 1000 classes but this study's data has 10, and without "
                                           r"fine-tuning a new head would be random; set fine_tune: true"):
        fit(Teacher("r18", "resnet18", 0, str(tmp_path / "r18.pt")), source, 3, 32, 10)
    fitted = fit(Teacher("r18", "resnet18", 0, str(tmp_path / "r18.pt"), fine_tune=True), source, 3, 32, 10)
    assert fitted.stem_kernel == 7 and fitted.fresh_head == ("fc.weight", "fc.bias")


def test_a_checkpoint_runs_as_torchvision_would_at_the_small_image_stride(tmp_path):
    """The loaded teacher computes what the checkpoint's own torchvision network computes with its stem at
    stride 1 (padding 3) and no max-pool, on images normalised as the weights name's transforms say (here: the
    study's statistics, which a bare state dict keeps)."""
    reference = imagenet_resnet18(tmp_path / "r18.pt", num_classes=10).eval()
    teacher = Teacher("r18", "resnet18", 0, str(tmp_path / "r18.pt"))
    source = read(teacher.checkpoint)
    fitted = fit(teacher, source, 3, 8, 10)
    model = load_into(build_model("resnet18", 10, MEAN, STD, image_size=8, stem_kernel=fitted.stem_kernel),
                      source, fitted).eval()
    reference.conv1.stride, reference.conv1.padding, reference.maxpool = (1, 1), (3, 3), nn.Identity()
    x = torch.rand(4, 3, 8, 8)
    normalised = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(normalised))


def test_a_kdsweep_model_file_brings_its_own_normalisation(tmp_path):
    torch.manual_seed(3)
    trained = build_model("shufflenet_v2_x0_5", 10, [0.1, 0.2, 0.3], [0.5, 0.6, 0.7], image_size=8).eval()
    path = save_model(tmp_path / "model.pt", trained, "shufflenet_v2_x0_5", 10)
    teacher = Teacher("s", "shufflenet_v2_x0_5", 0, str(path))
    source = read(teacher.checkpoint)
    fitted = fit(teacher, source, 3, 8, 10)
    assert fitted.stem_kernel is None and fitted.fresh_head == ()
    model = load_into(build_model("shufflenet_v2_x0_5", 10, MEAN, STD, image_size=8), source, fitted).eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)


def test_a_checkpoint_of_another_architecture_is_one_sentence(tmp_path):
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pt")
    teacher = Teacher("t", "resnet18", 0, str(tmp_path / "r34.pt"), fine_tune=True)
    with pytest.raises(KdsweepError, match=r"teacher 't': its checkpoint .*r34.pt holds \d+ weight\(s\) a resnet18 "
                                           r"does not have \(first: 'layer1.2.conv1.weight'\); give a checkpoint"):
        fit(teacher, read(teacher.checkpoint), 3, 32, 10)


class _Code:  # an object torch.load(weights_only=True) refuses to build
    pass


@pytest.mark.parametrize("content", ["pickled object", "garbage", "no tensors"])
def test_an_unreadable_checkpoint_is_one_sentence(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content == "pickled object":
        torch.save({"fc.weight": _Code()}, path)
    elif content == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save({"epoch": 3}, path)
    expected = {"pickled object": r"bad.pt holds test_teachers._Code, which kdsweep never loads",
                "garbage": r"bad.pt cannot be read: it is corrupt or truncated",
                "no tensors": r"is no state dict"}[content]
    with pytest.raises(KdsweepError, match=expected):
        read(str(path))


def test_a_weights_name_reads_its_file_from_the_hub_cache_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    try:
        with pytest.raises(KdsweepError, match=r"resnet18-f37072fd.pth does not exist; fetch it on a login node "
                                               r"with `python -m kdsweep download"):
            read("ResNet18_Weights.IMAGENET1K_V1")
        folder = tmp_path / "torch" / "hub" / "checkpoints"
        folder.mkdir(parents=True)
        imagenet_resnet18(folder / "resnet18-f37072fd.pth")
        source = read("ResNet18_Weights.IMAGENET1K_V1")
        assert source.mean == [0.485, 0.456, 0.406] and source.std == [0.229, 0.224, 0.225]  # ImageNet's
        with pytest.raises(KdsweepError, match="is no torchvision weights name"):
            read("ResNet18_Weights.NOPE")
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))


def test_the_checkpoints_digest_is_in_the_teacher_identity(tmp_path):
    config = load_config([ROOT / "config.yaml"])
    teacher = Teacher("r18", "resnet18", 0, str(tmp_path / "a.pt"), fine_tune=True)
    hashes = []
    for seed in (0, 1):
        imagenet_resnet18(tmp_path / "a.pt", seed=seed)
        made = provenance(teacher, read(teacher.checkpoint))
        assert made == {"digest": hashlib.sha256((tmp_path / "a.pt").read_bytes()).hexdigest(),
                        "architecture": "resnet18", "fine_tuned": True}
        hashes.append(config_hash(run_identity(config, teacher.run, None, "d", made)))
    scratch = config_hash(run_identity(config, teacher.run, None, "d"))
    assert len({*hashes, scratch}) == 3


def test_a_checkpoint_teacher_without_fine_tuning_is_evaluated_not_trained(tmp_path):
    """`kdsweep train --role teacher --checkpoint FILE`: the run folder holds the checkpoint's weights as they
    are (0 epochs), its test accuracy, and its provenance in the identity."""
    from conftest import TINY_STUDY

    (tmp_path / "tiny.yaml").write_text(json.dumps(TINY_STUDY))
    config = ["--config", ROOT / "config.yaml", "--config", tmp_path / "tiny.yaml"]
    run_kdsweep("stats", *config, "--out", tmp_path / "stats.json", cwd=tmp_path)
    net = imagenet_resnet18(tmp_path / "own.pt", num_classes=10)
    out = tmp_path / "teacher"
    run_kdsweep("train", *config, "--role", "teacher", "--model", "resnet18", "--seed", 0, "--stats",
                tmp_path / "stats.json", "--out", out, "--checkpoint", "own.pt", cwd=tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 0 and 0 <= metrics["test_acc"] <= 100
    assert metrics["config"]["run"]["teacher_checkpoint"] == {
        "digest": hashlib.sha256((tmp_path / "own.pt").read_bytes()).hexdigest(), "architecture": "resnet18",
        "fine_tuned": False}
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["stem_kernel"] == 7
    for key, value in net.state_dict().items():
        assert torch.equal(saved["state_dict"][f"net.{key}"], value), key


# ---------------------------------------------------------------- several teachers: the plan


def _plan(*overrides):
    # several teachers are swept without confirmation, which config.yaml has on by default
    return Plan(load_config([ROOT / "config.yaml"], ["temperatures=[4]", "soft_weights=[0.9]", "confirm.seeds=[]",
                                                    *overrides]))


def test_one_teacher_keeps_every_name_and_a_second_teacher_adds_its_own():
    one = _plan()
    two = _plan("teacher=[{model: resnet50, seed: 0},"
                " {name: big, model: resnet101, checkpoint: r.pt, fine_tune: true}]")
    names = [run.folder for run in two.fixed_runs()]
    assert [run.folder for run in one.fixed_runs()] == names[:1] + names[2:6]  # the first teacher's, unchanged
    assert names[1] == "runs/teacher/big_seed0"
    assert names[6:] == ["runs/kd/resnet18_from_big_T4_soft0.9_seed0",
                         "runs/kd/mobilenet_v3_small_from_big_T4_soft0.9_seed0"]
    assert [pack.name for pack in two.packs][2:] == ["resnet18_from_big_T4_soft0.9_seed0",
                                                       "mobilenet_v3_small_from_big_T4_soft0.9_seed0"]
    distilled = two.run("kd", "resnet18_from_big_T4_soft0.9_seed0")
    assert two.teacher_of(distilled).model == "resnet101" and two.teacher_of(distilled).fine_tune
    assert two.teacher_of(two.baselines()[0]).name == "resnet50"  # agreement: against the first teacher


@pytest.mark.parametrize("overrides, words", [
    (["teacher=[{model: resnet50}, {model: resnet50, seed: 1}]"], "two teachers are named 'resnet50'"),
    (["teacher=[{model: resnet50}, {model: resnet18}]", "sweep=staged"], "several teachers are swept with sweep: grid"),
])
def test_teachers_the_plan_refuses(overrides, words):
    with pytest.raises(KdsweepError, match=words):
        _plan(*overrides)


def test_teachers_of_the_default_and_of_a_list():
    config = load_config([ROOT / "config.yaml"])
    assert teachers(config) == [Teacher("resnet50", "resnet50", 0)]


# ---------------------------------------------------------------- before any job: one sentence


@pytest.mark.parametrize("overrides, words", [
    (["students=[resnet_18]"], "model 'resnet_18' is no torchvision classification model (did you mean resnet18"),
    (["students=[vgg11]"], "model 'vgg11' is of the vgg family, for which kdsweep has no small-image stem rule"),
    (["teacher={model: resnet18, seed: 0, checkpoint: r34.pt, fine_tune: true}"],
     "its checkpoint r34.pt holds 96 weight(s) a resnet18 does not have"),
    (["teacher={model: resnet18, seed: 0, checkpoint: r18.pt, fine_tune: false}"],
     "has a head for 1000 classes but this study's data has 10"),
])
def test_a_study_with_a_wrong_model_or_checkpoint_stops_before_any_job(tmp_path, overrides, words):
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pt")
    imagenet_resnet18(tmp_path / "r18.pt")
    with pytest.raises(KdsweepError) as refused:
        import contextlib

        with contextlib.chdir(tmp_path):
            check_config(load_config([ROOT / "config.yaml"], ["dataset.name=digits", *overrides]))
    assert words in str(refused.value)
    # the workflow says the same sentence and starts nothing
    args = [f"{key}={value}" for key, value in (o.split("=", 1) for o in overrides)]
    result = snakemake(tmp_path, "--dry-run", "--config", "dataset={name: digits}", *args, check=False)
    assert result.returncode != 0 and words in result.stdout + result.stderr
    assert "Job stats" not in result.stdout and not (tmp_path / "results").exists()


# ---------------------------------------------------------------- the study, through snakemake


def _architectures_study(folder):
    imagenet_resnet18(folder / "teacher.pt")
    snakemake(folder, "--cores", "2", "--show-failed-logs", configfiles=[STUDY])


@pytest.fixture(scope="session")
def architectures(tmp_path_factory):
    """tests/studies/architectures.yaml run to the end by the real workflow, once per test run."""
    return built_once(tmp_path_factory, "architectures-workflow", _architectures_study)


@pytest.mark.workflow
def test_a_new_student_distils_from_a_checkpoint_teacher_and_a_second_teacher(architectures, tmp_path):
    results = architectures / "results" / "architectures-tiny"
    own = json.loads((results / "runs/teacher/resnet18_own_seed0/metrics.json").read_text())
    assert own["checkpoint"] == {"checkpoint": "teacher.pt", "fine_tuned": True, "architecture": "resnet18",
                                 "digest": hashlib.sha256((architectures / "teacher.pt").read_bytes()).hexdigest()}
    assert own["config"]["run"]["teacher_checkpoint"]["digest"] == own["checkpoint"]["digest"]
    assert own["epochs"] == 1 and own["params"] == 11_181_642  # fine-tuned, with a 10-class head
    first = json.loads((results / "runs/kd/shufflenet_v2_x0_5_T4_soft0.9_seed0/metrics.json").read_text())
    second = json.loads((results / "runs/kd/shufflenet_v2_x0_5_from_mobilenet_v3_small_T4_soft0.9_seed0/"
                                    "metrics.json").read_text())
    assert first["config"]["run"]["teacher_config_hash"] == own["config_hash"]
    assert second["teacher"] == "mobilenet_v3_small" and first.get("teacher") is None
    pairs = pd.read_csv(results / "tables" / "pairs.csv")
    # each teacher's pair by kd and by attention transfer (its taps across ResNet-18 or MobileNetV3 -> ShuffleNetV2)
    assert sorted(zip(pairs["teacher"], pairs["method"])) == [
        ("mobilenet_v3_small_seed1", "at"), ("mobilenet_v3_small_seed1", "kd"), ("resnet18_own_seed0", "at"),
        ("resnet18_own_seed0", "kd")]
    for run in ("at/shufflenet_v2_x0_5_at_b1000_p2_st3_seed0",
                "at/shufflenet_v2_x0_5_from_mobilenet_v3_small_at_b1000_p2_st3_seed0"):
        history = pd.read_csv(results / "runs" / run / "history.csv")
        assert (history["train_at_loss"] > 0).all(), run
    assert set(pairs["model"]) == {"shufflenet_v2_x0_5"} and (pairs["parameters"] == 352_042).all()
    assert (pairs["teacher_images_per_second"] > 0).all()
    runs = pd.read_csv(results / "tables" / "runs.csv").set_index("run")
    for run in ("runs/kd/shufflenet_v2_x0_5_T4_soft0.9_seed0", "runs/teacher/resnet18_own_seed0"):
        metrics = json.loads((results / run / "metrics.json").read_text())
        assert runs.loc[run, "images_per_second"] == pytest.approx(
            metrics["epochs"] * metrics["train_images"] / metrics["train_seconds"])
        assert metrics["train_images"] == 360  # 400 digits less the 10% validation split
    # the first teacher's runs are the reference tables'; the second's are in pairs and runs.csv
    grid = pd.read_csv(results / "tables" / "grid.csv")
    assert len(grid) == 1 and len(pd.read_csv(results / "tables" / "runs.csv")) == 7
    for figure in ("pairs.png", "grid_shufflenet_v2_x0_5.png"):
        assert (results / "figures" / figure).stat().st_size > 1000
    status = run_kdsweep("status", results, cwd=architectures).stdout
    assert re.search(r"^teacher +resnet18 +1 +1 +0 +0 +0 +0$", status, re.M), status  # its provenance: this run
    assert re.search(r"^all +7 +7 +0 +0 +0 +0$", status, re.M), status

    # a new checkpoint file retrains its teacher and every run distilled from it, nothing else
    work = copy_of(architectures, tmp_path / "work")
    imagenet_resnet18(work / "teacher.pt", seed=1)
    counts = job_counts(snakemake(work, "--dry-run", configfiles=[STUDY]).stdout)
    assert counts["train"] == 1 and counts["distill"] == 2  # its kd and at runs
