"""Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial attack
via random search", Algorithm 1 with its L-inf sampling, Algorithm 2), untargeted, on the margin loss. It
uses no gradient, only the model's logits: where gradient attacks fail because the gradient is masked
(vanishing, shattered, or a softmax underflowed), random search does not, so its beating them is the
masking check of the suite.

As the authors' code (max-andr/square-attack, square_attack_linf):

- start: vertical stripes, x + eps * s per image, channel and column, s = +-1 uniformly, clamped to [0, 1]
- at query i (of `queries`, the start counting as the first): a square of side
  s = round(sqrt(p_i * h * w)) (at least 1, at most h - 1) at a uniform position (top-left corner in
  [0, h - s) x [0, w - s)), and per channel a uniform sign; inside the square the image becomes
  clamp(x + eps * sign, 0, 1) (so every pixel stays on the ball's surface), outside it stays the best
  image so far. Signs are drawn again while the square would leave the image unchanged. The proposal
  replaces the best image where its loss is strictly higher.
- p_i: p_init, halved at the authors' points of a 10,000-query run (10, 50, 200, 500, 1000, 2000, 4000, 6000,
  8000), rescaled to `queries` (p_selection).
- the loss: the margin max_{j != y} z_j - z_y, maximised (the paper's untargeted margin loss, negated).

An image is broken when any query fooled the model; an image once broken is queried no more. The draws come
from one CPU generator seeded by `seed`, per batch in order: the result is reproducible for a fixed
training.eval_batch_size, but another batch size draws other squares.
"""

from __future__ import annotations

import math

import torch

from .base import check_epsilon, eval_mode, fooled, full_precision, margin_loss, uniform

# The authors' schedule of p over a 10,000-query run: past each point, p_init divided by the factor.
SCHEDULE = ((10, 2), (50, 4), (200, 8), (500, 16), (1000, 32), (2000, 64), (4000, 128), (6000, 256), (8000, 512))


def p_selection(p_init: float, query: int, queries: int) -> float:
    """The fraction of the image a square covers at query `query` (0-based, the start excluded) of `queries`."""
    point = int(query / queries * 10000)
    if point > 10000:
        return p_init
    factor = 1
    for bound, divide in SCHEDULE:
        if point > bound:
            factor = divide
    return p_init / factor


def side(p: float, h: int, w: int) -> int:
    """The square's side for a fraction p of the pixels (the authors': sqrt(p * n_features / c), in [1, h - 1])."""
    return min(max(int(round(math.sqrt(p * h * w))), 1), h - 1)


def _signs(shape, generator, device, dtype):
    return torch.where(uniform(shape, generator, device, dtype) < 0.5, -1.0, 1.0).to(dtype)


def _run(model, clean, labels, epsilon, queries, p_init, generator):
    """(fooled at any query, the best image), model in eval mode."""
    n, c, h, w = clean.shape
    device, dtype = clean.device, clean.dtype
    best = (clean + epsilon * _signs((n, c, 1, w), generator, device, dtype)).clamp_(0.0, 1.0)
    with torch.no_grad():
        logits = model(best)
    broken, loss_best = fooled(logits, labels), margin_loss(logits, labels)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    for query in range(int(queries) - 1):
        active = (~broken).nonzero()[:, 0]
        if not len(active):
            break
        m, s = len(active), side(p_selection(p_init, query, queries), h, w)
        corner = (uniform((m, 2), generator, device, torch.float64) * torch.tensor([h - s, w - s], device=device,
                                                                                   dtype=torch.float64)).long()
        inside = (((rows >= corner[:, :1]) & (rows < corner[:, :1] + s))[:, None, :, None]
                  & ((cols >= corner[:, 1:]) & (cols < corner[:, 1:] + s))[:, None, None, :])
        x, current = clean[active], best[active]
        proposal = torch.where(inside, (x + epsilon * _signs((m, c, 1, 1), generator, device, dtype)).clamp(0, 1),
                               current)
        for _ in range(1000):  # signs again where the square changes nothing (at most a few rounds)
            same = ((proposal - current).abs() < 1e-7).flatten(1).all(1)
            if not same.any():
                break
            again = (x[same] + epsilon * _signs((int(same.sum()), c, 1, 1), generator, device, dtype)).clamp(0, 1)
            proposal[same] = torch.where(inside[same], again, current[same])
        with torch.no_grad():
            logits = model(proposal)
        values = margin_loss(logits, labels[active])
        broken[active] |= fooled(logits, labels[active])
        better = values > loss_best[active]
        best[active[better]], loss_best[active[better]] = proposal[better], values[better]
    return broken, best


def _check(epsilon, queries, p_init):
    check_epsilon(epsilon)
    if int(queries) != queries or queries < 1:
        raise ValueError(f"queries must be a positive integer, got {queries}")
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")


def square(model, images, labels, epsilon, queries=1000, p_init=0.05, generator=None):
    """The Square attack's best image per image (its last fooling one where a query fooled the model),
    detached; model in eval mode, autocast off, its modes restored."""
    _check(epsilon, queries, p_init)
    if images.shape[-2] < 2:
        raise ValueError("the Square attack needs images of at least 2 x 2 pixels")
    with eval_mode(model), full_precision(images.device):
        return _run(model, images.detach(), labels, epsilon, queries, p_init, generator)[1].detach()


def batches(epsilon, params):
    """(model, x, y, alive) -> the images of the batch no query fooled."""
    _check(epsilon, params["queries"], params["p_init"])
    generator = torch.Generator().manual_seed(int(params["seed"]))

    def run(model, x, y, alive):
        robust = alive.clone()
        if epsilon > 0 and robust.any():  # (at epsilon 0 every square would leave the image unchanged)
            broken, _ = _run(model, x[robust], y[robust], epsilon, params["queries"], params["p_init"], generator)
            robust[robust.clone()] = ~broken
        return robust

    return run


BATCHES = {"square": batches}
