import math

import pytest
import torch
import torch.nn.functional as F

from kdsweep.losses import kd_loss, kd_losses, soft_loss

BATCH, CLASSES = 5, 7


@pytest.fixture
def logits():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(BATCH, CLASSES, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(BATCH, CLASSES, generator=generator, dtype=torch.float64) * 3
    targets = torch.randint(CLASSES, (BATCH,), generator=generator)
    return student, teacher, targets


def manual_soft(student, teacher, temperature):
    """T^2 * mean over the batch of sum_i p_t,i (log p_t,i - log p_s,i), written out."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        s_z = sum(math.exp(v / temperature) for v in s_row)
        t_z = sum(math.exp(v / temperature) for v in t_row)
        for s, t in zip(s_row, t_row):
            p_t = math.exp(t / temperature) / t_z
            p_s = math.exp(s / temperature) / s_z
            total += p_t * (math.log(p_t) - math.log(p_s))
    return temperature**2 * total / len(student)


def test_hard_only_is_exactly_cross_entropy_without_a_teacher(logits):
    student, _, targets = logits
    parts = kd_losses(student, None, targets, temperature=4, soft_weight=0)
    assert torch.equal(parts["total"], F.cross_entropy(student, targets))
    assert parts["soft"] is None
    assert torch.equal(kd_loss(student, None, targets, 4, 0.0), F.cross_entropy(student, targets))


@pytest.mark.parametrize("temperature", [1, 4, 20])
def test_soft_only_is_t_squared_kl(logits, temperature):
    student, teacher, targets = logits
    expected = manual_soft(student, teacher, temperature)
    assert kd_loss(student, teacher, None, temperature, 1).item() == pytest.approx(expected, rel=1e-12)
    parts = kd_losses(student, teacher, targets, temperature, 1.0)
    assert torch.equal(parts["total"], parts["soft"])
    # The hard part is still reported, for the log, though it carries no weight.
    assert torch.equal(parts["hard"], F.cross_entropy(student, targets))


@pytest.mark.parametrize("soft_weight", [0.1, 0.5, 0.9])
def test_intermediate_weight_is_the_convex_combination(logits, soft_weight):
    student, teacher, targets = logits
    temperature = 6
    expected = (1 - soft_weight) * F.cross_entropy(student, targets).item() + soft_weight * manual_soft(
        student, teacher, temperature
    )
    parts = kd_losses(student, teacher, targets, temperature, soft_weight)
    assert parts["total"].item() == pytest.approx(expected, rel=1e-12)
    assert parts["soft"].item() == pytest.approx(manual_soft(student, teacher, temperature), rel=1e-12)
    assert parts["total"].item() != pytest.approx(parts["hard"].item())


def test_zero_when_the_student_matches_the_teacher(logits):
    student, _, _ = logits
    student = student.clone().requires_grad_(True)
    loss = kd_loss(student, student.detach().clone(), None, temperature=4, soft_weight=1)
    loss.backward()
    assert loss.item() == 0.0
    assert student.grad.abs().max().item() < 1e-15


def test_no_gradient_reaches_the_teacher(logits):
    student, teacher, targets = logits
    student = student.clone().requires_grad_(True)
    teacher = teacher.clone().requires_grad_(True)
    kd_loss(student, teacher, targets, 4, 0.5).backward()
    assert student.grad is not None and teacher.grad is None


def _soft_grad(student, teacher, temperature):
    student = student.clone().requires_grad_(True)
    soft_loss(student, teacher, temperature).backward()
    return student.grad


def test_t_squared_keeps_the_gradient_scale_at_high_temperature(logits):
    student, teacher, _ = logits
    # Hinton et al.: at high T, d(KL)/dz_i -> ((z_i - mean z) - (v_i - mean v)) / (N T^2);
    # the T^2 factor cancels the 1/T^2, leaving a T-independent limit (here also / batch).
    def centred(z):
        return z - z.mean(dim=1, keepdim=True)

    limit = (centred(student) - centred(teacher)) / (CLASSES * BATCH)
    for temperature in (100.0, 1000.0):
        grad = _soft_grad(student, teacher, temperature)
        # The approximation error is O(logit / T) relative.
        torch.testing.assert_close(grad, limit, rtol=0, atol=limit.abs().max().item() * 5 / temperature)
    ratio = _soft_grad(student, teacher, 1000.0).norm() / _soft_grad(student, teacher, 100.0).norm()
    assert ratio.item() == pytest.approx(1.0, abs=0.02)
    # Without the T^2 factor the same gradient would have shrunk 100-fold.
    assert (_soft_grad(student, teacher, 100.0) / 100.0**2).norm() < limit.norm() / 1000


@pytest.mark.parametrize("temperature", [0, -1, float("nan"), float("inf")])
def test_invalid_temperature(logits, temperature):
    student, teacher, targets = logits
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(student, teacher, targets, temperature, 0.5)


@pytest.mark.parametrize("soft_weight", [-0.1, 1.1, float("nan")])
def test_invalid_soft_weight(logits, soft_weight):
    student, teacher, targets = logits
    with pytest.raises(ValueError, match="soft_weight"):
        kd_loss(student, teacher, targets, 4, soft_weight)


def test_teacher_required_when_the_soft_term_counts(logits):
    student, _, targets = logits
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss(student, None, targets, 4, 0.1)


def test_teacher_logits_from_inference_mode_can_be_used(logits):
    # The training loop runs the teacher under torch.inference_mode().
    student, teacher, targets = logits
    with torch.inference_mode():
        teacher = teacher.clone()
    student = student.clone().requires_grad_(True)
    kd_loss(student, teacher, targets, 4, 0.5).backward()
    assert student.grad.abs().sum().item() > 0
