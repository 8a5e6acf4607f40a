"""The headline against FGSM and cross-entropy PGD-10 on the same images (issue 31: on the demo's distilled
students of the highest T, the headline is at most both at every epsilon), as a table for docs/robustness.md.

    python scripts/headline_vs_references.py --config config.yaml --config studies/demo.yaml \\
        results/demo/runs/kd/resnet18_T4_soft0.9_seed0 ...

Each run's headline is its attack job's worst case (attacks/<role>/<run>/worst_eps<E>.json); FGSM and PGD-10 (CE,
0.25 eps steps, one random start: config.yaml's PGD) run here on the same evaluation subset.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rescale_experiment  # noqa: E402  (a run under its study's suite)
from kdsweep.attacks.evaluate import attack_examples  # noqa: E402
from kdsweep.layout import attack_file  # noqa: E402
from kdsweep.records import AttackResult  # noqa: E402

PGD10 = {"loss": "ce", "steps": 10, "relative_step_size": 0.25, "random_start": True, "restarts": 1, "seed": 0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run folders of one study (results/<study>/runs/...)")
    parser.add_argument("--config", action="append", default=[], help="the study's config files, in order")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| run | " + " | ".join(f"ε = {e:g}: FGSM / PGD-10 / headline" for e in (0.05, 0.1)) + " |")
    print("| --- | ---: | ---: |")
    for run in args.runs:
        model, images, labels, _, _, subset, _, epsilons = rescale_experiment.a_run(run, args.config, None)
        cells = []
        for epsilon in epsilons:
            fgsm = attack_examples(model, images, labels, epsilon, 500, "fgsm", indices=subset)
            pgd = attack_examples(model, images, labels, epsilon, 500, "pgd", indices=subset, **PGD10)
            headline = AttackResult.read(Path(run.replace("/runs/", "/attacks/")) / attack_file("worst", epsilon))
            cells.append(f"{100 * fgsm.robust.mean():.1f} / {100 * pgd.robust.mean():.1f} / **{headline.adv_acc:.1f}**")
        print(f"| {run.split('runs/', 1)[1]} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
