"""Training runs through the real command line on the bundled digits: outputs, resume, refusals.

Commands run in this process (conftest.run_kdsweep, cli.main itself); those that must be stopped
by a signal, killed or run beside another run as real processes (`python -m kdsweep`).
"""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdsweep.datasets import load_dataset
from kdsweep.models import load_model

from conftest import run_kdsweep as kdsweep
from conftest import kd_run
from conftest import run_until_epoch as _run_until_epoch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study(tiny_study, tmp_path_factory):
    """(folder, config args): this module's folder beside the shared tiny study's tiny.yaml, stats.json
    and trained MobileNetV3-small teacher (conftest.tiny_study)."""
    return tiny_study.beside(tmp_path_factory.mktemp("test_train")), tiny_study.config


def history(run):
    with open(run / "history.csv") as handle:
        return list(csv.DictReader(handle))


def test_teacher_run_writes_its_outputs(study):
    folder, _ = study
    teacher = folder / "teacher"
    metrics = json.loads((teacher / "metrics.json").read_text())
    assert metrics["role"] == "teacher" and metrics["model"] == "mobilenet_v3_small" and metrics["dataset"] == "digits"
    assert metrics["epochs"] == 1 and metrics["best_epoch"] == 1
    assert 0 <= metrics["test_acc"] <= 100 and 0 <= metrics["val_acc"] <= 100
    assert metrics["config"]["training"]["batch_size"] == 64 and len(metrics["config_hash"]) == 16
    assert {"torch", "torchvision", "python"} <= set(metrics["versions"])
    rows = history(teacher)
    assert [int(r["epoch"]) for r in rows] == [1]
    assert float(rows[metrics["best_epoch"] - 1]["val_acc"]) == pytest.approx(metrics["val_acc"])
    model = load_model(teacher / "model.pt")
    assert not model.training
    assert not (teacher / "checkpoint.pt").exists() and not (teacher / "best.pt").exists()
    # tensorboard is optional: probe it exactly as train.py does (torch's SummaryWriter, which needs
    # more than the tensorboard package importing), so that either outcome is checked consistently
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        assert not (teacher / "tensorboard").exists() or not list((teacher / "tensorboard").iterdir())
    else:
        assert list((teacher / "tensorboard").iterdir()), "tensorboard is installed, so events are written"


def test_distilled_student_and_attack(study):
    """The attack's clean accuracy and the run's test accuracy are the same computation on this machine
    (the saved weights, the same batches of eval_batch_size, one thread, fp32; with and without autograd
    recording, which uses the same CPU kernels): compared exactly. How FGSM changes the accuracy of this
    barely trained student (three epochs on 400 images; here it predicts one class for every image) is not
    a property of the code, so only the bookkeeping that holds by construction is asserted here; that
    accuracy falls as epsilon grows is shown by construction in test_attacks."""
    folder, config = study
    run = folder / "kd"
    kdsweep("distill", *config, "--student", "mobilenet_v3_small", "--teacher", folder / "teacher",
            "--temperature", 4, "--soft-weight", 0.9, "--seed", 1, "--stats", folder / "stats.json",
            "--out", run, cwd=folder)
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["role"], metrics["temperature"], metrics["soft_weight"]) == ("kd", 4.0, 0.9)
    assert metrics["config"]["run"]["teacher_config_hash"] == json.loads(
        (folder / "teacher" / "metrics.json").read_text())["config_hash"]
    # T^2 KL of a student against another architecture's teacher: ~0.01 here, far above the float32
    # rounding (~1e-7) at which the loss's clamp at 0 could act
    assert all(float(r["train_soft_loss"]) > 0 for r in history(run))

    out = folder / "fgsm.json"
    kdsweep("attack", *config, "--run", run, "--epsilon", 0.1, "--out", out, cwd=folder)
    result = json.loads(out.read_text())
    assert result["clean_acc"] == metrics["test_acc"]
    n, n_correct = result["n"], result["n_correct"]
    assert result["clean_acc"] == 100 * n_correct / n and 0 <= result["adv_acc"] <= 100
    # the images correct before and after the attack are among those correct after it
    assert result["adv_acc_on_correct"] * n_correct <= result["adv_acc"] * n + 1e-9
    assert result["n"] == min(400, len(load_dataset("digits", None).test_labels)) and (result["model"], result["temperature"]) == ("mobilenet_v3_small", 4.0)


def _train_args(folder, config, out, *extra):
    return ["train", *config, "--model", "mobilenet_v3_small", "--seed", 3, "--stats", folder / "stats.json",
            "--out", out, "training.max_epochs=4", *extra]




COMPARED = ["epochs", "best_epoch", "val_acc", "val_loss", "test_acc", "test_loss", "config_hash"]


def test_killed_run_resumes_to_the_same_metrics(study):
    """Resuming is the same computation as not stopping (same machine, one thread, the RNG states
    restored): metrics, history and weights are compared exactly, as they must be."""
    folder, config = study
    whole, killed = folder / "whole", folder / "killed"
    kdsweep(*_train_args(folder, config, whole), cwd=folder)
    status = _run_until_epoch(folder, _train_args(folder, config, killed), 2, signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert (killed / "checkpoint.pt").exists()
    assert not any((killed / name).exists() for name in ("metrics.json", "model.pt", "history.csv")), \
        "a killed run leaves nothing that looks finished"
    resumed = kdsweep(*_train_args(folder, config, killed), cwd=folder)
    assert "resuming" in resumed.stdout
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (whole, killed))
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
    assert b["resumed"] == 1 and a["resumed"] == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(history(whole)) == strip(history(killed))
    weights_a = torch.load(whole / "model.pt", weights_only=True)["state_dict"]
    weights_b = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_warning_signal_checkpoints_and_exits_for_a_retry(study):
    folder, config = study
    run = folder / "signalled"
    status = _run_until_epoch(folder, _train_args(folder, config, run), 1, signal.SIGUSR1)
    assert status == 75, "EX_TEMPFAIL: stopped on request, resumable"
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["state"]["epoch"] in (1, 2)
    assert not (run / "metrics.json").exists()


def test_corrupt_or_mismatched_checkpoint_is_refused(study):
    folder, config = study
    run = folder / "mismatch"
    assert _run_until_epoch(folder, _train_args(folder, config, run), 1, signal.SIGTERM) == 75
    changed = kdsweep(*_train_args(folder, config, run, "training.lr=0.01"), cwd=folder, check=False)
    assert changed.returncode == 2 and "another configuration" in changed.stderr
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:1000])
    corrupt = kdsweep(*_train_args(folder, config, run), cwd=folder, check=False)
    assert corrupt.returncode == 2 and "corrupt" in corrupt.stderr
    assert "Traceback" not in corrupt.stderr + changed.stderr
    assert not (run / "metrics.json").exists()


def test_non_finite_loss_stops_the_run(study):
    folder, config = study
    result = kdsweep(*_train_args(folder, config, folder / "nan", "training.lr=1e30"), cwd=folder, check=False)
    assert result.returncode == 2 and "non-finite" in result.stderr
    assert not (folder / "nan" / "metrics.json").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "vgg11", "--seed", 0], "vgg11"),
    (["distill", "--student", "resnet18", "--teacher", "teacher", "--temperature", -1, "--soft-weight", 0.5,
      "--seed", 0], "--temperature -1.0 is out of bounds"),
    (["distill", "--student", "resnet18", "--teacher", "teacher", "--temperature", 4, "--soft-weight", 1.5,
      "--seed", 0], "--soft-weight 1.5 is out of bounds"),
    (["distill", "--student", "resnet18", "--teacher", "no-such-teacher", "--temperature", 4,
      "--soft-weight", 0.5, "--seed", 0], "teacher"),
    (["train", "--model", "resnet18", "--seed", 0, "training.lr=-1"], "training.lr"),
    (["train", "--model", "resnet18", "--seed", 0, "training.learning_rate=1"], "learning_rate"),
])
def test_bad_input_is_one_clear_sentence(study, args, message):
    folder, config = study
    result = kdsweep(*args[:1], *config, *args[1:], "--stats", folder / "stats.json",
                     "--out", folder / "bad", cwd=folder, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("kdsweep: error: ") and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_stats_names_the_stats_command(study):
    folder, config = study
    result = kdsweep("train", *config, "--model", "resnet18", "--seed", 0, "--stats", folder / "none.json",
                     "--out", folder / "bad", cwd=folder, check=False)
    assert result.returncode == 2 and "kdsweep stats" in result.stderr


def test_cuda_requested_without_a_gpu_is_refused(study):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here: the refusal only applies without one")
    folder, config = study
    result = kdsweep(*_train_args(folder, config, folder / "gpu", "runtime.device=cuda"), cwd=folder, check=False)
    assert result.returncode == 2 and "no GPU" in result.stderr


# The CUDA runs (training, distillation, packs, resume, compile, attacks, evaluate) are in test_runtime.py.


def test_interrupted_outputs_are_atomic(tmp_path):
    from kdsweep import io

    target = tmp_path / "metrics.json"

    class Boom(Exception):
        pass

    def explode(handle):
        handle.write(b"{partial")
        raise Boom

    with pytest.raises(Boom):
        io._atomic(target, explode)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_outputs_are_readable_like_any_file_the_user_writes(tmp_path):
    from kdsweep import io

    previous = os.umask(0o022)
    try:
        path = io.write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644


def test_packed_points_equal_unpacked_runs(study):
    """One job training three points (dropout included) ends exactly as three separate jobs: the same
    computation per point on this machine, so compared exactly. The three points optimise different
    losses from the first step on (T and w differ; w = 0 is plain cross-entropy), so their weights
    differ by construction."""
    folder, config = study
    points = [(4, 0.5), (2, 0.9), (1, 0.0)]
    common = ["distill", *config, "--student", "mobilenet_v3_small", "--teacher", folder / "teacher",
              "--seed", 5, "--stats", folder / "stats.json", "training.max_epochs=2"]
    packed = []
    for i, (temperature, weight) in enumerate(points):
        kdsweep(*common, "--temperature", temperature, "--soft-weight", weight, "--out", folder / f"alone{i}",
                cwd=folder)
        packed += ["--temperature", temperature, "--soft-weight", weight, "--out", folder / f"packed{i}"]
    kdsweep(*common, *packed, cwd=folder)
    for i in range(len(points)):
        alone, pack = (json.loads((folder / f"{kind}{i}" / "metrics.json").read_text()) for kind in ("alone", "packed"))
        assert {k: alone[k] for k in COMPARED} == {k: pack[k] for k in COMPARED}
    weights = [torch.load(folder / f"packed{i}" / "model.pt", weights_only=True)["state_dict"] for i in range(3)]
    for i in range(3):
        for j in range(i):
            assert not all(torch.equal(weights[i][k], weights[j][k]) for k in weights[i]), \
                f"points {j} and {i} did not train differently"


def test_pack_needs_one_folder_per_point(study):
    folder, config = study
    result = kdsweep("distill", *config, "--student", "resnet18", "--teacher", folder / "teacher", "--seed", 0,
                     "--stats", folder / "stats.json", "--temperature", 4, "--temperature", 2,
                     "--soft-weight", 0.5, "--out", folder / "x", cwd=folder, check=False)
    assert result.returncode == 2 and "once per sweep point" in result.stderr


def test_a_finished_point_of_a_job_that_died_is_written_again_not_retrained(study, monkeypatch, tmp_path):
    """A pack whose job dies after some points finished: Snakemake removes the failed job's outputs,
    and the retry writes those points' outputs again from their kept best weights, training nothing
    (the same evaluation of the same weights on this machine: metrics compared exactly)."""
    from kdsweep import train
    from kdsweep.config import load_config

    folder, _ = study
    config = load_config([str(ROOT / "config.yaml"), str(folder / "tiny.yaml")], ["training.max_epochs=2"])
    specs = [kd_run("kd", "mobilenet_v3_small", 5, temperature=t, soft_weight=w) for t, w in [(4, 0.5), (2, 0.9)]]
    outs = [tmp_path / f"point{i}" for i in range(len(specs))]

    def run():
        return train.train_points(config, specs, folder / "stats.json", outs, teacher_dir=folder / "teacher",
                                  log=lambda line: None)

    with monkeypatch.context() as patch:  # the job dies after its points finished, before it ends
        patch.setattr(train.checkpoint, "remove_scratch", lambda folder: None)
        first = run()
    for out in outs:
        assert (out / "checkpoint.pt").exists() and (out / "best.pt").exists()
        for name in ("metrics.json", "model.pt", "history.csv"):  # what Snakemake removes after a failed job
            (out / name).unlink()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(train, "train_epoch", no_training)
    again = run()
    for before, after, out in zip(first, again, outs):
        assert {k: before[k] for k in COMPARED} == {k: after[k] for k in COMPARED}
        assert after["resumed"] == 1
        assert (out / "history.csv").is_file() and (out / "model.pt").is_file()
        assert not (out / "checkpoint.pt").exists() and not (out / "best.pt").exists()


def test_a_run_folder_is_trained_by_one_process_at_a_time(study):
    """A second process for a folder in training stops with one sentence naming it while the first
    trains on; a process that dies, even by SIGKILL, leaves no lock behind."""
    from kdsweep import lock

    folder, config = study
    run = folder / "locked"
    long = ["training.max_epochs=200", "training.early_stopping_patience=200"]  # far longer than the test
    first = subprocess.Popen([sys.executable, "-m", "kdsweep", *map(str, _train_args(folder, config, run, *long))],
                             cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in first.stdout:
            if "  epoch   1" in line:
                break
        second = kdsweep(*_train_args(folder, config, run, *long), cwd=folder, check=False)
        assert first.poll() is None, "the first process still trains"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.startswith("kdsweep: error: run folder ") and str(run.resolve()) in second.stderr
    assert f"being trained by process {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    with lock.run_folders([run]):  # the SIGKILLed holder's lock is gone with it
        pass
    assert not (run / ".lock").exists() and (run / "checkpoint.pt").exists()


def test_a_last_batch_of_one_image_joins_the_batch_before_it(study):
    """BatchNorm cannot train on one image: 360 training images in batches of 359 train as one batch of
    360, to the end (it was a traceback)."""
    from kdsweep.train import epoch_batches

    assert epoch_batches(360, 359) == [(0, 360)]
    assert epoch_batches(361, 60)[-2:] == [(240, 300), (300, 361)]
    assert epoch_batches(360, 64)[-1] == (320, 360) and len(epoch_batches(360, 64)) == 6
    folder, config = study
    run = folder / "batch-of-one"
    kdsweep(*_train_args(folder, config, run, "training.batch_size=359", "training.max_epochs=1"), cwd=folder)
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1
