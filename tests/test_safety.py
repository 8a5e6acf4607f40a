"""Files from disk never run code and are always checked (docs/reliability.md): each finding of a hostile
user's round, as a test. A planted file whose unpickling would write a marker file is refused in one
sentence and the marker never appears; a damaged or hand-edited record is one `kdsweep: error:` sentence
(in Snakemake, before any job is planned) wherever it is read; what is not the study's is ignored with one
warning and never tabled; command-line values are held to the schema's bounds; a retried job's log keeps
the earlier attempts' lines.
"""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT, TINY_WORKFLOW, copy_of, snakemake, write_synthetic_cifar
from conftest import run_kdsweep as kdsweep
from fake_runs import write_run
from kdsweep import checkpoint, identity, io, joblog
from kdsweep.config import load_config
from kdsweep.errors import KdsweepError
from kdsweep.layout import Layout
from kdsweep.plan import Plan, Run
from kdsweep.records import BestPoint, Metrics, RungDecision

HALVING = ROOT / "tests" / "studies" / "halving.yaml"
STUDENT = "mobilenet_v3_small"


class Planted:
    """An object whose unpickling creates `marker`: what a hostile user plants."""

    def __init__(self, marker):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def one_sentence(result, *words):
    """The result of a refused command: exit 2, one `kdsweep: error:` line holding `words`, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdsweep: error: "), result.stderr[-3000:]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# ---------------------------------------------------------------- nothing read runs code


def train_args(tiny_study, out, *extra):
    return ["train", *tiny_study.config, "--role", "baseline", "--model", STUDENT, "--seed", 1,
            "--stats", tiny_study.stats, "--out", out, "training.max_epochs=1", *extra]


def test_a_planted_checkpoint_is_refused_unread_by_hand_and_started_over_by_the_workflow(tiny_study, tmp_path):
    marker = tmp_path / "MARKER"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"config_hash": "x", "state": Planted(marker)}, run / "checkpoint.pt")
    refused = kdsweep(*train_args(tiny_study, run), cwd=tmp_path, check=False)
    one_sentence(refused, "checkpoint.pt holds", "which kdsweep never loads", "delete it to start the run over")
    assert not marker.exists() and not (run / "metrics.json").exists()
    with pytest.raises(KdsweepError, match="never loads"):
        checkpoint.load(run / "checkpoint.pt", {"x"})
    assert not marker.exists()
    # the workflow's jobs (--rerun-stale) delete it and train the run from its start
    started = kdsweep(*train_args(tiny_study, run, "--rerun-stale"), cwd=tmp_path)
    assert "is damaged: starting the run over" in started.stdout and "resuming" not in started.stdout
    assert (run / "metrics.json").is_file() and not marker.exists()


def test_planted_best_weights_and_model_files_are_refused_unread(tiny_study, tmp_path):
    from kdsweep.models import load_model
    from kdsweep.train import train_points

    marker = tmp_path / "MARKER"
    config = load_config([c for c in tiny_study.config if c != "--config"], ["training.max_epochs=2"])
    run = tmp_path / "run"
    train_points(config, [Run("baseline", STUDENT, 1)], tiny_study.stats, [run], until_epoch=1, log=lambda _: None)
    torch.save({"weight": Planted(marker)}, run / "best.pt")  # a paused run relies on its best.pt
    one_sentence(kdsweep(*train_args(tiny_study, run, "training.max_epochs=2"), cwd=tmp_path, check=False),
                 "best.pt holds", "which kdsweep never loads")
    torch.save({"model": STUDENT, "num_classes": 10, "state_dict": Planted(marker)}, tmp_path / "model.pt")
    with pytest.raises(KdsweepError, match="model.pt holds .*pathlib.*, which kdsweep never loads"):
        load_model(tmp_path / "model.pt")
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_study.teacher, teacher)
    shutil.copy(tmp_path / "model.pt", teacher / "model.pt")
    one_sentence(kdsweep("attack", *tiny_study.config, "--run", teacher, "--epsilon", 0.1, "--out", tmp_path / "a.json",
                         cwd=tmp_path, check=False), "model.pt")
    assert not marker.exists() and not (tmp_path / "a.json").exists()


def test_a_real_checkpoint_holds_only_what_the_restricted_loader_admits_and_resumes(tiny_study, tmp_path):
    """A paused point of a method with state of its own (CTKD's learned temperature): its checkpoint names no
    object torch's restricted unpickler refuses, loads with weights_only=True and resumes. A checkpoint of the
    first versions' layout (RNG states under python/numpy/torch) is refused with the fix."""
    from kdsweep.methods import METHODS
    from kdsweep.train import train_points

    config = load_config([c for c in tiny_study.config if c != "--config"], [])
    defaults = {param.name: param.default for param in METHODS["ctkd"].params}
    point = Run.distilled_run("ctkd", STUDENT, 0, "ctkd", defaults)
    run = tmp_path / "ctkd"
    train_points(config, [point], tiny_study.stats, [run], teacher_dir=tiny_study.teacher, until_epoch=1,
                 log=lambda _: None)
    saved = run / "checkpoint.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(saved) == []
    loaded = torch.load(saved, weights_only=True)
    assert "method_state" in loaded and loaded["state"]["epoch"] == 1
    said = []
    train_points(config, [point], tiny_study.stats, [run], teacher_dir=tiny_study.teacher, until_epoch=2,
                 log=said.append)
    assert any(f"resuming {run} after epoch 1" in line for line in said)
    assert torch.load(saved, weights_only=True)["state"]["epoch"] == 2

    old = {**loaded, "rng": {"python": [3, [1, 2], None], "numpy": ["MT19937", [1, 2], 0, 0, 0.0],
                             "torch": torch.get_rng_state()}}
    del old["data"]
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(KdsweepError, match=r"old.pt is not a checkpoint of this kdsweep version .*delete it to start"):
        checkpoint.load(tmp_path / "old.pt", {loaded["config_hash"]})


def _cifar_config(tmp_path, root):
    study = tmp_path / "cifar.yaml"
    study.write_text(json.dumps({"dataset": {"name": "cifar10", "root": str(root), "subset": None},
                                 "runtime": {"device": "cpu", "threads": 1}}))
    return ["--config", ROOT / "config.yaml", "--config", study]


@pytest.mark.parametrize("file", ["data_batch_2", "batches.meta"])
def test_a_planted_cifar_file_is_refused_unread(tmp_path, file):
    marker = tmp_path / "MARKER"
    root = tmp_path / "data"
    write_synthetic_cifar(root, "cifar10", n_train=20, n_test=10)
    with open(root / "cifar-10-batches-py" / file, "wb") as handle:
        pickle.dump({"data": Planted(marker), "labels": [0], "label_names": Planted(marker)}, handle, protocol=2)
    refused = kdsweep("stats", *_cifar_config(tmp_path, root), "--out", tmp_path / "stats.json", cwd=tmp_path,
                      check=False)
    one_sentence(refused, file, "which no CIFAR file holds and kdsweep never loads", "python -m kdsweep download")
    assert not marker.exists() and not (tmp_path / "stats.json").exists()


def test_cifar_files_written_by_numpy_1_read_as_before(tmp_path):
    """The published files name numpy 1's reconstructor (numpy.core.multiarray); so may a copy here."""
    from kdsweep.datasets import load_dataset

    root = tmp_path / "data"
    write_synthetic_cifar(root, "cifar10", n_train=20, n_test=10)
    before = load_dataset("cifar10", root)
    for path in (root / "cifar-10-batches-py").glob("*_batch*"):
        data = path.read_bytes()
        assert b"numpy._core.multiarray" in data or b"numpy.core.multiarray" in data
        path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    after = load_dataset("cifar10", root)
    assert torch.equal(before.train_images, after.train_images) and torch.equal(before.test_labels, after.test_labels)


# ---------------------------------------------------------------- one checked reader per record


def test_records_are_typed_strictly(tmp_path):
    path = tmp_path / "r.json"
    candidate = {"method": "kd", "hparams": {"temperature": 4, "soft_weight": 0.5}, "val_acc_mean": 50.0, "n": 2,
                 "kept": "false"}
    io.write_json(path, {"student": STUDENT, "rung": 1, "stage": 0, "candidates": [candidate]})
    with pytest.raises(KdsweepError, match="kept = 'false', which is not true or false; delete it so that the "
                                           "workflow decides the rung again"):
        RungDecision.read(path)
    io.write_json(path, {"student": STUDENT, "rung": 2, "stage": 7, "candidates": []})
    with pytest.raises(KdsweepError, match="rung 2 at stage 7, which no halving.rungs can give"):
        RungDecision.read(path)
    path.write_text('{"student": "resnet18", "val_acc": NaN, "n": 1, "candidates": []}')
    with pytest.raises(KdsweepError, match="holds NaN, which is no number"):
        BestPoint.read(path)
    path.write_text('{"student": "resnet18", "val_acc": 1e999, "n": 1, "candidates": []}')  # json reads inf
    with pytest.raises(KdsweepError, match="val_acc = Infinity, which is not a number"):
        BestPoint.read(path)
    path.write_text("[1, 2]")
    with pytest.raises(KdsweepError, match="best-point record .* lacks student"):
        BestPoint.read(path)
    path.write_text(json.dumps({"student": "resnet18", "method": "kd", "hparams": {"temperature": "4"},
                                "val_acc": 90.0, "n": 1, "candidates": []}))
    with pytest.raises(KdsweepError, match="gives kd the hyperparameters temperature, not temperature, soft_weight"):
        BestPoint.read(path)
    assert Metrics.peek(io.write_text(tmp_path / "m.json", '{"epochs": 3, "val_acc": NaN}')) is None


def _touch_in_order(root, files, texts=None):
    """Write each file (a record's JSON, else {}; a pack's record with no point, which the plan reads for its
    packs) with increasing modification times, as jobs would have."""
    texts = texts or {}
    for i, name in enumerate(files):
        path = Path(root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(texts.get(name, '{"points": []}\n' if "/packs/" in name else "{}\n"))
        os.utime(path, (1e9 + i, 1e9 + i))


def _halving_upstream(plan, layout):
    """What a halving study has written once its first rung's packs finished: the rung decision is next."""
    return [f"{plan.results}/runtime.yaml", f"{plan.results}/data/stats.json", layout.train_record(plan.teacher),
            *(layout.pack_record(pack) for pack in plan.stage_packs(STUDENT, 0))]


def candidate(t, w, kept, acc=50.0):
    return {"method": "kd", "hparams": {"temperature": t, "soft_weight": w}, "val_acc_mean": acc, "n": 2, "kept": kept}


def decision(rung, stage, candidates):
    return json.dumps({"student": STUDENT, "rung": rung, "stage": stage, "keep": 0.5, "min_kept": 1, "seeds": [0, 1],
                       "candidates": candidates})


# what the first rung of tests/studies/halving.yaml decides: 2 of its 4 points go on
RUNG1 = [candidate(2, 0.5, False), candidate(2, 0.9, True), candidate(4, 0.5, False), candidate(4, 0.9, True)]


@pytest.mark.workflow
@pytest.mark.parametrize("record, words", [
    ('{"student": "mobilenet_v3_small", "rung": 1, "stage": 0, "candidates": "x"}', ["candidates = 'x', which is not a list"]),
    (decision(1, 0, [candidate(2, 0.5, "false")]), ["kept = 'false', which is not true or false"]),
    (decision(1, 0, [{**candidate(2, 0.5, True), "method": "kdx"}]), ["names the KD method 'kdx'"]),
    (decision(1, 0, [candidate(3, 0.5, True)]), ["judged kd point", "not a point of mobilenet_v3_small's sweep"]),
], ids=["candidates a string", "kept a string", "an unknown method", "a point of no sweep"])
def test_a_damaged_rung_decision_stops_a_dry_run_in_one_sentence(tmp_path, record, words):
    """tests/studies/halving.yaml with its first rung's packs done, and the rung's record damaged: the dry run,
    which reads it to plan the next rung's packs, stops with the record's sentence, and plans nothing on it. A
    damaged record stops Snakemake as it starts (no input function's traceback); one that judged a point of
    no sweep of the config stops it where Snakemake reads the record (a record that a changed config made
    stale is never read there: Snakemake makes it again)."""
    plan = Plan(load_config([ROOT / "config.yaml", HALVING]))
    layout = Layout(plan)
    rung = layout.rung_decision(STUDENT, 0)
    _touch_in_order(tmp_path, [*_halving_upstream(plan, layout), rung], {rung: record})
    result = snakemake(tmp_path, "--dry-run", configfiles=[HALVING], check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in output
    if "sweep" not in words[-1]:
        assert "InputFunctionException" not in output and "Traceback" not in output, output[-3000:]
    assert f"{rung} " in output and "so that the workflow decides the rung again" in output
    for word in words:
        assert word in output, (word, output[-2000:])


@pytest.mark.workflow
def test_a_best_point_record_that_is_a_list_or_names_a_pruned_point_stops_a_dry_run(tmp_path):
    """The confirmation's record: a JSON list (tiny study); a point successive halving pruned (halving study,
    both rungs decided and their survivors finished)."""
    confirm = ["--config", "confirm={seeds: [5]}"]
    plan = Plan(load_config([ROOT / "config.yaml", TINY_WORKFLOW], ["confirm={seeds: [5]}"]))
    layout = Layout(plan)
    record = layout.confirm_record(STUDENT)
    upstream = [f"{plan.results}/runtime.yaml", f"{plan.results}/data/stats.json", layout.train_record(plan.teacher),
                *layout.finished_files(plan.sweep(STUDENT)), record]
    _touch_in_order(tmp_path / "list", upstream, {record: "[1, 2]\n"})
    result = snakemake(tmp_path / "list", "--dry-run", *confirm, configfiles=[TINY_WORKFLOW], check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "InputFunctionException" not in output and "Traceback" not in output
    assert f"best-point record {record} lacks student" in output, output[-2000:]

    plan = Plan(load_config([ROOT / "config.yaml", HALVING], ["confirm={seeds: [5]}"]))
    layout = Layout(plan)
    rung1, rung2 = layout.rung_decision(STUDENT, 0), layout.rung_decision(STUDENT, 1)
    texts = {rung1: decision(1, 0, RUNG1), rung2: decision(2, 1, [candidate(2, 0.9, False), candidate(4, 0.9, True)])}
    kept = {("kd", (("temperature", 4), ("soft_weight", 0.9)))}
    pruned = {"student": STUDENT, "method": "kd", "hparams": {"temperature": 2.0, "soft_weight": 0.9},
              "temperature": 2.0, "soft_weight": 0.9, "val_acc": 50.0, "n": 2, "candidates": []}
    texts[layout.confirm_record(STUDENT)] = json.dumps(pruned)
    kept_first = {("kd", (("temperature", t), ("soft_weight", 0.9))) for t in (2, 4)}
    files = [*_halving_upstream(plan, layout), rung1,
             *(layout.pack_record(pack) for pack in plan.rung_packs(STUDENT, 1, kept_first)),
             rung2, *(layout.pack_record(pack) for pack in plan.rung_packs(STUDENT, 2, kept)),
             layout.confirm_record(STUDENT)]
    _touch_in_order(tmp_path / "pruned", files, texts)
    result = snakemake(tmp_path / "pruned", "--dry-run", *confirm, configfiles=[HALVING], check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "InputFunctionException" not in output and "Traceback" not in output
    assert "picks kd point {'temperature': 2.0, 'soft_weight': 0.9}, which successive halving pruned" in output, \
        output[-2000:]
    # the same study, its record picking the survivor: planned as before
    texts[layout.confirm_record(STUDENT)] = json.dumps({**pruned, "hparams": {"temperature": 4.0, "soft_weight": 0.9},
                                                        "temperature": 4.0})
    _touch_in_order(tmp_path / "survivor", files, texts)
    result = snakemake(tmp_path / "survivor", "--dry-run", *confirm, configfiles=[HALVING])
    assert "mobilenet_v3_small_T4_soft0.9_seed5" in result.stdout


def _fake_study(root):
    """A small finished study in the documented formats: teacher, a baseline, two kd points (seed 0)."""
    write_run(root, "teacher", "resnet50", 0)
    write_run(root, "baseline", STUDENT, 0, val_acc=80.0, test_acc=79.0)
    write_run(root, "kd", STUDENT, 0, 2, 0.9, val_acc=81.0, test_acc=80.0)
    write_run(root, "kd", STUDENT, 0, 4, 0.9, val_acc=82.0, test_acc=81.0)
    return root


@pytest.mark.parametrize("candidates, words", [
    ([{**candidate(2, 0.9, False), "method": "kdx"}], ["names the KD method 'kdx'"]),
    ([{**candidate(2, 0.9, False), "hparams": {"temperature": 2}}], ["gives kd the hyperparameters temperature, not"]),
    ([{**candidate(2, 0.9, False), "hparams": {"temperature": "2", "soft_weight": 0.9}}], ["temperature '2' is not"]),
    ([{**candidate(2, 0.9, False), "val_acc_mean": None}], ["val_acc_mean = null"]),
], ids=["unknown method", "missing hyperparameter", "non-numeric hyperparameter", "null accuracy"])
def test_aggregate_refuses_a_damaged_rung_decision_in_one_sentence(tmp_path, candidates, words):
    results = _fake_study(tmp_path / "study")
    path = results / "halving" / f"{STUDENT}_rung1.json"
    path.parent.mkdir()
    path.write_text(decision(1, 0, candidates))
    one_sentence(kdsweep("aggregate", results, "--search", "halving", check=False), str(path), *words,
                 "delete it so that the workflow decides the rung again")
    assert not (results / "tables").exists()


def test_aggregate_refuses_non_finite_numbers_and_a_best_point_that_halving_pruned(tmp_path):
    results = _fake_study(tmp_path / "study")
    metrics = results / Run("baseline", STUDENT, 0).folder / "metrics.json"
    text = metrics.read_text()
    for literal, words in (("NaN", "holds NaN, which is no number"), ("Infinity", "holds Infinity"),
                           ("1e999", "val_acc = Infinity, which is not a number")):
        metrics.write_text(text.replace('"val_acc": 80.0', f'"val_acc": {literal}'))
        one_sentence(kdsweep("aggregate", results, check=False), str(metrics), words)
    metrics.write_text(text)

    (results / "halving").mkdir()
    (results / "halving" / f"{STUDENT}_rung1.json").write_text(decision(1, 0, [candidate(2, 0.9, False, 81.0),
                                                                               candidate(4, 0.9, True, 82.0)]))
    choice = results / "confirm" / f"{STUDENT}.json"
    choice.parent.mkdir()
    choice.write_text(json.dumps({"student": STUDENT, "method": "kd", "hparams": {"temperature": 2.0, "soft_weight": 0.9},
                                  "val_acc": 81.0, "n": 1, "candidates": []}))
    one_sentence(kdsweep("aggregate", results, "--search", "halving", check=False), str(choice),
                 "which successive halving pruned", "delete it so that the workflow chooses the point again")
    choice.write_text(choice.read_text().replace('"temperature": 2.0', '"temperature": 4.0'))
    kdsweep("aggregate", results, "--search", "halving")


def test_status_refuses_a_damaged_rung_decision_in_one_sentence(tmp_path):
    path = tmp_path / "results" / "halving-tiny" / "halving" / f"{STUDENT}_rung1.json"
    path.parent.mkdir(parents=True)
    status = ["status", "--configfile", HALVING]
    shown = kdsweep(*status, cwd=tmp_path).stdout
    assert f"{STUDENT} rung 1 (epoch 1): not decided yet" in shown
    path.write_text(decision(1, 0, [candidate(2, 0.5, "false")]))
    one_sentence(kdsweep(*status, cwd=tmp_path, check=False), "halving-tiny/halving/mobilenet_v3_small_rung1.json",
                 "kept = 'false'")
    path.write_text(decision(1, 0, RUNG1))
    assert f"{STUDENT} rung 1 (epoch 1): 4 judged, 2 kept, 2 dropped" in kdsweep(*status, cwd=tmp_path).stdout


# ---------------------------------------------------------------- what is not the study's is ignored


def test_strays_are_ignored_with_one_warning_and_never_tabled_or_lost(tmp_path):
    """A halving study's tables (its rung pruned kd's T = 2), then the same with strays under each of its
    folders: the same tables, and one warning line naming the strays."""
    results = _fake_study(tmp_path / "study")
    (results / "halving").mkdir()
    (results / "halving" / f"{STUDENT}_rung1.json").write_text(decision(1, 0, [candidate(2, 0.9, False, 81.0),
                                                                               candidate(4, 0.9, True, 82.0)]))
    kdsweep("aggregate", results, "--search", "halving")
    grid = pd.read_csv(results / "tables" / "grid.csv").set_index("temperature")
    assert grid.loc[2, "pruned_at_epoch"] == 1 and grid.loc[4, "test_acc_mean"] == 81.0
    tables = {path.name: path.read_text() for path in (results / "tables").glob("*.csv")}
    run = results / Run("baseline", STUDENT, 0).folder
    kd_run = results / Run.distilled_run("kd", STUDENT, 0, "kd", {"temperature": 2, "soft_weight": 0.9}).folder
    strays = [run.with_name(run.name + ".bak"), run.with_name(run.name + " (copy)"),
              kd_run.with_name("old_" + kd_run.name),  # a run's name, holding another run's metrics.json
              results / "runs" / "notes", results / "runs" / "baseline" / "loop",
              results / "halving" / "notes.json", results / "halving" / f"{STUDENT}_rung1 (copy).json",
              results / "confirm" / "notes.json", results / "packs" / "notes.txt",
              results / "trained" / "teacher" / "resnet50_seed0.json.bak",
              results / "attacks" / "baseline" / run.name / "fgsm_eps0.01 (copy).json",
              results / "evaluation" / "baseline" / "notes.json", results / "attacks" / "empty"]
    for stray in strays[:3]:
        shutil.copytree(run if stray.name.startswith(run.name) else kd_run, stray)
    strays[3].mkdir()
    strays[4].symlink_to(strays[4].name)  # a link that loops
    for stray in strays[5:-1]:
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_text('{"candidates": "x", "note": "by hand"}')
    strays[-1].mkdir(parents=True)
    result = kdsweep("aggregate", results, "--search", "halving")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("kdsweep: warning:")]
    assert len(warnings) == 1 and f"ignored {len(strays)} file(s) or folder(s)" in warnings[0], result.stderr
    assert "runs/notes, runs/baseline/loop" in warnings[0] and "Traceback" not in result.stderr
    assert {path.name: path.read_text() for path in (results / "tables").glob("*.csv")} == tables
    assert all(stray.is_symlink() or stray.exists() for stray in strays)  # nothing moved or deleted


# ---------------------------------------------------------------- command-line values


RUNG_ARGS = ["rung-decision", "pack.json", "--out", "out.json", "--student", STUDENT, "--rung", 2, "--seeds", 0, 1]


@pytest.mark.parametrize("flags, words", [
    *((["--stage", 0, "--keep", keep, "--min-kept", 1], [f"--keep {float(keep)} is out of bounds", "halving.keep"])
      for keep in ("nan", "inf", "1e308", "0", "1.5", "-1")),
    *((["--stage", 0, "--keep", 0.5, "--min-kept", kept], ["--min-kept"]) for kept in ("0", "-1", "1.5", "nan")),
    (["--stage", 7, "--keep", 0.5, "--min-kept", 1], ["--stage 7 is no index of a rung at epoch 2"]),
    (["--stage", -1, "--keep", 0.5, "--min-kept", 1], ["--stage -1 is no index"]),
], ids=lambda value: " ".join(map(str, value)) if isinstance(value, list) and "--stage" in value else None)
def test_rung_decision_values_are_held_to_the_schemas_bounds(tmp_path, flags, words):
    one_sentence(kdsweep(*RUNG_ARGS, *flags, cwd=tmp_path, check=False), *words)
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("point, words", [
    ("kd:temperature=4,temperature=8,soft_weight=0.5", ["gives temperature twice"]),
    ("kd:temperature=NaN,soft_weight=0.5", ["'temperature=NaN' is not <name>=<number>"]),
])
def test_a_point_is_given_each_hyperparameter_once(tmp_path, point, words):
    one_sentence(kdsweep("distill", "--student", STUDENT, "--teacher", "t", "--seed", 0, "--stats", "s.json",
                         "--point", point, "--out", "run", cwd=tmp_path, check=False), *words)


# ---------------------------------------------------------------- a run kept aside


def test_a_file_in_the_way_of_the_aside_folder_is_named_as_such(tiny_study, tmp_path):
    results = tmp_path / "results" / "s"
    run = results / Run("baseline", STUDENT, 1).folder
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"role": "baseline", "model": STUDENT, "seed": 1,
                                                  "config_hash": "another", "config": {}}))
    (results / "aside").write_text("a file where the aside folder goes\n")
    refused = kdsweep(*train_args(tiny_study, run, "--rerun-stale"), cwd=tmp_path, check=False)
    one_sentence(refused, "a file is in the way: move", "results/s/aside away")
    assert "writable" not in refused.stderr and (run / "metrics.json").is_file()
    (results / "aside").unlink()
    (results / "aside").mkdir()
    (results / "aside" / "baseline").write_text("in the way\n")
    with pytest.raises(KdsweepError, match="a file is in the way: move .*aside/baseline away"):
        identity.put_aside(run, "another")


# ---------------------------------------------------------------- a retried job's log


def _job(args, log, **popen):
    """`python -m kdsweep ARGS >> log 2>&1` as a workflow job runs it (kdsweep.joblog.ENV set)."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "kdsweep", *map(str, args)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, joblog.ENV: "1", "PYTHONUNBUFFERED": "1"},
                                **popen)


def test_a_retried_job_keeps_the_stopped_attempts_lines_in_its_log(tiny_study, tmp_path):
    """A training job stopped by SIGTERM, its log deleted (as Snakemake deletes it before the next attempt),
    then run again: the log holds both attempts, each under its header, the first's `received SIGTERM`
    line kept; status reads the verdict of the last attempt only."""
    from kdsweep.status import _log_verdict

    log, run = tmp_path / "logs" / "run.log", tmp_path / "run"
    log.parent.mkdir()
    args = train_args(tiny_study, run, "training.max_epochs=2")
    first = _job(args, log, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while "  epoch   1" not in log.read_text() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=300) == 75
    assert _log_verdict(log) == ("stopped", "stopped by SIGTERM")
    log.unlink()  # Snakemake, before the retry
    assert _job(args, log, cwd=tmp_path).wait(timeout=300) == 0
    text = log.read_text()
    assert text.count(joblog.HEADER) == 2 and f"{joblog.HEADER} 2 of this job (the lines above are" in text
    first_attempt, second_attempt = text.split(f"{joblog.HEADER} 2")
    assert "received SIGTERM: stopped" in first_attempt and f"resuming {run} after epoch" in second_attempt
    assert _log_verdict(log) is None  # the retry did not fail: the first attempt's stop is not its verdict
    assert joblog.history(log).is_file() and os.path.samefile(joblog.history(log), log)


@pytest.mark.workflow
def test_snakemake_running_a_job_again_keeps_its_earlier_log(tiny, tmp_path):
    """The real workflow: Snakemake deletes the log of a job it runs again; the log still holds the earlier
    attempt under its header."""
    study = copy_of(tiny, tmp_path / "study")
    log = study / "results" / "tiny" / "logs" / "runtime.log"
    assert log.read_text().count(joblog.HEADER) == 1
    snakemake(study, "--cores", "1", "--forcerun=runtime", "results/tiny/runtime.yaml", configfiles=[TINY_WORKFLOW])
    text = log.read_text()
    assert text.count(joblog.HEADER) == 2 and "kdsweep config" in text.split(f"{joblog.HEADER} 2")[0]


# ---------------------------------------------------------------- hand-edited checkpoints (a hostile user's)

def _edited(saved):
    """Each edit of a real checkpoint (a dict as torch.load gives it) a user or another version could make:
    (name, edited copy, words the refusal holds; None where the run resumes exactly)."""
    import copy

    model = saved["model"]
    first = next(key for key, value in model.items() if value.is_floating_point())
    out = []

    def edit(name, change, words):
        edited = copy.deepcopy(saved)
        change(edited)
        out.append((name, edited, words))

    edit("float64 weights", lambda c: c["model"].update({k: v.double() if v.is_floating_point() else v
                                                        for k, v in c["model"].items()}),
         f"its model's {first} is float64, this run's model's float32")
    edit("float16 weights", lambda c: c["model"].update({first: c["model"][first].half()}),
         f"its model's {first} is float16, this run's model's float32")
    edit("a missing weight", lambda c: c["model"].pop(first), f"its model lacks {first}")
    edit("an extra weight", lambda c: c["model"].update({"net.extra.weight": torch.zeros(3)}),
         "its model has net.extra.weight, which this run's model has not")
    edit("another architecture's weights", lambda c: c.update(
        model={f"net.{k}": v for k, v in torchvision_resnet18().state_dict().items()}), "its model lacks")
    edit("a reshaped weight", lambda c: c["model"].update({first: c["model"][first].flatten()}),
         f"its model's {first} is of shape")
    edit("Adam's moments of another shape", lambda c: c["optimizer"]["state"][0].update(
        exp_avg=torch.zeros(7)), "its optimizer's state of parameter 0")
    edit("one parameter group too many", lambda c: c["optimizer"]["param_groups"].append(
        dict(c["optimizer"]["param_groups"][0])), "its optimizer")
    edit("an RNG state of another size", lambda c: c["rng"].update(cpu=torch.zeros(10, dtype=torch.uint8)),
         "its rng's cpu")
    edit("a data generator state of another dtype", lambda c: c.update(data=c["data"].float()), "its data")
    edit("an epoch that is a string", lambda c: c["state"].update(epoch="1"), "its state's epoch")
    edit("a negative epoch", lambda c: c["state"].update(epoch=-3), "its state's epoch")
    edit("a version from the future and an extra key", lambda c: c.update(version=99, note="edited"), None)
    return out


def torchvision_resnet18():
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


def test_a_hand_edited_checkpoint_is_refused_in_one_sentence_or_resumes_exactly(tiny_study, tmp_path):
    """Weights of another dtype, shape, set of keys or architecture, an optimiser state or an RNG state that does
    not fit, numbers of the wrong type in the run's state: unchecked, each ended the resume in a RuntimeError,
    ValueError or TypeError traceback (load_state_dict, set_rng_state, ...) or, for weights of another float
    dtype, resumed on silently converted (float16: rounded) weights. Each is now one sentence naming the fix,
    before any weight is loaded; a key kdsweep does not read (a `version` from a later release) is ignored and
    the run resumes to the same numbers as from the untouched file. With --rerun-stale (the workflow's jobs),
    a checkpoint that does not fit is deleted and the run trained from its start."""
    from kdsweep.train import train_points

    config = load_config([c for c in tiny_study.config if c != "--config"], ["training.max_epochs=2"])
    paused = tmp_path / "paused"
    train_points(config, [Run("baseline", STUDENT, 1)], tiny_study.stats, [paused], until_epoch=1, log=lambda _: None)
    saved = torch.load(paused / "checkpoint.pt", weights_only=True)
    reference = tmp_path / "reference"
    shutil.copytree(paused, reference)
    kdsweep(*train_args(tiny_study, reference, "training.max_epochs=2"), cwd=tmp_path)
    expected = json.loads((reference / "metrics.json").read_text())
    for number, (name, edited, words) in enumerate(_edited(saved)):
        run = tmp_path / f"edit{number}"
        shutil.copytree(paused, run)
        torch.save(edited, run / "checkpoint.pt")
        result = kdsweep(*train_args(tiny_study, run, "training.max_epochs=2"), cwd=tmp_path, check=False)
        if words is None:
            assert result.returncode == 0 and "resuming" in result.stdout, (name, result.stderr[-2000:])
            got = json.loads((run / "metrics.json").read_text())
            assert {k: got[k] for k in ("val_loss", "test_acc", "epochs")} == {
                k: expected[k] for k in ("val_loss", "test_acc", "epochs")}, name
            continue
        one_sentence(result, str(run / "checkpoint.pt"), "does not fit this run", words,
                     "delete it to start the run over")
        assert not (run / "metrics.json").exists(), name
        refused = run
        assert torch.equal(torch.load(run / "checkpoint.pt", weights_only=True)["data"], edited["data"]), name
    started = kdsweep(*train_args(tiny_study, refused, "training.max_epochs=2", "--rerun-stale"), cwd=tmp_path)
    assert "is damaged: starting the run over" in started.stdout and "resuming" not in started.stdout
    assert json.loads((refused / "metrics.json").read_text())["resumed"] == 0


def test_best_weights_that_do_not_fit_the_model_are_refused_when_the_run_resumes(tiny_study, tmp_path):
    """best.pt, which the run loads when it stops: of another architecture, unchecked, the resumed run trained to
    its end and then stopped in a load_state_dict traceback; in float16 it was loaded rounded. Both are refused
    at the resume, in one sentence, before any epoch."""
    from kdsweep.train import train_points

    config = load_config([c for c in tiny_study.config if c != "--config"], ["training.max_epochs=2"])
    paused = tmp_path / "paused"
    train_points(config, [Run("baseline", STUDENT, 1)], tiny_study.stats, [paused], until_epoch=1, log=lambda _: None)
    best = torch.load(paused / "best.pt", weights_only=True)
    for name, edited, words in (
            ("another architecture", {f"net.{k}": v for k, v in torchvision_resnet18().state_dict().items()},
             "its model lacks"),
            ("float16", {k: v.half() if v.is_floating_point() else v for k, v in best.items()}, "is float16")):
        run = tmp_path / name.replace(" ", "_")
        shutil.copytree(paused, run)
        torch.save(edited, run / "best.pt")
        one_sentence(kdsweep(*train_args(tiny_study, run, "training.max_epochs=2"), cwd=tmp_path, check=False),
                     str(run / "best.pt"), "does not fit this run", words, "delete it and the run's checkpoint.pt")
        assert not (run / "metrics.json").exists()


def test_a_truncated_checkpoint_is_one_sentence_wherever_it_is_cut(tiny_study, tmp_path):
    """A zip cut at its start, in its middle or just before its central directory's end: one sentence each."""
    from kdsweep.train import train_points

    config = load_config([c for c in tiny_study.config if c != "--config"], ["training.max_epochs=2"])
    paused = tmp_path / "paused"
    train_points(config, [Run("baseline", STUDENT, 1)], tiny_study.stats, [paused], until_epoch=1, log=lambda _: None)
    whole = (paused / "checkpoint.pt").read_bytes()
    for cut in (0, 10, len(whole) // 2, len(whole) - 30, len(whole) - 1):
        (paused / "checkpoint.pt").write_bytes(whole[:cut])
        with pytest.raises(KdsweepError, match="delete it to start the run over$") as refused:
            checkpoint.load(paused / "checkpoint.pt", {"x"})
        assert "\n" not in str(refused.value), cut
