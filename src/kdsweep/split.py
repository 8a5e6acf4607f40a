"""The split of a study's dataset: seeded train/validation split, per-channel statistics, splits on the device.

The training set is split into train/validation by a seeded permutation (`split_indices`);
the normalisation statistics are computed on the train split only and stored in stats.json
(`write_stats` / `read_stats`), with a hash of the validation indices so that no job can use
statistics of another split, and a digest of the images and labels themselves (`data_digest`), so
that no job uses other files than the study's, whatever their path. Every split lives whole on the job's device as uint8
N x C x H x W tensors (as in airbench): a GPU job never waits for CPU loader workers.

An imagefolder dataset (kdsweep.imagefolder) is too large for that. Its stats job makes one
streaming pass over every file (`imagefolder_stats`): each file's sha256 (the content digest), its
decoding (a damaged file is named, or with dataset.skip_damaged left out and counted), and the sums
of its evaluation transform's pixels, from which the training split's statistics follow exactly
(integer sums: the same for any number of workers). A second pass decodes the validation and test
images once, through the evaluation transform, into two uint8 arrays beside stats.json
(stats.val.npy, stats.test.npy): every epoch's validation and every attack reads them memory-mapped,
so they are the same pixels everywhere, never decoded again, and never held whole in memory. Its
training split stays a list of files (`Files`), decoded as it streams (kdsweep.sources).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import imagefolder, io
from .datasets import Dataset, load_dataset
from .errors import KdsweepError

IMAGEFOLDER = "imagefolder"
# at most this many damaged files named in the sentence that stops the stats job (stats.json names all it skips)
NAMED = 3


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


def write_stats(path, dataset_cfg: dict, config: dict | None = None, log=print) -> dict:
    """stats.json (and, for an imagefolder dataset, its validation and test arrays beside it; `config`: the
    whole config, whose imagefolder and runtime sections that needs)."""
    if dataset_cfg["name"] == IMAGEFOLDER:
        return imagefolder_stats(path, config, log)
    stats = compute_stats(dataset_cfg)
    io.write_json(path, stats)
    return stats


# ---------------------------------------------------------------- an imagefolder dataset's statistics


def _checked(listings, pipeline, workers, log, what):
    """Every file of the listings, one after another, through the stats job's reader
    (kdsweep.streaming.CheckedImages) in one DataLoader: yields (listing's position, sha256, image or
    Damaged) per file, in order."""
    from .streaming import CheckedImages, collate_checked, loader

    parts = [CheckedImages(listing, pipeline) for listing in listings]
    owner = np.repeat(np.arange(len(parts)), [len(part) for part in parts])
    total, done, started = len(owner), 0, time.perf_counter()
    for shas, items in loader(torch.utils.data.ConcatDataset(parts), batch_size=64, workers=workers,
                              collate=collate_checked):
        for sha, item in zip(shas, items):
            yield int(owner[done]), sha, item
            done += 1
        if done % 10_000 < len(items) or done == total:
            log(f"{what}: {done} of {total} images read ({time.perf_counter() - started:.0f} s)")


def _first_pass(train, test, pipeline, workers, log):
    """Every file of both folders read once: ([train sha256s, test sha256s], the training files' pixel sums
    and sums of squares per channel (int64 N x 6), [train's, test's (index, Damaged)])."""
    shas, damaged = [[], []], [[], []]
    sums = torch.zeros(len(train), 6, dtype=torch.int64)
    for part, sha, item in _checked([train, test], pipeline, workers, log, "checking every image file"):
        index = len(shas[part])
        shas[part].append(sha)
        if isinstance(item, Exception):
            damaged[part].append((index, item))
        elif part == 0:
            pixels = item.to(torch.int64)
            sums[index, :3] = pixels.sum(dim=(1, 2))
            sums[index, 3:] = pixels.square().sum(dim=(1, 2))
    return shas, sums, damaged


def _write_arrays(paths, listings, pipeline, workers, log):
    """The evaluation transform of every file of each listing, as a uint8 N x 3 x S x S .npy per listing,
    written in order as the files are decoded (each whole or not at all)."""
    stream = _checked(listings, pipeline, workers, log, "decoding the validation and test images")

    def writer(part, n):
        def write(handle):
            shape = (n, *pipeline.eval_size)
            np.lib.format.write_array_header_1_0(handle, {"descr": "|u1", "fortran_order": False, "shape": shape})
            for _ in range(n):
                owner, _, item = next(stream)
                assert owner == part
                if isinstance(item, Exception):
                    raise KdsweepError(f"the image file {item.name} cannot be decoded ({item.reason}) though it "
                                       "could a moment ago: it changed while the stats job ran; run it again")
                handle.write(item.numpy().tobytes())
        return write

    for part, (path, listing) in enumerate(zip(paths, listings)):
        io.write_stream(path, writer(part, len(listing)))


def _named(damaged) -> str:
    named = "; ".join(f"{imagefolder.shown(err.name)} ({err.reason})" for err in damaged[:NAMED])
    return named + (f"; and {len(damaged) - NAMED} more" if len(damaged) > NAMED else "")


def _damaged_sentence(damaged, total, root) -> str:
    return (f"{len(damaged)} of the {total} image files under {root} cannot be decoded: {_named(damaged)}; replace "
            "or delete them, or set dataset.skip_damaged: true to leave them out (stats.json and every run's record "
            "then count them)")


def imagefolder_stats(path, config: dict, log=print) -> dict:
    """The stats job of an imagefolder dataset (module docstring): stats.json and its two arrays."""
    from .streaming import Pipeline, workers

    started = time.perf_counter()
    dataset_cfg = config["dataset"]
    pipeline = Pipeline.from_config(config[IMAGEFOLDER])
    loaders = workers(config["runtime"]["loader_workers"])
    classes, train, test = imagefolder.listings(dataset_cfg)
    if train.not_images or test.not_images:
        others = train.not_images + test.not_images
        log(f"left out {len(others)} files that are not images by their extension "
            f"({', '.join(imagefolder.IMAGE_EXTENSIONS)}), e.g. {others[0]}")
    (train_sha, test_sha), sums, (train_bad, test_bad) = _first_pass(train, test, pipeline, loaders, log)
    damaged = [err for _, err in train_bad + test_bad]
    if damaged and not dataset_cfg["skip_damaged"]:
        raise KdsweepError(_damaged_sentence(damaged, len(train) + len(test), dataset_cfg["root"]))
    if damaged:
        log(f"left out {len(damaged)} of the {len(train) + len(test)} image files under {dataset_cfg['root']}, which "
            f"cannot be decoded (dataset.skip_damaged): {_named(damaged)}")
    keep_train = np.ones(len(train), dtype=bool)
    keep_train[[index for index, _ in train_bad]] = False
    keep_test = np.ones(len(test), dtype=bool)
    keep_test[[index for index, _ in test_bad]] = False
    train, test = train.take(keep_train), test.take(keep_test)
    train_sha = [sha for sha, keep in zip(train_sha, keep_train) if keep]
    test_sha = [sha for sha, keep in zip(test_sha, keep_test) if keep]
    if not len(train) or not len(test):
        raise KdsweepError(f"no decodable image is left in the imagefolder {'training' if not len(train) else 'test'} "
                           f"folder under {dataset_cfg['root']}; check the files")
    train_idx, val_idx = split_indices(len(train), dataset_cfg["val_fraction"], dataset_cfg["split_seed"])
    # integer sums over the training split's files: exact, whatever the order or the workers
    total = sums[torch.from_numpy(keep_train)][train_idx].sum(dim=0).to(torch.float64)
    count = len(train_idx) * pipeline.eval_crop ** 2
    mean = total[:3] / count
    std = (total[3:] / count - mean.square()).clamp_min(0).sqrt()
    val_path, test_path = imagefolder.arrays_of(path)
    _write_arrays((val_path, test_path), (train.take(val_idx.numpy()), test), pipeline, loaders, log)
    stats = {
        "dataset": IMAGEFOLDER,
        "val_fraction": dataset_cfg["val_fraction"],
        "split_seed": dataset_cfg["split_seed"],
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "n_test": len(test),
        "num_classes": len(classes),
        "image_size": pipeline.eval_size,
        "mean": (mean / 255).tolist(),
        "std": (std / 255).tolist(),
        "val_index_sha": index_sha(val_idx),
        "data_digest": imagefolder.content_digest(classes, train, test, train_sha, test_sha),
        "listing_digest": imagefolder.listing_digest(classes, train, test),
        "classes": classes,
        "folders": {"train": dataset_cfg["train"], "test": dataset_cfg["test"]},
        "pipeline": {"eval_resize": pipeline.eval_resize, "eval_crop": pipeline.eval_crop},
        "skip_damaged": dataset_cfg["skip_damaged"],
        "skipped": [{"file": err.name, "reason": err.reason} for err in damaged],
        "not_images": len(train.not_images) + len(test.not_images),
        "arrays": {"val": val_path.name, "test": test_path.name},
        "seconds": round(time.perf_counter() - started, 3),
    }
    io.write_json(path, stats)
    log(f"the stats job read {len(train_sha) + len(test_sha) + len(damaged)} image files in {stats['seconds']:.1f} s "
        f"({loaders} loader workers)")
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


def read_stats(path, dataset_cfg: dict, imagefolder_cfg: dict | None = None) -> dict:
    """stats.json, refused unless it belongs to this config's dataset and split (and, for an imagefolder
    dataset, its folders and evaluation transform: imagefolder_cfg, the config's imagefolder section)."""
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
    if dataset_cfg["name"] == IMAGEFOLDER:
        _check_imagefolder_stats(path, stats, dataset_cfg, imagefolder_cfg, fix)
    return stats


_IMAGEFOLDER_STATS = ("listing_digest", "classes", "folders", "pipeline", "skip_damaged", "skipped", "arrays")


def _check_imagefolder_stats(path, stats, dataset_cfg, imagefolder_cfg, fix):
    """An imagefolder's stats.json is of this config's folders, damaged-file policy and evaluation transform,
    and its arrays are there; their paths are added to `stats` (array_paths)."""
    if missing := [key for key in _IMAGEFOLDER_STATS if key not in stats]:
        raise KdsweepError(f"stats file {path} lacks '{missing[0]}', which an imagefolder dataset's holds; {fix}")
    expected = {"folders": {"train": dataset_cfg["train"], "test": dataset_cfg["test"]},
                "skip_damaged": dataset_cfg["skip_damaged"]}
    if imagefolder_cfg is not None:
        expected["pipeline"] = {key: imagefolder_cfg[key] for key in ("eval_resize", "eval_crop")}
    for key, value in expected.items():
        if stats[key] != value:
            raise KdsweepError(f"stats file {path} was computed for {key} {stats[key]!r}, not this config's {value!r}; "
                               f"{fix}")
    arrays = stats["arrays"]
    if not (isinstance(arrays, dict) and all(isinstance(arrays.get(key), str) for key in ("val", "test"))):
        raise KdsweepError(f"stats file {path} names its arrays as {arrays!r}, not {{val, test}} file names; {fix}")
    stats["array_paths"] = {key: str(Path(path).parent / Path(arrays[key]).name) for key in ("val", "test")}


def study_stats(run_dir, config: dict) -> dict | None:
    """The stats of the study a run folder of the study layout (results/<study>/runs/<role>/<run>) belongs
    to, for a job that reads an imagefolder dataset's test images (their array lies beside them); None for
    any other dataset, whose jobs read the test images from its files."""
    dataset_cfg = config["dataset"]
    if dataset_cfg["name"] != IMAGEFOLDER:
        return None
    run_dir = Path(run_dir)
    if run_dir.parent.parent.name != "runs":
        raise KdsweepError(f"{run_dir} is not a run folder of a study (results/<study>/runs/<role>/<run>), where the "
                           "test images of an imagefolder dataset are found (the study's data/stats.test.npy); "
                           "give a run folder of the study")
    return read_stats(run_dir.parent.parent.parent / "data" / "stats.json", dataset_cfg, config[IMAGEFOLDER])


# ---------------------------------------------------------------- splits on the device


@dataclass
class Split:
    images: torch.Tensor  # uint8 N x C x H x W
    labels: torch.Tensor  # int64 N

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Files:
    """A split of an imagefolder dataset that stays on disk: its files (decoded as they stream,
    kdsweep.sources) and their labels."""

    listing: imagefolder.Listing
    labels: torch.Tensor  # int64 N, on the job's device

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Splits:
    train: Split | Files
    val: Split
    test: Split
    classes: list
    digest: str  # data_digest of the images and labels they were cut from

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def train_geometry(splits: Splits, config: dict) -> tuple[int, int]:
    """(channels, side) of the images a run trains on: an in-memory split's, an imagefolder's training crop."""
    if isinstance(splits.train, Files):
        return 3, config[IMAGEFOLDER]["train_crop"]
    return splits.train.images.shape[1], splits.train.images.shape[-1]


def _mapped(path, shape, what: str) -> torch.Tensor:
    """A uint8 array the stats job wrote, memory-mapped (pages read as batches need them, copy-on-write)."""
    fix = "delete the study's data/stats.json and run the stats job again"
    try:
        array = np.load(path, mmap_mode="c")
    except FileNotFoundError:
        raise KdsweepError(f"the {what} array {path} does not exist; {fix}") from None
    except (OSError, ValueError) as err:
        raise KdsweepError(f"the {what} array {path} cannot be read ({err}); {fix}") from err
    if array.dtype != np.uint8 or tuple(array.shape) != tuple(shape):
        raise KdsweepError(f"the {what} array {path} holds {array.dtype} of shape {tuple(array.shape)}, not uint8 of "
                           f"{tuple(shape)}; {fix}")
    return torch.from_numpy(array)


def _imagefolder_splits(dataset_cfg: dict, device, stats: dict | None) -> Splits:
    """An imagefolder dataset's splits: its training files, and the stats job's validation and test arrays
    (module docstring), once the files are those the stats were made from (kdsweep.imagefolder)."""
    if stats is None or "array_paths" not in stats:
        raise KdsweepError("an imagefolder dataset is read with its stats file (data/stats.json of the study), "
                           "which names its damaged files and holds its validation and test images; pass it")
    classes, train, test = imagefolder.listings(dataset_cfg)
    skipped = [entry["file"] for entry in stats["skipped"]]
    train, test = imagefolder.without(train, skipped), imagefolder.without(test, skipped)
    found = imagefolder.listing_digest(classes, train, test)
    if found != stats["listing_digest"]:
        raise KdsweepError(
            f"the image files under {dataset_cfg['root']} ({len(train)} training and {len(test)} test images now) are "
            f"not those the stats file was computed from (listing digest {found[:12]} here, "
            f"{stats['listing_digest'][:12]} there: a file added, removed, renamed or resized): point dataset.root at "
            "the files the study was run on, or, if the data changed on purpose, delete the study's data/stats.json "
            "and run again (every run then trains again; the old ones are kept aside)")
    train_idx, val_idx = split_indices(len(train), dataset_cfg["val_fraction"], dataset_cfg["split_seed"])
    size = stats["image_size"]
    val_labels = torch.from_numpy(train.labels[val_idx.numpy()])
    return Splits(
        train=Files(train.take(train_idx.numpy()), torch.from_numpy(train.labels[train_idx.numpy()]).to(device)),
        # on the host, memory-mapped: each batch goes to the device as it is evaluated
        val=Split(_mapped(stats["array_paths"]["val"], (len(val_idx), *size), "validation"), val_labels.to(device)),
        test=Split(_mapped(stats["array_paths"]["test"], (len(test), *size), "test"),
                   torch.from_numpy(test.labels).to(device)),
        classes=classes,
        digest=stats["data_digest"],
    )


def load_splits(dataset_cfg: dict, device="cpu", stats: dict | None = None) -> Splits:
    """train / val / test of a config's dataset section, on `device`; checked against `stats` when given
    (an imagefolder dataset's always are: see _imagefolder_splits)."""
    if dataset_cfg["name"] == IMAGEFOLDER:
        return _imagefolder_splits(dataset_cfg, device, stats)
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
