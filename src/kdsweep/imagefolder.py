"""An image dataset of the user's own, in torchvision's ImageFolder layout: which files it is, and what
identifies them.

`dataset: {name: imagefolder, root: R, train: train, test: val}` reads R/train/<class>/**/<image> and
R/test/<class>/**/<image>. The classes are the training folder's subfolders, labelled in sorted
order, and the files of each class are taken in torchvision's order (`sorted(os.walk(...))`, each
folder's names sorted), so that a study's image i is torchvision's ImageFolder's image i. The test
folder's classes must be among the training folder's (labelled as there, not by their own order).
Files are images by their extension (torchvision's IMG_EXTENSIONS, any case); other files are left
out and counted (stats.json `not_images`), never read.

What identifies the data (kdsweep.identity):
- `listing_digest`: sha256 of the classes and of every file's path (relative to its split's folder)
  and size. Every job computes it from a listing of the folders (names and sizes: one stat per file,
  in threads) and refuses files that do not match stats.json's, naming the first that differs.
- `data_digest` (content): sha256 of the classes and of every file's path, size and sha256 of its
  bytes, computed once, by the stats job, which reads every byte anyway for the channel statistics.
  It is a run's data digest: moving or copying the tree (new paths, new modification times)
  changes neither digest and retrains nothing; changed files change both.
Why not hash the contents in every job: ImageNet's 140 GB would be read again by each of hundreds
of jobs before training. Why sizes and not modification times: a copy to a node's scratch disk
keeps the one and not the other. What the listing does not see: a file rewritten in place with
the same size (the stats job's content digest then no longer describes it; delete stats.json to
have it made again).

Nothing here imports torch: the workflow lists no files, and the stats job imports torch itself.
"""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import KdsweepError

# torchvision.datasets.folder.IMG_EXTENSIONS, written out so that listing a tree imports no torchvision
# (tests/test_imagefolder.py checks them against it)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# threads that stat the files of a tree (a network file system answers each stat in turn)
STAT_THREADS = 16


@dataclass
class Listing:
    """The image files of one split folder, in order: paths relative to `folder`, labels and sizes."""

    folder: Path
    files: np.ndarray  # bytes (numpy "S"): a flat array that DataLoader workers share cheaply
    labels: np.ndarray  # int64
    sizes: np.ndarray  # int64, bytes
    not_images: list = field(default_factory=list)  # relative paths of files that are not images

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return os.path.join(self.folder, self.files[index].decode())

    def name(self, index: int) -> str:
        """A file's path as a message names it: relative to the dataset's root."""
        return os.path.join(self.folder.name, self.files[index].decode())

    def take(self, keep) -> "Listing":
        """The files at positions `keep` (a boolean mask or indices), in order."""
        return replace(self, files=self.files[keep], labels=self.labels[keep], sizes=self.sizes[keep])


def _folder(root, name, what) -> Path:
    folder = Path(root) / name
    if not folder.is_dir():
        raise KdsweepError(f"the imagefolder dataset's {what} folder {folder} does not exist (dataset.root "
                           f"{root}, dataset.{what} {name}); point them at a folder with one subfolder of images "
                           "per class")
    return folder


def classes_of(root, train: str) -> list[str]:
    """The classes: the training folder's subfolders, sorted (torchvision's find_classes)."""
    folder = _folder(root, train, "train")
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise KdsweepError(f"the imagefolder training folder {folder} has no subfolders; put each class's images "
                           "in a subfolder of its own (e.g. train/cat/1.jpg, train/dog/2.jpg)")
    return classes


def shown(name: str) -> str:
    """A file's name as a one-line message shows it: control characters (a newline in a name) and the bytes of a
    name that is not UTF-8 (surrogates, which no terminal can print) escaped."""
    return "".join(repr(c)[1:-1] if ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) < 0xE000 else c for c in name)


def _unlistable(relative: str, why: str) -> KdsweepError:
    return KdsweepError(f"the imagefolder file {shown(relative)} {why}; remove it or fix the link")


def _class_files(folder: Path, name: str):
    """(relative paths, sizes, other files) of one class folder, in torchvision's order (os.walk following
    links). Refused, by name: a link to a folder that holds it (a loop: the walk would list its images again
    and again, down to the system's link limit), a file that cannot be stat'ed (a link to nothing or to
    itself), one that is not a regular file (a FIFO's read waits forever), a name that is not UTF-8."""
    walked = []
    for directory, subfolders, names in os.walk(folder / name, followlinks=True):
        here = os.path.realpath(directory)
        for subfolder in subfolders:
            path = os.path.join(directory, subfolder)
            target = os.path.realpath(path)
            if os.path.islink(path) and (here == target or here.startswith(target.rstrip(os.sep) + os.sep)):
                raise _unlistable(os.path.relpath(path, folder.parent), "is a symbolic link to a folder that holds "
                                  "it (a loop)")
        walked.append((directory, names))
    files, sizes, others = [], [], []
    for directory, names in sorted(walked):
        for file in sorted(names):
            path = os.path.join(directory, file)
            relative = os.path.relpath(path, folder)
            if file.lower().endswith(IMAGE_EXTENSIONS):
                try:
                    encoded = relative.encode()
                except UnicodeEncodeError:
                    raise KdsweepError(f"the imagefolder file {shown(os.path.relpath(path, folder.parent))} has a "
                                       "name that is not UTF-8; rename it") from None
                try:
                    status = os.stat(path)
                except OSError as err:
                    raise _unlistable(os.path.relpath(path, folder.parent), f"cannot be read ({err.strerror}: a "
                                      "symbolic link to nothing or to itself?)") from None
                if not stat.S_ISREG(status.st_mode):
                    raise _unlistable(os.path.relpath(path, folder.parent), "is not a regular file (a FIFO, a "
                                      "socket or a device)")
                files.append(encoded)
                sizes.append(status.st_size)
            else:
                others.append(relative)
    return files, sizes, others


def scan(root, name: str, what: str, classes: list[str]) -> Listing:
    """The image files of the split folder root/name (`what`: train or test), labelled by `classes`."""
    folder = _folder(root, name, what)
    found = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if unknown := [c for c in found if c not in classes]:
        raise KdsweepError(f"the imagefolder {what} folder {folder} has a class {unknown[0]!r} that the training "
                           f"folder has not; every class needs training images (or remove {folder / unknown[0]})")
    with ThreadPoolExecutor(STAT_THREADS) as pool:
        parts = list(pool.map(lambda c: _class_files(folder, c), found))
    if what == "train" and (empty := [c for part, c in zip(parts, found) if not part[0]]):
        raise KdsweepError(f"the imagefolder training folder {folder} has a class {empty[0]!r} with no image files; "
                           f"put its training images in {folder / empty[0]}, or remove that folder")
    label = {c: i for i, c in enumerate(classes)}
    files = [f for part, _ in zip(parts, found) for f in part[0]]
    if not files:
        raise KdsweepError(f"the imagefolder {what} folder {folder} holds no image files "
                           f"({', '.join(IMAGE_EXTENSIONS)}); check dataset.root and dataset.{what}")
    labels = np.concatenate([np.full(len(part[0]), label[c], dtype=np.int64) for part, c in zip(parts, found)])
    sizes = np.asarray([s for part in parts for s in part[1]], dtype=np.int64)
    return Listing(folder, np.asarray(files, dtype=bytes), labels, sizes,
                   [o for part in parts for o in part[2]])


def listings(dataset_cfg: dict) -> tuple[list[str], Listing, Listing]:
    """(classes, train, test) of a config's imagefolder dataset, cut to dataset.subset of each."""
    root = dataset_cfg["root"]
    classes = classes_of(root, dataset_cfg["train"])
    train = scan(root, dataset_cfg["train"], "train", classes)
    test = scan(root, dataset_cfg["test"], "test", classes)
    if (n := dataset_cfg["subset"]) is not None:
        train, test = train.take(slice(0, n)), test.take(slice(0, n))
    return classes, train, test


def without(listing: Listing, names) -> Listing:
    """The listing less the files named (relative to the dataset's root, as `Listing.name` gives them)."""
    names = set(names)
    if not names:
        return listing
    keep = np.asarray([listing.name(i) not in names for i in range(len(listing))], dtype=bool)
    return listing.take(keep)


def _digest_head(classes) -> "hashlib._Hash":
    digest = hashlib.sha256()
    digest.update(("\n".join(classes) + "\n\n").encode())
    return digest


def listing_digest(classes, train: Listing, test: Listing) -> str:
    """sha256 of the classes, and of each split's files' paths, labels and sizes (module docstring)."""
    digest = _digest_head(classes)
    for listing in (train, test):
        for name, label, size in zip(listing.files, listing.labels, listing.sizes):
            digest.update(name + b"\0" + f"{label}\0{size}\n".encode())
        digest.update(b"\n")
    return digest.hexdigest()


def content_digest(classes, train: Listing, test: Listing, train_sha, test_sha) -> str:
    """sha256 of the classes, and of each split's files' paths, labels, sizes and sha256s (hex strings,
    in the listings' order): the data digest of an imagefolder dataset."""
    digest = _digest_head(classes)
    for listing, shas in ((train, train_sha), (test, test_sha)):
        for name, label, size, sha in zip(listing.files, listing.labels, listing.sizes, shas):
            digest.update(name + b"\0" + f"{label}\0{size}\0{sha}\n".encode())
        digest.update(b"\n")
    return digest.hexdigest()



def arrays_of(stats_path) -> tuple[Path, Path]:
    """The validation and test arrays an imagefolder's stats job writes beside its stats.json (kdsweep.split)."""
    path = Path(stats_path)
    return path.with_name(f"{path.stem}.val.npy"), path.with_name(f"{path.stem}.test.npy")
