"""FGSM (Goodfellow et al. 2014) in pixel space, and accuracy under it.

Models normalise their own input, so images here are in [0, 1] and epsilon is in
[0, 1] pixel units, as torchattacks, Foolbox and RobustBench count it.
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F


@contextmanager
def _eval_mode(model):
    # Per module, not model.train(previous): a model may hold submodules in eval
    # mode on purpose (frozen BatchNorm), and restoring must not flip them.
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _fgsm(model, images, labels, epsilon):
    """(adversarial images, clean logits): the attack's forward pass is the clean prediction."""
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad(), _eval_mode(model):
        logits = model(x)
        # Summed, not averaged: each image's gradient is its own loss's, whatever the
        # batch, and a large batch cannot shrink gradients until their sign underflows.
        loss = F.cross_entropy(logits, labels, reduction="sum")
        # autograd.grad w.r.t. x only: nothing accumulates in the parameters' .grad.
        (grad,) = torch.autograd.grad(loss, x)
    adversarial = (images.detach() + epsilon * grad.sign()).clamp_(0.0, 1.0)
    return adversarial, logits.detach()


def fgsm(model, images, labels, epsilon):
    """x + epsilon * sign(grad_x CE(model(x), y)), clamped to [0, 1], detached.

    The gradient is taken with the model in eval mode (BatchNorm on its running
    statistics, which the attack leaves untouched); every module's mode is restored.
    """
    return _fgsm(model, images, labels, epsilon)[0]


def _device(model):
    return next(iter(model.parameters())).device


def evaluate_attack(model, images_uint8, labels, epsilon, batch_size) -> dict:
    """FGSM at `epsilon` over all images (uint8, N x C x H x W), in batches.

    Returns {"n", "clean_acc", "adv_acc", "n_correct", "adv_acc_on_correct"}, in
    percent. adv_acc counts all images (as the seed reports it); adv_acc_on_correct
    only those classified correctly before the attack (None if there are none).
    """
    images_uint8 = torch.as_tensor(images_uint8)
    labels = torch.as_tensor(labels)
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0-255), got {images_uint8.dtype}")
    n = len(images_uint8)
    if n == 0 or len(labels) != n:
        raise ValueError(f"need as many labels as images, and at least one: {n} images, {len(labels)} labels")
    device = _device(model)
    clean_correct = adv_correct = adv_correct_on_correct = 0
    with _eval_mode(model):
        for start in range(0, n, batch_size):
            x = images_uint8[start : start + batch_size].to(device).float().div_(255)
            y = labels[start : start + batch_size].to(device).long()
            adversarial, clean_logits = _fgsm(model, x, y, epsilon)
            with torch.no_grad():
                adv_logits = model(adversarial)
            clean_hit = clean_logits.argmax(1) == y
            adv_hit = adv_logits.argmax(1) == y
            clean_correct += int(clean_hit.sum())
            adv_correct += int(adv_hit.sum())
            adv_correct_on_correct += int((adv_hit & clean_hit).sum())
    return {
        "n": n,
        "clean_acc": 100.0 * clean_correct / n,
        "adv_acc": 100.0 * adv_correct / n,
        "n_correct": clean_correct,
        "adv_acc_on_correct": 100.0 * adv_correct_on_correct / clean_correct if clean_correct else None,
    }
