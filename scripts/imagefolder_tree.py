"""Write a small image tree in torchvision's ImageFolder layout, to try studies/imagefolder.yaml on:

    python scripts/imagefolder_tree.py data/images [--classes 3] [--train 40] [--test 10] [--seed 0]

ROOT/train/<class>/ and ROOT/val/<class>/ get images of odd sizes (17 to 63 pixels a side) in JPEG, PNG
(RGB, grey, with alpha) and WebP, each class a colour of its own under noise (so that a network learns
them in an epoch or two), and ROOT/train/<second class>/ one damaged JPEG (cut short): the stats job
names it, or, with dataset.skip_damaged, leaves it out and counts it. tests/test_imagefolder.py writes
its trees with this script's `write_tree`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

# (PIL format, extension, PIL mode) in turn
FORMATS = (("JPEG", "jpg", "RGB"), ("PNG", "png", "RGB"), ("JPEG", "JPEG", "RGB"), ("PNG", "png", "L"),
           ("WEBP", "webp", "RGB"), ("PNG", "png", "RGBA"))
DAMAGED = "damaged.jpg"


def write_tree(root, classes: int = 3, train: int = 40, test: int = 10, seed: int = 0, damaged: bool = True) -> Path:
    """The tree (module docstring) under root; returns root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    colours = rng.integers(30, 226, size=(classes, 3))
    for split, count in (("train", train), ("val", test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                height, width = (int(v) for v in rng.integers(17, 64, size=2))
                noise = rng.normal(0, 40, size=(height, width, 3))
                pixels = np.clip(colours[c] + noise, 0, 255).astype(np.uint8)
                fmt, ext, mode = FORMATS[i % len(FORMATS)]
                Image.fromarray(pixels).convert(mode).save(folder / f"{split}_{c}_{i:04d}.{ext}", fmt)
    if damaged:
        whole = root / "train" / f"class{min(1, classes - 1)}" / f"train_{min(1, classes - 1)}_0000.jpg"
        (whole.parent / DAMAGED).write_bytes(whole.read_bytes()[:200])
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder to write the tree into (its train/ and val/)")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--train", type=int, default=40, help="training images per class")
    parser.add_argument("--test", type=int, default=10, help="test images per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write_tree(args.root, args.classes, args.train, args.test, args.seed)
    print(f"wrote {args.classes * (args.train + args.test)} images and one damaged file under {root}")


if __name__ == "__main__":
    main()
