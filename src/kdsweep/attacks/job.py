"""The attack jobs (`python -m kdsweep attack`).

- `robustness_job` (`--out-dir DIR --masking FILE`, what the workflow runs, one job per run): every attack of
  the config at every epsilon, each on every test image or on the evaluation subset
  (robustness.full_test_set, robustness.subset), written as DIR/<attack>_eps<eps>.json; the worst case over
  the headline's attacks per epsilon (DIR/worst_eps<eps>.json); then the transfer attacks from the teacher and
  the run's own seed's baseline (--teacher, --baseline), the attacks at robustness.masking.large_epsilon and the
  gradient-masking checks (kdsweep.attacks.diagnostics); with --evaluation FILE2 the run's kdsweep.evaluation
  record (fidelity to --teacher, calibration, logit scale: the workflow's evaluation/<role>/<run>.json); and
  last FILE (kdsweep.records.Masking). One process loads the data and the models once for all of them.
- `attack_job` (`--attack NAME --epsilon E --out FILE`): one attack at one epsilon on every test image.

Every pass is float32 with autocast off (the runtime section gives the device and memory layout only); on the
CPU the clean accuracy of a result on every test image is the run's test_acc exactly (same batches, same
arithmetic), on CUDA with runtime.precision bf16 it may differ from it by an image or two.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .. import evaluation, identity, split, trained
from ..config import check_value
from ..errors import KdsweepError
from ..layout import attack_file
from ..records import AttackResult, Masking, MaskingCheck, TransferResult, pack_mask, run_keys
from ..runtime import Runtime, environment, nondeterministic_op
from . import ATTACKS, WORST, label
from .diagnostics import checks
from .evaluate import attack_examples, transfer_examples
from .examples import Examples, per_class, subset_indices, worst_case
from .suite import Suite


def precision(runtime: Runtime) -> dict:
    """The runtime record of an attack: the job's, but always float32 (TF32 where runtime.tf32 lets CUDA use it)."""
    record = runtime.record()
    return {**record, "precision": "tf32" if runtime.tf32 and runtime.device.type == "cuda" else "fp32"}


def _masks(examples: Examples, n_test: int) -> dict:
    """The bit masks over the test set of a result: robust, and the images attacked where not all."""
    robust = np.zeros(n_test, dtype=bool)
    robust[examples.indices] = examples.robust
    masks = {"n_test": n_test, "robust": pack_mask(robust)}
    if len(examples.indices) != n_test:
        attacked = np.zeros(n_test, dtype=bool)
        attacked[examples.indices] = True
        masks["examples"] = pack_mask(attacked)
    return masks


def result_record(examples: Examples, labels: np.ndarray, num_classes: int, **fields) -> AttackResult:
    """An AttackResult of per-image outcomes: the summary numbers, the bit masks and accuracy per class."""
    class_n, class_clean = per_class(labels[examples.indices], examples.clean, num_classes)
    _, class_adv = per_class(labels[examples.indices], examples.robust, num_classes)
    return AttackResult(**examples.summary(), **_masks(examples, len(labels)), class_n=class_n,
                        class_clean_acc=class_clean, class_adv_acc=class_adv, **fields)


def _attacking(step):
    try:
        return step()
    except RuntimeError as err:
        if refused := nondeterministic_op(err):
            raise refused from err
        raise


# The classes a loss needs: DLR divides by z_pi1 - z_pi3, its targeted form by z_pi1 - (z_pi3 + z_pi4) / 2.
_DLR_CLASSES = {"dlr": 3, "targeted_dlr": 4}


def check_classes(attacks: dict, num_classes: int):
    """Refuses, before any attack runs, an attack whose loss the dataset has too few classes for."""
    for name, params in attacks.items():
        loss = "targeted_dlr" if name == "apgd_t" else "dlr" if name == "apgd_dlr" else (params or {}).get("loss")
        need = _DLR_CLASSES.get(loss, 2)
        if num_classes < need:
            raise KdsweepError(f"attack {name} needs at least {need} classes (its DLR loss), and the dataset has "
                               f"{num_classes}; set attacks.{name} to null or give it another loss")


def _load(config, run_dir, runtime, splits, what="run"):
    run, model = trained.load(run_dir, config["dataset"], runtime.device, splits.num_classes, what,
                              data_digest=splits.digest)
    return run, runtime.place(model)


def attack_job(config: dict, run_dir, attack: str, epsilon: float, out, log=print):
    """A finished run under `attack` at `epsilon` on the config's whole test set; writes `out`
    (kdsweep.records.AttackResult) and returns it."""
    check_value("epsilons.items", epsilon, "--epsilon")
    if attack not in ATTACKS:
        raise KdsweepError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    params = config["attacks"].get(attack)
    if params is None:
        raise KdsweepError(f"attack {attack!r} is switched off in the config (attacks.{attack} "
                           f"is null or absent); give it its parameters under attacks: or pick another --attack")
    run_dir = Path(run_dir)
    trained.finished(run_dir)  # before the data is read: the cheap refusals first
    runtime = Runtime.from_config(config["runtime"], training_job=False)
    splits = split.load_splits(config["dataset"], runtime.device, split.study_stats(run_dir, config))
    check_classes({attack: params}, splits.num_classes)
    run, model = _load(config, run_dir, runtime, splits)
    labels = splits.test.labels.cpu().numpy()
    log(f"{run_dir} {label(attack)} eps={epsilon:g}: attacking {len(labels)} test images")
    sys.stdout.flush()  # the job log says what runs now, also where stdout is a file
    started = time.perf_counter()
    examples = _attacking(lambda: attack_examples(model, splits.test.images, splits.test.labels, epsilon,
                                                  config["training"]["eval_batch_size"], attack, runtime, **params))
    record = precision(runtime)
    result = result_record(examples, labels, splits.num_classes, attack=attack, params=params, epsilon=epsilon,
                           subset=None, run=str(run_dir), **identity.measured(run), **run_keys(run),
                           seconds=time.perf_counter() - started, device=record["device"],
                           precision=record["precision"], runtime=record, slurm=environment()["slurm"])
    result.write(out)
    log(f"{run_dir} {label(attack)} eps={epsilon:g}: clean {result.clean_acc:.2f}% -> adversarial "
        f"{result.adv_acc:.2f}%")
    return result


def outputs(suite: Suite, out_dir) -> list[Path]:
    """The result files robustness_job writes into out_dir (kdsweep.layout's names), in order."""
    return [Path(out_dir) / attack_file(name, epsilon) for epsilon in suite.epsilons for name in suite.results()]


def robustness_job(config: dict, run_dir, out_dir, masking_out, teacher_dir=None, baseline_dir=None,
                   evaluation_out=None, log=print):
    """Every attack, the worst case, the transfer attacks and the masking checks of one finished run (the module
    docstring), and with evaluation_out its kdsweep.evaluation record (against teacher_dir; a teacher: against
    itself); returns its Masking record."""
    suite = Suite.from_config(config)
    for epsilon in suite.epsilons:
        check_value("epsilons.items", epsilon, "epsilons")
    run_dir = Path(run_dir)
    sources = {role: Path(folder) for role, folder in (("teacher", teacher_dir), ("baseline", baseline_dir))
               if folder is not None}
    role = trained.finished(run_dir).role  # the cheap refusals first
    if evaluation_out is not None and teacher_dir is None and role != "teacher":
        raise KdsweepError(f"--evaluation of the {role} run {run_dir} measures its fidelity to its teacher: "
                           "give the teacher's run folder as --teacher")
    for source, folder in sources.items():
        trained.check_compatible(trained.finished(folder, f"{source} run"), folder, config["dataset"],
                                 what=f"{source} run")
    runtime = Runtime.from_config(config["runtime"], training_job=False)
    splits = split.load_splits(config["dataset"], runtime.device, split.study_stats(run_dir, config))
    check_classes(suite.attacks, splits.num_classes)
    run, model = _load(config, run_dir, runtime, splits)
    # the sources a transfer attack or the evaluation uses, each loaded once
    loaded = {source: _load(config, folder, runtime, splits, f"{source} run") for source, folder in sources.items()
              if suite.transfer is not None or (source == "teacher" and evaluation_out is not None)}
    images, labels_tensor = splits.test.images, splits.test.labels
    labels = labels_tensor.cpu().numpy()
    n_test, batch = len(labels), config["training"]["eval_batch_size"]
    subset = subset_indices(n_test, suite.subset_size, suite.subset_seed)
    subset_spec = None if len(subset) == n_test else {"size": int(len(subset)), "seed": suite.subset_seed}
    record = precision(runtime)
    common = {"run": str(run_dir), **identity.measured(run), **run_keys(run), "device": record["device"],
              "precision": record["precision"], "runtime": record, "slurm": environment()["slurm"]}

    def write(examples, name, params, epsilon, seconds, on_subset):
        result = result_record(examples, labels, splits.num_classes, attack=name, params=params, epsilon=epsilon,
                               subset=subset_spec if on_subset else None, seconds=seconds, **common)
        result.write(Path(out_dir) / attack_file(name, epsilon))
        log(f"{run_dir} {label(name)} eps={epsilon:g} on {result.n} images: clean {result.clean_acc:.2f}% -> "
            f"adversarial {result.adv_acc:.2f}%" + (f" ({seconds:.1f} s)" if seconds is not None else ""))

    results = {}
    for epsilon in suite.epsilons:
        for name, params in suite.attacks.items():
            started = time.perf_counter()
            indices = subset if suite.on_subset(name) else None
            results[name, epsilon] = _attacking(lambda: attack_examples(model, images, labels_tensor, epsilon, batch,
                                                                        name, runtime, indices, **params))
            write(results[name, epsilon], name, params, epsilon, time.perf_counter() - started, suite.on_subset(name))
        results[WORST, epsilon] = worst_case([results[name, epsilon] for name in suite.headline], subset)
        write(results[WORST, epsilon], WORST, {"attacks": list(suite.headline)}, epsilon, None, True)

    transfer = {}
    if suite.transfer is not None:
        for role, folder in sources.items():
            source_run, source = loaded[role]
            for epsilon in suite.epsilons:
                crafted = _attacking(lambda: transfer_examples(source, model, images, labels_tensor, epsilon, batch,
                                                               suite.transfer, runtime, subset,
                                                               **suite.attacks[suite.transfer]))
                transfer[role, epsilon] = (crafted, source_run, folder)
                log(f"{run_dir} transfer from the {role} ({label(suite.transfer)}) eps={epsilon:g}: "
                    f"{100 * crafted.robust.mean():.2f}%")
    large = {}
    for name in suite.large_epsilon_attacks:
        large[name] = _attacking(lambda: attack_examples(model, images, labels_tensor, suite.large_epsilon, batch,
                                                         name, runtime, subset, **suite.attacks[name]))
        log(f"{run_dir} {label(name)} at the large eps={suite.large_epsilon:g}: {100 * large[name].robust.mean():.2f}%")

    found = checks(results, {key: crafted for key, (crafted, _, _) in transfer.items()}, large, suite)
    masking = Masking(
        run=str(run_dir), **run_keys(run), n_test=n_test, tolerance=suite.tolerance,
        transfer=[TransferResult(source=role, source_run=str(folder), source_hash=source_run.config_hash,
                                 attack=suite.transfer, epsilon=epsilon, n=len(crafted.indices),
                                 adv_acc=100.0 * float(crafted.robust.mean()),
                                 robust=_masks(crafted, n_test)["robust"])
                  for (role, epsilon), (crafted, source_run, folder) in transfer.items()],
        large_epsilon={"epsilon": suite.large_epsilon, "n": int(len(subset)),
                       "accuracy": {name: 100.0 * float(examples.robust.mean()) for name, examples in large.items()}},
        checks=[MaskingCheck(**check) for check in found], suspected=not all(check["passed"] for check in found),
        **identity.measured(run))
    if evaluation_out is not None:
        reference = (run_dir, run, model) if teacher_dir is None else (Path(teacher_dir), *loaded["teacher"])
        evaluated = evaluation.measure(config, (run_dir, run, model), reference, splits, runtime)
        evaluated.write(evaluation_out)
        log(evaluation.summary(evaluated))
    masking.write(masking_out)  # last: the file of the job that says all of them are there
    failed = [check["sentence"] for check in found if not check["passed"]]
    log(f"{run_dir}: {len(found)} masking checks, {len(failed)} failed" + "".join(f"\n  {s}" for s in failed))
    return masking
