"""Seconds per training epoch of KD methods on the CPU (one thread), each alone and all in one pack:
train.Point and train.train_epoch as a training job runs them, on random images of the given size. The
seconds are the process's CPU time (time.process_time): on a machine shared with other jobs the wall time
also counts the waits for a core.

    python scripts/feature_cost.py STUDENT TEACHER SIZE IMAGES [METHOD ...]   (default: kd at fitnets reviewkd)
    python scripts/feature_cost.py mobilenet_v3_small resnet18 32 640

With logit methods only (e.g. `... 32 640 kd`) it uses nothing the feature methods added, so the same
command with PYTHONPATH at a checkout without them times kd's epoch there: a logit method's cost with and
without the feature machinery.
"""

import statistics
import sys
import time

import torch

from kdsweep import train
from kdsweep.augment import Augment
from kdsweep.methods import METHODS
from kdsweep.models import build_model
from kdsweep.plan import Run
from kdsweep.runtime import Runtime
from kdsweep.sources import InMemory

POINTS = {"kd": {"temperature": 4, "soft_weight": 0.9}, "at": {"beta": 1000, "p": 2, "stages": 3},
          "fitnets": {"hint_weight": 100, "hint_stage": 2},
          "reviewkd": {"review_weight": 5, "warmup_epochs": 20, "stages": 3}}
REPEATS = 3  # epochs per measurement; the median is reported


def main(student, teacher_name, size, n, methods):
    torch.set_num_threads(1)
    runtime = Runtime.from_config({"device": "cpu", "threads": 1, "precision": "fp32", "tf32": False,
                                   "deterministic": True, "channels_last": False, "compile": False})
    training = {"bn_momentum": 0.1, "lr": 1e-3, "weight_decay": 1e-4}
    mean, std = [0.5] * 3, [0.25] * 3
    teacher = build_model(teacher_name, 10, mean, std).eval().requires_grad_(False)
    teacher.architecture = teacher_name
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n) % 10
    augment = Augment.from_config({"pad": 4, "flip_p": 0.5, "rotation_degrees": 15})
    batches = InMemory(augment, images, labels, 64)
    # the methods that read feature maps at their point (a checkout without them has no `needs_features`)
    features = [name for name in methods
                if getattr(METHODS[name], "needs_features", lambda hparams: False)(POINTS[name])]
    if features:
        from kdsweep.features import find_stages

        start = time.process_time()
        find_stages(build_model(teacher_name, 10, mean, std), (3, size, size))
        print(f"probe of {teacher_name} on {size}x{size}: {time.process_time() - start:.2f} CPU s")

    def point(name):
        run = Run.distilled_run(name, student, 0, name, POINTS[name])
        # a logit point is built as on a checkout without the feature methods: no teacher to probe
        extra = {"teacher": teacher} if name in features else {}
        return train.Point(run, training, 10, mean, std, runtime, image_size=size, **extra)

    def epoch_seconds(names):
        points = [point(name) for name in names]
        times = []
        for epoch in range(REPEATS):
            start = time.process_time()
            train.train_epoch(points, teacher, batches, torch.Generator().manual_seed(epoch), runtime, epoch=epoch + 1)
            times.append(time.process_time() - start)
        return statistics.median(times)

    alone = {name: epoch_seconds([name]) for name in methods}
    for name, seconds in alone.items():
        print(f"{student} from {teacher_name}, {n} images {size}x{size}, batch 64: {name:9s} {seconds:6.2f} CPU s/epoch"
              + (f" ({seconds / alone['kd']:.2f} x kd)" if "kd" in alone else ""))
    if len(methods) > 1:
        print(f"pack of {', '.join(methods)}: {epoch_seconds(methods):.2f} CPU s/epoch; each alone: "
              f"{sum(alone.values()):.2f} CPU s")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:] or list(POINTS))
