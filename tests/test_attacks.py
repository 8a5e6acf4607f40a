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
    """A linear classifier trained briefly on scikit-learn's 8x8 digits, and held-out images."""
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
    model, images, labels = digits
    first = evaluate_attack(model, images, labels, 0.05, 7, "pgd", **{**PGD, "steps": 2})
    assert first == evaluate_attack(model, images, labels, 0.05, 1000, "pgd", **{**PGD, "steps": 2})
    assert first["clean_acc"] == evaluate_attack(model, images, labels, 0.05, 1000)["clean_acc"]


def test_attack_parameters_are_checked(digits):
    model, images, labels = digits
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate_attack(model, images, labels, 0.05, 64, "cw")
    with pytest.raises(ValueError, match="parameters"):
        evaluate_attack(model, images, labels, 0.05, 64, "pgd", steps=3)
    with pytest.raises(ValueError, match="parameters"):
        evaluate_attack(model, images, labels, 0.05, 64, "fgsm", steps=3)
