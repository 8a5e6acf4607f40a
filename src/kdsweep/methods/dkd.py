"""Decoupled KD (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation"), as mdistiller's DKD.

KD's KL splits into the target-class part and the non-target part, which DKD weighs apart:

    L = CE(student, labels) + min(epoch / warmup_epochs, 1) * (alpha * TCKD + beta * NCKD)

- TCKD: T^2 * KL(b_teacher || b_student), b = [p_target, 1 - p_target] of softmax(logits / T): the binary
  split target / non-target.
- NCKD: T^2 * KL(p~_teacher || p~_student), p~ = softmax(logits / T) over the non-target classes alone
  (the target class masked out).
Both are means over the batch. The warm-up grows the distillation term linearly over the first
warmup_epochs epochs (epochs counted from 1). At beta = 0 it is CE + alpha * TCKD; at alpha = beta = 0 the
cross-entropy alone, the hard-target baseline's loss (kdsweep.plan trains no such point).

Defaults, as the authors' released code (megvii-research/mdistiller):
- alpha 1, beta 8, temperature 4, warmup_epochs 20 and the CE weight 1 (fixed here): mdistiller/engine/cfg.py,
  CFG.DKD.ALPHA = 1.0, BETA = 8.0, T = 4.0, WARMUP = 20, CE_WEIGHT = 1.0, which
  configs/cifar100/dkd/res32x4_res8x4.yaml keeps (other pairs' files there set BETA 2 or 6);
- the loss and the warm-up, min(epoch / WARMUP, 1): mdistiller/distillers/DKD.py.
"""

from .base import Method, Param, temperature_param, warm_up, warmup_param


def parts(student_logits, teacher_logits, targets, temperature):
    """(TCKD, NCKD), each T^2 * KL averaged over the batch, in log space (the same as mdistiller's
    probabilities, without their log of a sum)."""
    import torch
    import torch.nn.functional as F

    teacher_logits = teacher_logits.detach()
    target = F.one_hot(targets, student_logits.shape[1]).bool()
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=1)

    def binary(log_p):
        # log [p_target, 1 - p_target], the second as the log-sum-exp over the non-target classes
        return torch.stack([log_p.masked_fill(~target, -torch.inf).logsumexp(1),
                            log_p.masked_fill(target, -torch.inf).logsumexp(1)], dim=1)

    b_s, b_t = binary(log_s), binary(log_t)
    tckd = (b_t.exp() * (b_t - b_s)).sum(1).mean()
    # over the non-target classes: log-softmax with the target class left out (its entries then set to 0
    # and its probability to 0, so that no -inf enters the arithmetic)
    masked_s = (student_logits / temperature).masked_fill(target, -torch.inf).log_softmax(1).masked_fill(target, 0.0)
    masked_t = (teacher_logits / temperature).masked_fill(target, -torch.inf).log_softmax(1).masked_fill(target, 0.0)
    nckd = (masked_t.exp().masked_fill(target, 0.0) * (masked_t - masked_s)).sum(1).mean()
    return temperature**2 * tckd.clamp_min(0.0), temperature**2 * nckd.clamp_min(0.0)


def losses(student_logits, teacher_logits, targets, hparams, progress) -> dict:
    """{"hard": (1, CE), "tckd": (warm * alpha, TCKD), "nckd": (warm * beta, NCKD)}, warm the warm-up."""
    import torch.nn.functional as F

    warm = warm_up(hparams, progress)
    hard = F.cross_entropy(student_logits, targets)
    alpha, beta = float(hparams["alpha"]), float(hparams["beta"])
    if alpha == 0 and beta == 0:
        return {"hard": (1.0, hard), "tckd": (0.0, None), "nckd": (0.0, None)}
    tckd, nckd = parts(student_logits, teacher_logits, targets, float(hparams["temperature"]))
    return {"hard": (1.0, hard), "tckd": (warm * alpha, tckd), "nckd": (warm * beta, nckd)}


METHOD = Method(
    name="dkd", title="Decoupled KD (Zhao et al., CVPR 2022)",
    params=(
        Param("alpha", "a", 1.0, minimum=0, maximum=1000, description="weight of TCKD (target / non-target)"),
        Param("beta", "b", 8.0, minimum=0, maximum=1000, description="weight of NCKD (among the non-target classes)"),
        temperature_param(4.0, "softmax temperature T"),
        warmup_param("epochs over which the distillation term grows linearly to its full weight"),
    ),
    axes=("beta", "temperature"),
    terms=("hard", "tckd", "nckd"),
    loss_fn=losses,
    uses_teacher=lambda hparams: hparams["alpha"] > 0 or hparams["beta"] > 0,
)
