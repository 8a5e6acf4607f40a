"""Datasets, the train/validation split, per-channel statistics and batched augmentation.

Every dataset is small enough to live whole in memory, and on the job's device, as uint8
N x C x H x W tensors (as in airbench): a GPU job never waits for CPU loader workers, and the
augmentation runs batched on the device.

Datasets (registry `DATASETS`, name -> loader(root, download=False) -> Dataset):
- cifar10, cifar100: torchvision's files under dataset.root (cifar-10-batches-py/,
  cifar-100-python/). Jobs never download; `download()` (the `download` command) does, through
  torchvision, which verifies the archive's and the files' md5 checksums.
- digits: scikit-learn's bundled 1,797 handwritten digits (8x8, values 0..16), scaled to
  0..255 and replicated to 3 channels. Kept at their native 8x8: the offline CPU demo then
  trains 10-16x faster than at 32x32 (measured, see DESIGN.md). Its test set is fixed by the
  dataset, not by the study: every 5th image (index 0, 5, 10, ...) is a test image, 360 of them;
  the other 1,437 are the training set.

The training set is split into train/validation by a seeded permutation (`split_indices`);
the normalisation statistics are computed on the train split only and stored in stats.json
(`write_stats` / `read_stats`), with a hash of the validation indices so that no job can use
statistics of another split.

Augmentation (`Augment`) follows the seed's protocol order: zero pad -> horizontal flip ->
rotation (nearest, zero fill) -> random crop back to the input size. Each step equals
torchvision.transforms.v2.functional's per-image op exactly (tests/test_data.py checks this).
"""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10, CIFAR100

from . import io
from .errors import KdsweepError
from .runtime import to_device

# A property of the digits data set (its fixed test split), not of the study protocol.
DIGITS_TEST_EVERY = 5


@dataclass
class Dataset:
    """A whole dataset in memory: uint8 images N x C x H x W, int64 labels."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list
    source: str  # where it was read from, for messages

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> list:
        return list(self.train_images.shape[1:])


def _download_hint(folder) -> str:
    return f"run `python -m kdsweep download --config <your config>` on a node with internet access to fetch it into {folder}"


def _presence_only(cls):
    """torchvision's CIFAR class with its md5 checks reduced to "the file exists".

    Hashing 170 MB at the start of every job is waste (the `download` command already
    verified the checksums), and it would reject the small synthetic files the tests write.
    torchvision checks md5 in two places (`_check_integrity` and `_load_meta`); both go
    through `check_integrity(path, md5)`, which only tests presence when md5 is None.
    """
    return type(
        f"Unverified{cls.__name__}",
        (cls,),
        {
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )


def _load_cifar(cls, name, root, download=False) -> Dataset:
    folder = Path(root) / cls.base_folder
    if download:
        try:
            cls(root, train=True, download=True)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise KdsweepError(
                f"downloading {name} into {folder} failed ({err}); check this node's internet access, "
                f"or copy a verified {cls.base_folder} folder into {root}"
            ) from err
    files = [file for file, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [file for file in files if not (folder / file).is_file()]
    if missing:
        raise KdsweepError(f"dataset {name} is missing {folder / missing[0]}; {_download_hint(folder)}")
    unverified = _presence_only(cls)
    try:
        train, test = unverified(root, train=True), unverified(root, train=False)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
        raise KdsweepError(
            f"the {name} files in {folder} are unreadable ({err.__class__.__name__}); delete {folder} and "
            f"{_download_hint(folder)}"
        ) from err

    def tensors(split):
        # torchvision stores H x W x C for PIL; we want N x C x H x W.
        images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(split.targets, dtype=torch.int64)

    return Dataset(name, *tensors(train), *tensors(test), list(train.classes), str(folder))


def _digits_arrays():
    """(pixels N x 64 in 0..16, labels N) of scikit-learn's bundled digits.

    Read from the package's own file (datasets/data/digits.csv.gz: 64 pixels then the label
    per row, which is what load_digits parses) without importing scikit-learn: the import
    costs more than a second, paid by every job of a digits study. load_digits where the
    file is not where this expects it (tests check both give the same arrays).
    """
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        return load_digits(return_X_y=True)
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def _load_digits(root=None, download=False) -> Dataset:
    pixels, target = _digits_arrays()
    maximum = 16  # the digits' pixel range is 0..16
    images = np.rint(pixels.reshape(-1, 8, 8) * (255 / maximum)).astype(np.uint8)
    images = torch.from_numpy(images)[:, None].expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(target).to(torch.int64)
    test = torch.arange(len(labels)) % DIGITS_TEST_EVERY == 0
    classes = [str(c) for c in np.unique(target)]
    return Dataset("digits", images[~test], labels[~test], images[test], labels[test], classes,
                   "scikit-learn's bundled copy (sklearn.datasets.load_digits)")


# name -> loader(root, download=False) -> Dataset; new datasets are added here (and to the schema's enum).
DATASETS: dict[str, Callable[..., Dataset]] = {
    "cifar10": partial(_load_cifar, CIFAR10, "cifar10"),
    "cifar100": partial(_load_cifar, CIFAR100, "cifar100"),
    "digits": _load_digits,
}


def load_dataset(name: str, root) -> Dataset:
    if name not in DATASETS:
        raise KdsweepError(f"unknown dataset '{name}'; set dataset.name to one of {', '.join(DATASETS)}")
    return DATASETS[name](root)


def download(name: str, root) -> str:
    """Fetch and verify (md5) a dataset into root, a no-op for bundled data; returns where it now is."""
    if name not in DATASETS:
        raise KdsweepError(f"unknown dataset '{name}'; set dataset.name to one of {', '.join(DATASETS)}")
    return DATASETS[name](root, download=True).source


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
    }


def write_stats(path, dataset_cfg: dict) -> dict:
    stats = compute_stats(dataset_cfg)
    io.write_json(path, stats)
    return stats


STATS_FIELDS = ("dataset", "val_fraction", "split_seed", "n_train", "n_val", "n_test", "num_classes",
                "image_size", "mean", "std", "val_index_sha")


def read_stats(path, dataset_cfg: dict) -> dict:
    """stats.json, refused unless it belongs to this config's dataset and split."""
    fix = f"`python -m kdsweep stats --config <your config> --out {path}`"
    path = Path(path)
    if not path.is_file():
        raise KdsweepError(f"stats file {path} does not exist; create it with {fix}")
    try:
        stats = io.read_json(path)
        absent = [key for key in STATS_FIELDS if key not in stats]
    except (OSError, ValueError, TypeError) as err:
        raise KdsweepError(f"stats file {path} is unreadable ({err.__class__.__name__}); delete it and rerun {fix}") from err
    if absent:
        raise KdsweepError(f"stats file {path} lacks '{absent[0]}'; delete it and rerun {fix}")
    expected = {"dataset": dataset_cfg["name"], "val_fraction": dataset_cfg["val_fraction"],
                "split_seed": dataset_cfg["split_seed"]}
    for key, value in expected.items():
        if stats[key] != value:
            raise KdsweepError(
                f"stats file {path} was computed for {key}={stats[key]!r}, not this config's {value!r}; "
                f"delete it and rerun {fix}"
            )
    _, val_idx = split_indices(stats["n_train"] + stats["n_val"], dataset_cfg["val_fraction"], dataset_cfg["split_seed"])
    if index_sha(val_idx) != stats["val_index_sha"]:
        raise KdsweepError(
            f"stats file {path} was computed on a different validation split than this installation draws "
            f"(val_index_sha differs); delete it and rerun {fix}"
        )
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

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_splits(dataset_cfg: dict, device="cpu", stats: dict | None = None) -> Splits:
    """train / val / test of a config's dataset section, on `device`; checked against `stats` when given."""
    data = load_configured(dataset_cfg)
    train_idx, val_idx = split_indices(len(data.train_labels), dataset_cfg["val_fraction"], dataset_cfg["split_seed"])
    if stats is not None:
        found = {"n_train": len(train_idx), "n_val": len(val_idx), "n_test": len(data.test_labels),
                 "image_size": data.image_size, "val_index_sha": index_sha(val_idx)}
        for key, value in found.items():
            if stats[key] != value:
                raise KdsweepError(
                    f"the stats file was computed on a different copy of {data.name} ({key} {stats[key]} there, "
                    f"{value} here); delete it and rerun `python -m kdsweep stats --config <your config> --out <stats.json>`"
                )

    def split(images, labels, idx=None):
        if idx is not None:
            images, labels = images[idx], labels[idx]
        return Split(images.to(device), labels.to(device))

    return Splits(
        train=split(data.train_images, data.train_labels, train_idx),
        val=split(data.train_images, data.train_labels, val_idx),
        test=split(data.test_images, data.test_labels),
        classes=data.classes,
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


# ---------------------------------------------------------------- augmentation
# Batched versions of torchvision.transforms.v2.functional's pad / horizontal_flip / rotate / crop,
# equal to them image by image.


def pad_images(images: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(images, [pad] * 4) if pad else images


def flip_images(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def rotate_images(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its angle in degrees (counter-clockwise), nearest neighbour, zero fill.

    torchvision's rotate_image (expand=False, center=None) with its float math replicated
    (float64 matrix from the angle mod 360, float32 grid in pixel units, normalised after the
    matrix product), so that nearest-neighbour rounding picks the same pixel even where a sample
    point falls on a pixel boundary (e.g. 90 degrees on a non-square image). Everything is
    computed where the angles and the images are: nothing is copied from the host.
    """
    n, _, h, w = images.shape
    device = images.device
    # torchvision: matrix = _get_inverse_affine_matrix(center=[0, 0], -angle, ...) with zero
    # translate/shear and scale 1, i.e. [cos, sin, 0, -sin, cos, 0] of radians(-(angle % 360)),
    # in float64 (torchvision: Python floats).
    rad = torch.deg2rad(-torch.remainder(angles.to(device, torch.float64), 360))
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([cos, sin, zero, -sin, cos, zero], dim=1).to(torch.float32).view(n, 2, 3)
    # torchvision's _affine_grid, batched.
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    # A divisor tensor filled on the device (a Python scalar divisor would be a multiplication
    # by its reciprocal on CUDA, one bit off torchvision's division).
    half_size = torch.stack([torch.full((), 0.5 * w, device=device), torch.full((), 0.5 * h, device=device)])
    scaled = theta.transpose(1, 2).div_(half_size)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(scaled).view(n, h, w, 2)
    floating = images.is_floating_point()
    out = F.grid_sample(images if floating else images.float(), grid, mode="nearest",
                        padding_mode="zeros", align_corners=False)
    return out if floating else out.round_().to(images.dtype)


def crop_images(images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """images[i, :, tops[i]:tops[i]+height, lefts[i]:lefts[i]+width] for every i, in one gather."""
    n, c = images.shape[:2]
    device = images.device
    rows = tops.to(device).view(n, 1, 1, 1) + torch.arange(height, device=device).view(1, 1, height, 1)
    cols = lefts.to(device).view(n, 1, 1, 1) + torch.arange(width, device=device).view(1, 1, 1, width)
    return images[torch.arange(n, device=device).view(n, 1, 1, 1), torch.arange(c, device=device).view(1, c, 1, 1), rows, cols]


class AugmentParams(NamedTuple):
    """The random draws of `Augment` for a run of images, one entry per image, on one device."""

    flip: torch.Tensor    # bool, per image
    angles: torch.Tensor  # float64 degrees
    tops: torch.Tensor    # int64 crop offsets into the padded image
    lefts: torch.Tensor

    def to(self, device) -> "AugmentParams":
        """On `device`, copied asynchronously (a training loop moves a whole epoch's draws at once)."""
        return AugmentParams(*(to_device(field, device) for field in self))

    def __getitem__(self, index) -> "AugmentParams":
        if isinstance(index, int):  # NamedTuple field access stays as it was
            return tuple.__getitem__(self, index)
        return AugmentParams(*(field[index] for field in self))


class Augment:
    """pad -> horizontal flip -> rotation -> random crop back to the input size, on whole batches.

    `sample` draws every random number from the generator passed in (in a fixed order: flips,
    angles, tops, lefts), so a training loop that checkpoints the generator's state resumes
    with the same augmentations; a CPU generator gives the same draws for any device. `apply`
    runs on the images' device and returns float [0,1].
    """

    def __init__(self, pad: int, flip_p: float, rotation_degrees: float):
        self.pad, self.flip_p, self.rotation_degrees = int(pad), float(flip_p), float(rotation_degrees)

    @classmethod
    def from_config(cls, augmentation_cfg: dict) -> "Augment":
        return cls(augmentation_cfg["pad"], augmentation_cfg["flip_p"], augmentation_cfg["rotation_degrees"])

    def sample(self, batch_size: int, generator: torch.Generator) -> AugmentParams:
        kw = {"generator": generator, "device": generator.device}
        flip = torch.rand(batch_size, **kw) < self.flip_p
        angles = (torch.rand(batch_size, dtype=torch.float64, **kw) * 2 - 1) * self.rotation_degrees
        tops = torch.randint(0, 2 * self.pad + 1, (batch_size,), **kw)
        lefts = torch.randint(0, 2 * self.pad + 1, (batch_size,), **kw)
        return AugmentParams(flip, angles, tops, lefts)

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """uint8 N x C x H x W -> augmented float N x C x H x W in [0,1].

        With `params` already on the images' device (`AugmentParams.to`) nothing is copied from
        the host, so a GPU's queue never drains here.
        """
        h, w = images.shape[-2:]
        device = images.device
        if params.flip.device != device:
            params = params.to(device)
        x = pad_images(images, self.pad)
        x = flip_images(x, params.flip)
        if self.rotation_degrees:
            x = rotate_images(x, params.angles)
        x = crop_images(x, params.tops, params.lefts, h, w)
        return x.float().div_(255)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.sample(len(images), generator))

    def __repr__(self) -> str:
        return f"Augment(pad={self.pad}, flip_p={self.flip_p}, rotation_degrees={self.rotation_degrees})"
