"""Which test images an attack left correct, torch-free: an attack's per-image outcome (`Examples`), the
evaluation subset, the worst case over several attacks (the headline: an image is robust only if every
attack left it correct) and accuracy per class."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Examples:
    """Per test image attacked (`indices` into the test set, increasing): correct before the attack, and
    correct at every point it tried."""

    indices: np.ndarray
    clean: np.ndarray
    robust: np.ndarray

    def summary(self) -> dict:
        """{"n", "clean_acc", "adv_acc", "n_correct", "adv_acc_on_correct"} in percent: adv_acc over every image
        attacked (as the reference study reports it), adv_acc_on_correct over those correct before the
        attack (None if there are none)."""
        n, correct, robust = len(self.indices), int(self.clean.sum()), int(self.robust.sum())
        return {"n": n, "clean_acc": 100.0 * correct / n, "adv_acc": 100.0 * robust / n, "n_correct": correct,
                "adv_acc_on_correct": 100.0 * robust / correct if correct else None}


def subset_indices(n_test: int, size: int | None, seed: int) -> np.ndarray:
    """The evaluation subset: `size` test images drawn without replacement by numpy's default_rng(seed),
    increasing; every image where size is None or at least n_test. It depends on nothing else, so every run of
    a study gets the same images and their results stay paired."""
    if size is None or size >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.default_rng(seed).choice(n_test, size=size, replace=False))


def on(examples: Examples, indices) -> Examples:
    """The images of `examples` at these test-set indices (each must be among them)."""
    position = np.searchsorted(examples.indices, indices)
    if np.any(position >= len(examples.indices)) or np.any(examples.indices[np.minimum(
            position, len(examples.indices) - 1)] != indices):
        raise ValueError("the images asked for were not all attacked")
    return Examples(np.asarray(indices), examples.clean[position], examples.robust[position])


def worst_case(results: list[Examples], indices) -> Examples:
    """Per image at `indices`: robust only where every result left it correct (AutoAttack's worst case)."""
    if not results:
        raise ValueError("a worst case needs at least one attack")
    parts = [on(result, indices) for result in results]
    return Examples(np.asarray(indices), parts[0].clean, np.logical_and.reduce([part.robust for part in parts]))


def per_class(labels, correct, num_classes: int) -> tuple[list, list]:
    """(images per class, accuracy per class in % (None for a class without images)) of these labels and
    correctness flags."""
    labels, correct = np.asarray(labels), np.asarray(correct, dtype=bool)
    counts = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels[correct], minlength=num_classes)
    return counts.tolist(), [100.0 * h / c if c else None for h, c in zip(hits.tolist(), counts.tolist())]
