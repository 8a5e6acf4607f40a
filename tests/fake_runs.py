"""Finished run folders, attack results and confirmation records in the documented formats, for the
tests of the confirmation, the paired gains, the sensitivity and the reference tables (no training).

The records are built with their types (kdsweep.records), which spell the keys. What is not given is what
a record of an earlier version lacks (a kd run's method and hyperparameters and its model digest; the run
version an attack result measured, written as null), so that the tables keep reading those versions."""

from conftest import kd_run
from kdsweep.layout import attack_file
from kdsweep.records import AttackResult, Metrics


def write_run(root, role, model, seed, temperature=None, soft_weight=None, val_acc=90.0, test_acc=90.0,
              dataset="cifar10", subset=None):
    """A finished run folder (metrics.json as kdsweep.train writes it, the keys the tables read); its folder."""
    run = kd_run(role, model, seed, temperature, soft_weight)
    folder = root / run.folder
    folder.mkdir(parents=True, exist_ok=True)
    Metrics(role=role, dataset=dataset, model=model, seed=seed, temperature=temperature, soft_weight=soft_weight,
            teacher_run=None, epochs=10, best_epoch=8, stopped_early=True, val_acc=val_acc, val_loss=0.3,
            test_acc=test_acc, test_loss=0.3, train_seconds=1.0, device="cpu",
            config={"dataset": {"name": dataset, "subset": subset}}, config_hash="0").write(folder / "metrics.json")
    return folder


def write_method_run(root, role, model, seed, method, hparams, val_acc=90.0, test_acc=90.0, epochs=10,
                     train_seconds=1.0, device="cpu", dataset="cifar10"):
    """A finished run folder of any KD method's point (metrics.json with its method and hyperparameters)."""
    from kdsweep.plan import Run

    run = Run.distilled_run(role, model, seed, method, hparams)
    folder = root / run.folder
    folder.mkdir(parents=True, exist_ok=True)
    Metrics(role=role, dataset=dataset, model=model, seed=seed, temperature=run.temperature,
            soft_weight=run.soft_weight, method=method, hparams=dict(run.hparams), teacher_run=None, epochs=epochs,
            best_epoch=epochs, stopped_early=False, val_acc=val_acc, val_loss=0.3, test_acc=test_acc, test_loss=0.3,
            train_seconds=train_seconds, device=device, config={"dataset": {"name": dataset, "subset": None}},
            config_hash="0").write(folder / "metrics.json")
    return folder


def write_attack(root, role, model, seed, temperature, soft_weight, epsilon, adv_acc, clean_acc, attack="fgsm"):
    """attacks/<role>/<run>/<attack>_eps<eps>.json as `kdsweep attack` writes it."""
    run = kd_run(role, model, seed, temperature, soft_weight)
    AttackResult(attack=attack, params={}, epsilon=epsilon, run=str(root / run.folder), role=role, model=model,
                 temperature=temperature, soft_weight=soft_weight, seed=seed, n=1000, clean_acc=clean_acc,
                 adv_acc=adv_acc, n_correct=900, adv_acc_on_correct=adv_acc).write(
        root / "attacks" / role / run.name / attack_file(attack, epsilon))
