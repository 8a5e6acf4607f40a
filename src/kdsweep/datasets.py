"""The datasets a study can name (`dataset.name`), read whole into memory as uint8 tensors.

Registry `DATASETS`, name -> `Entry` (its one line, its images' geometry, its loader(root, download=False)
-> Dataset); config.schema() takes the names of `dataset.name` from it, and `python -m kdsweep datasets`
lists it:
- cifar10, cifar100: torchvision's files under dataset.root (cifar-10-batches-py/,
  cifar-100-python/). Jobs never download; `download()` (the `download` command) does, through
  torchvision, which verifies the archive's and the files' md5 checksums. Jobs read the files as
  torchvision does (pickles of uint8 rows of 3 x 32 x 32 pixels and their labels), but through an
  unpickler that makes nothing a CIFAR file does not hold (`CifarUnpickler`: dicts, lists, strings,
  numbers and numpy arrays; a planted file that would run code is refused unread), each checked
  against that format: images of the right type and size, as many labels as images, every label
  one of the dataset's classes, the meta file naming as many classes as the dataset has. A file
  that is not so (cut short, garbled, another file) is one sentence naming it and the fix.
- digits: scikit-learn's bundled 1,797 handwritten digits (8x8, values 0..16), scaled to
  0..255 and replicated to 3 channels. Kept at their native 8x8: the offline CPU demo then
  trains 10-16x faster than at 32x32. Its test set is fixed by the dataset, not by the study:
  every 5th image (index 0, 5, 10, ...) is a test image, 360 of them; the other 1,437 are the
  training set. Its file is checked too: 1,797 rows of 64 pixels in 0..16 and a label in 0..9.

- imagefolder: the user's own images under dataset.root, never read whole: kdsweep.imagefolder lists
  them, kdsweep.streaming decodes them (its entry has no loader: STREAMED).

torch and torchvision are imported when a dataset is read, not with this module: the workflow
asks `download_folder` for a dataset's folder in every snakemake process, also in the two of each
cluster job, where importing torchvision costs seconds.
"""

from __future__ import annotations

import importlib.util
import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .errors import KdsweepError

if TYPE_CHECKING:
    import torch

# A property of the digits data set (its fixed test split), not of the study protocol.
DIGITS_TEST_EVERY = 5

# The folder under dataset.root of each torchvision class read here: its `base_folder`, written out
# so that download_folder does not import torchvision (tests/test_datasets.py checks them against it).
CIFAR_FOLDERS = {"CIFAR10": "cifar-10-batches-py", "CIFAR100": "cifar-100-python"}
CIFAR_CLASSES = {"CIFAR10": 10, "CIFAR100": 100}
CIFAR_SHAPE = (3, 32, 32)  # one image: a row of 3072 bytes, channel-major
# scikit-learn's digits: images, pixel maximum, classes (a property of its file)
DIGITS_IMAGES, DIGITS_MAXIMUM, DIGITS_CLASSES = 1797, 16, 10
DIGITS_FIX = "reinstall scikit-learn (pip install --force-reinstall scikit-learn)"


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


def _torchvision(name):
    from torchvision import datasets

    return getattr(datasets, name)


class Refused(pickle.UnpicklingError):
    """An object a pickle names that no CIFAR file holds."""


class CifarUnpickler(pickle.Unpickler):
    """The pickles of torchvision's CIFAR files, made of what they hold and nothing else: dicts, lists,
    strings, bytes and numbers, which pickle builds without naming any Python object, and numpy arrays,
    which it builds by calling the three objects of ALLOWED (numpy 1's name of its reconstructor, which the
    files were written with, and numpy 2's). Any other object a pickle names, such as a function it would
    call, is refused before it is looked up: reading a planted file runs no code of its choosing."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise Refused(f"{module}.{name}")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own reconstructor, under any numpy version
        return getattr(np, name)

    def persistent_load(self, pid):
        raise Refused(f"a persistent id ({pid!r})")


def _unpickle(path: Path, fix: str):
    """The object a CIFAR file holds (read as torchvision reads it: Python 2 pickles, latin1), made by
    CifarUnpickler."""
    try:
        with open(path, "rb") as handle:
            return CifarUnpickler(handle, encoding="latin1").load()
    except OSError as err:
        raise KdsweepError(f"dataset file {path} cannot be read ({err.strerror}); {fix}") from err
    except Refused as err:
        raise KdsweepError(f"dataset file {path} names {err}, which no CIFAR file holds and kdsweep never loads "
                           f"(unpickling it could run code); {fix}") from None
    except Exception as err:  # noqa: BLE001 - a damaged pickle raises nearly anything (EOFError, KeyError, ...)
        raise KdsweepError(f"dataset file {path} is unreadable: damaged, cut short or not a CIFAR file "
                           f"({err.__class__.__name__}); {fix}") from err


def _cifar_batch(path: Path, labels_key: str, num_classes: int, fix: str):
    """(uint8 images N x 3072, int64 labels N) of one CIFAR batch file, checked against the format."""
    entry = _unpickle(path, fix)
    if not isinstance(entry, dict):
        raise KdsweepError(f"dataset file {path} holds a {type(entry).__name__}, not a CIFAR batch (a mapping of "
                           f"'data' and '{labels_key}'); {fix}")
    missing = [key for key in ("data", labels_key) if key not in entry]
    if missing:
        raise KdsweepError(f"dataset file {path} lacks '{missing[0]}', which every CIFAR batch holds; {fix}")
    data, row = entry["data"], int(np.prod(CIFAR_SHAPE))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == row):
        found = (f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                 else f"a {type(data).__name__}")
        raise KdsweepError(f"dataset file {path} holds its images as {found}, not rows of {row} bytes (uint8, "
                           f"{' x '.join(map(str, CIFAR_SHAPE))}); {fix}")
    try:
        labels = np.asarray(entry[labels_key])
    except (TypeError, ValueError):
        labels = np.asarray([])
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise KdsweepError(f"dataset file {path} holds its '{labels_key}' as {labels.dtype} of shape {labels.shape}, "
                           f"not one whole number per image; {fix}")
    if len(labels) != len(data):
        raise KdsweepError(f"dataset file {path} holds {len(data)} images but {len(labels)} labels; {fix}")
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.size:
        raise KdsweepError(f"dataset file {path} holds the label {int(outside[0])}, outside the classes 0 to "
                           f"{num_classes - 1} of its dataset; {fix}")
    return data, labels.astype(np.int64)


def _cifar_classes(path: Path, key: str, num_classes: int, fix: str) -> list:
    meta = _unpickle(path, fix)
    classes = meta.get(key) if isinstance(meta, dict) else None
    if not (isinstance(classes, list) and len(classes) == num_classes and all(isinstance(c, str) for c in classes)):
        found = f"{len(classes)} class names" if isinstance(classes, list) else "no list of class names"
        raise KdsweepError(f"dataset file {path} holds {found} under '{key}', not the {num_classes} of its "
                           f"dataset; {fix}")
    return classes


def _load_cifar(class_name, name, root, download=False) -> Dataset:
    """torchvision's CIFAR files under root, read and checked here (not by torchvision's class: its md5
    check would hash 170 MB at the start of every job, which the `download` command already did, and it
    reports a damaged file as an exception that names none)."""
    import torch

    cls = _torchvision(class_name)
    folder = Path(root) / CIFAR_FOLDERS[class_name]
    if download:
        try:
            cls(root, train=True, download=True)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise KdsweepError(
                f"downloading {name} into {folder} failed ({err}); check this node's internet access, "
                f"or copy a verified {folder.name} folder into {root}"
            ) from err
    files = [file for file, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [file for file in files if not (folder / file).is_file()]
    if missing:
        raise KdsweepError(f"dataset {name} is missing {folder / missing[0]}; {_download_hint(folder)}")
    fix = f"delete {folder} and {_download_hint(folder)}"
    num_classes = CIFAR_CLASSES[class_name]
    labels_key = "labels" if class_name == "CIFAR10" else "fine_labels"
    classes = _cifar_classes(folder / cls.meta["filename"], cls.meta["key"], num_classes, fix)

    def split(file_list, what):
        parts = [_cifar_batch(folder / file, labels_key, num_classes, fix) for file, _ in file_list]
        data = np.concatenate([images for images, _ in parts])
        if len(data) == 0:
            raise KdsweepError(f"the {name} {what} files in {folder} hold no images; {fix}")
        images = torch.from_numpy(data.reshape(-1, *CIFAR_SHAPE))  # channel-major rows: N x C x H x W
        return images, torch.from_numpy(np.concatenate([labels for _, labels in parts]))

    return Dataset(name, *split(cls.train_list, "training"), *split(cls.test_list, "test"), list(classes), str(folder))


def _digits_file() -> Path | None:
    """scikit-learn's own digits file (datasets/data/digits.csv.gz: 64 pixels then the label per row,
    which is what load_digits parses), found without importing scikit-learn; None where it is not
    where this expects it."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    return path if path is not None and path.is_file() else None


def _digits_arrays():
    """(pixels N x 64 in 0..16, labels N) of scikit-learn's bundled digits, checked.

    Read from the package's own file without importing scikit-learn: the import costs more
    than a second, paid by every job of a digits study. load_digits where the file is not
    where this expects it (tests check both give the same arrays)."""
    path = _digits_file()
    if path is None:
        from sklearn.datasets import load_digits

        try:
            pixels, target = load_digits(return_X_y=True)
        except Exception as err:  # noqa: BLE001 - its parser's errors, on a damaged file
            raise KdsweepError(f"scikit-learn's digits data is unreadable ({err.__class__.__name__}); "
                               f"{DIGITS_FIX}") from err
        return check_digits(pixels, target, "scikit-learn's digits data")
    return read_digits(path)


def read_digits(path):
    """(pixels, labels) of a digits file in scikit-learn's format, checked (check_digits)."""
    try:
        table = np.loadtxt(path, delimiter=",", ndmin=2)
    except Exception as err:  # noqa: BLE001 - gzip, zlib and the parser each raise their own
        raise KdsweepError(f"digits file {path} is unreadable: damaged or cut short ({err.__class__.__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); {DIGITS_FIX}") from err
    if table.shape[1] != 65:
        raise KdsweepError(f"digits file {path} holds rows of {table.shape[1]} numbers, not 64 pixels and a label; "
                           f"{DIGITS_FIX}")
    return check_digits(table[:, :-1], table[:, -1], f"digits file {path}")


def check_digits(pixels, target, what: str):
    """The digits' (pixels, int64 labels), or KdsweepError unless they are the dataset's 1,797 images of
    64 whole pixel values in 0..16, each with a label in 0..9."""
    pixels, target = np.asarray(pixels, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if pixels.shape != (DIGITS_IMAGES, 64) or target.shape != (DIGITS_IMAGES,):
        raise KdsweepError(f"{what} holds {len(target)} labels and {len(pixels)} images of "
                           f"{pixels.shape[1] if pixels.ndim == 2 else '?'} pixels, not the dataset's "
                           f"{DIGITS_IMAGES} of 64; {DIGITS_FIX}")
    bad = ~np.isfinite(pixels) | (pixels != np.round(pixels)) | (pixels < 0) | (pixels > DIGITS_MAXIMUM)
    if bad.any():
        row, column = map(int, np.argwhere(bad)[0])
        raise KdsweepError(f"{what} gives image {row} the pixel value {pixels[row, column]}, not a whole number in "
                           f"0..{DIGITS_MAXIMUM}; {DIGITS_FIX}")
    bad = ~np.isfinite(target) | (target != np.round(target)) | (target < 0) | (target >= DIGITS_CLASSES)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise KdsweepError(f"{what} gives image {row} the label {target[row]}, not one of the classes 0 to "
                           f"{DIGITS_CLASSES - 1}; {DIGITS_FIX}")
    return pixels, target.astype(np.int64)


def _load_digits(root=None, download=False) -> Dataset:
    import torch

    pixels, target = _digits_arrays()
    images = np.rint(pixels.reshape(-1, 8, 8) * (255 / DIGITS_MAXIMUM)).astype(np.uint8)
    images = torch.from_numpy(images)[:, None].expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(target).to(torch.int64)
    test = torch.arange(len(labels)) % DIGITS_TEST_EVERY == 0
    classes = [str(c) for c in np.unique(target)]
    return Dataset("digits", images[~test], labels[~test], images[test], labels[test], classes,
                   "scikit-learn's bundled copy (sklearn.datasets.load_digits)")


@dataclass(frozen=True)
class Entry:
    """A dataset of the registry: what `python -m kdsweep datasets` says of it, its images' (channels, side,
    classes) where they are the dataset's own (None: the user's folders say), how a job reads it whole
    (None: streamed from its files, kdsweep.streaming) and the torchvision class whose files it reads."""

    name: str
    about: str
    geometry: tuple[int, int, int] | None = None
    load: Callable[..., Dataset] | None = None
    torchvision: str | None = None


# name -> its entry; a new dataset is one entry here (the schema's dataset.name and the listing follow).
DATASETS = {entry.name: entry for entry in (
    Entry("cifar10", "CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test images; torchvision's files, "
                     "fetched by `download`", (CIFAR_SHAPE[0], CIFAR_SHAPE[1], CIFAR_CLASSES["CIFAR10"]),
          partial(_load_cifar, "CIFAR10", "cifar10"), "CIFAR10"),
    Entry("cifar100", "CIFAR-100 (Krizhevsky 2009): as CIFAR-10, in 100 classes; torchvision's files, fetched "
                      "by `download`", (CIFAR_SHAPE[0], CIFAR_SHAPE[1], CIFAR_CLASSES["CIFAR100"]),
          partial(_load_cifar, "CIFAR100", "cifar100"), "CIFAR100"),
    Entry("digits", f"scikit-learn's bundled handwritten digits: {DIGITS_IMAGES:,} images, every "
                    f"{DIGITS_TEST_EVERY}th a test image; nothing to download (the offline demo's)",
          (3, 8, DIGITS_CLASSES), _load_digits),  # 8x8, replicated to 3 channels (_load_digits)
    Entry("imagefolder", "your own images under dataset.root, one folder per class, streamed from disk at any "
                         "scale (docs/datasets.md)"),
)}

# Datasets streamed from their files (kdsweep.streaming), not read into memory.
STREAMED = tuple(name for name, entry in DATASETS.items() if entry.load is None)


def _unknown(name) -> KdsweepError:
    return KdsweepError(f"unknown dataset '{name}'; set dataset.name to one of {', '.join(DATASETS)}")


def geometry(config: dict) -> tuple[int, int, int]:
    """(channels, side in pixels, classes) of a config's dataset's images, known without reading them: what the
    checks of a study's architectures need before any job (kdsweep.models.check_config). An imagefolder's
    side is its training crop (imagefolder.train_crop), its classes its training folder's subfolders."""
    entry = DATASETS[config["dataset"]["name"]]
    if entry.geometry is None:
        from .imagefolder import classes_of

        dataset = config["dataset"]
        return 3, config["imagefolder"]["train_crop"], len(classes_of(dataset["root"], dataset["train"]))
    return entry.geometry


def load_dataset(name: str, root) -> Dataset:
    if name not in DATASETS:
        raise _unknown(name)
    if name in STREAMED:
        raise KdsweepError(f"dataset {name} is streamed from its files, never read into memory whole "
                           "(kdsweep.split.load_splits)")
    return DATASETS[name].load(root)


def download_folder(name: str, root) -> str | None:
    """The folder `download` fills for dataset `name` under root (torchvision's own name for it);
    None for a bundled dataset, which needs no download."""
    entry = DATASETS.get(name)
    if entry is None or entry.torchvision is None:
        return None
    return str(Path(root) / CIFAR_FOLDERS[entry.torchvision])


def source(name: str, root) -> Path | None:
    """What a job reads of dataset `name`: the folder of its files, or the file of a bundled dataset
    (None where that is not known); an output path must not lie there (kdsweep.paths)."""
    folder = download_folder(name, root)
    if folder is not None:
        return Path(folder)
    if name in STREAMED:
        return Path(root)
    return _digits_file() if name == "digits" else None


def download(name: str, root) -> str:
    """Fetch and verify (md5) a dataset into root, a no-op for bundled data; returns where it now is."""
    if name in STREAMED:
        return f"{root} (your own files: nothing to download)"
    if name not in DATASETS:
        raise _unknown(name)
    return DATASETS[name].load(root, download=True).source
