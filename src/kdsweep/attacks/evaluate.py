"""Attacks over a test set, image by image: which images each attack left correct (their worst case, the
evaluation subset and accuracy per class: kdsweep.attacks.examples).

`attack_examples` runs one attack (a name of kdsweep.attacks.ATTACKS with its config parameters) at one
epsilon over the test images given (all, or an evaluation subset), batch after batch, and returns per image
whether the model got it right before the attack (`clean`) and whether it still did at every point the
attack tried (`robust`). `evaluate_attack` sums that up as an attack result's numbers.
"""

from __future__ import annotations

import importlib
import numpy as np
import torch

from ..errors import KdsweepError
from . import ATTACKS, PARAMS
from .base import check_epsilon, eval_mode, fooled, full_precision
from .examples import Examples


def _batches(attack, epsilon, params):
    """A function (model, x, y, alive) -> robust, for one batch after another."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    expected = set(PARAMS[attack])
    if set(params) != expected:
        raise ValueError(f"attack {attack!r} takes the parameters {sorted(expected)}, got {sorted(params)}")
    module = importlib.import_module(f"{__package__}.{ATTACKS[attack].module}")
    return module.BATCHES[attack](epsilon, params)


def _device(model):
    return next(iter(model.parameters())).device


def check_images(images_uint8, labels):
    images_uint8, labels = torch.as_tensor(images_uint8), torch.as_tensor(labels)
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0-255), got {images_uint8.dtype}")
    n = len(images_uint8)
    if n == 0 or len(labels) != n:
        raise ValueError(f"need as many labels as images, and at least one: {n} images, {len(labels)} labels")
    return images_uint8, labels


def check_finite(correct, logits, where):
    """Refuses a model whose logits on clean test images are NaN or infinite: nothing it says about them is a
    prediction, and no attack can be measured against it."""
    bad = int((~torch.isfinite(logits).all(1)).sum())
    if bad:
        raise KdsweepError(f"{where} gives non-finite logits (NaN or inf) on {bad} of {len(logits)} clean test images "
                           "of a batch, so no attack can be measured on it; retrain it (lower training.lr) or check "
                           "its weights")
    return correct


def pixels(batch, device, runtime):
    """uint8 images -> float32 [0, 1] on the device (in the job's memory layout with a runtime)."""
    return runtime.pixels(batch) if runtime else batch.to(device).float().div_(255)


def attack_examples(model, images_uint8, labels, epsilon, batch_size, attack="fgsm", runtime=None, indices=None,
                    **params) -> Examples:
    """Attack `attack` at `epsilon` over the test images at `indices` (None: all; uint8, N x C x H x W), in
    batches of `batch_size`, in float32 with autocast off (runtime: the job's `runtime.Runtime`, for its device
    and memory layout only).

    params: the attack's config parameters, exactly those of PARAMS[attack].
    """
    images_uint8, labels = check_images(images_uint8, labels)
    check_epsilon(epsilon)
    indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
    run_attack = _batches(attack, epsilon, params)
    device = _device(model)
    clean, robust = [], []
    where = torch.as_tensor(indices, dtype=torch.long)
    with eval_mode(model), full_precision(device):
        for start in range(0, len(indices), batch_size):
            chosen = where[start:start + batch_size]
            x = pixels(images_uint8[chosen], device, runtime)
            y = labels[chosen].to(device).long()
            with torch.no_grad():
                logits = model(x)
            correct = check_finite(~fooled(logits, y), logits, "the model attacked")
            clean.append(correct)
            robust.append(run_attack(model, x, y, correct) & correct)
    # read back once at the end: no batch waits for the host
    return Examples(indices, torch.cat(clean).cpu().numpy(), torch.cat(robust).cpu().numpy())


def evaluate_attack(model, images_uint8, labels, epsilon, batch_size, attack="fgsm", runtime=None,
                    **params) -> dict:
    """Attack `attack` (a name of ATTACKS) at `epsilon` over all images (uint8, N x C x H x W), in batches.

    params: the attack's config parameters, exactly those of PARAMS[attack].
    runtime: the job's `runtime.Runtime` (its device and memory layout; never its autocast: attacks compute in
    float32). Returns {"n", "clean_acc", "adv_acc", "n_correct", "adv_acc_on_correct"}, in percent (Examples.summary).
    """
    return attack_examples(model, images_uint8, labels, epsilon, batch_size, attack, runtime, **params).summary()


def transfer_examples(source, model, images_uint8, labels, epsilon, batch_size, attack, runtime=None, indices=None,
                      **params) -> Examples:
    """A transfer (black-box) attack: images crafted by `attack` (a gradient attack of ATTACKS) on `source`, scored
    on `model`: per test image at `indices` (None: all), correct before and on the crafted image."""
    images_uint8, labels = check_images(images_uint8, labels)
    check_epsilon(epsilon)
    if attack not in ATTACKS or not ATTACKS[attack].crafts:
        raise ValueError(f"a transfer attack is crafted by fgsm, pgd, apgd_ce or apgd_dlr, not {attack!r}")
    _batches(attack, epsilon, params)  # (checks the parameters)
    craft = importlib.import_module(f"{__package__}.{ATTACKS[attack].module}").CRAFT[attack](epsilon, params)
    indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
    device = _device(model)
    clean, robust = [], []
    where = torch.as_tensor(indices, dtype=torch.long)
    with eval_mode(model), eval_mode(source), full_precision(device):
        for start in range(0, len(indices), batch_size):
            chosen = where[start:start + batch_size]
            x = pixels(images_uint8[chosen], device, runtime)
            y = labels[chosen].to(device).long()
            crafted = craft(source, x, y)
            with torch.no_grad():
                logits = model(x)
                correct = check_finite(~fooled(logits, y), logits, "the model attacked")
                clean.append(correct)
                robust.append(correct & ~fooled(model(crafted), y))
    return Examples(indices, torch.cat(clean).cpu().numpy(), torch.cat(robust).cpu().numpy())
