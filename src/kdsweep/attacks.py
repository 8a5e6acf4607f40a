"""White-box L-inf attacks in pixel space (FGSM, PGD), and accuracy under them.

Models normalise their own input, so images here are in [0, 1] and epsilon is in
[0, 1] pixel units, as torchattacks, Foolbox and RobustBench count it.

- fgsm: Goodfellow et al. 2014, one signed-gradient step of size epsilon.
- pgd: Madry et al. 2018, `steps` signed-gradient steps of size `step_size`, each
  followed by the projection onto the L-inf ball of radius epsilon around the clean
  image and a clamp to [0, 1]; optionally from a uniform random start in that ball.

Both take the gradient of the summed cross-entropy with the model in eval mode
(BatchNorm on its running statistics, which they leave untouched), w.r.t. the
input only, and restore every module's mode afterwards.

ATTACKS names them for the config (`attacks:` in config.yaml); evaluate_attack runs
one by name with the config's parameters (PARAMS) at one epsilon over a test set.
"""

from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from .runtime import to_device


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


def _check_epsilon(epsilon):
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")


def _input_gradient(model, images, labels):
    """(grad_x CE(model(x), y) summed over the batch, logits at x), the model already in eval mode."""
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        # Summed, not averaged: each image's gradient is its own loss's, whatever the
        # batch, and a large batch cannot shrink gradients until their sign underflows.
        loss = F.cross_entropy(logits, labels, reduction="sum")
        # autograd.grad w.r.t. x only: nothing accumulates in the parameters' .grad.
        (grad,) = torch.autograd.grad(loss, x)
    return grad, logits.detach()


def _fgsm(model, images, labels, epsilon):
    """(adversarial images, clean logits): the attack's forward pass is the clean prediction."""
    _check_epsilon(epsilon)
    with _eval_mode(model):
        grad, logits = _input_gradient(model, images, labels)
    adversarial = (images.detach() + epsilon * grad.sign()).clamp_(0.0, 1.0)
    return adversarial, logits


def fgsm(model, images, labels, epsilon):
    """x + epsilon * sign(grad_x CE(model(x), y)), clamped to [0, 1], detached.

    The gradient is taken with the model in eval mode (BatchNorm on its running
    statistics, which the attack leaves untouched); every module's mode is restored.
    """
    return _fgsm(model, images, labels, epsilon)[0]


def _random_start(images, epsilon, generator):
    """images + U(-epsilon, epsilon) per pixel, clamped to [0, 1]; the noise is drawn from
    `generator` on the generator's device (so a CPU generator gives the same start on any device)
    and copied to the images' device asynchronously."""
    where = generator.device if generator is not None else images.device
    noise = torch.rand(images.shape, generator=generator, device=where, dtype=images.dtype)
    noise = to_device(noise, images.device).mul_(2).sub_(1).mul_(epsilon)
    return (images + noise).clamp_(0.0, 1.0)


def _pgd(model, images, labels, epsilon, step_size, steps, random_start=True, generator=None):
    """(adversarial images, clean logits or None): without a random start the first step's
    forward pass is the clean prediction; with one, no clean forward pass happens."""
    _check_epsilon(epsilon)
    if step_size < 0:
        raise ValueError(f"step_size must be >= 0, got {step_size}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    clean = images.detach()
    adversarial = _random_start(clean, epsilon, generator) if random_start else clean.clone()
    clean_logits = None
    with _eval_mode(model):
        for step in range(int(steps)):
            grad, logits = _input_gradient(model, adversarial, labels)
            if step == 0 and not random_start:
                clean_logits = logits
            adversarial = adversarial + step_size * grad.sign()
            # Projection onto the eps-ball around the clean image, then onto the image box.
            adversarial = torch.min(torch.max(adversarial, clean - epsilon), clean + epsilon).clamp_(0.0, 1.0)
    return adversarial.detach(), clean_logits


def pgd(model, images, labels, eps, step_size, steps, random_start=True, generator=None):
    """Projected gradient descent (Madry et al. 2018) in L-inf, in [0, 1] pixel space, detached.

    x_0 = x (or clamp(x + U(-eps, eps), 0, 1) with random_start, drawn from `generator`:
    a torch.Generator on the images' device or the CPU; None = torch's global generator);
    x_{k+1} = clamp(clip(x_k + step_size * sign(grad CE(model(x_k), y)), x - eps, x + eps), 0, 1).
    `step_size` is in pixel units (Madry et al.: 2.5 * eps / steps). The gradients are taken
    with the model in eval mode; every module's mode is restored. The last iterate is returned.
    """
    return _pgd(model, images, labels, eps, step_size, steps, random_start, generator)[0]


def _fgsm_batches(epsilon, params):
    return lambda model, x, y: _fgsm(model, x, y, epsilon)


def _pgd_batches(epsilon, params):
    # One CPU generator for the whole test set: the random start of image i is the i-th
    # draw of one stream (CPU draws are serial), whatever the batch size or the device.
    generator = torch.Generator().manual_seed(int(params["seed"])) if params["random_start"] else None
    step_size = params["relative_step_size"] * epsilon
    return lambda model, x, y: _pgd(model, x, y, epsilon, step_size, params["steps"],
                                    params["random_start"], generator)


# The attacks, by the name the config gives them (attacks.<name>): each its function on a batch, and
# what evaluate_attack runs batch after batch: (epsilon, the config's parameters) -> a function
# (model, x, y) -> (adversarial, clean logits or None).
ATTACKS = {"fgsm": fgsm, "pgd": pgd}
BATCHES = {"fgsm": _fgsm_batches, "pgd": _pgd_batches}

# The parameters each attack takes in the config (attacks.<name> in config.yaml) and in
# evaluate_attack's **params; see config.schema.yaml for their meaning and bounds.
PARAMS = {
    "fgsm": (),
    # step size = relative_step_size * epsilon; seed seeds the random start's CPU generator
    "pgd": ("steps", "relative_step_size", "random_start", "seed"),
}


def _attack_batches(attack, epsilon, params):
    """A function (model, x, y) -> (adversarial, clean logits or None) for one batch after another."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    expected = set(PARAMS[attack])
    if set(params) != expected:
        raise ValueError(f"attack {attack!r} takes the parameters {sorted(expected)}, got {sorted(params)}")
    return BATCHES[attack](epsilon, params)


def _device(model):
    return next(iter(model.parameters())).device


def evaluate_attack(model, images_uint8, labels, epsilon, batch_size, attack="fgsm", runtime=None,
                    **params) -> dict:
    """Attack `attack` (a name of ATTACKS) at `epsilon` over all images (uint8, N x C x H x W), in batches.

    params: the attack's config parameters, exactly those of PARAMS[attack] (pgd: steps,
    relative_step_size (step = relative_step_size * epsilon), random_start, seed).
    runtime: the job's `runtime.Runtime`; every forward and gradient pass then runs in its
    arithmetic (autocast, memory layout), the one the run's test accuracy was measured in.
    None: the model's own dtype and layout.
    Returns {"n", "clean_acc", "adv_acc", "n_correct", "adv_acc_on_correct"}, in
    percent. adv_acc counts all images (as the reference study reports it); adv_acc_on_correct
    only those classified correctly before the attack (None if there are none).
    """
    images_uint8 = torch.as_tensor(images_uint8)
    labels = torch.as_tensor(labels)
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0-255), got {images_uint8.dtype}")
    n = len(images_uint8)
    if n == 0 or len(labels) != n:
        raise ValueError(f"need as many labels as images, and at least one: {n} images, {len(labels)} labels")
    _check_epsilon(epsilon)
    run_attack = _attack_batches(attack, epsilon, params)
    device = _device(model)
    # Counted on the device, read once at the end: no batch waits for the host.
    counts = torch.zeros(3, dtype=torch.int64, device=device)
    with _eval_mode(model), runtime.autocast() if runtime else nullcontext():
        for start in range(0, n, batch_size):
            batch = images_uint8[start : start + batch_size]
            x = runtime.pixels(batch) if runtime else batch.to(device).float().div_(255)
            y = labels[start : start + batch_size].to(device).long()
            adversarial, clean_logits = run_attack(model, x, y)
            with torch.no_grad():
                if clean_logits is None:
                    clean_logits = model(x)
                adv_logits = model(adversarial)
            clean_hit = clean_logits.argmax(1) == y
            adv_hit = adv_logits.argmax(1) == y
            counts += torch.stack([clean_hit.sum(), adv_hit.sum(), (adv_hit & clean_hit).sum()])
    clean_correct, adv_correct, adv_correct_on_correct = counts.tolist()
    return {
        "n": n,
        "clean_acc": 100.0 * clean_correct / n,
        "adv_acc": 100.0 * adv_correct / n,
        "n_correct": clean_correct,
        "adv_acc_on_correct": 100.0 * adv_correct_on_correct / clean_correct if clean_correct else None,
    }


def attack_job(config: dict, run_dir, attack: str, epsilon: float, out):
    """The attack job (`python -m kdsweep attack`): a finished run under `attack` at `epsilon` on the
    config's whole test set, in the job's runtime arithmetic; writes `out` (kdsweep.records.AttackResult)
    and returns it."""
    import time
    from pathlib import Path

    from . import data, identity, runs
    from .errors import KdsweepError
    from .config import check_value
    from .records import AttackResult, run_keys
    from .runtime import Runtime, environment, nondeterministic_op

    check_value("epsilons.items", epsilon, "--epsilon")
    if attack not in ATTACKS:
        raise KdsweepError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    params = config["attacks"].get(attack)
    if params is None:
        raise KdsweepError(f"attack {attack!r} is switched off in the config (attacks.{attack} "
                           f"is null or absent); give it its parameters under attacks: or pick another --attack")
    run_dir = Path(run_dir)
    runs.finished(run_dir)  # before the data is read: the cheap refusals first
    runtime = Runtime.from_config(config["runtime"], training_job=False)
    splits = data.load_splits(config["dataset"], runtime.device, data.study_stats(run_dir, config))
    run, model = runs.load(run_dir, config["dataset"], runtime.device, splits.num_classes, data_digest=splits.digest)
    model = runtime.place(model)
    started = time.perf_counter()
    try:
        result = evaluate_attack(model, splits.test.images, splits.test.labels, epsilon,
                                 config["training"]["eval_batch_size"], attack, runtime=runtime, **params)
    except RuntimeError as err:
        if refused := nondeterministic_op(err):
            raise refused from err
        raise
    record = runtime.record()
    result = AttackResult(
        **result, attack=attack, params=params, epsilon=epsilon, run=str(run_dir), **identity.measured(run),
        **run_keys(run), seconds=time.perf_counter() - started, device=record["device"],
        precision=record["precision"], runtime=record, slurm=environment()["slurm"],
    )
    result.write(out)
    print(f"{run_dir} {attack.upper()} eps={epsilon:g}: clean {result.clean_acc:.2f}% "
          f"-> adversarial {result.adv_acc:.2f}%")
    return result
