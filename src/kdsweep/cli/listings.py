"""The registries a study names from, listed one line each: `models`, `attacks` and `datasets`."""

from ..errors import KdsweepError
from .common import command


def register(subparsers):
    p = command(subparsers, "models", cmd_models,
                "list the architectures a study can name (torchvision's classification models, and timm's where "
                "installed), their family and parameter count as a study builds them (docs/models.md)")
    p.add_argument("--classes", type=int, default=10, help="output classes to count the head with (default 10)")
    p.add_argument("--image-size", type=int, default=32,
                   help="image side in pixels (default 32, CIFAR's): up to 64, the small-image stems")

    p = command(subparsers, "attacks", cmd_attacks,
                "list the attacks a study can run (attacks: in the config, kdsweep.attacks.ATTACKS), their kind, "
                "paper and parameters, and the losses an attack can climb (docs/robustness.md)")

    p = command(subparsers, "datasets", cmd_datasets,
                "list the datasets a study can name (dataset.name, kdsweep.datasets.DATASETS), their classes and "
                "image side (docs/datasets.md)")


def cmd_models(args):
    from ..models import SMALL_IMAGE, STEM_RULES, family, names, parameter_count

    if args.classes < 1 or args.image_size < 1:
        raise KdsweepError("--classes and --image-size must be at least 1")
    small = args.image_size <= SMALL_IMAGE
    print(f"{'model':<28} {'family':<20} {'parameters':>14}  ({args.classes} classes, {args.image_size} px"
          f"{', small-image stems' if small else ''})")
    for name in names():
        found = family(name)
        if small and found not in STEM_RULES:
            count = "no small-image rule"
        else:
            count = f"{parameter_count(name, args.classes, args.image_size):,}"
        print(f"{name:<28} {found:<20} {count:>14}")


def cmd_attacks(args):
    from ..attacks import ATTACKS, LOSSES

    print(f"{'attack':<10} {'label':<9} {'kind':<14} {'paper':<27} parameters (attacks.<attack> in the config)")
    for attack in ATTACKS.values():
        print(f"{attack.name:<10} {attack.label:<9} {attack.kind:<14} {attack.paper:<27} "
              f"{', '.join(attack.params) or '-'}")
    print(f"\n{'loss':<10} what it is (attacks.pgd.loss)")
    for name, about in LOSSES.items():
        print(f"{name:<10} {about}")


def cmd_datasets(args):
    from ..datasets import DATASETS

    print(f"{'dataset':<12} {'classes':>7} {'side':>5}  what it is (dataset.name in the config)")
    for entry in DATASETS.values():
        # an imagefolder's classes are its training folder's subfolders, its side imagefolder.train_crop
        classes, side = (entry.geometry[2], entry.geometry[1]) if entry.geometry else ("-", "-")
        print(f"{entry.name:<12} {classes:>7} {side:>5}  {entry.about}")
