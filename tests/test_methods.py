"""Every KD method's loss (kdsweep.methods) against an independent computation of its paper's formula:
values in Python's math (or float64 torch written out differently), gradients by finite differences or
by the formula's own derivative; and their edge cases.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdsweep.methods import METHODS, Progress, soft_loss, total
from kdsweep.methods.kd import kd_loss, losses as kd_terms


def kd_losses(student, teacher, targets, temperature, soft_weight) -> dict:
    """kd's terms as {"hard", "soft", "total"}."""
    terms = kd_terms(student, teacher, targets, {"temperature": temperature, "soft_weight": soft_weight})
    return {"hard": terms["hard"][1], "soft": terms["soft"][1], "total": total(terms)}

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
    """kd_losses at w = 0 calls F.cross_entropy on the same tensors: the same computation, exact."""
    student, _, targets = logits
    parts = kd_losses(student, None, targets, temperature=4, soft_weight=0)
    assert torch.equal(parts["total"], F.cross_entropy(student, targets))
    assert parts["soft"] is None
    assert torch.equal(kd_loss(student, None, targets, 4, 0.0), F.cross_entropy(student, targets))


@pytest.mark.parametrize("temperature", [1, 4, 20])
def test_soft_only_is_t_squared_kl(logits, temperature):
    """The KL against the hand formula (Python's math, another path): rel=1e-12, a few hundred times the
    float64 rounding of a sum of 7 terms (3e-15 at T = 20, where the two sums cancel most). The parts
    of kd_losses against each other, and against F.cross_entropy, are the same computation: exact."""
    student, teacher, targets = logits
    expected = manual_soft(student, teacher, temperature)
    assert kd_loss(student, teacher, None, temperature, 1).item() == pytest.approx(expected, rel=1e-12)
    parts = kd_losses(student, teacher, targets, temperature, 1.0)
    assert torch.equal(parts["total"], parts["soft"])
    # The hard part is still reported, for the log, though it carries no weight.
    assert torch.equal(parts["hard"], F.cross_entropy(student, targets))


@pytest.mark.parametrize("soft_weight", [0.1, 0.5, 0.9])
def test_intermediate_weight_is_the_convex_combination(logits, soft_weight):
    """Against the hand formula: rel=1e-12, as above. total and hard differ by w * (soft - hard), O(1)
    for these logits, far outside approx's 1e-6."""
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
    """Student and teacher are the same values through the same computation: the log-probabilities
    are equal bit for bit, so the KL is exactly 0 (kept exact) and the gradient T / N * p (sum p - 1),
    a few ulps."""
    student, _, _ = logits
    student = student.clone().requires_grad_(True)
    loss = kd_loss(student, student.detach().clone(), None, temperature=4, soft_weight=1)
    loss.backward()
    assert loss.item() == 0.0
    assert student.grad.abs().max().item() < 1e-15


# rounding: ten ulps of a log-probability of these logits (|log p| < 8): the most the KL of two
# equal distributions can be off along either path (measured: 5e-16 in float64, 3e-7 in float32).
@pytest.mark.parametrize("dtype, rounding", [(torch.float64, 1e-14), (torch.float32, 1e-5)])
def test_kl_below_zero_from_rounding_is_clamped_and_its_gradient_is_zero(dtype, rounding):
    """A student equal to its teacher up to a constant shift of the logits (the same softmax along
    another arithmetic path): the KL is 0, computed as 0 plus rounding of either sign. Whether a given
    row's raw KL comes out negative depends on the processor's float path, so that is a precondition,
    only reported; what always holds is that soft_loss is >= 0, 0 up to rounding, and its gradient 0 up
    to rounding (exactly 0 where the clamp bites), as the true gradient at the KL's minimum is."""
    temperature = 4.0
    teacher = 3 * torch.randn(400, CLASSES, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    teacher = teacher.to(dtype)
    negative = 0
    for row in teacher:
        t = row[None]
        student = (t + 3.0).requires_grad_(True)
        raw = F.kl_div(F.log_softmax(student.detach() / temperature, dim=1), F.log_softmax(t / temperature, dim=1),
                       reduction="batchmean", log_target=True).item()  # soft_loss's KL before the clamp
        assert abs(raw) < rounding  # the construction: equal distributions up to rounding
        loss = soft_loss(student, t, temperature)
        assert 0 <= loss.item() <= temperature**2 * rounding, (raw, loss.item())
        loss.backward()
        if raw < 0:
            negative += 1
            assert loss.item() == 0.0 and torch.equal(student.grad, torch.zeros_like(student.grad))
        else:
            assert loss.item() == pytest.approx(temperature**2 * raw, rel=1e-12)  # untouched
        assert student.grad.abs().max().item() < temperature * rounding
    # About a quarter of the rows on the x86 machines this was written on; not asserted (see above).
    print(f"{dtype}: {negative} of {len(teacher)} raw KLs below 0 here, clamped to 0")
    # A batch: the clamp acts on the batch mean, which is >= 0 too.
    assert 0 <= soft_loss(teacher + 3.0, teacher, temperature).item() <= temperature**2 * rounding


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
def test_invalid_temperature_is_refused_before_training(temperature):
    from kdsweep.errors import KdsweepError
    from kdsweep.plan import Run

    with pytest.raises(KdsweepError, match="kd: temperature"):
        Run.distilled_run("kd", "resnet18", 0, "kd", {"temperature": temperature, "soft_weight": 0.5})


@pytest.mark.parametrize("soft_weight", [-0.1, 1.1, float("nan")])
def test_invalid_soft_weight_is_refused_before_training(soft_weight):
    from kdsweep.errors import KdsweepError
    from kdsweep.plan import Run

    with pytest.raises(KdsweepError, match="kd: soft_weight"):
        Run.distilled_run("kd", "resnet18", 0, "kd", {"temperature": 4, "soft_weight": soft_weight})


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


# ---------------------------------------------------------------- every method of the registry


def test_the_registry_holds_every_method_module_kd_first():
    assert list(METHODS)[0] == "kd" and set(METHODS) == {"kd", "dkd", "lskd", "ctkd", "at", "fitnets", "reviewkd"}
    for method in METHODS.values():
        assert set(method.axes) <= {param.name for param in method.params}
        assert len({param.spelling for param in method.params}) == len(method.params)
        defaults = {param.name: param.default for param in method.params}
        assert all(param.problem(param.default) is None for param in method.params), method.name
        assert method.problem(defaults) is None


# Each method's defaults as its authors' released code and configs set them (the files each module's
# docstring cites): mdistiller (megvii-research) for KD and DKD, sunshangquan/logit-standardization-KD for LSKD,
# zhengli97/CTKD for CTKD.
AUTHORS = {
    # mdistiller/engine/cfg.py: CFG.KD.TEMPERATURE 4, LOSS.KD_WEIGHT 0.9 (CE_WEIGHT 0.1 = 1 - w)
    "kd": {"temperature": 4.0, "soft_weight": 0.9},
    # mdistiller/engine/cfg.py: CFG.DKD.ALPHA 1, BETA 8, T 4, WARMUP 20 (CE_WEIGHT 1)
    "dkd": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20},
    # tools/train.py --base-temp 2 --kd-weight 9; mdistiller/engine/cfg.py CFG.KD.LOSS.CE_WEIGHT 0.1
    "lskd": {"temperature": 2.0, "hard_weight": 0.1, "soft_weight": 9.0},
    # train_student.py (-a 0.9, --t_start 1, --t_end 20, --momentum 0.9, --weight_decay 5e-4) and
    # scripts/run_cifar_distill.sh (--decay_max 0 --decay_min -1 --decay_loops 10 --learning_rate 0.05)
    "ctkd": {"soft_weight": 0.9, "t_start": 1.0, "t_end": 20.0, "lambda_max": 0.0, "lambda_min": -1.0,
             "lambda_epochs": 10, "t_lr": 0.05, "t_momentum": 0.9, "t_weight_decay": 0.0005},
}


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_every_default_is_its_authors_and_its_docstring_cites_the_file(name):
    import importlib

    method = METHODS[name]
    assert {param.name: param.default for param in method.params} == AUTHORS[name]
    doc = importlib.import_module(f"kdsweep.methods.{name}").__doc__
    files = {"kd": ["mdistiller/engine/cfg.py", "mdistiller/distillers/KD.py"],
             "dkd": ["mdistiller/engine/cfg.py", "mdistiller/distillers/DKD.py", "configs/cifar100/dkd/"],
             "lskd": ["sunshangquan/logit-standardization-KD", "tools/train.py", "mdistiller/engine/cfg.py",
                      "mdistiller/distillers/KD.py"],
             "ctkd": ["zhengli97/CTKD", "train_student.py", "scripts/run_cifar_distill.sh", "models/temp_global.py"]}
    for cited in files[name]:
        assert cited in doc, (name, cited)


TEACHER_FREE = {  # a point of each method that uses no teacher, and the weight of its cross-entropy
    "kd": ({"temperature": 8.0, "soft_weight": 0.0}, 1.0),
    "dkd": ({"alpha": 0.0, "beta": 0.0, "temperature": 2.0, "warmup_epochs": 20}, 1.0),
    "lskd": ({"temperature": 3.0, "hard_weight": 0.5, "soft_weight": 0.0}, 0.5),
    "ctkd": ({**AUTHORS["ctkd"], "soft_weight": 0.0}, 1.0),
}


@pytest.mark.parametrize("name", sorted(TEACHER_FREE))
def test_a_teacher_free_point_is_the_labels_cross_entropy_alone_at_its_weight(logits, name):
    """Without the teacher's logits the loss is weight x CE, CE written out in Python's math; the method says
    so (Method.teacher_free), and a point that uses the teacher says None."""
    student, _, targets = logits
    hparams, weight = TEACHER_FREE[name]
    method = METHODS[name]
    state = method.make_state(hparams)
    state = state.double() if state is not None else None
    loss = total(method.loss(student, None, targets, hparams, Progress(30), state)).item()
    ce = sum(math.log(sum(math.exp(v) for v in row)) - row[y]
             for row, y in zip(student.tolist(), targets.tolist())) / len(targets)
    assert loss == pytest.approx(weight * ce, rel=1e-12)
    assert method.teacher_free(hparams) == weight and method.teacher_free(AUTHORS[name]) is None


def test_a_teacher_free_point_at_weight_1_trains_exactly_as_the_baseline():
    """kd at w = 0 (any T), dkd at alpha = beta = 0, ctkd at w = 0 and lskd at soft_weight 0 with hard_weight 1,
    each trained two epochs from the baseline's seed, end with the baseline's weights bit for bit (the rule of
    kdsweep.plan: such a point is the baseline and is not trained). lskd at hard_weight 0.5 does not."""
    from kdsweep.augment import Augment
    from kdsweep.config import load_config
    from kdsweep.plan import Run
    from kdsweep.runtime import Runtime
    from kdsweep.sources import InMemory
    from kdsweep.train import Point, train_epoch

    config = load_config([], ["training.bn_momentum=0.1"])
    runtime = Runtime.from_config({**config["runtime"], "device": "cpu", "threads": 1})
    augment = Augment.from_config(config["augmentation"])
    data = torch.Generator().manual_seed(1)
    images = torch.randint(256, (60, 3, 8, 8), generator=data, dtype=torch.uint8)  # as the data loader gives them
    labels = torch.randint(10, (60,), generator=data)

    def trained(run):
        point = Point(run, config["training"], 10, [0.5] * 3, [0.25] * 3, runtime)
        generator = torch.Generator().manual_seed(run.seed)
        for epoch in (1, 2):
            train_epoch([point], None, InMemory(augment, images, labels, 20), generator, runtime, epoch=epoch)
        return point.module.state_dict()

    baseline = trained(Run("baseline", "mobilenet_v3_small", 3))
    same = [(name, {**TEACHER_FREE[name][0], **({"hard_weight": 1.0} if name == "lskd" else {})}) for name in TEACHER_FREE]
    for name, hparams in same + [("lskd", TEACHER_FREE["lskd"][0])]:
        weights = trained(Run.distilled_run(name, "mobilenet_v3_small", 3, name, hparams))
        equal = all(torch.equal(weights[key], baseline[key]) for key in baseline)
        assert equal == (METHODS[name].teacher_free(hparams) == 1), (name, hparams)


def test_ctkd_trains_its_temperature_with_the_authors_sgd():
    """theta's optimiser is SGD with the point's t_lr, t_momentum and t_weight_decay, written out: v = mu v + g +
    wd theta, theta -= lr v; its momentum is the module's buffer, so the state (the checkpoint's) holds it."""
    ctkd = METHODS["ctkd"]
    hparams = {**CTKD, "t_lr": 0.1, "t_momentum": 0.5, "t_weight_decay": 0.01}
    state = ctkd.make_state(hparams)
    optimizer = ctkd.state_optimizer(state, hparams)
    theta, velocity = 1.0, 0.0
    for grad in (0.3, -0.2, 0.7):
        state.theta.grad = torch.tensor([grad])
        optimizer.step()
        velocity = 0.5 * velocity + grad + 0.01 * theta
        theta -= 0.1 * velocity
        assert state.theta.item() == pytest.approx(theta, rel=1e-6)
        assert state.state_dict()["momentum"].item() == pytest.approx(velocity, rel=1e-6)


def test_lambda_changes_the_learned_temperature():
    """The reversal's strength lambda sets how far the temperature moves, as the authors' SGD makes it: the same
    student, teacher and batch, lambda -1 or -4 from the first epoch (lambda_epochs 1; no weight decay), one
    training step moves theta four times as far for -4 (theta's step is lr x lambda x the loss's gradient), and
    the two learned temperatures differ. With Adam, which the student trains with, both first steps would be
    the same, lr x sign(gradient): the reason the temperature has the authors' optimiser."""
    from kdsweep.augment import Augment
    from kdsweep.config import load_config
    from kdsweep.plan import Run
    from kdsweep.runtime import Runtime
    from kdsweep.sources import InMemory
    from kdsweep.train import Point, train_epoch

    config = load_config([], ["training.bn_momentum=0.1"])
    runtime = Runtime.from_config({**config["runtime"], "device": "cpu", "threads": 1})
    augment = Augment.from_config({"pad": 0, "flip_p": 0.0, "rotation_degrees": 0})
    data = torch.Generator().manual_seed(2)
    images = torch.randint(256, (20, 3, 8, 8), generator=data, dtype=torch.uint8)
    labels = torch.randint(10, (20,), generator=data)
    torch.manual_seed(5)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    with torch.no_grad():
        teacher[1].weight.mul_(10)  # logits of a trained teacher's size (SD of several units), not near 0

    def after_one_step(lambda_min):
        hparams = {**AUTHORS["ctkd"], "t_end": 2.0, "lambda_min": lambda_min, "lambda_epochs": 1, "t_weight_decay": 0.0}
        point = Point(Run.distilled_run("ctkd", "mobilenet_v3_small", 0, "ctkd", hparams), config["training"], 10,
                      [0.5] * 3, [0.25] * 3, runtime)
        train_epoch([point], teacher, InMemory(augment, images, labels, 20), torch.Generator().manual_seed(0), runtime,
                    epoch=1)
        return point.method_state.theta.item(), METHODS["ctkd"].epoch_record(point.method_state)["temperature"]

    (weak, weak_t), (strong, strong_t) = after_one_step(-1.0), after_one_step(-4.0)
    assert weak != 1.0 and (strong - 1.0) == pytest.approx(4 * (weak - 1.0), rel=1e-4)
    assert abs(strong_t - weak_t) > 0.01
    steps = []
    for gradient in (0.01, 0.04):  # the same loss, lambda 1 and 4: Adam's first step is the same
        theta = torch.nn.Parameter(torch.ones(1))
        adam = torch.optim.Adam([theta], lr=0.001)
        theta.grad = torch.tensor([gradient])
        adam.step()
        steps.append(1.0 - theta.item())
    assert steps[0] == pytest.approx(steps[1], rel=1e-5)


def softmax(row, temperature):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def manual_dkd(student, teacher, targets, temperature):
    """(TCKD, NCKD) of Zhao et al. 2022, eqs. 1-4, per image in Python's math, averaged, times T^2."""
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), targets.tolist()):
        p_s, p_t = softmax(s_row, temperature), softmax(t_row, temperature)
        tckd += kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]])
        rest_s = [p / (1 - p_s[y]) for i, p in enumerate(p_s) if i != y]
        rest_t = [p / (1 - p_t[y]) for i, p in enumerate(p_t) if i != y]
        nckd += kl(rest_t, rest_s)
    return temperature**2 * tckd / len(targets), temperature**2 * nckd / len(targets)


DKD = {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20}


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_is_tckd_and_nckd_of_the_paper(logits, temperature):
    """Against the paper's formulas in Python's math (rel 1e-10), and KD's KL = TCKD + (1 - p_t) NCKD image by
    image (the paper's eq. 4), the decomposition DKD rests on."""
    from kdsweep.methods.dkd import parts

    student, teacher, targets = logits
    tckd, nckd = parts(student, teacher, targets, temperature)
    want_t, want_n = manual_dkd(student, teacher, targets, temperature)
    assert tckd.item() == pytest.approx(want_t, rel=1e-10) and nckd.item() == pytest.approx(want_n, rel=1e-10)
    for i in range(len(targets)):
        row = slice(i, i + 1)
        t_i, n_i = parts(student[row], teacher[row], targets[row], temperature)
        p_target = softmax(teacher[i].tolist(), temperature)[targets[i]]
        whole = manual_soft(student[row], teacher[row], temperature)
        assert whole == pytest.approx(t_i.item() + (1 - p_target) * n_i.item(), rel=1e-10)


def test_dkd_loss_its_warmup_and_its_edge_case_beta_zero(logits):
    student, teacher, targets = logits
    dkd = METHODS["dkd"]
    ce = F.cross_entropy(student, targets).item()
    want_t, want_n = manual_dkd(student, teacher, targets, 4.0)
    for epoch, warm in ((1, 1 / 20), (10, 0.5), (20, 1.0), (35, 1.0)):
        loss = total(dkd.loss(student, teacher, targets, DKD, Progress(epoch))).item()
        assert loss == pytest.approx(ce + warm * (1.0 * want_t + 8.0 * want_n), rel=1e-10), epoch
    terms = dkd.loss(student, teacher, targets, {**DKD, "beta": 0.0}, Progress(30))
    assert total(terms).item() == pytest.approx(ce + want_t, rel=1e-10)  # beta = 0: CE + alpha * TCKD
    assert dkd.terms == tuple(terms)


def standardized(row):
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
    return [(v - mean) / (1e-7 + std) for v in row]


LSKD = {"temperature": 2.0, "hard_weight": 1.0, "soft_weight": 9.0}


def test_logit_standardization_is_kd_of_z_scored_logits_and_ignores_shift_and_scale(logits):
    """Sun et al. 2024: the KL of the z-scored logits at the base temperature, in Python's math; adding a
    constant to an image's logits, or scaling them by a positive factor, leaves the distillation term as it
    is (up to the formula's 1e-7 in the denominator)."""
    student, teacher, targets = logits
    lskd = METHODS["lskd"]
    terms = lskd.loss(student, teacher, targets, LSKD, Progress(1))
    z_s = torch.tensor([standardized(row) for row in student.tolist()], dtype=torch.float64)
    z_t = torch.tensor([standardized(row) for row in teacher.tolist()], dtype=torch.float64)
    want = manual_soft(z_s, z_t, 2.0)
    assert terms["soft"][1].item() == pytest.approx(want, rel=1e-10)
    assert total(terms).item() == pytest.approx(F.cross_entropy(student, targets).item() + 9.0 * want, rel=1e-10)
    shift = torch.arange(BATCH, dtype=torch.float64).unsqueeze(1) * 3.5
    scale = torch.linspace(0.5, 4.0, BATCH, dtype=torch.float64).unsqueeze(1)
    for moved_s, moved_t in ((student + shift, teacher - shift), (student * scale, teacher * scale.flip(0))):
        moved = lskd.loss(moved_s, moved_t, targets, LSKD, Progress(1))["soft"][1]
        assert moved.item() == pytest.approx(terms["soft"][1].item(), rel=1e-6)


CTKD = {"soft_weight": 0.9, "t_start": 1.0, "t_end": 20.0, "lambda_max": 0.0, "lambda_min": -1.0,
        "lambda_epochs": 10, "t_lr": 0.05, "t_momentum": 0.9, "t_weight_decay": 0.0005}


def test_ctkd_is_kd_at_its_learned_temperature_and_reverses_the_temperatures_gradient(logits):
    """Li et al. 2023: T = t_start + t_end * sigmoid(theta), theta from 1; the loss is KD's at T (Python's
    math); theta's gradient is lambda times that of the loss without the reversal (finite differences)."""
    from kdsweep.methods.ctkd import reversal_strength

    student, teacher, targets = logits
    ctkd = METHODS["ctkd"]
    state = ctkd.make_state(CTKD).double()
    temperature = 1.0 + 20.0 / (1.0 + math.exp(-1.0))
    assert ctkd.epoch_record(state)["temperature"] == pytest.approx(temperature, rel=1e-6)
    epoch = 5
    strength = reversal_strength(epoch, CTKD)
    loss = total(ctkd.loss(student, teacher, targets, CTKD, Progress(epoch), state))
    ce = F.cross_entropy(student, targets).item()
    assert loss.item() == pytest.approx(0.1 * ce + 0.9 * manual_soft(student, teacher, temperature), rel=1e-6)
    loss.backward()

    def loss_at(theta):
        t = 1.0 + 20.0 / (1.0 + math.exp(-theta))
        return 0.1 * ce + 0.9 * manual_soft(student, teacher, t)

    h = 1e-6
    slope = (loss_at(1.0 + h) - loss_at(1.0 - h)) / (2 * h)
    assert state.theta.grad.item() == pytest.approx(strength * slope, rel=1e-5)


def test_ctkd_strength_follows_the_authors_cosine_schedule():
    """From lambda_max at the start to lambda_min at lambda_epochs, halfway between at half of them, never
    rising, and held after."""
    from kdsweep.methods.ctkd import reversal_strength

    values = [reversal_strength(epoch, CTKD) for epoch in range(0, 16)]
    assert values[0] == pytest.approx(0.0) and values[10] == pytest.approx(-1.0) and values[5] == pytest.approx(-0.5)
    assert all(a >= b for a, b in zip(values, values[1:])) and values[15] == values[10]


@pytest.mark.parametrize("name", ["dkd", "lskd", "ctkd"])
def test_every_methods_gradient_matches_finite_differences(logits, name):
    """torch.autograd.gradcheck: the loss's analytic gradient against central finite differences, in float64."""
    student, teacher, targets = logits
    method = METHODS[name]
    hparams = {"dkd": DKD, "lskd": LSKD, "ctkd": CTKD}[name]
    state = method.make_state(hparams)
    state = state.double() if state is not None else None

    def loss(s):
        return total(method.loss(s, teacher, targets, hparams, Progress(12), state))

    assert torch.autograd.gradcheck(loss, (student.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------- the feature-based methods
#
# Each loss against its paper's formula written out in numpy (float64): convolutions as loops over output
# positions, BatchNorm in training mode from the batch's own mean and (biased) variance, nearest resizing
# and average pooling by indexing, the cross-entropy from its definition. The adapters' weights are read
# from the method's state: what is checked is what the loss computes with them.

def np_cross_entropy(logits, targets):
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(targets)), targets].mean()


def np_conv(x, weight, bias=None, stride=1, padding=0):
    """Cross-correlation of x (N, C, H, W) with weight (O, C, kh, kw), as a loop over output positions."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h, out_w = ((x.shape[2] - weight.shape[2]) // stride + 1, (x.shape[3] - weight.shape[3]) // stride + 1)
    out = np.zeros((x.shape[0], weight.shape[0], out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, :, i * stride:i * stride + weight.shape[2], j * stride:j * stride + weight.shape[3]]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, weight)
    return out if bias is None else out + bias[None, :, None, None]


def np_conv_transpose(x, weight, bias, stride, padding):
    """Transposed convolution, weight (C, O, kh, kw): each input pixel scatters weight * value, then the
    padding is cropped from every side."""
    n, _, h, w = x.shape
    k = weight.shape[2]
    full = np.zeros((n, weight.shape[1], (h - 1) * stride + k, (w - 1) * stride + k))
    for i in range(h):
        for j in range(w):
            full[:, :, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
                "nc,cohw->nohw", x[:, :, i, j], weight)
    return full[:, :, padding:full.shape[2] - padding, padding:full.shape[3] - padding] + bias[None, :, None, None]


def np_batch_norm(x, bn):
    """BatchNorm in training mode: the batch's statistics, per channel."""
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    gamma, beta = (bn.weight.detach().numpy()[None, :, None, None], bn.bias.detach().numpy()[None, :, None, None])
    return (x - mean) / np.sqrt(var + bn.eps) * gamma + beta


def np_pool(x, size):
    """Average pooling to size x size by equal blocks (the tests' sizes divide)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, size, h // size, size, w // size).mean(axis=(3, 5))


def np_nearest(x, size):
    """Nearest resizing: output pixel i reads input pixel floor(i * in / out)."""
    rows = [i * x.shape[2] // size[0] for i in range(size[0])]
    cols = [j * x.shape[3] // size[1] for j in range(size[1])]
    return x[:, :, rows][:, :, :, cols]


def weight(module):
    return module.weight.detach().numpy()


def feature_maps(shapes, seed, grad=False):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(3, *shape, generator=generator, dtype=torch.float64).requires_grad_(grad) for shape in shapes]


AT = {"beta": 1000.0, "p": 2.0, "stages": 3}


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_attention_transfer_is_the_authors_formula(logits, p):
    """Zagoruyko & Komodakis: q = mean over channels of |A|^p, L2-normalised per image; beta times the sum
    over stage pairs of the mean over images and positions of (q_s - q_t)^2 (their utils.at_loss), beside
    CE; a larger map average-pooled to the smaller's size; a 1 x 1 pair contributes 0. p = 3 checks |A|
    (the maps have negative values)."""
    student, _, targets = logits
    s_maps = feature_maps([(3, 4, 4), (5, 2, 2), (6, 1, 1)], seed=1)
    t_maps = feature_maps([(4, 8, 8), (2, 2, 2), (7, 1, 1)], seed=2)
    hparams = {**AT, "p": p}
    terms = METHODS["at"].loss(student, None, targets, hparams, Progress(1), None, (s_maps, t_maps))

    def q(a):
        q = (np.abs(a) ** p).mean(axis=1).reshape(len(a), -1)
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    s_np, t_np = [m.numpy() for m in s_maps], [m.numpy() for m in t_maps]
    pairs = [(s_np[0], np_pool(t_np[0], 4)), (s_np[1], t_np[1]), (s_np[2], t_np[2])]
    parts = [((q(s) - q(t)) ** 2).mean() for s, t in pairs]
    assert parts[2] == pytest.approx(0.0, abs=1e-15) and parts[0] > 1e-3 and parts[1] > 1e-3
    assert terms["at"][1].item() == pytest.approx(sum(parts), rel=1e-10)
    expected = np_cross_entropy(student.numpy(), targets.numpy()) + 1000.0 * sum(parts)
    assert total(terms).item() == pytest.approx(expected, rel=1e-10)
    assert METHODS["at"].terms == tuple(terms)


FITNETS = {"hint_weight": 100.0, "hint_stage": 2}


@pytest.mark.parametrize("student_shape, teacher_shape, case", [
    ((3, 4, 4), (5, 4, 4), "equal: 1 x 1 convolution"),
    ((3, 4, 4), (5, 2, 2), "student twice the teacher: 3 x 3, stride 2"),
    ((3, 2, 2), (5, 4, 4), "student half the teacher: transposed 4 x 4, stride 2"),
    ((3, 5, 5), (5, 3, 3), "student larger: kernel 1 + 5 - 3"),
    ((3, 1, 1), (5, 4, 4), "teacher four times larger: pooled to the student's size"),
])
def test_fitnets_hint_is_the_mse_of_the_regressed_student_map(logits, student_shape, teacher_shape, case):
    """Romero et al. through mdistiller's ConvReg: CE + hint_weight * mean((BN-ReLU(conv(F_s)) - F_t)^2), the
    regressor by the maps' sizes, written out in numpy with the regressor's weights."""
    from kdsweep.features import Shapes

    student, _, targets = logits
    fitnets = METHODS["fitnets"]
    state = fitnets.make_state(FITNETS, Shapes((student_shape,), (teacher_shape,))).double()
    (s_map,), (t_map,) = feature_maps([student_shape], seed=3), feature_maps([teacher_shape], seed=4)
    terms = fitnets.loss(student, None, targets, FITNETS, Progress(1), state, ([s_map], [t_map]))
    x, target, conv = s_map.numpy(), t_map.numpy(), state.conv
    if case.startswith("equal") or case.startswith("student larger"):
        out = np_conv(x, weight(conv), conv.bias.detach().numpy())
        assert conv.kernel_size == (1 + student_shape[1] - teacher_shape[1],) * 2
    elif case.startswith("student twice"):
        out = np_conv(x, weight(conv), conv.bias.detach().numpy(), stride=2, padding=1)
    elif case.startswith("student half"):
        out = np_conv_transpose(x, weight(conv), conv.bias.detach().numpy(), stride=2, padding=1)
    else:
        out = np_conv(x, weight(conv), conv.bias.detach().numpy())
        target = np_pool(target, 1)
    regressed = np.maximum(np_batch_norm(out, state.bn), 0.0)
    assert regressed.shape == target.shape, case
    hint = ((regressed - target) ** 2).mean()
    assert terms["hint"][1].item() == pytest.approx(hint, rel=1e-10)
    assert total(terms).item() == pytest.approx(np_cross_entropy(student.numpy(), targets.numpy()) + 100 * hint,
                                                rel=1e-10)


REVIEWKD = {"review_weight": 5.0, "warmup_epochs": 20, "stages": 3}


def np_review(state, s_maps):
    """The authors' ABF from the deepest level (the pooled feature) to the shallowest, in numpy."""
    maps = [*s_maps, s_maps[-1].mean(axis=(2, 3), keepdims=True)][::-1]
    results, below = [], None
    for x, abf, out_size in zip(maps, state.abfs, state.out_sizes):
        x = np_batch_norm(np_conv(x, weight(abf.conv1[0])), abf.conv1[1])
        if abf.att_conv is not None:
            below = np_nearest(below, x.shape[2:])
            z = np_conv(np.concatenate([x, below], axis=1), weight(abf.att_conv[0]),
                        abf.att_conv[0].bias.detach().numpy())
            z = 1 / (1 + np.exp(-z))
            x = x * z[:, :1] + below * z[:, 1:]
        x = np_nearest(x, out_size)
        results.insert(0, np_batch_norm(np_conv(x, weight(abf.conv2[0]), padding=1), abf.conv2[1]))
        below = x
    return results


def np_hcl(students, teachers):
    """Chen et al.'s hierarchical context loss: MSE at full size and at 4, 2, 1 below it, weights 1, 1/2, 1/4, ...
    normalised by their sum."""
    total_loss = 0.0
    for s, t in zip(students, teachers):
        losses, weights = [((s - t) ** 2).mean()], [1.0]
        for size in (4, 2, 1):
            if size < s.shape[2]:
                weights.append(weights[-1] / 2)
                losses.append(((np_pool(s, size) - np_pool(t, size)) ** 2).mean())
        total_loss += sum(w * l for w, l in zip(weights, losses)) / sum(weights)
    return total_loss


def test_reviewkd_is_attention_based_fusion_and_the_hierarchical_context_loss(logits):
    """Chen et al.: the student's stage outputs and pooled feature fused from the deepest by ABF, resized to
    the teacher's sizes (here twice the student's) and channels, compared by HCL with the teacher's maps and
    its pooled feature; the review term grows over warmup_epochs."""
    from kdsweep.features import Shapes

    student, _, targets = logits
    reviewkd = METHODS["reviewkd"]
    s_shapes, t_shapes = [(4, 4, 4), (6, 2, 2), (8, 1, 1)], [(3, 8, 8), (5, 4, 4), (7, 2, 2)]
    state = reviewkd.make_state(REVIEWKD, Shapes(tuple(s_shapes), tuple(t_shapes))).double()
    assert [abf.conv1[0].out_channels for abf in state.abfs] == [8] * 4  # min(512, the pooled feature's)
    assert [abf.conv2[0].out_channels for abf in state.abfs] == [7, 7, 5, 3]  # deepest (pooled) first
    s_maps, t_maps = feature_maps(s_shapes, seed=5), feature_maps(t_shapes, seed=6)
    t_np = [m.numpy() for m in t_maps]
    expected_hcl = np_hcl(np_review(state, [m.numpy() for m in s_maps]),
                          [*t_np, t_np[-1].mean(axis=(2, 3), keepdims=True)])
    ce = np_cross_entropy(student.numpy(), targets.numpy())
    for epoch, warm in ((1, 1 / 20), (10, 0.5), (25, 1.0)):
        terms = reviewkd.loss(student, None, targets, REVIEWKD, Progress(epoch), state, (s_maps, t_maps))
        assert terms["review"][1].item() == pytest.approx(expected_hcl, rel=1e-10)
        assert total(terms).item() == pytest.approx(ce + warm * 5.0 * expected_hcl, rel=1e-10), epoch


@pytest.mark.parametrize("name, hparams", [("at", AT), ("fitnets", FITNETS), ("reviewkd", REVIEWKD)])
def test_feature_methods_gradients_match_finite_differences(logits, name, hparams):
    """gradcheck of each feature loss with respect to the student's logits and maps, in float64 (the
    regressor's and ABF's BatchNorm in training mode: a function of the batch, no state changed that the
    gradient sees). fast_mode: the analytic and numerical derivatives along random directions of all the
    inputs at once, not one per element (seconds instead of a minute)."""
    from kdsweep.features import Shapes

    student, _, targets = logits
    method = METHODS[name]
    s_shapes, t_shapes = [(3, 4, 4), (4, 2, 2), (5, 1, 1)], [(2, 4, 4), (3, 2, 2), (6, 1, 1)]
    picked = method.taps(hparams, 3)
    s_shapes, t_shapes = [s_shapes[i] for i in picked], [t_shapes[i] for i in picked]
    state = method.make_state(hparams, Shapes(tuple(s_shapes), tuple(t_shapes)))
    state = state.double() if state is not None else None
    t_maps = feature_maps(t_shapes, seed=8)

    def loss(s, *s_maps):
        return total(method.loss(s, None, targets, hparams, Progress(30), state, (list(s_maps), t_maps)))

    inputs = (student.clone().requires_grad_(True), *feature_maps(s_shapes, seed=7, grad=True))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


def test_feature_methods_tap_the_deepest_stages_and_name_the_fix_when_too_few():
    """at and reviewkd: the last `stages` stage outputs; fitnets: the hint_stage-th from the deepest; too
    few: the sentence that names the hyperparameter and its largest value."""
    assert METHODS["at"].taps(AT, 5) == [2, 3, 4] and METHODS["reviewkd"].taps(REVIEWKD, 3) == [0, 1, 2]
    assert METHODS["fitnets"].taps(FITNETS, 4) == [2] and METHODS["fitnets"].taps({**FITNETS, "hint_stage": 1}, 4) == [3]
    assert METHODS["at"].taps(AT, 2) == "stages=3 needs 3; set methods.at.stages to at most 2"
    assert METHODS["fitnets"].taps({**FITNETS, "hint_stage": 5}, 4) == (
        "hint_stage=5 needs 5; set methods.fitnets.hint_stage to at most 4")
    for name, off in (("at", {**AT, "beta": 0}), ("fitnets", {**FITNETS, "hint_weight": 0}),
                      ("reviewkd", {**REVIEWKD, "review_weight": 0})):
        method = METHODS[name]
        assert method.needs_features({param.name: param.default for param in method.params})
        assert not method.needs_features(off) and not method.needs_teacher(off), name
    assert not any(METHODS[name].needs_features({p.name: p.default for p in METHODS[name].params})
                   for name in ("kd", "dkd", "lskd", "ctkd"))


# ---------------------------------------------------------------- the methods in training jobs

COMPARED = ["epochs", "best_epoch", "val_acc", "val_loss", "test_acc", "test_loss", "config_hash"]
POINTS = ["kd:temperature=4,soft_weight=0.9", "dkd:alpha=1,beta=8,temperature=4,warmup_epochs=2",
          "lskd:temperature=2,hard_weight=1,soft_weight=9", "ctkd:soft_weight=0.9,t_start=1,t_end=20,lambda_max=0,"
          "lambda_min=-1,lambda_epochs=2,t_lr=0.05,t_momentum=0.9,t_weight_decay=0.0005",
          "at:beta=1000,p=2,stages=3", "fitnets:hint_weight=100,hint_stage=2",
          "reviewkd:review_weight=5,warmup_epochs=2,stages=3"]


@pytest.fixture(scope="module")
def study(tiny_study, tmp_path_factory):
    return tiny_study.beside(tmp_path_factory.mktemp("test_methods")), tiny_study.config


def distill(folder, config, pairs, *extra, check=True):
    from conftest import run_kdsweep

    points = [arg for spec, out in pairs for arg in ("--point", spec, "--out", out)]
    return run_kdsweep("distill", *config, "--student", "mobilenet_v3_small", "--teacher", folder / "teacher",
                       "--seed", 6, "--stats", folder / "stats.json", *points, "training.max_epochs=3", *extra,
                       cwd=folder, check=check)


def read(path):
    import csv
    import json

    if path.suffix == ".csv":
        with open(path) as handle:
            return list(csv.DictReader(handle))
    return json.loads(path.read_text())


def test_one_pack_of_every_method_equals_each_alone_and_records_each_methods_terms(study):
    """Points of every method in one job (one teacher pass per batch, which also gives the feature methods'
    teacher maps) end exactly as each in a job of its own (the same computation per point on this machine:
    a logit point beside feature points computes what it computes alone, and each feature point's adapters
    start from its own seed). Each point's history holds its method's terms (DKD's TCKD and NCKD, CTKD's
    learned temperature each epoch, also in metrics.json; AT's, the hint's, the review's)."""
    folder, config = study
    for i, spec in enumerate(POINTS):
        distill(folder, config, [(spec, folder / f"alone{i}")])
    distill(folder, config, [(spec, folder / f"packed{i}") for i, spec in enumerate(POINTS)])
    for i, spec in enumerate(POINTS):
        alone, packed = read(folder / f"alone{i}" / "metrics.json"), read(folder / f"packed{i}" / "metrics.json")
        assert {k: alone[k] for k in COMPARED} == {k: packed[k] for k in COMPARED}, spec
        assert read(folder / f"alone{i}" / "history.csv") == [
            {**row, "seconds": alone_row["seconds"]} for row, alone_row in
            zip(read(folder / f"packed{i}" / "history.csv"), read(folder / f"alone{i}" / "history.csv"))]
        assert packed["method"] == spec.split(":")[0] and packed["role"] == packed["method"]
    columns = {i: list(read(folder / f"packed{i}" / "history.csv")[0]) for i in range(len(POINTS))}
    assert columns[0][2:5] == ["train_loss", "train_hard_loss", "train_soft_loss"]  # kd's, as before
    assert columns[1][2:6] == ["train_loss", "train_hard_loss", "train_tckd_loss", "train_nckd_loss"]
    assert columns[3][-1] == "temperature"
    assert [columns[i][3:5] for i in (4, 5, 6)] == [["train_hard_loss", "train_at_loss"],
                                                    ["train_hard_loss", "train_hint_loss"],
                                                    ["train_hard_loss", "train_review_loss"]]
    for i in (4, 5, 6):  # the feature terms were computed every epoch: positive and finite
        assert all(0 < float(row[columns[i][4]]) < math.inf for row in read(folder / f"packed{i}" / "history.csv"))
    ctkd = read(folder / "packed3" / "metrics.json")
    temperatures = [float(row["temperature"]) for row in read(folder / "packed3" / "history.csv")]
    assert ctkd["learned"]["temperature"] == pytest.approx(temperatures) and len(temperatures) == 3
    assert len(set(temperatures)) == 3 and all(1 < t < 21 for t in temperatures)  # it moved, within its range
    assert read(folder / "packed0" / "metrics.json")["hparams"] == {"temperature": 4, "soft_weight": 0.9}
    assert (folder / "packed0").parent == folder and (folder / "packed3" / "tensorboard").is_dir()


def test_a_feature_method_a_network_cannot_serve_is_refused_when_its_job_starts(study):
    """Four stage outputs on the 8 x 8 digits: attention transfer over five is refused in one sentence naming the
    hyperparameter and its largest value, before any epoch (the folder holds no run)."""
    folder, config = study
    result = distill(folder, config, [("at:beta=1000,p=2,stages=5", folder / "too-deep")], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "kdsweep: error: at cannot tap the student mobilenet_v3_small on 8x8 images, which has 4 stage outputs "
        "(16x8x8, 16x4x4, 24x2x2, 576x1x1): stages=5 needs 5; set methods.at.stages to at most 4; or distil it "
        "with a logit method")
    assert not (folder / "too-deep" / "checkpoint.pt").exists() and not (folder / "too-deep" / "metrics.json").exists()


@pytest.mark.parametrize("name", ["ctkd", "fitnets"])
def test_a_resumed_run_continues_its_methods_trained_state(study, name):
    """Stopped after its first epoch and resumed, a run whose method trains state of its own follows the
    uninterrupted run's exactly: CTKD's learned temperature, FitNets' regressor (its weights and BatchNorm
    statistics), and their optimiser state are in the checkpoint."""
    import signal

    from conftest import run_until_epoch

    folder, config = study
    spec = next(point for point in POINTS if point.startswith(f"{name}:"))
    distill(folder, config, [(spec, folder / f"whole_{name}")])
    args = ["distill", *config, "--student", "mobilenet_v3_small", "--teacher", folder / "teacher", "--seed", 6,
            "--stats", folder / "stats.json", "--point", spec, "--out", folder / f"stopped_{name}",
            "training.max_epochs=3"]
    assert run_until_epoch(folder, args, 1, signal.SIGTERM) == 75
    resumed = distill(folder, config, [(spec, folder / f"stopped_{name}")])
    assert "resuming" in resumed.stdout
    whole, stopped = read(folder / f"whole_{name}" / "metrics.json"), read(folder / f"stopped_{name}" / "metrics.json")
    assert {k: whole[k] for k in COMPARED} == {k: stopped[k] for k in COMPARED} and stopped["resumed"] == 1
    assert stopped.get("learned") == whole.get("learned")  # CTKD's temperatures; FitNets records none
    assert read(folder / f"whole_{name}" / "history.csv") == [
        {**row, "seconds": whole_row["seconds"]} for row, whole_row in
        zip(read(folder / f"stopped_{name}" / "history.csv"), read(folder / f"whole_{name}" / "history.csv"))]
