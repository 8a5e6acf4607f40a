"""Gradient-masking checks of one run (Athalye, Carlini & Wagner 2018; Carlini et al. 2019, "On evaluating
adversarial robustness"): signs that its gradient attacks failed for want of a usable gradient rather than
for want of an adversarial image. Torch-free: they read which images each attack left correct.

Each check compares two accuracies (%) on the same test images and fails where `value` exceeds `limit`:

- rises_with_epsilon        an attack's accuracy at a larger epsilon above its accuracy at the next smaller
                            one (+ tolerance): a larger ball holds every adversarial image of a smaller one
- iterative_above_single_step  an iterative attack above FGSM at the same epsilon (+ tolerance): many steps
                            should find at least what one step finds
- headline_above_reference  the worst case above FGSM or PGD (+ tolerance), where those are not in it: the
                            headline's attacks fail where a plain one succeeds
- white_box_above_transfer  an iterative white-box attack above a transfer attack (+ tolerance): images
                            crafted on another model fool this one more than its own gradient does
- gradient_free_beats_gradient  the gradient attacks' worst case above the gradient-free Square attack
                            (+ tolerance): random search finds what the gradients miss
- large_epsilon             an attack at a large epsilon (0.5: any image can become another) leaving more than
                            large_epsilon_accuracy % correct

A failed check says so in words (its `sentence`): "masking suspected: PGD above FGSM at ε=0.05 (...)".
"""

from __future__ import annotations

import numpy as np

from . import ATTACKS, WORST, label
from .examples import Examples, on, worst_case

CHECKS = ("rises_with_epsilon", "iterative_above_single_step", "headline_above_reference", "white_box_above_transfer",
          "gradient_free_beats_gradient", "large_epsilon")
SOURCES = {"teacher": "the teacher", "baseline": "the run's own hard-target baseline"}


def _eps(epsilon) -> str:
    return f"{float(epsilon):g}"


def _accuracy(examples: Examples) -> float:
    return 100.0 * float(np.mean(examples.robust)) if len(examples.indices) else float("nan")


def _check(check, attack, against, epsilon, value, limit, n, sentence):
    passed = not value > limit
    return {"check": check, "attack": attack, "against": against, "epsilon": epsilon, "value": value, "limit": limit,
            "n": int(n), "passed": bool(passed), "sentence": None if passed else "masking suspected: " + sentence}


def _compare(check, attack, against, epsilon, mine: Examples, theirs: Examples, tolerance, sentence):
    """`mine` should not be above `theirs` on mine's images (+ tolerance)."""
    theirs = on(theirs, mine.indices)
    value, reference = _accuracy(mine), _accuracy(theirs)
    return _check(check, attack, against, epsilon, value, reference + tolerance, len(mine.indices),
                  sentence.format(value=value, reference=reference))


def checks(results: dict, transfer: dict, large: dict, suite) -> list[dict]:
    """Every check of one run. results: {(attack or WORST, epsilon): Examples}; transfer: {(source, epsilon):
    Examples of the run on the images crafted on that source}; large: {attack: Examples at
    suite.large_epsilon}; suite: kdsweep.attacks.suite.Suite (tolerance, large-epsilon limit, headline)."""
    out, tolerance = [], suite.tolerance
    epsilons = sorted({epsilon for _, epsilon in results})
    names = list(dict.fromkeys(name for name, _ in results))
    for name in names:
        for small, big in zip(epsilons, epsilons[1:]):
            if (name, small) in results and (name, big) in results:
                out.append(_compare("rises_with_epsilon", name, name, big, results[name, big], results[name, small],
                                    tolerance, f"{label(name)} accuracy rises with ε, from {{reference:.1f}}% at "
                                               f"ε={_eps(small)} to {{value:.1f}}% at ε={_eps(big)}"))
    iterative = [name for name in names if name in ATTACKS and ATTACKS[name].kind == "iterative"]
    gradient = [name for name in names if name in ATTACKS and ATTACKS[name].gradient]
    for epsilon in epsilons:
        at = {name: results[name, epsilon] for name in names if (name, epsilon) in results}
        where = f"at ε={_eps(epsilon)} ({{value:.1f}}% against {{reference:.1f}}%)"
        for name in iterative:
            if "fgsm" in at and name in at:
                out.append(_compare("iterative_above_single_step", name, "fgsm", epsilon, at[name], at["fgsm"],
                                    tolerance, f"{label(name)} above FGSM {where}"))
        if WORST in at:
            for reference in ("fgsm", "pgd"):
                if reference in at and reference not in suite.headline:
                    out.append(_compare("headline_above_reference", WORST, reference, epsilon, at[WORST],
                                        at[reference], tolerance,
                                        f"the worst case ({', '.join(map(label, suite.headline))}) above "
                                        f"{label(reference)} {where}"))
        for (source, source_epsilon), crafted in sorted(transfer.items()):
            if source_epsilon != epsilon:
                continue
            for name in iterative:
                if name in at:
                    out.append(_compare("white_box_above_transfer", name, f"transfer_{source}", epsilon,
                                        on(at[name], crafted.indices), crafted, tolerance,
                                        f"{label(name)} above the transfer attack from {SOURCES.get(source, source)} "
                                        f"{where}"))
        if "square" in at and gradient and all(name in at for name in gradient):
            images = at["square"].indices
            both = worst_case([at[name] for name in gradient], images)
            out.append(_compare("gradient_free_beats_gradient", "gradient", "square", epsilon, both, at["square"],
                                tolerance, f"Square (gradient-free) below every gradient attack's worst case "
                                           f"({', '.join(map(label, gradient))}) {where}"))
    for name, examples in large.items():
        value = _accuracy(examples)
        out.append(_check("large_epsilon", name, None, suite.large_epsilon, value, suite.large_epsilon_accuracy,
                          len(examples.indices), f"{label(name)} leaves {value:.1f}% correct at ε="
                                                 f"{_eps(suite.large_epsilon)}, where any image can be turned into "
                                                 f"another (more than {suite.large_epsilon_accuracy:g}%)"))
    return out
