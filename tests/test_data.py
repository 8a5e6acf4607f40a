import pickle
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from kdsweep import augment as augmentation
from kdsweep import data, datasets
from kdsweep.errors import KdsweepError


def dataset_cfg(root, name="cifar10", val_fraction=0.1, split_seed=0, subset=None):
    return {"name": name, "root": str(root), "val_fraction": val_fraction, "split_seed": split_seed,
            "subset": subset}


# ---------------------------------------------------------------- datasets

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


# ---------------------------------------------------------------- split and stats

def test_split_is_seeded_disjoint_and_complete():
    train, val = data.split_indices(1000, 0.1, 3)
    again_train, again_val = data.split_indices(1000, 0.1, 3)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(val) == 100 and len(train) == 900
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(1000))
    assert not torch.equal(data.split_indices(1000, 0.1, 4)[1], val)
    assert data.index_sha(val) == data.index_sha(again_val) != data.index_sha(data.split_indices(1000, 0.1, 4)[1])


def test_split_refuses_an_empty_part():
    with pytest.raises(KdsweepError, match="val_fraction"):
        data.split_indices(5, 0.01, 0)


def test_stats_use_the_train_split_only(synthetic_cifar, tmp_path):
    root, ((train_x, _), (test_x, _)) = synthetic_cifar("cifar10", n_train=60, n_test=10)
    cfg = dataset_cfg(root, val_fraction=0.2, split_seed=5)
    path = tmp_path / "stats.json"
    stats = data.write_stats(path, cfg)
    assert set(stats) == set(data.STATS_FIELDS)
    assert data.read_stats(path, cfg) == stats
    train_idx, val_idx = data.split_indices(60, 0.2, 5)
    pixels = train_x[train_idx.numpy()].astype(np.float64) / 255
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    everything = np.concatenate([train_x, test_x]).astype(np.float64) / 255
    assert np.abs(np.array(stats["mean"]) - train_x.mean(axis=(0, 2, 3)) / 255).max() > 1e-6
    assert np.abs(np.array(stats["mean"]) - everything.mean(axis=(0, 2, 3))).max() > 1e-6
    assert (stats["n_train"], stats["n_val"], stats["n_test"]) == (48, 12, 10)
    assert stats["image_size"] == [3, 32, 32] and stats["num_classes"] == 10
    assert stats["val_index_sha"] == data.index_sha(val_idx)


def test_channel_stats_independent_of_chunking():
    """Exact by construction, not just close: sums of uint8 values in float64 are exact integers."""
    images = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert data.channel_stats(images, chunk=5) == data.channel_stats(images, chunk=100)


@pytest.mark.parametrize("change, match", [
    ({"name": "cifar100"}, "dataset"),
    ({"val_fraction": 0.2}, "val_fraction"),
    ({"split_seed": 1}, "split_seed"),
])
def test_read_stats_refuses_another_split(tmp_path, change, match):
    cfg = dataset_cfg("unused", name="digits")
    path = tmp_path / "stats.json"
    data.write_stats(path, cfg)
    with pytest.raises(KdsweepError, match=match) as err:
        data.read_stats(path, {**cfg, **change})
    assert "python -m kdsweep stats" in str(err.value)


@pytest.mark.parametrize("damage, match", [
    (lambda path: path.unlink(), "does not exist"),
    (lambda path: path.write_text("{not json"), "not valid JSON"),
    (lambda path: path.write_text('{"dataset": "digits"}'), "lacks"),
    (lambda path: path.write_text(path.read_text().replace('"val_index_sha": "', '"val_index_sha": "0')),
     "val_index_sha"),
])
def test_read_stats_refuses_missing_or_damaged_file(tmp_path, damage, match):
    cfg = dataset_cfg("unused", name="digits")
    path = tmp_path / "stats.json"
    data.write_stats(path, cfg)
    damage(path)
    with pytest.raises(KdsweepError, match=match) as err:
        data.read_stats(path, cfg)
    assert "python -m kdsweep stats" in str(err.value)


def test_load_splits_on_device(tmp_path):
    cfg = dataset_cfg("unused", name="digits")
    stats = data.write_stats(tmp_path / "stats.json", cfg)
    splits = data.load_splits(cfg, "cpu", stats=stats)
    ds = datasets.load_dataset("digits", "unused")
    train_idx, val_idx = data.split_indices(1437, 0.1, 0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1293, 144, 360)
    assert splits.train.images.dtype == torch.uint8 and splits.val.labels.dtype == torch.int64
    assert torch.equal(splits.val.images, ds.train_images[val_idx])
    assert torch.equal(splits.train.labels, ds.train_labels[train_idx])
    assert torch.equal(splits.test.images, ds.test_images)
    assert splits.num_classes == 10
    with pytest.raises(KdsweepError, match="n_test"):
        data.load_splits(cfg, "cpu", stats={**stats, "n_test": 359})


def test_batches_in_order_and_shuffled():
    images = torch.arange(10).view(10, 1, 1, 1).to(torch.uint8)
    labels = torch.arange(10)
    ordered = list(data.batches(images, labels, 4))
    assert [len(y) for _, y in ordered] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in ordered]), labels)
    shuffled = list(data.batches(images, labels, 4, torch.Generator().manual_seed(1), drop_last=True))
    assert [len(y) for _, y in shuffled] == [4, 4]
    seen = torch.cat([y for _, y in shuffled])
    assert not torch.equal(seen, labels[:8]) and len(seen.unique()) == 8
    assert all(torch.equal(x.flatten().long(), y) for x, y in shuffled)
    again = torch.cat([y for _, y in data.batches(images, labels, 4, torch.Generator().manual_seed(1), drop_last=True)])
    assert torch.equal(seen, again)


# ---------------------------------------------------------------- augmentation vs torchvision, image by image

def rand_images(n, h, w, seed=0):
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


EDGE_ANGLES = [0.0, 15.0, -15.0, 90.0, -90.0, 180.0, 45.0, 1e-6, -1e-6, 0.5, -7.5, 89.99]


@pytest.mark.parametrize("h, w", [(40, 40), (40, 37), (9, 14), (16, 16)])
def test_rotate_equals_torchvision_per_image(h, w):
    """Exact: rotate_images replicates torchvision's float math op for op (float64 matrix rounded to
    float32, the same grid, bmm and grid_sample), so both run the same arithmetic through the same
    kernels on any machine, and nearest neighbour picks the same pixel even on a pixel boundary. The
    one other path, torch.cos/sin against Python's math.cos/sin, differs by an ulp in 0.2% of float64
    values, which the rounding to float32 removes (in none of 10^6 random angles did one survive it)."""
    extra = 28
    angles = torch.cat([torch.tensor(EDGE_ANGLES, dtype=torch.float64),
                        torch.rand(extra, dtype=torch.float64, generator=torch.Generator().manual_seed(h * w)) * 360 - 180])
    images = rand_images(len(angles), h, w, seed=w)
    out = augmentation.rotate_images(images, angles)
    assert out.dtype == torch.uint8
    for image, angle, got in zip(images, angles.tolist(), out):
        expected = TF.rotate(image, angle, interpolation=InterpolationMode.NEAREST, expand=False, center=None, fill=0)
        assert torch.equal(got, expected), (h, w, angle)
    floats = augmentation.rotate_images(images.float() / 255, angles)
    assert torch.equal(floats, out.float() / 255)


def test_pad_flip_crop_equal_torchvision_per_image():
    pad, n, h, w = 4, 20, 12, 9
    images = rand_images(n, h, w)
    padded = augmentation.pad_images(images, pad)
    flip = torch.arange(n) % 3 == 0
    flipped = augmentation.flip_images(padded, flip)
    tops = torch.randint(0, 2 * pad + 1, (n,), generator=torch.Generator().manual_seed(1))
    lefts = torch.randint(0, 2 * pad + 1, (n,), generator=torch.Generator().manual_seed(2))
    tops[0], lefts[0], tops[1], lefts[1] = 0, 0, 2 * pad, 2 * pad
    cropped = augmentation.crop_images(flipped, tops, lefts, h, w)
    for i in range(n):
        assert torch.equal(padded[i], TF.pad(images[i], [pad], fill=0))
        assert torch.equal(flipped[i], TF.horizontal_flip(padded[i]) if flip[i] else padded[i])
        assert torch.equal(cropped[i], TF.crop(flipped[i], int(tops[i]), int(lefts[i]), h, w))
    assert not torch.equal(flipped, padded)


@pytest.mark.parametrize("h, w", [(32, 32), (8, 8), (10, 7)])
def test_augment_equals_the_torchvision_composition(h, w):
    augment = augmentation.Augment(pad=4, flip_p=0.5, rotation_degrees=15)
    images = rand_images(24, h, w)
    params = augment.sample(len(images), torch.Generator().manual_seed(7))
    out = augment.apply(images, params)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert 0 <= out.min() and out.max() <= 1
    for i in range(len(images)):
        x = TF.pad(images[i], [4], fill=0)
        if params.flip[i]:
            x = TF.horizontal_flip(x)
        x = TF.rotate(x, float(params.angles[i]), interpolation=InterpolationMode.NEAREST, fill=0)
        x = TF.crop(x, int(params.tops[i]), int(params.lefts[i]), h, w)
        assert torch.equal(out[i], x.float() / 255), i


def test_augment_is_a_function_of_the_generator_state():
    augment = augmentation.Augment.from_config({"pad": 2, "flip_p": 0.5, "rotation_degrees": 30})
    images = rand_images(16, 8, 8)
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    first = augment(images, generator)
    second = augment(images, generator)
    generator.set_state(state)
    assert torch.equal(augment(images, generator), first)
    assert not torch.equal(first, second)


def test_identity_augmentation():
    augment = augmentation.Augment(pad=0, flip_p=0.0, rotation_degrees=0)
    images = rand_images(5, 6, 7)
    assert torch.equal(augment(images, torch.Generator().manual_seed(0)), images.float() / 255)


def test_sampled_parameter_distributions():
    pad, p, degrees, n = 3, 0.3, 12.0, 20000
    params = augmentation.Augment(pad, p, degrees).sample(n, torch.Generator().manual_seed(0))
    assert abs(params.flip.float().mean().item() - p) < 0.02
    assert params.angles.min() >= -degrees and params.angles.max() <= degrees
    assert params.angles.min() < -0.99 * degrees and params.angles.max() > 0.99 * degrees
    assert abs(params.angles.mean().item()) < 0.5
    for offsets in (params.tops, params.lefts):
        assert offsets.min() == 0 and offsets.max() == 2 * pad
        assert torch.bincount(offsets).min() > n / (2 * pad + 1) * 0.9
    assert not torch.equal(params.tops, params.lefts)
    always = augmentation.Augment(pad, 1.0, degrees).sample(100, torch.Generator().manual_seed(0))
    assert always.flip.all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_splits_on_cuda(tmp_path):
    """(Augmentation on CUDA against the CPU: tests/test_runtime.py.)"""
    splits = data.load_splits(dataset_cfg("unused", name="digits"), "cuda")
    assert splits.train.images.is_cuda and splits.test.labels.is_cuda
    x, y = next(data.batches(splits.train.images, splits.train.labels, 50, torch.Generator().manual_seed(0)))
    assert x.is_cuda and y.is_cuda and len(y) == 50


def test_subset_cuts_train_and_test(synthetic_cifar):
    root, _ = synthetic_cifar("cifar10", n_train=50, n_test=20)
    splits = data.load_splits(dataset_cfg(root, subset=30))
    assert len(splits.train) + len(splits.val) == 30 and len(splits.test) == 20
    full = datasets.load_dataset("cifar10", root)
    assert torch.equal(splits.test.images, full.test_images[:20])
