"""kdsweep.split: the seeded train/validation split, its channel statistics (stats.json), splits on the device."""

import numpy as np
import pytest
import torch

from kdsweep import datasets, split
from kdsweep.errors import KdsweepError


def dataset_cfg(root, name="cifar10", val_fraction=0.1, split_seed=0, subset=None):
    return {"name": name, "root": str(root), "val_fraction": val_fraction, "split_seed": split_seed,
            "subset": subset}


def test_split_is_seeded_disjoint_and_complete():
    train, val = split.split_indices(1000, 0.1, 3)
    again_train, again_val = split.split_indices(1000, 0.1, 3)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(val) == 100 and len(train) == 900
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(1000))
    assert not torch.equal(split.split_indices(1000, 0.1, 4)[1], val)
    assert split.index_sha(val) == split.index_sha(again_val) != split.index_sha(split.split_indices(1000, 0.1, 4)[1])


def test_split_refuses_an_empty_part():
    with pytest.raises(KdsweepError, match="val_fraction"):
        split.split_indices(5, 0.01, 0)


def test_stats_use_the_train_split_only(synthetic_cifar, tmp_path):
    root, ((train_x, _), (test_x, _)) = synthetic_cifar("cifar10", n_train=60, n_test=10)
    cfg = dataset_cfg(root, val_fraction=0.2, split_seed=5)
    path = tmp_path / "stats.json"
    stats = split.write_stats(path, cfg)
    assert set(stats) == set(split.STATS_FIELDS)
    assert split.read_stats(path, cfg) == stats
    train_idx, val_idx = split.split_indices(60, 0.2, 5)
    pixels = train_x[train_idx.numpy()].astype(np.float64) / 255
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    everything = np.concatenate([train_x, test_x]).astype(np.float64) / 255
    assert np.abs(np.array(stats["mean"]) - train_x.mean(axis=(0, 2, 3)) / 255).max() > 1e-6
    assert np.abs(np.array(stats["mean"]) - everything.mean(axis=(0, 2, 3))).max() > 1e-6
    assert (stats["n_train"], stats["n_val"], stats["n_test"]) == (48, 12, 10)
    assert stats["image_size"] == [3, 32, 32] and stats["num_classes"] == 10
    assert stats["val_index_sha"] == split.index_sha(val_idx)


def test_channel_stats_independent_of_chunking():
    """Exact by construction, not just close: sums of uint8 values in float64 are exact integers."""
    images = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert split.channel_stats(images, chunk=5) == split.channel_stats(images, chunk=100)


@pytest.mark.parametrize("change, match", [
    ({"name": "cifar100"}, "dataset"),
    ({"val_fraction": 0.2}, "val_fraction"),
    ({"split_seed": 1}, "split_seed"),
])
def test_read_stats_refuses_another_split(tmp_path, change, match):
    cfg = dataset_cfg("unused", name="digits")
    path = tmp_path / "stats.json"
    split.write_stats(path, cfg)
    with pytest.raises(KdsweepError, match=match) as err:
        split.read_stats(path, {**cfg, **change})
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
    split.write_stats(path, cfg)
    damage(path)
    with pytest.raises(KdsweepError, match=match) as err:
        split.read_stats(path, cfg)
    assert "python -m kdsweep stats" in str(err.value)


def test_load_splits_on_device(tmp_path):
    cfg = dataset_cfg("unused", name="digits")
    stats = split.write_stats(tmp_path / "stats.json", cfg)
    splits = split.load_splits(cfg, "cpu", stats=stats)
    ds = datasets.load_dataset("digits", "unused")
    train_idx, val_idx = split.split_indices(1437, 0.1, 0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1293, 144, 360)
    assert splits.train.images.dtype == torch.uint8 and splits.val.labels.dtype == torch.int64
    assert torch.equal(splits.val.images, ds.train_images[val_idx])
    assert torch.equal(splits.train.labels, ds.train_labels[train_idx])
    assert torch.equal(splits.test.images, ds.test_images)
    assert splits.num_classes == 10
    with pytest.raises(KdsweepError, match="n_test"):
        split.load_splits(cfg, "cpu", stats={**stats, "n_test": 359})


def test_batches_in_order_and_shuffled():
    images = torch.arange(10).view(10, 1, 1, 1).to(torch.uint8)
    labels = torch.arange(10)
    ordered = list(split.batches(images, labels, 4))
    assert [len(y) for _, y in ordered] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in ordered]), labels)
    shuffled = list(split.batches(images, labels, 4, torch.Generator().manual_seed(1), drop_last=True))
    assert [len(y) for _, y in shuffled] == [4, 4]
    seen = torch.cat([y for _, y in shuffled])
    assert not torch.equal(seen, labels[:8]) and len(seen.unique()) == 8
    assert all(torch.equal(x.flatten().long(), y) for x, y in shuffled)
    generator = torch.Generator().manual_seed(1)
    again = torch.cat([y for _, y in split.batches(images, labels, 4, generator, drop_last=True)])
    assert torch.equal(seen, again)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_splits_on_cuda(tmp_path):
    """(Augmentation on CUDA against the CPU: tests/test_runtime.py.)"""
    splits = split.load_splits(dataset_cfg("unused", name="digits"), "cuda")
    assert splits.train.images.is_cuda and splits.test.labels.is_cuda
    x, y = next(split.batches(splits.train.images, splits.train.labels, 50, torch.Generator().manual_seed(0)))
    assert x.is_cuda and y.is_cuda and len(y) == 50


def test_subset_cuts_train_and_test(synthetic_cifar):
    root, _ = synthetic_cifar("cifar10", n_train=50, n_test=20)
    splits = split.load_splits(dataset_cfg(root, subset=30))
    assert len(splits.train) + len(splits.val) == 30 and len(splits.test) == 20
    full = datasets.load_dataset("cifar10", root)
    assert torch.equal(splits.test.images, full.test_images[:20])
