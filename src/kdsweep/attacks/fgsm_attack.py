"""FGSM (Goodfellow et al. 2014): x + epsilon * sign(grad_x CE(model(x), y)), clamped to [0, 1]."""

from __future__ import annotations

import torch

from .base import ce_loss, check_epsilon, eval_mode, fooled, full_precision, input_gradient


def fgsm(model, images, labels, epsilon):
    """x + epsilon * sign(grad_x CE(model(x), y)), clamped to [0, 1], detached.

    The gradient is taken with the model in eval mode (BatchNorm on its running statistics, which the
    attack leaves untouched), autocast off; every module's mode is restored.
    """
    check_epsilon(epsilon)
    with eval_mode(model), full_precision(images.device):
        grad, _, _ = input_gradient(model, images, labels, ce_loss)
    return (images.detach() + epsilon * grad.sign()).clamp_(0.0, 1.0)


def batches(epsilon, params):
    """(model, x, y, alive) -> the images of the batch still correct under FGSM (alive: correct before it)."""
    check_epsilon(epsilon)

    def run(model, x, y, alive):
        robust = torch.zeros_like(alive)
        if alive.any():
            adversarial = fgsm(model, x[alive], y[alive], epsilon)
            with torch.no_grad():
                robust[alive] = ~fooled(model(adversarial), y[alive])
        return robust

    return run


BATCHES = {"fgsm": batches}


def craft(epsilon, params):
    """(model, x, y) -> FGSM's images on that model: what a transfer attack carries to another."""
    return lambda model, x, y: fgsm(model, x, y, epsilon)

CRAFT = {"fgsm": craft}
