"""What every attack shares: eval mode, float32 without autocast, the losses, the projection onto the
epsilon-ball and the image box, random starts, and the per-image record of what fooled the model.

The losses are per image and to be maximised (an attack climbs them):

- ce      cross-entropy of the true class: softmax saturates as the logits grow, and in float32 its
          gradient underflows to exactly 0 on confident images (logits x 100 on a trained model): an
          attack following it stops, and the model looks robust when it is not
- margin  Carlini & Wagner 2017: max_{j != y} z_j - z_y. Logits x c multiply it and its gradient by c,
          so every sign-gradient step and every comparison of two values is the same at any c
- dlr     Croce & Hein 2020: -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3), with z_pi1 >= z_pi2 >= ... the
          sorted logits: the margin over the spread of the top three, unchanged by logits x c (c > 0) and
          by a shift of all logits; 1e-12 in the denominator, as the authors' code, for a zero spread.
          Needs at least three classes
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime import to_device


@contextmanager
def eval_mode(model):
    """The model in eval mode; every module's mode restored afterwards. Per module, not
    model.train(previous): a model may hold submodules in eval mode on purpose (frozen BatchNorm)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def full_precision(device):
    """Autocast off on the device's type (and the CPU's) whatever the caller set: the attack computes in the
    model's own dtype (float32 for every model of a study)."""
    with contextlib.ExitStack() as stack:
        for kind in dict.fromkeys([torch.device(device).type, "cpu"]):
            stack.enter_context(torch.autocast(kind, enabled=False))
        yield


def check_epsilon(epsilon):
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")


def _true_and_best_other(logits, labels):
    """(z_y, max_{j != y} z_j) per row."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return true, others.max(1).values


def ce_loss(logits, labels):
    return F.cross_entropy(logits, labels, reduction="none")


def margin_loss(logits, labels):
    """max_{j != y} z_j - z_y: positive exactly where the model is fooled."""
    true, other = _true_and_best_other(logits, labels)
    return other - true


def dlr_loss(logits, labels):
    """-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)."""
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes (it divides by z_pi1 - z_pi3); got {logits.shape[1]}")
    top = logits.topk(3, dim=1).values
    return margin_loss(logits, labels) / (top[:, 0] - top[:, 2] + 1e-12)


# The function of each loss of the registry (kdsweep.attacks.LOSSES), under its name there.
LOSSES = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss}


def input_gradient(model, images, labels, loss):
    """(d sum_i loss_i / d x, logits, loss_i) at `images`: the gradient w.r.t. the input only (nothing
    accumulates in the parameters' .grad), summed over the batch so that each image's gradient is its own
    loss's, whatever the batch."""
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        values = loss(logits, labels)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return grad, logits.detach(), values.detach()


def project(images, clean, epsilon):
    """Onto the L-inf ball of radius epsilon around `clean`, then onto the image box [0, 1]."""
    return torch.min(torch.max(images, clean - epsilon), clean + epsilon).clamp_(0.0, 1.0)


def restart_generator(seed: int, restart: int) -> torch.Generator:
    """The CPU generator of a restart: restart 0 is seeded by `seed` itself, restart r by a SeedSequence of
    (seed, r) (no two (seed, restart) pairs share a stream)."""
    if restart == 0:
        return torch.Generator().manual_seed(int(seed))
    state = np.random.SeedSequence([int(seed), int(restart)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def uniform(shape, generator, device, dtype):
    """U[0, 1) drawn from `generator` on the generator's device (a CPU generator gives the same numbers on any
    device), copied to `device`."""
    where = generator.device if generator is not None else device
    return to_device(torch.rand(shape, generator=generator, device=where, dtype=dtype), device)


def uniform_start(images, epsilon, generator):
    """images + U(-epsilon, epsilon) per pixel, clamped to [0, 1] (Madry et al.'s random start)."""
    noise = uniform(images.shape, generator, images.device, images.dtype).mul_(2).sub_(1).mul_(epsilon)
    return (images + noise).clamp_(0.0, 1.0)


def fooled(logits, labels):
    """Where the model's top class is not the label, or its logits are not all finite: argmax takes a NaN for
    the largest value, so a NaN row would name class 0 and count as correct (and robust) there. A tie at the
    top names the first of the tied classes, as evaluation's test_acc counts it."""
    return (logits.argmax(1) != labels) | ~torch.isfinite(logits).all(1)
