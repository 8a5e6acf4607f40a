import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.attacks import ATTACKS, PARAMS, evaluate_attack, fgsm, pgd


def small_net(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).to(dtype)


def with_running_stats(model):
    """Give BatchNorm running statistics far from the batch ones, so eval and train mode differ."""
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.rand(8, 1, 4, 4, dtype=torch.float64) * 3 + 1)
    return model


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(6, 1, 4, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(3, (6,), generator=generator)
    return images, labels


def textbook_fgsm(model, images, labels, epsilon):
    """Goodfellow et al.'s eq., one image at a time, with the model in eval mode."""
    model.eval()
    out = []
    for x, y in zip(images, labels):
        x = x[None].clone().requires_grad_(True)
        F.cross_entropy(model(x), y[None]).backward()
        out.append((x + epsilon * x.grad.sign()).clamp(0, 1).detach()[0])
    return torch.stack(out)


def test_fgsm_is_the_textbook_computation(batch):
    """Batch against image by image: another path, so a tolerance; the outputs are x +- eps, and a sign
    could only differ where a gradient component is within float64 rounding (1e-17) of 0, while the
    smallest here is 3e-3."""
    images, labels = batch
    model = with_running_stats(small_net()).eval()
    epsilon = 0.3
    adversarial = fgsm(model, images, labels, epsilon)
    expected = textbook_fgsm(copy.deepcopy(model), images, labels, epsilon)
    torch.testing.assert_close(adversarial, expected, rtol=0, atol=1e-12)
    # The clamp was exercised: some pixels were pushed out of [0, 1] and cut back.
    unclamped = images + (adversarial - images).sign() * epsilon
    assert ((unclamped < 0) | (unclamped > 1)).any()
    assert not adversarial.requires_grad


def test_perturbation_is_bounded_and_stays_an_image(batch):
    images, labels = batch
    model = small_net()
    for epsilon in (0.01, 0.1, 0.5):
        adversarial = fgsm(model, images, labels, epsilon)
        assert (adversarial - images).abs().max().item() <= epsilon + 1e-12
        assert (adversarial - images).abs().max().item() > 0
        assert adversarial.min().item() >= 0 and adversarial.max().item() <= 1


def test_zero_epsilon_returns_the_input(batch):
    images, labels = batch
    assert torch.equal(fgsm(small_net(), images, labels, 0.0), images)


def test_negative_epsilon_is_refused(batch):
    images, labels = batch
    with pytest.raises(ValueError, match="epsilon"):
        fgsm(small_net(), images, labels, -0.1)


def test_train_mode_model_is_attacked_in_eval_mode_and_restored(batch):
    """The same weights, images and mode twice: the same computation, compared exactly."""
    images, labels = batch
    model = with_running_stats(small_net())
    running_mean = model[1].running_mean.clone()
    adversarial = fgsm(model, images, labels, 0.3)

    assert all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, running_mean)  # the attack does not update BN statistics
    assert all(p.grad is None for p in model.parameters())

    evaluated = small_net()
    evaluated.load_state_dict(model.state_dict())
    torch.testing.assert_close(adversarial, fgsm(evaluated.eval(), images, labels, 0.3), rtol=0, atol=0)
    # ...and attacking on batch statistics would have given other images: the mode matters here.
    evaluated.train()
    x = images.clone().requires_grad_(True)
    F.cross_entropy(evaluated(x), labels, reduction="sum").backward()
    assert not torch.equal(adversarial, (images + 0.3 * x.grad.sign()).clamp(0, 1))


def test_mixed_modes_are_restored_module_by_module(batch):
    images, labels = batch
    model = with_running_stats(small_net())
    model[1].eval()  # deliberately frozen BatchNorm inside a training model: it stays frozen
    fgsm(model, images, labels, 0.1)
    assert [m.training for m in model] == [True, False, True, True, True]


def test_eval_mode_model_stays_in_eval_mode(batch):
    images, labels = batch
    model = small_net().eval()
    fgsm(model, images, labels, 0.1)
    assert not any(m.training for m in model.modules())


@pytest.fixture(scope="module")
def digits():
    """A linear classifier trained briefly on scikit-learn's 8x8 digits, and held-out images.

    Its weights depend on the float path (another thread count moves them by 5e-7 relative); the
    assertions of the tests below hold with margins of several images, and held for all of 20 copies
    of these weights each perturbed by 1e-3 relative noise, 2000 times that.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images).float().mul(255 / 16).round().to(torch.uint8)[:, None]
    labels = torch.from_numpy(data.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = images[:1500].float() / 255, labels[:1500]
    for _ in range(60):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, images[1500:], labels[1500:]


def test_accuracy_falls_as_epsilon_grows(digits):
    """A trained model, where the fall is large, not guaranteed (FGSM is not monotone in epsilon in
    general; test_fgsm_and_pgd_on_a_model_where_the_outcome_is_known shows it by construction): here
    89.2% clean, then 73.4, 44.8 and 2.4%, drops of 47 to 126 of 297 images."""
    model, images, labels = digits
    results = [evaluate_attack(model, images, labels, epsilon, batch_size=128) for epsilon in (0, 0.05, 0.1, 0.2)]
    clean = results[0]
    assert clean["n"] == len(images)
    assert clean["clean_acc"] > 85
    assert clean["adv_acc"] == clean["clean_acc"] and clean["adv_acc_on_correct"] == 100
    assert all(r["clean_acc"] == clean["clean_acc"] and r["n_correct"] == clean["n_correct"] for r in results)
    adv = [r["adv_acc"] for r in results]
    assert adv == sorted(adv, reverse=True) and len(set(adv)) == len(adv), adv
    assert adv[-1] < clean["clean_acc"] / 2
    on_correct = [r["adv_acc_on_correct"] for r in results]
    assert on_correct == sorted(on_correct, reverse=True) and on_correct[-1] < 50, on_correct
    for r in results:
        # The images that survive among the correct ones are part of those that survive overall.
        assert r["adv_acc_on_correct"] * r["n_correct"] / 100 <= r["adv_acc"] * r["n"] / 100 + 1e-9
    assert clean["clean_acc"] == pytest.approx(100 * clean["n_correct"] / clean["n"])


def test_batch_size_does_not_change_the_result(digits):
    """Other batches round the float32 gradients and logits differently (~1e-9 and ~1e-6); the counts
    compared are equal because no decision is that close: the smallest |gradient| component is 1.5e-7,
    the smallest top-two logit gap after the attack 3e-3."""
    model, images, labels = digits
    assert evaluate_attack(model, images, labels, 0.05, batch_size=7) == evaluate_attack(
        model, images, labels, 0.05, batch_size=1000
    )


def test_no_correct_images_gives_no_conditional_accuracy():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([5.0, 0.0, 0.0]))  # always class 0
    images = torch.full((4, 1, 2, 2), 128, dtype=torch.uint8)
    result = evaluate_attack(model, images, torch.ones(4, dtype=torch.long), 0.1, batch_size=3)
    assert result == {"n": 4, "clean_acc": 0.0, "adv_acc": 0.0, "n_correct": 0, "adv_acc_on_correct": None}


def test_images_must_be_uint8(digits):
    model, images, labels = digits
    with pytest.raises(ValueError, match="uint8"):
        evaluate_attack(model, images.float() / 255, labels, 0.1, batch_size=64)


# ---------------------------------------------------------------- PGD

PGD = {"steps": 10, "relative_step_size": 0.25, "random_start": True, "seed": 0}


def textbook_pgd(model, images, labels, epsilon, step_size, steps, start=None):
    """Madry et al.'s iteration, one image at a time, model in eval mode, written out in full:
    x_{k+1} = clip_[0,1](x + clip_[-eps,eps](x_k + step_size * sign(grad) - x))."""
    model.eval()
    out = []
    for i, (x, y) in enumerate(zip(images, labels)):
        x = x[None]
        adv = (x if start is None else start[i][None]).clone()
        for _ in range(steps):
            adv = adv.detach().requires_grad_(True)
            F.cross_entropy(model(adv), y[None]).backward()
            adv = adv + step_size * adv.grad.sign()
            delta = torch.clamp(adv - x, -epsilon, epsilon)
            adv = torch.clamp(x + delta, 0, 1)
        out.append(adv.detach()[0])
    return torch.stack(out)


def test_pgd_is_the_textbook_iteration(batch):
    """As for FGSM: the smallest gradient component along the iteration is 2e-5, far from rounding."""
    images, labels = batch
    model = with_running_stats(small_net()).eval()
    epsilon, step_size, steps = 0.3, 0.1, 5
    adversarial = pgd(model, images, labels, epsilon, step_size, steps, random_start=False)
    expected = textbook_pgd(copy.deepcopy(model), images, labels, epsilon, step_size, steps)
    torch.testing.assert_close(adversarial, expected, rtol=0, atol=1e-12)
    assert not adversarial.requires_grad
    # the projection was exercised: some pixels sit on the eps-ball's surface, others inside it
    distance = (adversarial - images).abs()
    assert (distance > epsilon - 1e-12).any() and ((distance > 1e-12) & (distance < epsilon - 1e-12)).any()
    # one step of size epsilon without a random start is FGSM
    torch.testing.assert_close(pgd(model, images, labels, 0.2, 0.2, 1, random_start=False),
                               fgsm(model, images, labels, 0.2), rtol=0, atol=1e-12)


def test_pgd_random_start_is_seeded_and_textbook(batch):
    images, labels = batch
    model = with_running_stats(small_net()).eval()
    epsilon, step_size, steps = 0.2, 0.05, 3

    def run(seed):
        return pgd(model, images, labels, epsilon, step_size, steps, generator=torch.Generator().manual_seed(seed))

    first = run(7)
    assert torch.equal(first, run(7))
    assert not torch.equal(first, run(8))
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(7), dtype=images.dtype)
    start = (images + (2 * noise - 1) * epsilon).clamp(0, 1)  # uniform in [-eps, eps], then the image box
    expected = textbook_pgd(copy.deepcopy(model), images, labels, epsilon, step_size, steps, start)
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-12)


def test_pgd_stays_within_epsilon_and_the_image_box(batch):
    images, labels = batch
    model = small_net()
    for epsilon in (0.01, 0.1, 0.5):
        for random_start in (False, True):
            adversarial = pgd(model, images, labels, epsilon, epsilon / 2, 6, random_start,
                              torch.Generator().manual_seed(0))
            assert (adversarial - images).abs().max().item() <= epsilon + 1e-12
            assert (adversarial - images).abs().max().item() > 0
            assert adversarial.min().item() >= 0 and adversarial.max().item() <= 1
    assert torch.equal(pgd(model, images, labels, 0.0, 0.0, 3), images)


def test_pgd_restores_modes_and_leaves_the_model_alone(batch):
    images, labels = batch
    model = with_running_stats(small_net())
    model[1].eval()
    running_mean = model[1].running_mean.clone()
    pgd(model, images, labels, 0.1, 0.05, 3, generator=torch.Generator().manual_seed(0))
    assert [m.training for m in model] == [True, False, True, True, True]
    assert torch.equal(model[1].running_mean, running_mean)
    assert all(p.grad is None for p in model.parameters())


def test_pgd_refuses_bad_parameters(batch):
    images, labels = batch
    for args, match in (((-0.1, 0.1, 3), "epsilon"), ((0.1, -0.1, 3), "step_size"), ((0.1, 0.1, 0), "steps")):
        with pytest.raises(ValueError, match=match):
            pgd(small_net(), images, labels, *args)


def test_registry_names_the_config_attacks():
    from kdsweep.config import load_config, schema

    assert set(ATTACKS) == set(PARAMS) == set(schema()["properties"]["attacks"]["properties"])
    attacks = load_config([Path(__file__).resolve().parents[1] / "config.yaml"])["attacks"]
    for name, params in attacks.items():
        assert set(params) == set(PARAMS[name]), name


def test_pgd_is_at_least_as_strong_as_fgsm(digits):
    """On a trained model, where it is so by a margin but not by construction (a PGD iterate can land
    elsewhere than FGSM's vertex): ties are legitimate (eps = 0.02: 246 images each), the strict claim
    is made where PGD fools 7 more images (eps = 0.1). By construction:
    test_fgsm_and_pgd_on_a_model_where_the_outcome_is_known."""
    model, images, labels = digits
    for epsilon in (0.02, 0.05, 0.1):
        fgsm_result = evaluate_attack(model, images, labels, epsilon, 128)
        pgd_result = evaluate_attack(model, images, labels, epsilon, 128, "pgd", **PGD)
        assert pgd_result["clean_acc"] == fgsm_result["clean_acc"]
        assert pgd_result["n_correct"] == fgsm_result["n_correct"]
        assert pgd_result["adv_acc"] <= fgsm_result["adv_acc"], epsilon
        assert pgd_result["adv_acc_on_correct"] <= fgsm_result["adv_acc_on_correct"]
    assert pgd_result["adv_acc"] < fgsm_result["adv_acc"]  # strictly, at the largest epsilon
    # without a random start too
    no_start = evaluate_attack(model, images, labels, 0.05, 128, "pgd", **{**PGD, "random_start": False})
    assert no_start["adv_acc"] <= evaluate_attack(model, images, labels, 0.05, 128)["adv_acc"]


def test_pgd_evaluation_is_seeded_and_batch_size_free(digits):
    """One random-start stream whatever the batch; the rounding of other batches is far from every
    decision, as in test_batch_size_does_not_change_the_result."""
    model, images, labels = digits
    first = evaluate_attack(model, images, labels, 0.05, 7, "pgd", **{**PGD, "steps": 2})
    assert first == evaluate_attack(model, images, labels, 0.05, 1000, "pgd", **{**PGD, "steps": 2})
    assert first["clean_acc"] == evaluate_attack(model, images, labels, 0.05, 1000)["clean_acc"]


def two_class_linear_problem():
    """A two-class linear model and images whose outcome under FGSM and PGD is known by hand.

    Logits (z0, z1) = (v.x, -v.x) / 2 with v = (1, -1, 1, -1): the margin of the true class y is
    m = z_y - z_other = +-v.x, and the input gradient of the cross-entropy is (p_y - 1)(W_y - W_other),
    of sign -sign(W_y - W_other) whatever x (p_y < 1; its components are +-(1 - p_y), not near 0).
    FGSM therefore moves each image to the vertex x - eps sign(W_y - W_other) of its eps-ball and
    lowers its margin by exactly eps ||v||_1 = 4 eps; the pixels, in [64, 191] / 255, stay inside
    [0, 1] up to eps = 0.25, so no clamp bites. An image is still correct at eps exactly when
    m > 4 eps: correctness can only be lost as eps grows. PGD's gradient sign never changes either,
    so its steps (10 of 0.25 eps, more than the ball's width 2 eps) end at the same vertex as FGSM.
    Returns (model, uint8 images N x 1 x 2 x 2, labels, margins m as x 255 integers).
    """
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    v = torch.tensor([1.0, -1.0, 1.0, -1.0])
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([v, -v]) / 2)
        model[1].bias.zero_()
    # 255 m of each image: one wrong already, the others lost at eps = m / 4 (0.025, 0.075, ..., 0.224)
    margins = [-26, 26, 76, 128, 178, 228, 228, 128]
    pixels, labels = [], []
    for i, m in enumerate(margins):
        high, low = 77 + m // 2, 77  # v.u = 2 (high - low) = m, every pixel in [64, 191]
        label = i % 2
        pixels.append([high, low, high, low] if label == 0 else [low, high, low, high])  # class 1: -v.u = m
        labels.append(label)
    return model, torch.tensor(pixels, dtype=torch.uint8).view(-1, 1, 2, 2), torch.tensor(labels), margins


EPSILONS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)


def test_fgsm_and_pgd_on_a_model_where_the_outcome_is_known():
    """Accuracy falls as epsilon grows, PGD is at least as strong as FGSM (here: exactly as strong) and
    the batch size changes nothing, all by construction (two_class_linear_problem): every image's
    margin after the attack is m - 4 eps, at least 0.09 away from 0 for these margins and epsilons,
    10^5 times the float32 rounding of these logits, so no decision is near a tie."""
    model, images, labels, margins = two_class_linear_problem()
    x = images.float() / 255
    with torch.no_grad():
        z = model(x)
    rows = torch.arange(len(labels))
    m = torch.tensor(margins) / 255
    torch.testing.assert_close(z[rows, labels] - z[rows, 1 - labels], m, rtol=0, atol=1e-6)  # the construction
    assert x.min() - max(EPSILONS) > 0 and x.max() + max(EPSILONS) < 1  # no clamp to [0, 1] bites
    expected = []
    for epsilon in EPSILONS:
        assert (m - 4 * epsilon).abs().min() > 0.09, epsilon  # no margin near 0 after the attack
        expected.append(100 * int((m > 4 * epsilon).sum()) / len(m))
        for batch_size in (1, 3, 100):
            for attack, params in (("fgsm", {}), ("pgd", PGD), ("pgd", {**PGD, "random_start": False})):
                result = evaluate_attack(model, images, labels, epsilon, batch_size, attack, **params)
                assert result["n_correct"] == 7 and result["clean_acc"] == 100 * 7 / 8
                assert result["adv_acc"] == expected[-1], (epsilon, batch_size, attack, params)
    assert expected == [87.5, 75.0, 62.5, 37.5, 25.0, 0.0]  # 100 x (7, 6, 5, 3, 2, 0) / 8: falls at each step
    # PGD ends at FGSM's vertex, bit for bit (both compute x +- eps), with or without a random start
    vertex = fgsm(model, x, labels, 0.1)
    for random_start in (True, False):
        assert torch.equal(pgd(model, x, labels, 0.1, 0.025, 10, random_start, torch.Generator().manual_seed(0)),
                           vertex)


def test_attack_parameters_are_checked(digits):
    model, images, labels = digits
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate_attack(model, images, labels, 0.05, 64, "cw")
    with pytest.raises(ValueError, match="parameters"):
        evaluate_attack(model, images, labels, 0.05, 64, "pgd", steps=3)
    with pytest.raises(ValueError, match="parameters"):
        evaluate_attack(model, images, labels, 0.05, 64, "fgsm", steps=3)
