"""CPU seconds per 1,000 images of each attack of config.yaml on a ResNet-18 at 32 x 32 (docs/robustness.md).

    python scripts/attack_cpu_cost.py [--threads 1] [--images 20] [--check-steps 5]

The model has random weights and every image's label is its own prediction, so that no image is ever broken
and every attack spends its whole budget on it: the upper bound that kdsweep.attacks.cost counts. Timed
directly: the forward pass and the input gradient per image (batches of --images), and FGSM, PGD-10 and a
--check-steps APGD-CE on those images (to check the passes model of kdsweep.attacks.cost); each attack's
cost per 1,000 images is then its passes (forwards and gradients) times those unit costs. CPU time of this
process (time.process_time), the best of three.
"""

import argparse
import time

import torch

from kdsweep.attacks import cost
from kdsweep.attacks.base import ce_loss, input_gradient
from kdsweep.attacks.evaluate import attack_examples
from kdsweep.config import load_config
from kdsweep.models import build_model


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--check-steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("resnet18", 10, [0.5] * 3, [0.25] * 3).eval()
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    x = images.float() / 255
    with torch.no_grad():
        labels = model(x).argmax(1)  # every image correct: nothing stops early
    forward = best_of(lambda: model(x).detach()) / args.images
    gradient = best_of(lambda: input_gradient(model, x, labels, ce_loss)) / args.images
    print(f"ResNet-18, 32 x 32, {args.threads} thread(s): forward {1000 * forward:.2f} s per 1,000 images, input "
          f"gradient {1000 * gradient:.2f} s per 1,000 images ({gradient / forward:.2f} forwards)")
    epsilon = 1e-4  # too small to fool anything: the whole budget is spent
    suite = load_config([])["attacks"]
    checks = {"fgsm": {}, "pgd": suite["pgd"], "apgd_ce": {**suite["apgd_ce"], "steps": args.check_steps}}
    for name, params in checks.items():
        measured = best_of(lambda: attack_examples(model, images, labels, epsilon, args.images, name, **params), 1)
        passes, gradients = cost.passes(name, params), cost.gradients(name, params)
        predicted = (passes - 2 * gradients) * forward + gradients * gradient
        print(f"{name} {params}: measured {1000 * measured / args.images:.1f} s per 1,000 images, passes model "
              f"{1000 * predicted:.1f}")
    print("config.yaml's attacks, per 1,000 images and epsilon, from the unit costs above:")
    for name, params in suite.items():
        passes, gradients = cost.passes(name, params), cost.gradients(name, params)
        seconds = 1000 * ((passes - 2 * gradients) * forward + gradients * gradient)
        print(f"  {name:9s} {passes:6.0f} passes  {seconds:9.0f} CPU-s ({seconds / 3600:.2f} h)")


if __name__ == "__main__":
    main()
