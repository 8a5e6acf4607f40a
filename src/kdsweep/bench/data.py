"""`python -m kdsweep bench --data`: the imagefolder path and several processes per job, measured.

Three measurements, each a ratio of two runs made in this one process's run:

- `loader`: images per second of an epoch of the imagefolder training stream (kdsweep.sources.Streamed:
  torchvision.io decoding in DataLoader workers, RandomResizedCrop + flip drawn from each image's seed,
  batches on the device as float) against the plain loop: torchvision.datasets.ImageFolder (Pillow)
  with RandomResizedCrop, RandomHorizontalFlip and PILToTensor, shuffled by a DataLoader, at the same
  workers, batch, crop and device. Both over the same generated tree of JPEGs (sides of 1 to 2 crops),
  after one untimed epoch each; the best of --repeats epochs, alternating.
- `memory`: the peak resident memory (RSS) of a training stream's epoch over a tree of --small and one
  of --large images (tiny files), each in a fresh process: the process itself and its largest loader
  worker, and of the stats job over each tree. The stream holds a list of the files and its prefetched
  batches, not the images: the peaks should be within 10% of each other.
- `ddp`: seconds per epoch of one distillation job (digits, kdsweep's whole job: `kdsweep distill`)
  as 2 processes (gloo, one thread each) against 1 process of 2 threads and 1 of 1 thread, the same
  global batch: the cost of DDP on this machine's cores. Read from each run's history.csv (epochs after
  the first), so process start-up is not in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

QUICK = {"tree": 2_000, "crop": 64, "small": 10_000, "large": 100_000, "epochs": 2}
FULL = {"tree": 10_000, "crop": 224, "small": 10_000, "large": 100_000, "epochs": 4}


def write_jpegs(root: Path, count: int, crop: int, classes: int = 10, seed: int = 0, tiny: bool = False):
    """count JPEGs under root/<class>/ (sides of 1 to 2 crops, or 16 to 31 pixels when tiny), seeded."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        low, high = (16, 32) if tiny else (crop, 2 * crop)
        height, width = (int(v) for v in rng.integers(low, high, size=2))
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"class{i % classes}" / f"{i:07d}.jpg", quality=90)
    return root


def _config(root, crop, workers, batch):
    from ..config import load_config

    return load_config([], ["dataset.name=imagefolder", f"dataset.root={root}", "dataset.train=train",
                            "dataset.test=val", f"imagefolder.train_crop={crop}", f"imagefolder.eval_resize={crop}",
                            f"imagefolder.eval_crop={crop}", f"runtime.loader_workers={workers}",
                            f"training.batch_size={batch}", "runtime.device=cpu"])


def _files(root):
    from ..split import Files
    from ..imagefolder import classes_of, scan

    listing = scan(root, "train", "train", classes_of(root, "train"))
    return Files(listing, torch.from_numpy(listing.labels))


def _ours(root, crop, workers, batch, device, runtime):
    from ..sources import Streamed
    from ..streaming import Pipeline

    config = _config(root, crop, workers, batch)
    source = Streamed(_files(root), Pipeline.from_config(config["imagefolder"]), batch, workers, device)
    generator = torch.Generator().manual_seed(0)

    def epoch():
        count = 0
        for batch_ in source.epoch(generator, runtime):
            count += len(batch_)
        _sync(device)
        return count

    return epoch


def _reference(root, crop, workers, batch, device):
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomResizedCrop(crop, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()])
    dataset = ImageFolder(str(root / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda")

    def epoch():
        count = 0
        for images, labels in loader:
            images = images.to(device, non_blocking=True).float().div_(255)
            labels = labels.to(device, non_blocking=True)
            count += len(labels)
        _sync(device)
        return count

    return epoch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_loader(folder, count, crop, workers, batch, repeats, device, runtime, log=print) -> dict:
    root = folder / "loader"
    write_jpegs(root / "train", count, crop)
    sides = {"ours": _ours(root, crop, workers, batch, device, runtime),
             "reference": _reference(root, crop, workers, batch, device)}
    for epoch in sides.values():
        epoch()  # untimed: worker start-up, lazy imports, page cache
    best = {name: float("inf") for name in sides}
    for _ in range(repeats):
        for name, epoch in sides.items():
            started = time.perf_counter()
            images = epoch()
            best[name] = min(best[name], time.perf_counter() - started)
            assert images == count
    result = {name: {"images": count, "seconds": seconds, "images_per_s": count / seconds}
              for name, seconds in best.items()}
    result["ratio"] = result["ours"]["images_per_s"] / result["reference"]["images_per_s"]
    log(f"loader    ours {result['ours']['images_per_s']:.0f} img/s, torchvision ImageFolder + DataLoader "
        f"{result['reference']['images_per_s']:.0f} img/s: {result['ratio']:.2f} x ({count} JPEGs, crop {crop}, "
        f"{workers} workers, batch {batch})")
    return result


# The child process of one memory measurement: an epoch of the stream, or the stats job, over ROOT.
_MEMORY_CHILD = r"""
import json, resource, sys, psutil, torch
from pathlib import Path
from kdsweep.bench.data import _config, _files
kind, root, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
config = _config(root, 32, workers, 256)
me = psutil.Process()
started = me.memory_info().rss
if kind == "stream":
    from kdsweep.runtime import Runtime
    from kdsweep.sources import Streamed
    from kdsweep.streaming import Pipeline
    runtime = Runtime.from_config({**config["runtime"], "threads": 1})
    source = Streamed(_files(root), Pipeline.from_config(config["imagefolder"]), 256, workers, "cpu")
    count = sum(len(batch) for batch in source.epoch(torch.Generator().manual_seed(0), runtime))
    end = me.memory_info().rss  # the epoch's end, the stream (its listing, its workers) still alive
    del source  # its workers exit and are waited for: RUSAGE_CHILDREN then holds the largest
else:
    from kdsweep.split import write_stats
    count = write_stats(root / "stats.json", config["dataset"], {**config, "dataset": {**config["dataset"],
                        "val_fraction": 0.1}}, log=lambda line: None)["n_train"]
    end = me.memory_info().rss
print(json.dumps({"images": count, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_after_imports_mb": started / 2**20, "rss_at_end_mb": end / 2**20,
                  "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def measure_memory(folder, small, large, workers, log=print) -> dict:
    result = {}
    for name, count in (("small", small), ("large", large)):
        root = folder / f"memory{count}"
        started = time.perf_counter()
        write_jpegs(root / "train", count, 32, tiny=True)
        write_jpegs(root / "val", max(10, count // 100), 32, tiny=True, seed=1)
        log(f"memory    wrote {count} JPEGs in {time.perf_counter() - started:.0f} s")
        for kind in ("stream", "stats"):
            out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, kind, str(root), str(workers)],
                                 capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if out.returncode != 0:
                raise RuntimeError(f"the memory measurement failed:\n{out.stderr[-2000:]}")
            result[f"{kind}:{name}"] = {"tree_images": count, **json.loads(out.stdout.splitlines()[-1])}
    for kind in ("stream", "stats"):
        small_, large_ = result[f"{kind}:small"], result[f"{kind}:large"]
        result[f"{kind}:ratio"] = large_["rss_mb"] / small_["rss_mb"]
        result[f"{kind}:end_ratio"] = large_["rss_at_end_mb"] / small_["rss_at_end_mb"]
        result[f"{kind}:worker_ratio"] = (large_["worker_rss_mb"] / small_["worker_rss_mb"]
                                          if small_["worker_rss_mb"] else None)
        log(f"memory    {kind}: peak RSS {small_['rss_mb']:.0f} MB ({small} images) and {large_['rss_mb']:.0f} MB "
            f"({large}): {result[f'{kind}:ratio']:.3f} x; at the end {small_['rss_at_end_mb']:.0f} and "
            f"{large_['rss_at_end_mb']:.0f} MB ({result[f'{kind}:end_ratio']:.3f} x; after the imports "
            f"{small_['rss_after_imports_mb']:.0f} MB); largest worker {small_['worker_rss_mb']:.0f} and "
            f"{large_['worker_rss_mb']:.0f} MB")
    return result


def _history_seconds(run) -> list:
    rows = (run / "history.csv").read_text().splitlines()
    column = rows[0].split(",").index("seconds")
    return [float(row.split(",")[column]) for row in rows[1:]]


# (processes, threads per process) of the DDP measurement's jobs
DDP_SIDES = {"2 processes x 1 thread": (2, 1), "1 process x 2 threads": (1, 2), "1 process x 1 thread": (1, 1)}


def measure_ddp(folder, epochs, log=print) -> dict:
    """kdsweep's distill job on the digits (a mobilenet_v3_small student of a 1-epoch mobilenet_v3_small
    teacher, kd at T = 4, w = 0.9, batch 64), as DDP_SIDES."""
    from ..config import DEFAULTS_PATH

    work = folder / "ddp"
    work.mkdir()
    common = ["--config", DEFAULTS_PATH, "dataset.name=digits", "training.batch_size=64", "training.bn_momentum=0.1",
              "training.eval_batch_size=512", "training.early_stopping_patience=100", "runtime.device=cpu",
              "teacher.model=mobilenet_v3_small", "students=[mobilenet_v3_small]"]
    stats = work / "stats.json"
    _kdsweep("stats", *common, "--out", stats, cwd=work)
    _kdsweep("train", *common, "training.max_epochs=1", "runtime.threads=2", "--role", "teacher", "--model",
             "mobilenet_v3_small", "--seed", 0, "--stats", stats, "--out", work / "teacher", cwd=work)
    result = {}
    for name, (processes, threads) in DDP_SIDES.items():
        out = work / f"p{processes}t{threads}"
        _kdsweep("distill", *common, f"training.max_epochs={epochs}", f"runtime.threads={threads}",
                 f"runtime.processes={processes}", "--student", "mobilenet_v3_small", "--seed", 0, "--teacher",
                 work / "teacher", "--point", "kd:temperature=4,soft_weight=0.9", "--out", out, "--stats", stats,
                 cwd=work)
        seconds = _history_seconds(out)[1:]  # the first epoch pays the processes' warm-up
        images = json.loads(stats.read_text())["n_train"]
        result[name] = {"processes": processes, "threads": threads, "epoch_seconds": seconds,
                        "images_per_s": images / min(seconds)}
    first, *others = DDP_SIDES
    for other in others:
        result[f"ratio to {other}"] = result[first]["images_per_s"] / result[other]["images_per_s"]
    log("ddp       " + ", ".join(f"{name}: {result[name]['images_per_s']:.0f} img/s" for name in DDP_SIDES)
        + "; " + ", ".join(f"{key} {value:.2f}" for key, value in result.items() if key.startswith("ratio")))
    return result


def _kdsweep(*args, cwd):
    out = subprocess.run([sys.executable, "-m", "kdsweep", *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"kdsweep {args[0]} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out


def run(args, runtime, log=print) -> dict:
    sizes = QUICK if args.quick else FULL
    crop = sizes["crop"]
    result = {"version": 1, "quick": bool(args.quick), "machine": None}
    with tempfile.TemporaryDirectory(prefix="kdsweep-bench-data-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        result["loader"] = measure_loader(folder, sizes["tree"], crop, args.workers, 64, args.repeats or 2,
                                          runtime.device, runtime, log)
        result["memory"] = measure_memory(folder, sizes["small"], sizes["large"], args.workers, log)
        result["ddp"] = measure_ddp(folder, sizes["epochs"], log)
        result["seconds"] = time.perf_counter() - started
    return result
