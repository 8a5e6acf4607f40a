"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", Algorithm 1), L-inf, on cross-entropy (apgd_ce), on the DLR loss (apgd_dlr) or, as
AutoAttack's APGD-T, on the targeted DLR loss towards each of the classes ranked next after the first
(apgd_t).

As the authors' code computes it (fra31/auto-attack, autoattack/autopgd_base.py: the numbers AutoAttack
reports), for N = `steps` iterations and each restart:

- start: x_0 = clamp(x + eps * t / max_i |t_i|, 0, 1), t uniform in [-1, 1]^d (a random point whose largest
  coordinate sits on the ball's surface)
- step size eta = 2 eps per image; z = P(x_k + eta sign(grad f(x_k))), x_{k+1} = P(x_k + 0.75 (z - x_k) +
  0.25 (x_k - x_{k-1})) (momentum 0.75; the first step takes z itself), P the projection onto the eps-ball
  and [0, 1]
- x_max, the iterate of highest loss so far (a strictly higher loss replaces it)
- checkpoints after 0.22 N iterations, then each 0.03 N fewer, at least 0.06 N (integer parts, at least 1:
  for N = 100 at 22, 41, 57, 70, 80, 87, 93 and 99, the paper's w_j = ceil(p_j N)). At a checkpoint an image
  halves its step size and restarts from x_max (with the gradient there) when
  condition 1: at most rho = 0.75 of the steps since the last checkpoint raised the loss, or
  condition 2: its step size was not halved at the last checkpoint and its best loss has not risen since
  (not at the first checkpoint).

Where the paper and the code differ, the code is followed but in one place: the first window of condition
1 compares f(x_1) with the start's loss f(x_0), as the paper's sum from i = w_0 = 0 says (the code compares
it with 0, an index that wraps around). Conditions 1 and 2 are the code's: the paper writes "fewer than"
rho and lets condition 2 act at the first checkpoint.

An image is broken when the model got it wrong at any iterate (its start included) of any restart. Restart r
draws its start from base.restart_generator(seed, r), image i of those evaluated taking the i-th draw.
"""

from __future__ import annotations

import torch

from .base import LOSSES, check_epsilon, eval_mode, fooled, full_precision, input_gradient, project, \
    restart_generator, uniform

RHO = 0.75  # condition 1's fraction, the paper's rho
MOMENTUM = 0.75  # the paper's alpha
LOSS = {"apgd_ce": "ce", "apgd_dlr": "dlr"}


def checkpoints(steps: int) -> tuple[int, int, int]:
    """(iterations before the first checkpoint, the decrease of that gap at each checkpoint, its least value),
    as the authors' code takes them from N = steps."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


def random_start(images, epsilon, generator):
    """x + eps * t / max|t| per image, t uniform in [-1, 1]^d, clamped to [0, 1]."""
    t = uniform(images.shape, generator, images.device, images.dtype).mul_(2).sub_(1)
    largest = t.flatten(1).abs().max(1).values.view(-1, *([1] * (t.ndim - 1)))
    return (images + epsilon * t / (largest + 1e-12)).clamp_(0.0, 1.0)


def _run(model, clean, labels, start, epsilon, steps, loss):
    """One run of APGD from `start`, model in eval mode: (fooled at any iterate, x_max, the last fooling
    iterate of each image (its start where none fooled it))."""
    first, decrease, least = checkpoints(int(steps))
    grad, logits, values = input_gradient(model, start, labels, loss)
    broken = fooled(logits, labels)
    x, x_previous = start.clone(), start.clone()
    x_best, grad_best, loss_best = x.clone(), grad.clone(), values.clone()
    x_fooling = x.clone()
    history = [values]  # f(x_0), f(x_1), ...
    step = torch.full((len(labels), *([1] * (x.ndim - 1))), 2.0 * epsilon, device=x.device, dtype=x.dtype)
    gap, since = first, 0
    best_at_check, halved_at_check = loss_best.clone(), torch.ones_like(broken)
    for k in range(int(steps)):
        with torch.no_grad():
            alpha = MOMENTUM if k > 0 else 1.0
            z = project(x + step * grad.sign(), clean, epsilon)
            x, x_previous = project(x + alpha * (z - x) + (1 - alpha) * (x - x_previous), clean, epsilon), x
        grad, logits, values = input_gradient(model, x, labels, loss)
        now = fooled(logits, labels)
        broken |= now
        x_fooling[now] = x[now]
        history.append(values)
        better = values > loss_best
        x_best[better], grad_best[better], loss_best[better] = x[better], grad[better], values[better]
        since += 1
        if since == gap:
            window = torch.stack(history[-(gap + 1):])
            condition1 = (window[1:] > window[:-1]).sum(0) <= gap * RHO
            condition2 = ~halved_at_check & (best_at_check >= loss_best)
            halve = condition1 | condition2
            halved_at_check, best_at_check = halve, loss_best.clone()
            step[halve] /= 2.0
            x[halve], grad[halve] = x_best[halve], grad_best[halve]
            since, gap = 0, max(gap - decrease, least)
    return broken, x_best, x_fooling


def _check(epsilon, steps, loss):
    check_epsilon(epsilon)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if loss not in ("ce", "dlr"):
        raise ValueError(f"APGD's loss is ce or dlr, not {loss!r}")


def apgd(model, images, labels, epsilon, steps=100, loss="ce", generator=None):
    """One run of APGD on `loss` (ce | dlr) from a random start drawn from `generator` (a CPU or the images'
    device's torch.Generator; None: torch's global one), in eval mode with autocast off: per image, the last
    iterate that fooled the model, or where none did the iterate of highest loss; detached."""
    _check(epsilon, steps, loss)
    clean = images.detach()
    start = random_start(clean, epsilon, generator)
    with eval_mode(model), full_precision(images.device):
        broken, x_best, x_fooling = _run(model, clean, labels, start, epsilon, steps, LOSSES[loss])
    return torch.where(broken.view(-1, *([1] * (images.ndim - 1))), x_fooling, x_best).detach()


def targeted_dlr(targets):
    """AutoAttack's targeted DLR loss towards class t per image: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12),
    unchanged by logits x c (c > 0). Needs at least four classes."""

    def loss(logits, labels):
        if logits.shape[1] < 4:
            raise ValueError(f"the targeted DLR loss needs at least 4 classes; got {logits.shape[1]}")
        top = logits.topk(4, dim=1).values
        true, target = logits.gather(1, labels[:, None])[:, 0], logits.gather(1, targets[:, None])[:, 0]
        return -(true - target) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)

    return loss


def apgd_targeted_batches(epsilon, params):
    """APGD-T (AutoAttack's): APGD on the targeted DLR loss towards each of the `targets` classes the model ranks
    highest after the first at the clean image (the 2nd, 3rd, ...), one run each from its own random start
    (restart_generator(seed, k) for the k-th), on the images no earlier run broke."""
    _check(epsilon, params["steps"], "dlr")
    generators = [restart_generator(params["seed"], k) for k in range(params["targets"])]

    def run(model, x, y, alive):
        robust = alive.clone()
        with torch.no_grad():
            ranked = model(x).argsort(dim=1, descending=True)
        if ranked.shape[1] <= params["targets"]:
            raise ValueError(f"APGD-T takes at most {ranked.shape[1] - 1} target classes here, not {params['targets']}")
        for k, generator in enumerate(generators):
            start = random_start(x, epsilon, generator)  # every image draws: image i keeps the i-th draw
            if robust.any():
                loss = targeted_dlr(ranked[robust, k + 1])
                broken, _, _ = _run(model, x[robust], y[robust], start[robust], epsilon, params["steps"], loss)
                robust[robust.clone()] = ~broken
        return robust

    return run


def batches_of(loss):
    def batches(epsilon, params):
        """(model, x, y, alive) -> the images of the batch still correct at every iterate of every restart."""
        _check(epsilon, params["steps"], loss)
        generators = [restart_generator(params["seed"], r) for r in range(params["restarts"])]

        def run(model, x, y, alive):
            robust = alive.clone()
            for generator in generators:
                start = random_start(x, epsilon, generator)  # every image draws: image i keeps the i-th draw
                if robust.any():  # AutoAttack's restarts attack only the images no restart has broken yet
                    broken, _, _ = _run(model, x[robust], y[robust], start[robust], epsilon, params["steps"],
                                        LOSSES[loss])
                    robust[robust.clone()] = ~broken
            return robust

        return run

    return batches


BATCHES = {**{name: batches_of(loss) for name, loss in LOSS.items()}, "apgd_t": apgd_targeted_batches}


def craft_of(loss):
    def craft(epsilon, params):
        """(model, x, y) -> APGD's image per image on that model (apgd): what a transfer attack carries to another."""
        _check(epsilon, params["steps"], loss)
        generator = restart_generator(params["seed"], 0)
        return lambda model, x, y: apgd(model, x, y, epsilon, params["steps"], loss, generator)

    return craft


CRAFT = {name: craft_of(loss) for name, loss in LOSS.items()}
