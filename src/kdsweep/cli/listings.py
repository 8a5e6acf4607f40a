"""The registries a study names from, listed one line each: `models`."""

from ..errors import KdsweepError
from .common import command


def register(subparsers):
    p = command(subparsers, "models", "list the architectures a study can name (torchvision's classification "
                                      "models, and timm's where installed), their family and parameter count as "
                                      "a study builds them (docs/models.md)")
    p.add_argument("--classes", type=int, default=10, help="output classes to count the head with (default 10)")
    p.add_argument("--image-size", type=int, default=32,
                   help="image side in pixels (default 32, CIFAR's): up to 64, the small-image stems")
    p.set_defaults(func=cmd_models)


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
