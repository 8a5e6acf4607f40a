import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.attacks import evaluate_attack, fgsm


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
