"""A run's identity (kdsweep.identity) through the real command line: what it holds and what it does not,
runs kept aside and brought back, results bound to the version they measured, and the files a job reads
checked against what they claim.

Commands run in this process (conftest.run_kdsweep); one that must be stopped mid-training as a real
process (conftest.run_until_epoch). The workflow's side (a moved data folder plans nothing, a config
switched away and back retrains nothing) is in tests/test_workflow.py.
"""

import json
import shutil
import signal

import pytest
import torch

from conftest import run_kdsweep as kdsweep
from conftest import run_until_epoch, write_synthetic_cifar
from kdsweep import identity, io


@pytest.fixture(scope="module")
def study(tiny_study, tmp_path_factory):
    """(folder, config args): this module's folder beside the shared tiny study (conftest.tiny_study)."""
    return tiny_study.beside(tmp_path_factory.mktemp("test_identity")), tiny_study.config


def train(folder, config, out, *extra):
    return ["train", *config, "--role", "baseline", "--model", "mobilenet_v3_small", "--seed", 2,
            "--stats", folder / "stats.json", "--out", out, "training.max_epochs=2", *extra]


def metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_a_config_switched_away_and_back_keeps_the_first_run_aside_and_brings_it_back(study):
    """The workflow's jobs (--rerun-stale) never delete a finished run: another configuration's run is
    kept aside under its hash, and comes back, untrained, when the configuration returns."""
    folder, config = study
    run = folder / "runs" / "baseline" / "mobilenet_v3_small_seed2"
    first = kdsweep(*train(folder, config, run), "--rerun-stale", cwd=folder)
    assert " epoch " in first.stdout
    original = metrics(run)
    assert original["config"]["dataset"]["digest"] and "root" not in original["config"]["dataset"]
    assert original["model_digest"] == identity.file_digest(run / "model.pt")

    # by hand, without --rerun-stale, another configuration's run is refused, untouched
    refused = kdsweep(*train(folder, config, run, "training.lr=0.002"), cwd=folder, check=False)
    assert refused.returncode == 2 and "--rerun-stale to keep it aside" in refused.stderr
    assert metrics(run) == original

    changed = kdsweep(*train(folder, config, run, "training.lr=0.002"), "--rerun-stale", cwd=folder)
    aside = folder / "aside" / "baseline" / f"{run.name}@{original['config_hash']}"
    assert f"kept aside in {aside}" in changed.stdout and " epoch " in changed.stdout
    assert metrics(aside) == original and (aside / "model.pt").is_file()
    second = metrics(run)
    assert second["config_hash"] != original["config_hash"]

    back = kdsweep(*train(folder, config, run), "--rerun-stale", cwd=folder)
    assert "brought back this configuration's run" in back.stdout and " epoch " not in back.stdout
    assert metrics(run) == original
    assert identity.file_digest(run / "model.pt") == original["model_digest"]
    kept = folder / "aside" / "baseline" / f"{run.name}@{second['config_hash']}"
    assert metrics(kept) == second and not aside.exists()
    assert identity.study_aside(folder) == [kept]


def test_a_moved_data_folder_is_the_same_run_and_changed_files_under_one_path_are_refused(tmp_path):
    """CIFAR-10's files (synthetic, in its on-disk format): the run's identity holds the data's digest, not
    its folder. Moved, the data trains nothing again; different files under the same path are refused by
    the training job (against stats.json) and by an attack (against the run)."""
    data = tmp_path / "data"
    write_synthetic_cifar(data, "cifar10", n_train=60, n_test=20, seed=0)
    study = tmp_path / "study.yaml"
    study.write_text(json.dumps({"dataset": {"name": "cifar10", "root": str(data)},
                                 "training": {"batch_size": 16, "max_epochs": 1, "eval_batch_size": 64},
                                 "runtime": {"device": "cpu", "threads": 1}}))
    config = ["--config", study]
    kdsweep("stats", *config, "--out", tmp_path / "stats.json")
    run = tmp_path / "run"
    args = ["train", *config, "--role", "baseline", "--model", "mobilenet_v3_small", "--seed", 0,
            "--stats", tmp_path / "stats.json", "--out", run]
    kdsweep(*args)
    before = metrics(run)
    assert before["config"]["dataset"]["digest"] == io.read_json(tmp_path / "stats.json")["data_digest"]

    moved = tmp_path / "moved"
    shutil.move(data, moved)
    again = kdsweep(*args, f"dataset.root={moved}")
    assert " epoch " not in again.stdout and metrics(run) == before

    shutil.rmtree(moved)
    write_synthetic_cifar(moved, "cifar10", n_train=60, n_test=20, seed=1)  # other images, same path
    refused = kdsweep(*args, f"dataset.root={moved}", check=False)
    assert refused.returncode == 2
    assert f"the cifar10 files in {moved}" in refused.stderr and "are not those the stats file was computed from" \
        in refused.stderr, refused.stderr
    attack = kdsweep("attack", *config, f"dataset.root={moved}", "--run", run, "--epsilon", 0.1,
                     "--out", tmp_path / "fgsm.json", check=False)
    assert attack.returncode == 2 and "was trained on other cifar10 files" in attack.stderr, attack.stderr
    assert not (tmp_path / "fgsm.json").exists()


def test_a_swapped_model_file_is_refused_and_results_record_the_version_they_measured(study, tiny_study):
    """An attack reads model.pt against its metrics.json (digest, architecture); its result records the
    run's hash and model digest, which aggregate pairs with nothing else."""
    folder, config = study
    run = folder / "swapped"
    shutil.copytree(tiny_study.teacher, run)
    result = folder / "attacks" / "teacher" / "swapped" / "fgsm_eps0.1.json"
    kdsweep("attack", *config, "--run", run, "--epsilon", 0.1, "--out", result)
    measured = json.loads(result.read_text())
    assert (measured["run_hash"], measured["model_digest"]) == (metrics(run)["config_hash"],
                                                               metrics(run)["model_digest"])

    other = folder / "other-model"
    kdsweep(*train(folder, config, other))
    shutil.copy(other / "model.pt", run / "model.pt")
    refused = kdsweep("attack", *config, "--run", run, "--epsilon", 0.1, "--out", folder / "lie.json", check=False)
    assert refused.returncode == 2 and "is not the model its metrics.json describes" in refused.stderr
    assert not (folder / "lie.json").exists()


def test_a_retrained_runs_old_results_are_left_out_of_the_tables(study, tmp_path, capsys):
    """A study folder whose run was retrained after its attack and evaluation: aggregate leaves the old
    results out, with a warning, instead of pairing them with the new run."""
    folder, config = study
    results = tmp_path / "results" / "s"
    run = results / "runs" / "baseline" / "mobilenet_v3_small_seed2"
    kdsweep(*train(folder, config, run), cwd=folder)
    attack = results / "attacks" / "baseline" / run.name / "fgsm_eps0.1.json"
    evaluation = results / "evaluation" / "baseline" / f"{run.name}.json"
    kdsweep("attack", *config, "--run", run, "--epsilon", 0.1, "--out", attack)
    kdsweep("evaluate", *config, "--run", run, "--teacher", folder / "teacher", "--out", evaluation)
    kdsweep("aggregate", results)
    rows = (results / "tables" / "robustness.csv").read_text().splitlines()
    assert len(rows) == 2 and "fgsm" in rows[1]

    kdsweep(*train(folder, config, run, "training.lr=0.002"), "--rerun-stale", cwd=folder)
    capsys.readouterr()
    table = kdsweep("aggregate", results)
    assert "left out 2 result file(s) that measured another version of their run" in table.stderr
    assert len((results / "tables" / "robustness.csv").read_text().splitlines()) == 1  # header only
    runs = (results / "tables" / "runs.csv").read_text().splitlines()
    header, row = runs[0].split(","), runs[1].split(",")
    assert row[header.index("agreement")] == ""
    assert float(row[header.index("test_acc")]) == pytest.approx(metrics(run)["test_acc"], abs=1e-8)


def test_a_damaged_best_weights_file_is_refused_by_hand_and_started_over_by_the_workflow(study):
    folder, config = study
    run = folder / "damaged-best"
    args = train(folder, config, run, "training.max_epochs=4")
    assert run_until_epoch(folder, args, 1, signal.SIGTERM) == 75
    (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:200])
    refused = kdsweep(*args, cwd=folder, check=False)
    assert refused.returncode == 2 and "best.pt cannot be read: it is corrupt or truncated" in refused.stderr
    assert "Traceback" not in refused.stderr and not (run / "metrics.json").exists()
    recovered = kdsweep(*args, "--rerun-stale", cwd=folder)
    assert "starting the run over" in recovered.stdout and "resuming" not in recovered.stdout
    assert metrics(run)["epochs"] == 4 and metrics(run)["resumed"] == 0
    assert torch.load(run / "model.pt", weights_only=True)["model"] == "mobilenet_v3_small"
