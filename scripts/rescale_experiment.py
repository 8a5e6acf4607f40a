"""Issue 31's rescale experiment, as tests/test_attacks.py runs it, as a table (docs/robustness.md).

    python scripts/rescale_experiment.py

A small convolutional network trained on 1,500 of scikit-learn's digits (the test's fixture, conv_digits),
its logits multiplied by 1, 10 and 100 (no prediction changes): accuracy (%) on the 297 held-out images under
FGSM and PGD-10 on cross-entropy, each attack of the headline (the test's budgets: APGD 20 steps, APGD-T 9
targets of 20 steps, Square 100 queries), their worst case, and a 20-step margin-loss PGD written in the test.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_attacks as experiment  # noqa: E402  (the test's model, budgets and reference)
from kdsweep.attacks import worst_case  # noqa: E402
from kdsweep.attacks.evaluate import attack_examples  # noqa: E402


def main():
    torch.set_num_threads(1)
    model, images, labels = experiment.conv_digits.__wrapped__()
    columns = ["fgsm", "pgd", *experiment.HEADLINE]
    print("| ε | logits × | " + " | ".join(columns) + " | worst case (headline) | margin PGD-20 (the test's) |")
    print("|" + " --- |" * (len(columns) + 4))
    for epsilon in (0.05, 0.1, 0.15):
        for scale in (1, 10, 100):
            scaled = experiment.Scaled(model, scale)
            results = {name: attack_examples(scaled, images, labels, epsilon, 300, name, **experiment.SUITE[name])
                       for name in columns}
            worst = worst_case([results[name] for name in experiment.HEADLINE], results["fgsm"].indices)
            reference = experiment.margin_pgd_reference(scaled, images, labels, epsilon)
            cells = [f"{100 * results[name].robust.mean():.2f}" for name in columns]
            print(f"| {epsilon:g} | {scale} | " + " | ".join(cells) + f" | {100 * worst.robust.mean():.2f} | "
                  f"{reference:.2f} |")


if __name__ == "__main__":
    main()
