"""The split of a study's dataset: seeded train/validation split, per-channel statistics, splits on the device.

The training set is split into train/validation by a seeded permutation (`split_indices`);
the normalisation statistics are computed on the train split only and stored in stats.json
(`write_stats` / `read_stats`), with a hash of the validation indices so that no job can use
statistics of another split, and a digest of the images and labels themselves (`data_digest`), so
that no job uses other files than the study's, whatever their path. Every split lives whole on the job's device as uint8
N x C x H x W tensors (as in airbench): a GPU job never waits for CPU loader workers.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import torch

from . import io
from .datasets import Dataset, load_dataset
from .errors import KdsweepError


# ---------------------------------------------------------------- split and statistics


def split_indices(n: int, val_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into a training set of n images, each sorted; the same on every machine."""
    n_val = round(n * val_fraction)
    if not 0 < n_val < n:
        raise KdsweepError(
            f"dataset.val_fraction={val_fraction} leaves {n_val} of {n} images for validation; choose a fraction that keeps both parts non-empty"
        )
    # Always a CPU generator: randperm's stream differs between devices.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def index_sha(indices: torch.Tensor) -> str:
    return hashlib.sha256(indices.to(torch.int64).cpu().numpy().astype("<i8").tobytes()).hexdigest()


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list, list]:
    """Per-channel mean and (population) std of uint8 images, in [0,1] units.

    Sums of uint8 values and their squares stay far below 2**53, so float64 accumulation is
    exact and the result does not depend on chunking or device.
    """
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for part in images.split(chunk):
        part = part.to(torch.float64)
        total += part.sum(dim=(0, 2, 3)).cpu()
        squares += part.square().sum(dim=(0, 2, 3)).cpu()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (squares / count - mean.square()).clamp_min(0)
    return (mean / 255).tolist(), (var.sqrt() / 255).tolist()


def load_configured(dataset_cfg: dict) -> Dataset:
    """The dataset of a config's dataset section, cut to its first dataset.subset training and
    test images when that is set (smoke tests and quick trials)."""
    data = load_dataset(dataset_cfg["name"], dataset_cfg["root"])
    n = dataset_cfg["subset"]
    if n is None:
        return data
    return replace(data, train_images=data.train_images[:n], train_labels=data.train_labels[:n],
                   test_images=data.test_images[:n], test_labels=data.test_labels[:n])


def data_digest(data: Dataset) -> str:
    """sha256 of the images and labels a study uses (after dataset.subset), in file order: what the
    data is, whatever its path (kdsweep.identity). The same files give the same digest on any machine."""
    digest = hashlib.sha256()
    for array in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        tensor = array.contiguous()
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def compute_stats(dataset_cfg: dict) -> dict:
    """The stats.json record of a config's dataset section (statistics of the train split only)."""
    data = load_configured(dataset_cfg)
    train_idx, val_idx = split_indices(len(data.train_labels), dataset_cfg["val_fraction"], dataset_cfg["split_seed"])
    mean, std = channel_stats(data.train_images[train_idx])
    return {
        "dataset": dataset_cfg["name"],
        "val_fraction": dataset_cfg["val_fraction"],
        "split_seed": dataset_cfg["split_seed"],
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "n_test": len(data.test_labels),
        "num_classes": data.num_classes,
        "image_size": data.image_size,
        "mean": mean,
        "std": std,
        "val_index_sha": index_sha(val_idx),
        "data_digest": data_digest(data),
    }


def write_stats(path, dataset_cfg: dict) -> dict:
    stats = compute_stats(dataset_cfg)
    io.write_json(path, stats)
    return stats


STATS_FIELDS = ("dataset", "val_fraction", "split_seed", "n_train", "n_val", "n_test", "num_classes",
                "image_size", "mean", "std", "val_index_sha", "data_digest")
# stats.json of an earlier version has no data digest: its jobs take the digest of the data they load
_REQUIRED_STATS = STATS_FIELDS[:-1]


def _stats_types_problem(stats: dict) -> str | None:
    """What is wrong with the types and values of a stats record, or None."""
    counts = ("n_train", "n_val", "n_test", "num_classes")
    bad = [key for key in counts if not isinstance(stats[key], int) or isinstance(stats[key], bool) or stats[key] < 1]
    if bad:
        return f"'{bad[0]}' is {stats[bad[0]]!r}, not a positive whole number"
    size = stats["image_size"]
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size)):
        return f"'image_size' is {size!r}, not [channels, height, width]"
    for key in ("mean", "std"):
        values = stats[key]
        if not (isinstance(values, list) and len(values) == size[0]
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            return f"'{key}' is {values!r}, not {size[0]} finite numbers (one per channel)"
    # [0, 1] pixel units: a mean outside them, or a deviation above 1, no uint8 image can have
    if not all(0 <= value <= 1 for value in stats["mean"]):
        return f"'mean' is {stats['mean']!r}, not in [0, 1] (pixel units)"
    if not all(value <= 1 for value in stats["std"]):
        return f"'std' is {stats['std']!r}, not at most 1 (pixel units)"
    for key in ("val_index_sha", "data_digest"):
        if key in stats and not isinstance(stats[key], str):
            return f"'{key}' is {stats[key]!r}, not a hash"
    return None


def read_stats(path, dataset_cfg: dict) -> dict:
    """stats.json, refused unless it belongs to this config's dataset and split."""
    fix = f"delete it and rerun `python -m kdsweep stats --config <your config> --out {path}`"
    path = Path(path)
    if not path.exists() or path.is_dir():
        made = f"`python -m kdsweep stats --config <your config> --out {path if not path.is_dir() else path / 'stats.json'}`"
        raise KdsweepError(f"stats file {path} " + ("is a folder, not a stats file; pass the file " if path.is_dir()
                           else "does not exist; create it with ") + made + (" wrote" if path.is_dir() else ""))
    stats = io.read_json(path, "stats file", fix, required=_REQUIRED_STATS)
    if problem := _stats_types_problem(stats):
        raise KdsweepError(f"stats file {path} is damaged: {problem}; {fix}")
    if flat := [c for c, value in enumerate(stats["std"]) if value <= 0]:
        raise KdsweepError(f"stats file {path} gives channel {flat[0]} a standard deviation of {stats['std'][flat[0]]}: "
                           "the training images are constant in it, so they cannot be normalised; check the "
                           f"dataset files (and dataset.subset), then {fix}")
    expected = {"dataset": dataset_cfg["name"], "val_fraction": dataset_cfg["val_fraction"],
                "split_seed": dataset_cfg["split_seed"]}
    for key, value in expected.items():
        if stats[key] != value:
            raise KdsweepError(f"stats file {path} was computed for {key}={stats[key]!r}, not this config's "
                               f"{value!r}; {fix}")
    _, val_idx = split_indices(stats["n_train"] + stats["n_val"], dataset_cfg["val_fraction"], dataset_cfg["split_seed"])
    if index_sha(val_idx) != stats["val_index_sha"]:
        raise KdsweepError(f"stats file {path} was computed on a different validation split than this installation "
                           f"draws (val_index_sha differs); {fix}")
    return stats


# ---------------------------------------------------------------- splits on the device


@dataclass
class Split:
    images: torch.Tensor  # uint8 N x C x H x W
    labels: torch.Tensor  # int64 N

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    classes: list
    digest: str  # data_digest of the images and labels they were cut from

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_splits(dataset_cfg: dict, device="cpu", stats: dict | None = None) -> Splits:
    """train / val / test of a config's dataset section, on `device`; checked against `stats` when given."""
    data = load_configured(dataset_cfg)
    train_idx, val_idx = split_indices(len(data.train_labels), dataset_cfg["val_fraction"], dataset_cfg["split_seed"])
    if stats is not None:
        found = {"n_train": len(train_idx), "n_val": len(val_idx), "n_test": len(data.test_labels),
                 "image_size": data.image_size, "num_classes": data.num_classes, "val_index_sha": index_sha(val_idx)}
        for key, value in found.items():
            if stats[key] != value:
                raise KdsweepError(
                    f"the stats file was computed on a different copy of {data.name} ({key} {stats[key]} there, "
                    f"{value} here); delete it and rerun `python -m kdsweep stats --config <your config> --out <stats.json>`"
                )
    digest = data_digest(data)
    if stats is not None and stats.get("data_digest") not in (None, digest):
        raise KdsweepError(
            f"the {data.name} files in {data.source} are not those the stats file was computed from (data "
            f"digest {digest[:12]} here, {stats['data_digest'][:12]} there): point dataset.root at the files the "
            "study was run on, or, if the data changed on purpose, delete the study's data/stats.json and run again "
            "(every run then trains again; the old ones are kept aside)")

    def split(images, labels, idx=None):
        if idx is not None:
            images, labels = images[idx], labels[idx]
        return Split(images.to(device), labels.to(device))

    return Splits(
        train=split(data.train_images, data.train_labels, train_idx),
        val=split(data.train_images, data.train_labels, val_idx),
        test=split(data.test_images, data.test_labels),
        classes=data.classes,
        digest=digest,
    )


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
            generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches in order, or shuffled by a permutation drawn from `generator`."""
    n = len(labels)
    if generator is None:
        order = None
    else:
        order = torch.randperm(n, generator=generator, device=generator.device).to(labels.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield images[start:start + batch_size], labels[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield images[idx], labels[idx]
