"""Issue 31's rescale experiment as a table (docs/robustness.md): a model's logits multiplied by 1, 10 and 100 (no
prediction changes, so no robustness may change), accuracy (%) under FGSM and PGD-10 on cross-entropy, each attack
of the headline, their worst case, and a 20-step margin-loss PGD written in tests/test_attacks.py.

    python scripts/rescale_experiment.py
        the test's model and budgets: a small convolutional network trained on 1,500 of scikit-learn's digits
        (tests/test_attacks.py's fixture conv_digits), its 297 held-out images; APGD 20 steps, APGD-T 9 targets
        of 20 steps, Square 100 queries
    python scripts/rescale_experiment.py --run results/demo/runs/kd/resnet18_T4_soft0.5_seed0 \\
            --config config.yaml --config studies/demo.yaml [--epsilons 0.0078 0.0157 0.0314 0.05 0.1]
        a finished run of a study, under that study's suite as its attack job runs it: each attack on every test
        image or on the evaluation subset (robustness.full_test_set, robustness.subset), every number on the
        images it was computed on; the margin-loss reference on the subset
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_attacks as experiment  # noqa: E402  (the test's model, budgets, reference and logit scaling)
from kdsweep.attacks.evaluate import attack_examples  # noqa: E402
from kdsweep.attacks.examples import subset_indices, worst_case  # noqa: E402


def the_tests():
    """(model, images, labels, {attack: params}, headline, subset indices or None, which attacks run on every image,
    epsilons)."""
    model, images, labels = experiment.conv_digits.__wrapped__()
    suite = {name: experiment.SUITE[name] for name in ("fgsm", "pgd", *experiment.HEADLINE)}
    return model, images, labels, suite, experiment.HEADLINE, None, set(suite), (0.05, 0.1, 0.15)


def a_run(run, configs, epsilons):
    from kdsweep import split, trained
    from kdsweep.attacks.suite import Suite
    from kdsweep.config import load_config
    from kdsweep.runtime import Runtime

    config = load_config([Path(c) for c in configs], ["runtime.threads=1"])
    suite = Suite.from_config(config)
    runtime = Runtime.from_config(config["runtime"], training_job=False)
    splits = split.load_splits(config["dataset"], runtime.device, split.study_stats(run, config))
    _, model = trained.load(Path(run), config["dataset"], runtime.device, splits.num_classes, "run",
                            data_digest=splits.digest)
    subset = subset_indices(len(splits.test.labels), suite.subset_size, suite.subset_seed)
    attacks = {name: suite.attacks[name] for name in ("fgsm", "pgd", *suite.headline) if name in suite.attacks}
    return (model, splits.test.images, splits.test.labels, attacks, suite.headline, subset, suite.full_test_set,
            tuple(epsilons or suite.epsilons))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished run folder (default: the test's model)")
    parser.add_argument("--config", action="append", default=[], help="the study's config files, in order")
    parser.add_argument("--epsilons", type=float, nargs="*", help="default: the test's, or the study's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, images, labels, attacks, headline, subset, everywhere, epsilons = (
        a_run(args.run, args.config, args.epsilons) if args.run else the_tests())
    everything = torch.arange(len(labels)).numpy()
    on_subset = everything if subset is None else subset
    print("| ε | logits × | " + " | ".join(f"{name} ({'all' if name in everywhere else len(on_subset)})"
                                          for name in attacks)
          + " | worst case (headline) | margin PGD-20 (the test's) |")
    print("|" + " --- |" * (len(attacks) + 4))
    for epsilon in epsilons:
        for scale in (1, 10, 100):
            scaled = experiment.Scaled(model, scale).eval()
            results = {name: attack_examples(scaled, images, labels, epsilon, 500, name,
                                             indices=None if name in everywhere else on_subset, **params)
                       for name, params in attacks.items()}
            worst = worst_case([results[name] for name in headline], on_subset)
            reference = experiment.margin_pgd_reference(scaled, images[on_subset], labels[on_subset], epsilon)
            cells = [f"{100 * results[name].robust.mean():.2f}" for name in attacks]
            print(f"| {epsilon:g} | {scale} | " + " | ".join(cells) + f" | {100 * worst.robust.mean():.2f} | "
                  f"{reference:.2f} |", flush=True)


if __name__ == "__main__":
    main()
