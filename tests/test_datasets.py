"""kdsweep.datasets: the registry, each dataset read and checked against its format, where a job reads it."""

import pickle
from urllib.error import URLError

import numpy as np
import pytest
import torch

from kdsweep import datasets
from kdsweep.errors import KdsweepError


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_loads_torchvision_files(synthetic_cifar, name, num_classes):
    root, ((train_x, train_y), (test_x, test_y)) = synthetic_cifar(name, n_train=23, n_test=7)
    ds = datasets.load_dataset(name, root)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert ds.train_images.shape == (23, 3, 32, 32) and ds.test_images.shape == (7, 3, 32, 32)
    assert torch.equal(ds.train_images, torch.from_numpy(train_x))
    assert torch.equal(ds.test_images, torch.from_numpy(test_x))
    assert ds.train_labels.tolist() == train_y.tolist() and ds.test_labels.tolist() == test_y.tolist()
    assert ds.num_classes == num_classes and ds.classes[1] == "class1"
    assert ds.image_size == [3, 32, 32] and ds.source.startswith(str(root))


def test_synthetic_cifar_reads_like_the_real_python2_pickles(synthetic_cifar):
    root, _ = synthetic_cifar("cifar10")
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as handle:
        entry = pickle.load(handle, encoding="bytes")
    assert {b"data", b"labels"} <= set(entry)
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape[1] == 3072


@pytest.mark.parametrize("name, folder, remove", [
    ("cifar10", "cifar-10-batches-py", None),
    ("cifar10", "cifar-10-batches-py", "data_batch_3"),
    ("cifar10", "cifar-10-batches-py", "batches.meta"),
    ("cifar100", "cifar-100-python", "test"),
])
def test_missing_dataset_names_download_command_and_folder(synthetic_cifar, tmp_path, name, folder, remove):
    if remove is None:
        root = tmp_path / "empty"
    else:
        root, _ = synthetic_cifar(name)
        (root / folder / remove).unlink()
    with pytest.raises(KdsweepError) as err:
        datasets.load_dataset(name, root)
    message = str(err.value)
    assert "python -m kdsweep download --config" in message
    assert str(root / folder) in message
    assert message.count(". ") == 0  # one sentence
    if remove:
        assert remove in message


def test_unreadable_cifar_file_is_a_kdsweep_error(synthetic_cifar):
    root, _ = synthetic_cifar("cifar10")
    path = root / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(KdsweepError, match="unreadable"):
        datasets.load_dataset("cifar10", root)


def _rewrite(path, change):
    """Change one pickled CIFAR file as its entry (a dict read as torchvision reads it)."""
    from conftest import _dump

    with open(path, "rb") as handle:
        entry = pickle.load(handle, encoding="latin1")
    change(entry)
    _dump(path, entry)


# (dataset, file, damage(path), words of the sentence) -- every file checked against CIFAR's format
CIFAR_DAMAGE = [
    ("cifar10", "data_batch_1", lambda p: p.write_bytes(b""), ["unreadable", "cut short"]),
    ("cifar10", "data_batch_2", lambda p: p.write_bytes(b"\x80\x04garbage" * 50), ["unreadable"]),
    ("cifar10", "data_batch_3", lambda p: p.write_bytes(pickle.dumps([1, 2, 3])), ["holds a list, not a CIFAR batch"]),
    ("cifar10", "data_batch_4", lambda p: _rewrite(p, lambda e: e.pop("labels")), ["lacks 'labels'"]),
    ("cifar10", "data_batch_5", lambda p: _rewrite(p, lambda e: e.update(data=e["data"][:, :3000])),
     ["not rows of 3072 bytes", "(10, 3000)"]),
    ("cifar10", "test_batch", lambda p: _rewrite(p, lambda e: e.update(labels=e["labels"] + [1])),
     ["20 images but 21 labels"]),
    ("cifar10", "test_batch", lambda p: _rewrite(p, lambda e: e["labels"].__setitem__(0, -1)),
     ["the label -1", "0 to 9"]),
    ("cifar10", "test_batch", lambda p: _rewrite(p, lambda e: e.update(labels=[0.5] * 20)), ["not one whole number"]),
    ("cifar10", "batches.meta", lambda p: _rewrite(p, lambda e: e.update(label_names=e["label_names"] * 2)),
     ["20 class names", "not the 10"]),
    ("cifar100", "train", lambda p: _rewrite(p, lambda e: e["fine_labels"].__setitem__(5, 100)),
     ["the label 100", "0 to 99"]),
    ("cifar100", "meta", lambda p: _rewrite(p, lambda e: e.pop("fine_label_names")),
     ["no list of class names", "fine_label_names"]),
    ("cifar100", "test", lambda p: _rewrite(p, lambda e: e.update(data=e["data"].astype(np.float32))),
     ["float32"]),
]


@pytest.mark.parametrize("name, file, damage, words", CIFAR_DAMAGE,
                         ids=[f"{name}-{file}-{i}" for i, (name, file, _, _) in enumerate(CIFAR_DAMAGE)])
def test_every_cifar_file_is_checked_against_the_format(synthetic_cifar, name, file, damage, words):
    """A file cut short, garbled, or of the right kind with wrong contents: one sentence that names the
    file and the fix (download again), never a traceback or a job that trains on it."""
    root, _ = synthetic_cifar(name)
    folder = root / datasets.CIFAR_FOLDERS["CIFAR10" if name == "cifar10" else "CIFAR100"]
    damage(folder / file)
    with pytest.raises(KdsweepError) as err:
        datasets.load_dataset(name, root)
    message = str(err.value)
    assert f"dataset file {folder / file} " in message and "python -m kdsweep download --config" in message
    for word in words:
        assert word in message, (word, message)


def _digits_file(path, rows):
    import gzip

    with gzip.open(path, "wt") as handle:
        handle.write("".join(",".join(map(str, row)) + "\n" for row in rows))
    return path


def test_the_digits_file_is_checked_against_its_format(tmp_path):
    """scikit-learn's own digits file, read as the jobs read it; a copy damaged in each way is one sentence
    that names it and says to reinstall scikit-learn."""
    real = datasets._digits_file()
    pixels, labels = datasets.read_digits(real)
    assert pixels.shape == (1797, 64) and labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    rows = np.column_stack([pixels, labels]).astype(int).tolist()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(real.read_bytes()[:2000])
    damaged = {
        "cut": (cut, "unreadable"),
        "short": (_digits_file(tmp_path / "short.csv.gz", rows[:-100]), "1697 labels and 1697 images"),
        "label": (_digits_file(tmp_path / "label.csv.gz", [*rows[:-1], [*rows[-1][:-1], 12]]),
                  "image 1796 the label 12.0"),
        "pixel": (_digits_file(tmp_path / "pixel.csv.gz", [[300, *rows[0][1:]], *rows[1:]]),
                  "image 0 the pixel value 300.0"),
        "columns": (_digits_file(tmp_path / "columns.csv.gz", [row[1:] for row in rows]), "rows of 64 numbers"),
        "text": ((tmp_path / "text.csv.gz"), "unreadable"),
    }
    (tmp_path / "text.csv.gz").write_text("not gzip at all")
    for name, (path, words) in damaged.items():
        with pytest.raises(KdsweepError) as err:
            datasets.read_digits(path)
        assert f"digits file {path}" in str(err.value) and words in str(err.value), (name, str(err.value))
        assert "pip install --force-reinstall scikit-learn" in str(err.value)


def test_what_a_job_reads_of_its_dataset(tmp_path):
    """datasets.source: where an output must not go (kdsweep.paths)."""
    assert datasets.source("cifar10", tmp_path) == tmp_path / "cifar-10-batches-py"
    assert datasets.source("digits", tmp_path) == datasets._digits_file() and datasets._digits_file().is_file()


def test_download_verifies_md5_and_reports_network_failure(synthetic_cifar, monkeypatch):
    # The synthetic files exist but fail the real md5: download must try to fetch, not trust them.
    root, _ = synthetic_cifar("cifar10")
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise URLError("no network")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(KdsweepError, match="internet access"):
        datasets.download("cifar10", root)
    assert len(calls) == 1


def test_unknown_dataset():
    with pytest.raises(KdsweepError, match="dataset.name"):
        datasets.load_dataset("imagenet", "data")


def test_dataset_names_are_the_registrys(monkeypatch):
    """config.schema()'s dataset.name is the registry's: an unknown name is one sentence naming every dataset,
    and a dataset added to the registry is one a study can name."""
    from kdsweep.config import load_config

    with pytest.raises(KdsweepError) as err:
        load_config([], ["dataset.name=imagenet"])
    assert "config key 'dataset.name' is invalid: 'imagenet' is not one of" in str(err.value)
    assert all(f"'{name}'" in str(err.value) for name in ("cifar10", "cifar100", "digits", "imagefolder"))
    monkeypatch.setitem(datasets.DATASETS, "toy", datasets.Entry("toy", "a toy", (3, 8, 2), lambda root: None))
    assert load_config([], ["dataset.name=toy"])["dataset"]["name"] == "toy"


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "digits"])
def test_a_datasets_geometry_is_that_of_its_images(synthetic_cifar, name):
    """The (channels, side, classes) the registry gives before any job (the architectures' checks) are those
    of the images and classes the dataset reads."""
    root = synthetic_cifar(name, n_train=4, n_test=2)[0] if name.startswith("cifar") else "unused"
    ds = datasets.load_dataset(name, root)
    assert datasets.geometry({"dataset": {"name": name}}) == (ds.image_size[0], ds.image_size[1], ds.num_classes)
    assert ds.image_size[1] == ds.image_size[2]


def test_the_datasets_command_lists_the_registry():
    """`python -m kdsweep datasets`: a header, then one line per dataset: its name, classes, side, and its line."""
    from conftest import run_kdsweep

    lines = run_kdsweep("datasets").stdout.splitlines()
    assert lines[0].split()[:3] == ["dataset", "classes", "side"]
    assert [line.split()[0] for line in lines[1:]] == ["cifar10", "cifar100", "digits", "imagefolder"]
    for line, entry in zip(lines[1:], datasets.DATASETS.values()):
        assert line.endswith(entry.about)
    assert lines[1].split()[1:3] == ["10", "32"] and lines[2].split()[1:3] == ["100", "32"]
    assert lines[3].split()[1:3] == ["10", "8"] and lines[4].split()[1:3] == ["-", "-"]


def test_download_folder_is_torchvisions_and_imports_no_torch(tmp_path):
    """The workflow asks for the folder in every snakemake process: torchvision's base_folder, without
    importing torch (seconds in each of a cluster job's two snakemake processes)."""
    import subprocess
    import sys

    import torchvision

    for name, folder in (("cifar10", "CIFAR10"), ("cifar100", "CIFAR100")):
        assert datasets.download_folder(name, tmp_path) == str(tmp_path / getattr(torchvision.datasets, folder).base_folder)
    assert datasets.download_folder("digits", tmp_path) is None
    code = ("import sys; from kdsweep import datasets; datasets.download_folder('cifar10', 'data'); "
            "print('torch' in sys.modules, 'torchvision' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == [
        "False", "False"]


def test_digits_are_load_digits_read_without_importing_scikit_learn(monkeypatch):
    import subprocess
    import sys

    code = ("import sys; from kdsweep import datasets; x, y = datasets._digits_arrays(); "
            "print('sklearn' in sys.modules, x.shape, y.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "False"
    from sklearn.datasets import load_digits

    pixels, target = datasets._digits_arrays()
    assert np.array_equal(pixels, load_digits().data) and np.array_equal(target, load_digits().target)
    # where scikit-learn keeps its file elsewhere, load_digits itself gives the same arrays
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    fallback = datasets._digits_arrays()
    assert np.array_equal(fallback[0], pixels) and np.array_equal(fallback[1], target)


def test_digits_native_8x8_fixed_split():
    from sklearn.datasets import load_digits

    ds = datasets.load_dataset("digits", "unused")
    assert ds.train_images.shape == (1437, 3, 8, 8) and ds.test_images.shape == (360, 3, 8, 8)
    assert ds.train_images.dtype == torch.uint8 and ds.test_labels.dtype == torch.int64
    assert ds.train_images.max() == 255 and ds.train_images.min() == 0
    assert torch.equal(ds.train_images[:, 0], ds.train_images[:, 2])
    bunch = load_digits()
    assert ds.test_labels.tolist() == bunch.target[::5].tolist()
    assert torch.equal(ds.test_images[:, 1], torch.from_numpy(np.rint(bunch.images[::5] * 255 / 16).astype(np.uint8)))
    assert ds.classes == [str(i) for i in range(10)]
    assert "scikit-learn" in datasets.download("digits", "unused")
