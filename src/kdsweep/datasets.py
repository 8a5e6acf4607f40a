"""The datasets a study can name (`dataset.name`), read whole into memory as uint8 tensors.

Registry `DATASETS`, name -> loader(root, download=False) -> Dataset:
- cifar10, cifar100: torchvision's files under dataset.root (cifar-10-batches-py/,
  cifar-100-python/). Jobs never download; `download()` (the `download` command) does, through
  torchvision, which verifies the archive's and the files' md5 checksums.
- digits: scikit-learn's bundled 1,797 handwritten digits (8x8, values 0..16), scaled to
  0..255 and replicated to 3 channels. Kept at their native 8x8: the offline CPU demo then
  trains 10-16x faster than at 32x32. Its test set is fixed by the dataset, not by the study:
  every 5th image (index 0, 5, 10, ...) is a test image, 360 of them; the other 1,437 are the
  training set.

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
# so that download_folder does not import torchvision (tests/test_data.py checks them against it).
CIFAR_FOLDERS = {"CIFAR10": "cifar-10-batches-py", "CIFAR100": "cifar-100-python"}


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


def _torchvision(name):
    from torchvision import datasets

    return getattr(datasets, name)


def _load_cifar(class_name, name, root, download=False) -> Dataset:
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
    import torch

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
    "cifar10": partial(_load_cifar, "CIFAR10", "cifar10"),
    "cifar100": partial(_load_cifar, "CIFAR100", "cifar100"),
    "digits": _load_digits,
}


def load_dataset(name: str, root) -> Dataset:
    if name not in DATASETS:
        raise KdsweepError(f"unknown dataset '{name}'; set dataset.name to one of {', '.join(DATASETS)}")
    return DATASETS[name](root)


def download_folder(name: str, root) -> str | None:
    """The folder `download` fills for dataset `name` under root (torchvision's own name for it);
    None for a bundled dataset, which needs no download."""
    loader = DATASETS.get(name)
    if not isinstance(loader, partial) or loader.func is not _load_cifar:
        return None
    return str(Path(root) / CIFAR_FOLDERS[loader.args[0]])


def download(name: str, root) -> str:
    """Fetch and verify (md5) a dataset into root, a no-op for bundled data; returns where it now is."""
    if name not in DATASETS:
        raise KdsweepError(f"unknown dataset '{name}'; set dataset.name to one of {', '.join(DATASETS)}")
    return DATASETS[name](root, download=True).source
