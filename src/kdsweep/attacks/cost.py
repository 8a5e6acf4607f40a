"""What a study's attacks cost, estimated: model passes per test image, FLOPs, and GPU-hours at a GPU's peak.
Torch-free (the status view). An estimate, not a measurement: docs/robustness.md has the figures measured.

Per image and epsilon, in forward-pass equivalents (an input gradient is a forward and a backward to the input,
2 forwards of FLOPs: kdsweep.bench.floor counts them), every image surviving every step (an upper bound: an
image once broken is attacked no more, so a weak model costs far less):

- fgsm      1 (the clean pass every attack starts from) + 2 (the gradient) + 1 (the adversarial image)
- pgd       1 + restarts x (2 steps + 1)
- apgd_*    1 + restarts x 2 (steps + 1);  apgd_t: 2 + targets x 2 (steps + 1) (one more pass ranks the targets)
- square    1 + queries
- a transfer attack: the crafting attack's passes on the source model, 2 on the run;
- the large-epsilon check: its attacks once more, at that epsilon.
"""

from __future__ import annotations

from ..plan import Plan

# Forward FLOPs per image at 32 x 32 (torch.utils.flop_counter.FlopCounterMode on kdsweep.models.build_model;
# docs/bench/cpu-quick.json: its FGSM FLOPs, a forward and an input gradient, divided by 3); a convolutional
# network's FLOPs grow with the pixels, so another size scales them by its pixels over 32 x 32's (a rough
# estimate for the digits' 8 x 8).
FORWARD_FLOPS_32 = {"resnet18": 1.1108e9, "resnet50": 2.5957e9, "mobilenet_v3_small": 1.1005e7}
IMAGE_SIDE = {"cifar10": 32, "cifar100": 32, "digits": 8}
TEST_IMAGES = {"cifar10": 10000, "cifar100": 10000, "digits": 360}
# Dense peaks of an NVIDIA H100 SXM (the data sheet; the H200's are the same): attacks compute in float32
# (tf32 when runtime.tf32 allows it on CUDA), training in bf16.
PEAK = {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12}


def passes(attack: str, params: dict) -> float:
    """Forward-pass equivalents per image and epsilon of an attack (the module docstring)."""
    if attack == "fgsm":
        return 4
    if attack == "pgd":
        return 1 + params["restarts"] * (2 * params["steps"] + 1)
    if attack in ("apgd_ce", "apgd_dlr"):
        return 1 + params["restarts"] * 2 * (params["steps"] + 1)
    if attack == "apgd_t":
        return 2 + params["targets"] * 2 * (params["steps"] + 1)
    if attack == "square":
        return 1 + params["queries"]
    raise ValueError(f"no cost known for attack {attack!r}")


def gradients(attack: str, params: dict) -> int:
    """Input gradients per image and epsilon among an attack's passes (each counts 2; the rest are forwards)."""
    if attack == "fgsm":
        return 1
    if attack == "pgd":
        return params["restarts"] * params["steps"]
    if attack in ("apgd_ce", "apgd_dlr"):
        return params["restarts"] * (params["steps"] + 1)
    if attack == "apgd_t":
        return params["targets"] * (params["steps"] + 1)
    return 0


def forward_flops(model: str, dataset: str) -> float | None:
    """A model's forward FLOPs per image of the dataset (None for an architecture without a count here)."""
    if model not in FORWARD_FLOPS_32 or dataset not in IMAGE_SIDE:
        return None
    return FORWARD_FLOPS_32[model] * (IMAGE_SIDE[dataset] / 32) ** 2


def uncounted(plan: Plan, runs) -> list[str]:
    """The architectures of these runs' attack jobs without a FLOP count (left out of study_flops)."""
    dataset = plan.config["dataset"]["name"]
    models = {run.model for run in runs} | {plan.teacher_of(run).run.model for run in runs if run.role != "teacher"}
    return sorted(model for model in models if forward_flops(model, dataset) is None)


def run_passes(plan: Plan, run, n_test: int, every_image: bool = False) -> dict:
    """{"own": forward passes of the run's model, "sources": {source model: passes}} of one run's attack job (with
    every_image, as if robustness.subset were off: what the subset saves)."""
    suite = plan.suite
    subset = n_test if suite.subset_size is None or every_image else min(suite.subset_size, n_test)
    own = sum(passes(name, params) * (subset if suite.on_subset(name) else n_test)
              for name, params in suite.attacks.items()) * len(suite.epsilons)
    own += sum(passes(name, suite.attacks[name]) * subset for name in suite.large_epsilon_attacks)
    sources = {}
    if suite.transfer is not None:
        crafted = (passes(suite.transfer, suite.attacks[suite.transfer]) - 2) * subset * len(suite.epsilons)
        roles = ([] if run.role == "teacher" else [plan.teacher_of(run).run]) + (
            [plan.baseline_of(run)] if run.distilled else [])
        for source in roles:
            sources[source.model] = sources.get(source.model, 0) + crafted
            own += 2 * subset * len(suite.epsilons)
    return {"own": own, "sources": sources}


def study_flops(plan: Plan, runs, every_image: bool = False) -> float:
    """FLOPs of the attack jobs of these runs (upper bound, the module docstring), but of the models `uncounted`
    names; with every_image, the same attacks on every test image (no evaluation subset)."""
    dataset = plan.config["dataset"]["name"]
    n_test = min(plan.config["dataset"]["subset"] or TEST_IMAGES.get(dataset, 10000), TEST_IMAGES.get(dataset, 10000))
    total = 0.0
    for run in runs:
        counted = run_passes(plan, run, n_test, every_image)
        for model, count in [(run.model, counted["own"]), *counted["sources"].items()]:
            total += count * (forward_flops(model, dataset) or 0.0)
    return total


def gpu_hours(flops: float, precision: str = "fp32") -> float:
    """Hours of one GPU at its dense peak (PEAK): a floor; jobs of small 32 x 32 models run far below the peak."""
    return flops / PEAK[precision] / 3600
