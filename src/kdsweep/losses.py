"""The knowledge-distillation loss (Hinton et al. 2015), by named parts.

    L = (1 - w) * CE(student, labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))

w (soft_weight) is the weight of the SOFT (teacher) term; 1 - w is on the hard labels.
The reference study's eq. 3 puts its alpha on the hard term: alpha = 1 - w.
"""

import math

import torch.nn.functional as F


def _check(temperature, soft_weight):
    # Written so that NaN fails too.
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if not 0.0 <= soft_weight <= 1.0:
        raise ValueError(f"soft_weight must lie in [0, 1], got {soft_weight}")


def soft_loss(student_logits, teacher_logits, temperature):
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), summed over classes, mean over the batch.

    The T^2 keeps the gradient's size roughly independent of T (the softened
    gradients shrink as 1/T^2), so changing T does not silently rescale the
    soft term against the hard one. The KL is clamped at 0: rounding can make it slightly
    negative when the student matches the teacher, and a KL is never negative.
    """
    # The teacher is a fixed target: never let a gradient reach it through the loss.
    teacher_log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    student_log_p = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(student_log_p, teacher_log_p, reduction="batchmean", log_target=True)
    # A KL is >= 0, but when the student matches the teacher the sum is 0 plus rounding, of either sign
    # (down to about -1e-16 in float64, -1e-7 in float32, depending on the processor's float path). Clamp it
    # at 0. The gradient stays right: where the clamp bites (kl < 0, only at rounding level) the student
    # is at the KL's minimum, whose true gradient is 0 up to rounding, and clamp_min passes the gradient
    # through unchanged wherever kl >= 0.
    kl = kl.clamp_min(0.0)
    return temperature**2 * kl


def kd_losses(student_logits, teacher_logits, targets, temperature, soft_weight) -> dict:
    """{"hard": CE(student, targets), "soft": soft_loss(...), "total": the weighted sum}.

    soft_weight = 0 is plain cross-entropy and never touches the teacher
    (teacher_logits may be None; "soft" is then None). soft_weight = 1 is the soft
    term alone (targets may be None; "hard" is then None). "hard" is computed
    whenever targets are given, also at soft_weight = 1, so the log can show it.
    """
    temperature = float(temperature)
    soft_weight = float(soft_weight)
    _check(temperature, soft_weight)
    if soft_weight > 0 and teacher_logits is None:
        raise ValueError("teacher_logits are needed when soft_weight > 0")
    if soft_weight < 1 and targets is None:
        raise ValueError("targets are needed when soft_weight < 1")
    hard = F.cross_entropy(student_logits, targets) if targets is not None else None
    soft = soft_loss(student_logits, teacher_logits, temperature) if soft_weight > 0 else None
    # The end points are branches, not 0 * x: they must be exactly one term, and
    # 0 * inf would turn a diverged unused term into NaN.
    if soft_weight == 0:
        total = hard
    elif soft_weight == 1:
        total = soft
    else:
        total = (1 - soft_weight) * hard + soft_weight * soft
    return {"hard": hard, "soft": soft, "total": total}


def kd_loss(student_logits, teacher_logits, targets, temperature, soft_weight):
    """(1 - w) * CE + w * T^2 * KL with w = soft_weight (alpha = 1 - w in the reference study's eq. 3)."""
    return kd_losses(student_logits, teacher_logits, targets, temperature, soft_weight)["total"]
