"""PGD (Madry et al. 2018) in L-inf, with a choice of loss and random restarts.

x_0 = x, or clamp(x + U(-eps, eps), 0, 1) with random_start; x_{k+1} = clamp(clip(x_k + step_size *
sign(grad loss(model(x_k), y)), x - eps, x + eps), 0, 1), `steps` times. The loss (kdsweep.attacks.base):
ce (the usual one, whose gradient underflows when the logits are large), margin (Carlini & Wagner) or
dlr (Croce & Hein), both unchanged in their steps by a rescaling of the logits. As an evaluation, an
image is broken when any iterate of any restart fooled the model (each restart from its own random
start); `pgd` itself returns the last iterate of one run (what a transfer attack carries to another
model).

Random starts: restart r draws from its own CPU generator (base.restart_generator(seed, r)), image i of
the images evaluated taking the i-th draw of its stream, whatever the batch size or the device.
"""

from __future__ import annotations

import torch

from .base import LOSSES, check_epsilon, eval_mode, fooled, full_precision, input_gradient, project, \
    restart_generator, uniform_start


def _check(epsilon, step_size, steps):
    check_epsilon(epsilon)
    if not step_size >= 0:
        raise ValueError(f"step_size must be >= 0, got {step_size}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")


def _iterate(model, clean, labels, start, epsilon, step_size, steps, loss, until_fooled=False):
    """(fooled at any iterate from `start` on, the last iterate), model in eval mode. until_fooled: an image
    is attacked no more once an iterate has fooled the model (what an evaluation asks of it is then settled:
    the same answer for less work), and no last iterate is returned (None)."""
    broken = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
    attacked = torch.arange(len(labels), device=labels.device)  # where the images still attacked sit in `broken`
    adversarial = start
    for _ in range(int(steps)):
        grad, logits, _ = input_gradient(model, adversarial, labels, loss)
        now = fooled(logits, labels)
        broken[attacked] |= now
        if until_fooled:
            keep = ~now
            attacked, adversarial, grad, clean, labels = (attacked[keep], adversarial[keep], grad[keep], clean[keep],
                                                          labels[keep])
            if not len(attacked):
                return broken, None
        adversarial = project(adversarial + step_size * grad.sign(), clean, epsilon)
    with torch.no_grad():
        broken[attacked] |= fooled(model(adversarial), labels)
    return broken, None if until_fooled else adversarial.detach()


def pgd(model, images, labels, eps, step_size, steps, random_start=True, generator=None, loss="ce"):
    """Projected gradient ascent of `loss` (ce | margin | dlr) in L-inf, in [0, 1] pixel space; the last
    iterate, detached.

    x_0 = x (or clamp(x + U(-eps, eps), 0, 1) with random_start, drawn from `generator`: a torch.Generator
    on the images' device or the CPU; None = torch's global generator);
    x_{k+1} = clamp(clip(x_k + step_size * sign(grad loss(model(x_k), y)), x - eps, x + eps), 0, 1).
    `step_size` is in pixel units (Madry et al.: 2.5 * eps / steps). The gradients are taken with the model
    in eval mode, autocast off; every module's mode is restored.
    """
    _check(eps, step_size, steps)
    clean = images.detach()
    start = uniform_start(clean, eps, generator) if random_start else clean.clone()
    with eval_mode(model), full_precision(images.device):
        return _iterate(model, clean, labels, start, eps, step_size, steps, LOSSES[loss])[1]


def batches(epsilon, params):
    """(model, x, y, alive) -> the images of the batch still correct at every iterate of every restart."""
    step_size = params["relative_step_size"] * epsilon
    _check(epsilon, step_size, params["steps"])
    loss = LOSSES[params["loss"]]
    restarts = range(params["restarts"]) if params["random_start"] else range(1)  # without one, all alike
    generators = [restart_generator(params["seed"], r) for r in restarts]

    def run(model, x, y, alive):
        robust = alive.clone()
        for generator in generators:
            # every image of the batch draws its start, attacked or not: image i keeps the i-th draw
            start = uniform_start(x, epsilon, generator) if params["random_start"] else x.clone()
            if robust.any():  # (the start is an iterate too: the first gradient's forward pass judges it)
                broken, _ = _iterate(model, x[robust], y[robust], start[robust], epsilon, step_size,
                                     params["steps"], loss, until_fooled=True)
                robust[robust.clone()] = ~broken
        return robust

    return run


BATCHES = {"pgd": batches}


def craft(epsilon, params):
    """(model, x, y) -> the last iterate of PGD's first restart on that model: what a transfer attack carries to
    another (its random starts drawn as in the evaluation, image i the i-th draw)."""
    step_size = params["relative_step_size"] * epsilon
    _check(epsilon, step_size, params["steps"])
    generator = restart_generator(params["seed"], 0)
    return lambda model, x, y: pgd(model, x, y, epsilon, step_size, params["steps"], params["random_start"],
                                   generator, params["loss"])

CRAFT = {"pgd": craft}
