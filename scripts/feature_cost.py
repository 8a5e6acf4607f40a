"""Seconds per training epoch of kd and of each feature method, alone and in one pack, on the CPU (one
thread): train.Point and train.train_epoch as a training job runs them, on random images of the given size.

    python scripts/feature_cost.py STUDENT TEACHER SIZE IMAGES
    python scripts/feature_cost.py mobilenet_v3_small resnet18 32 640
"""
import statistics, sys, time
import torch
from kdsweep import features, train
from kdsweep.augment import Augment
from kdsweep.models import build_model
from kdsweep.plan import Run
from kdsweep.runtime import Runtime

torch.set_num_threads(1)
rt = Runtime.from_config({"device": "cpu", "threads": 1, "precision": "auto", "tf32": False, "deterministic": True,
                          "channels_last": "auto", "compile": False, "pack_size": 1})
training = {"bn_momentum": 0.1, "lr": 1e-3, "weight_decay": 1e-4}
POINTS = {"kd": {"temperature": 4, "soft_weight": 0.9}, "at": {"beta": 1000, "p": 2, "stages": 3},
          "fitnets": {"hint_weight": 100, "hint_stage": 2}, "reviewkd": {"review_weight": 5, "warmup_epochs": 20, "stages": 3}}
student, teacher_name, size, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
shape = (3, size, size)
teacher = build_model(teacher_name, 10, [0.5] * 3, [0.25] * 3).eval().requires_grad_(False)
teacher.architecture = teacher_name
images, labels = torch.rand(n, *shape, generator=torch.Generator().manual_seed(0)), torch.arange(n) % 10
augment = Augment.from_config({"pad": 4, "flip_p": 0.5, "rotation_degrees": 15})
t = time.perf_counter(); features.find_stages(build_model(teacher_name, 10, [0.5] * 3, [0.25] * 3), shape)
print(f"probe of {teacher_name} on {size}x{size}: {time.perf_counter() - t:.2f} s")

def epoch_seconds(names, repeats=3):
    points = [train.Point(Run.distilled_run(m, student, 0, m, POINTS[m]), training, 10, [0.5] * 3, [0.25] * 3, rt,
                          teacher, shape) for m in names]
    times = []
    for e in range(repeats):
        t = time.perf_counter()
        train.train_epoch(points, teacher, augment, images, labels, 64, torch.Generator().manual_seed(e), rt, epoch=e + 1)
        times.append(time.perf_counter() - t)
    return statistics.median(times)

alone = {m: epoch_seconds([m]) for m in POINTS}
for m, s in alone.items():
    print(f"{student} from {teacher_name}, {n} images {size}x{size}, batch 64: {m:9s} {s:6.2f} s/epoch ({s / alone['kd']:.2f} x kd)")
pack = epoch_seconds(list(POINTS))
print(f"pack of all four: {pack:.2f} s/epoch; the four alone: {sum(alone.values()):.2f} s")
