"""What a finished run's test-set logits say beyond accuracy: fidelity to the teacher, calibration, logit scale,
accuracy per class.

Why: distillation at a high temperature can inflate the student's logits, which saturates its
softmax and masks the input gradients that FGSM follows (as defensive distillation did, until
stronger attacks broke it). Logit scale beside the attacks' accuracy (kdsweep.attacks, whose headline
no rescaling of the logits can move) shows where that happened; fidelity (Stanton et al. 2021, "Does
knowledge distillation really work?") says how closely the student matches its teacher; calibration
says whether its confidences mean what they say; accuracy per class whether a gain is fair across
classes.

The workflow's attack job of each run writes it, beside the run's attacks (kdsweep.attacks.job: one process
loads the data and the models once), as evaluation/<role>/<run>.json under the study's results folder; by hand,
`python -m kdsweep evaluate --run RUN_DIR --teacher TEACHER_RUN_DIR --out FILE.json`. Its type is
kdsweep.records.Evaluation, with the keys
  run, role, dataset, model, temperature, soft_weight, seed   the evaluated run (as its metrics.json)
  teacher_run, teacher_model    the teacher folder compared against, and its architecture
  run_hash, model_digest, teacher_run_hash   the version measured (kdsweep.identity): the run's hash and
                      model.pt's sha256, the teacher's hash; the tables pair nothing else with the run
  n                   test images
  test_acc            accuracy (%) recomputed here from model.pt (same batches and arithmetic as training)
  test_acc_metrics    metrics.json's test_acc; equal to test_acc when the runtime sections agree
  agreement           top-1 agreement with the teacher (%): share of test images where argmaxes match
  kl_to_teacher       mean over images of KL(teacher || student) at T = 1, summed over classes (nats), each >= 0
  ece                 expected calibration error (%), `ece_bins` equal-width bins of the top-1 confidence
  ece_bins            that number of bins (config evaluation.ece_bins)
  nll                 negative log-likelihood: mean cross-entropy of the true label (nats)
  max_logit           mean over images of the largest logit
  logit_norm          mean over images of the L2 norm of the logit vector
  class_n, class_acc  test images and accuracy (%) per class, indexed by label (null: a class without images)
  worst_class_acc     the lowest accuracy of a class (%): whether distillation is fair across classes
  seconds, device, precision, slurm
  runtime             the arithmetic (kdsweep.runtime.Runtime.record: device, precision, channels_last,
                      compile, deterministic), the same for every evaluation of a run
For the teacher itself agreement is 100 and kl_to_teacher 0 (computed, not special-cased).
"""

import contextlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import identity, split
from .errors import KdsweepError


def _float64(tensor):
    return torch.as_tensor(tensor).detach().to("cpu", torch.float64)


def expected_calibration_error(probs, labels, bins: int) -> float:
    """ECE in percent: sum over `bins` equal-width confidence bins of (share of images in the bin) x
    |accuracy - mean confidence| of the bin (Naeini et al. 2015, Guo et al. 2017).

    probs: N x K class probabilities; the confidence is the largest, the prediction its class.
    Bin b holds confidences in (b / bins, (b + 1) / bins] (the first also holds 0).
    """
    probs, labels = _float64(probs), torch.as_tensor(labels).cpu()
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError(f"need N x K probabilities and N labels, N > 0: got {tuple(probs.shape)} and {len(labels)}")
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).to(torch.float64)
    edges = torch.linspace(0, 1, int(bins) + 1, dtype=torch.float64)
    # bucketize(right=False): edges[i-1] < x <= edges[i] -> i; shift to 0-based and keep 0 in the first bin
    index = (torch.bucketize(confidence, edges[1:-1], right=False)).clamp_(0, int(bins) - 1)
    count = torch.zeros(int(bins), dtype=torch.float64).index_add_(0, index, torch.ones_like(confidence))
    gap = (torch.zeros(int(bins), dtype=torch.float64).index_add_(0, index, correct)
           - torch.zeros(int(bins), dtype=torch.float64).index_add_(0, index, confidence))
    # sum_b (n_b / N) |acc_b - conf_b| = sum_b |sum_{i in b} (correct_i - conf_i)| / N
    return 100.0 * gap.abs().sum().item() / count.sum().item()


def fidelity(student_logits, teacher_logits) -> dict:
    """{"agreement": % of images whose top-1 classes match, "kl_to_teacher": mean KL(teacher || student)}
    at temperature 1, the KL summed over classes (nats) and averaged over images (Stanton et al. 2021).
    Each image's KL is clamped at 0 (rounding can make it -1e-16 for equal distributions): never negative."""
    student, teacher = _float64(student_logits), _float64(teacher_logits)
    if student.shape != teacher.shape or student.ndim != 2 or len(student) == 0:
        raise ValueError(f"student and teacher logits must both be N x K, N > 0: got {tuple(student.shape)} "
                         f"and {tuple(teacher.shape)}")
    log_student, log_teacher = F.log_softmax(student, 1), F.log_softmax(teacher, 1)
    # finite logits give finite log-probabilities, so p = 0 (underflow) contributes 0, never NaN
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(1)
    # A KL is >= 0, but for (nearly) equal distributions the sum above is 0 plus rounding, of either
    # sign (-3e-17 for two untrained networks; which sign depends on the processor's float path).
    # Clamp each image's KL at 0 before the mean, so that no image's rounding can pull the mean below
    # its true value and the reported KL is never negative on any machine.
    kl = kl.clamp_min(0.0)
    agree = (student.argmax(1) == teacher.argmax(1)).to(torch.float64)
    return {"agreement": 100.0 * agree.mean().item(), "kl_to_teacher": kl.mean().item()}


def logit_scale(logits) -> dict:
    """{"max_logit": mean of each image's largest logit, "logit_norm": mean L2 norm of its logit vector}."""
    logits = _float64(logits)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must be N x K, N > 0: got {tuple(logits.shape)}")
    return {"max_logit": logits.max(1).values.mean().item(),
            "logit_norm": torch.linalg.vector_norm(logits, dim=1).mean().item()}


def calibration(logits, labels, bins: int) -> dict:
    """{"ece": % (see expected_calibration_error), "nll": mean cross-entropy (nats)} of logits."""
    logits, labels = _float64(logits), torch.as_tensor(labels).cpu().long()
    return {"ece": expected_calibration_error(F.softmax(logits, 1), labels, bins),
            "nll": F.cross_entropy(logits, labels).item()}


def batch_logits(model, images_uint8, batch_size, runtime=None):
    """(logits, batch start) of the model on uint8 images, batch by batch, in eval mode and inference
    mode: float32 logits on the images' device. runtime: the job's `runtime.Runtime` (its autocast and
    layout: every evaluation of a run, validation and test included, passes through here), or None
    for the model's own dtype and layout."""
    model.eval()
    for start in range(0, len(images_uint8), batch_size):
        yield _logits(model, images_uint8[start:start + batch_size], runtime), start


@torch.inference_mode()
def _logits(model, batch, runtime):
    with runtime.autocast() if runtime else contextlib.nullcontext():
        pixels = runtime.pixels(batch) if runtime else batch.float().div_(255)
        return model(pixels).float()


@torch.inference_mode()
def predict(model, images_uint8, batch_size, runtime=None) -> torch.Tensor:
    """The model's logits (float32, on the CPU, N x K) for uint8 images (see batch_logits)."""
    return torch.cat([logits for logits, _ in batch_logits(model, images_uint8, batch_size, runtime)]).cpu()


@torch.inference_mode()
def loss_and_accuracy(model, images_uint8, labels, batch_size, runtime=None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) on uint8 images: validation and test of a training run. The
    images may lie on the host (an imagefolder's, memory-mapped: each batch goes to the labels' device)."""
    loss_sum = torch.zeros((), device=labels.device, dtype=torch.float64)
    correct = torch.zeros((), device=labels.device, dtype=torch.int64)
    for logits, start in batch_logits(model, images_uint8, batch_size, runtime):
        batch_labels = labels[start:start + batch_size]
        loss_sum += F.cross_entropy(logits, batch_labels, reduction="sum").double()
        correct += (logits.argmax(1) == batch_labels).sum()
    n = len(labels)
    return loss_sum.item() / n, 100.0 * correct.item() / n


def per_class_accuracy(logits, labels) -> dict:
    """{"class_n": test images per class, "class_acc": accuracy (%) per class (None for a class without images),
    "worst_class_acc": the lowest of them}, classes indexed by label (the logits' width of them)."""
    logits, labels = _float64(logits), torch.as_tensor(labels).cpu().long()
    classes = logits.shape[1]
    counts = torch.bincount(labels, minlength=classes)
    hits = torch.bincount(labels[logits.argmax(1) == labels], minlength=classes)
    accuracy = [100.0 * h / c if c else None for h, c in zip(hits.tolist(), counts.tolist())]
    present = [value for value in accuracy if value is not None]
    return {"class_n": counts.tolist(), "class_acc": accuracy, "worst_class_acc": min(present) if present else None}


def evaluate_logits(student_logits, teacher_logits, labels, ece_bins: int) -> dict:
    """Every measure of the module docstring but the bookkeeping, from test-set logits."""
    labels = torch.as_tensor(labels).cpu().long()
    correct = (_float64(student_logits).argmax(1) == labels).sum().item()
    return {"n": len(labels), "test_acc": 100.0 * correct / len(labels),
            **fidelity(student_logits, teacher_logits), **calibration(student_logits, labels, ece_bins),
            "ece_bins": int(ece_bins), **logit_scale(student_logits), **per_class_accuracy(student_logits, labels)}


def evaluate_run(model, teacher, images_uint8, labels, batch_size, ece_bins, runtime=None) -> dict:
    """Logits of `model` and `teacher` on all images (batched, inference mode), then evaluate_logits."""
    images_uint8, labels = torch.as_tensor(images_uint8), torch.as_tensor(labels)
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0-255), got {images_uint8.dtype}")
    if len(images_uint8) == 0 or len(labels) != len(images_uint8):
        raise ValueError(f"need as many labels as images, and at least one: {len(images_uint8)} images, "
                         f"{len(labels)} labels")
    student_logits = predict(model, images_uint8, batch_size, runtime)
    teacher_logits = predict(teacher, images_uint8, batch_size, runtime)
    if student_logits.shape != teacher_logits.shape:
        raise KdsweepError(f"the run has {student_logits.shape[1]} classes but the teacher "
                           f"{teacher_logits.shape[1]}: pass the teacher of the same study (--teacher)")
    return evaluate_logits(student_logits, teacher_logits, labels, ece_bins)


# ---------------------------------------------------------------- the job (python -m kdsweep evaluate)


def evaluate_job(config: dict, run_dir, teacher_dir, out, log=print):
    """Evaluate a finished run against a finished teacher on the config's test set; write `out`
    (kdsweep.records.Evaluation) and return it. (The workflow's attack job measures the same, in its own
    process: kdsweep.attacks.job.robustness_job.)"""
    from . import trained
    from .runtime import Runtime

    run_dir, teacher_dir = Path(run_dir), Path(teacher_dir)
    for folder, what in ((run_dir, "run"), (teacher_dir, "teacher run")):  # the cheap refusals first
        trained.check_compatible(trained.finished(folder, what), folder, config["dataset"], what=what)
    # One pass over the test set: never compiled (runtime.compile is for training jobs).
    runtime = Runtime.from_config(config["runtime"], training_job=False)
    splits = split.load_splits(config["dataset"], runtime.device, split.study_stats(run_dir, config))
    run, model = trained.load(run_dir, config["dataset"], runtime.device, splits.num_classes, data_digest=splits.digest)
    teacher_run, teacher = trained.load(teacher_dir, config["dataset"], runtime.device, splits.num_classes,
                                        "teacher run", data_digest=splits.digest)
    result = measure(config, (run_dir, run, runtime.place(model)), (teacher_dir, teacher_run, runtime.place(teacher)),
                     splits, runtime)
    result.write(out)
    log(summary(result))
    return result


def measure(config: dict, measured, reference, splits, runtime):
    """The Evaluation record of a loaded run against a loaded teacher, each (folder, its trained.Run, its model
    placed by `runtime`), on the test set of `splits` (kdsweep.split)."""
    from .records import Evaluation, run_keys
    from .runtime import environment

    (run_dir, run, model), (teacher_dir, teacher_run, teacher) = measured, reference
    started = time.perf_counter()
    result = evaluate_run(model, teacher, splits.test.images, splits.test.labels,
                          config["training"]["eval_batch_size"], config["evaluation"]["ece_bins"], runtime)
    record = runtime.record()
    result = Evaluation(
        **result, **run_keys(run), run=str(run_dir), teacher_run=str(teacher_dir), teacher_model=teacher_run.model,
        test_acc_metrics=run.test_acc, **identity.measured(run), teacher_run_hash=teacher_run.config_hash,
        seconds=time.perf_counter() - started, device=record["device"], precision=record["precision"],
        runtime=record, slurm=environment()["slurm"],
    )
    if run.test_acc is not None and result.test_acc != run.test_acc:
        # Same data, weights, batches and arithmetic: only another runtime section than the training
        # job's, or runtime.deterministic=false on a GPU, can do this.
        print(f"kdsweep: warning: {run_dir}: test accuracy {result.test_acc:.4f}% here, "
              f"{run.test_acc:.4f}% in metrics.json", file=sys.stderr)
    return result


def summary(result) -> str:
    """The job log's line of an Evaluation."""
    return (f"{result.run}: test acc {result.test_acc:.2f}%, agreement {result.agreement:.2f}%, "
            f"KL {result.kl_to_teacher:.4f}, ECE {result.ece:.2f}%, NLL {result.nll:.4f}, "
            f"max logit {result.max_logit:.2f}, logit norm {result.logit_norm:.2f}, "
            f"worst class {result.worst_class_acc:.2f}%")
