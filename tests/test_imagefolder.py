"""An imagefolder dataset: its listing (torchvision's order), its stats job (statistics, damaged files,
the validation and test arrays, digests), its streamed batches, and a whole study through snakemake."""

import importlib.util
import os
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_kdsweep, snakemake
from kdsweep import imagefolder, sources, split, streaming
from kdsweep.config import load_config
from kdsweep.distributed import Processes
from kdsweep.errors import KdsweepError


def _tree_script():
    spec = importlib.util.spec_from_file_location("imagefolder_tree", ROOT / "scripts" / "imagefolder_tree.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_tree = _tree_script().write_tree
SIZES = ["imagefolder.train_crop=16", "imagefolder.eval_resize=20", "imagefolder.eval_crop=16"]


def config_of(root, *overrides):
    return load_config([], ["dataset.name=imagefolder", f"dataset.root={root}", "runtime.loader_workers=0",
                            "dataset.val_fraction=0.25", *SIZES, *overrides])


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "images", classes=3, train=6, test=2)


def test_the_extensions_are_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert imagefolder.IMAGE_EXTENSIONS == IMG_EXTENSIONS


def test_the_files_and_labels_are_torchvisions_imagefolders_in_its_order(tree):
    from torchvision.datasets import ImageFolder

    (tree / "train" / "class0" / "notes.txt").write_text("not an image")
    (tree / "train" / "class2" / "nested").mkdir()
    shutil.copy(tree / "train" / "class2" / "train_2_0001.png", tree / "train" / "class2" / "nested" / "a.png")
    classes, train, test = imagefolder.listings(config_of(tree)["dataset"])
    for listing, folder in ((train, "train"), (test, "val")):
        reference = ImageFolder(str(tree / folder))
        assert classes == reference.classes
        assert [listing.path(i) for i in range(len(listing))] == [path for path, _ in reference.samples]
        assert listing.labels.tolist() == [label for _, label in reference.samples]
        assert listing.sizes.tolist() == [Path(path).stat().st_size for path, _ in reference.samples]
    assert train.not_images == [str(Path("class0") / "notes.txt")]


def test_a_test_class_without_training_images_is_one_sentence(tree):
    (tree / "val" / "zebra").mkdir()
    with pytest.raises(KdsweepError, match="class 'zebra' that the training folder has not"):
        imagefolder.listings(config_of(tree)["dataset"])


def test_a_damaged_file_stops_the_stats_job_with_its_name(tree, tmp_path):
    result = run_kdsweep("stats", "dataset.name=imagefolder", f"dataset.root={tree}", *SIZES,
                         "runtime.loader_workers=0", "--out", tmp_path / "stats.json", check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "train/class1/damaged.jpg" in line and "dataset.skip_damaged: true" in line
    assert not (tmp_path / "stats.json").exists() and not list(tmp_path.glob("stats*.npy"))


def _eval_images(paths, resize, crop):
    """The evaluation transform written independently: torchvision's decoder and its transform classes."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms import v2

    transform = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(crop)])
    return torch.stack([transform(decode_image(str(path), ImageReadMode.RGB)) for path in paths])


def test_the_stats_job_skips_and_counts_damaged_files_and_computes_the_training_splits_statistics(tree, tmp_path):
    config = config_of(tree, "dataset.skip_damaged=true")
    stats = split.write_stats(tmp_path / "stats.json", config["dataset"], config, log=lambda line: None)
    assert stats["skipped"] == [{"file": "train/class1/damaged.jpg", "reason": "Image is incomplete or truncated"}]
    # the split, the statistics and the arrays, computed here without kdsweep's code
    train = sorted(p for p in (tree / "train").rglob("*") if p.is_file() and p.name != "damaged.jpg")
    train.sort(key=lambda p: (p.parent.name, p.name))
    test = sorted((p for p in (tree / "val").rglob("*") if p.is_file()), key=lambda p: (p.parent.name, p.name))
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    n_val = round(len(train) * 0.25)
    train_part, val_part = sorted(perm[n_val:]), sorted(perm[:n_val])
    pixels = _eval_images([train[i] for i in train_part], 20, 16).numpy().astype(np.float64)
    assert (stats["n_train"], stats["n_val"]) == (len(train_part), len(val_part))
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=(0, 2, 3)) / 255, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=(0, 2, 3)) / 255, rtol=0, atol=1e-12)
    val_path, test_path = imagefolder.arrays_of(tmp_path / "stats.json")
    assert torch.equal(torch.from_numpy(np.load(val_path)), _eval_images([train[i] for i in val_part], 20, 16))
    assert torch.equal(torch.from_numpy(np.load(test_path)), _eval_images(test, 20, 16))
    # with as many workers as the machine gives, the same record (the integer sums do not depend on them)
    again = split.write_stats(tmp_path / "again" / "stats.json", config["dataset"],
                             config_of(tree, "dataset.skip_damaged=true", "runtime.loader_workers=2"),
                             log=lambda line: None)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in stats.items() if k != "seconds"}


def test_a_job_reads_the_same_files_moved_and_refuses_changed_ones(tree, tmp_path):
    config = config_of(tree, "dataset.skip_damaged=true")
    path = tmp_path / "stats.json"
    split.write_stats(path, config["dataset"], config, log=lambda line: None)
    # copied without the files' times (a copy to a node's scratch disk): the same data, the same digests
    moved = tmp_path / "moved"
    shutil.copytree(tree, moved, copy_function=shutil.copyfile)
    moved_cfg = config_of(moved, "dataset.skip_damaged=true")
    stats = split.read_stats(path, moved_cfg["dataset"], moved_cfg["imagefolder"])
    splits = split.load_splits(moved_cfg["dataset"], "cpu", stats)
    assert splits.digest == stats["data_digest"] and len(splits.train) == stats["n_train"]
    assert splits.val.images.shape == (stats["n_val"], 3, 16, 16) and len(splits.test) == stats["n_test"]
    # one file one byte longer: refused, naming the fix
    victim = moved / "train" / "class0" / "train_0_0000.jpg"
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(KdsweepError, match="not those the stats file was computed from.*delete the study's data/"):
        split.load_splits(moved_cfg["dataset"], "cpu", stats)
    # another evaluation size than the stats job's: refused
    with pytest.raises(KdsweepError, match="pipeline"):
        split.read_stats(path, moved_cfg["dataset"], {**moved_cfg["imagefolder"], "eval_crop": 12})


def _epoch(source, seed, processes=None):
    return [(batch.images, batch.labels, batch.offset, batch.total)
            for batch in source.epoch(torch.Generator().manual_seed(seed), _runtime(), processes)]


def _runtime():
    from kdsweep.runtime import Runtime

    return Runtime.from_config({"device": "cpu", "threads": 0, "precision": "fp32", "tf32": False,
                                "deterministic": True, "channels_last": False, "compile": False})


def test_streamed_batches_follow_the_seed_alone_and_processes_share_them(tree, tmp_path):
    """An epoch's images depend on the data generator alone: not on the loader's workers, not on how many
    processes share the batches (their shares, side by side, are the one-process batch)."""
    config = config_of(tree, "dataset.skip_damaged=true")
    path = tmp_path / "stats.json"
    split.write_stats(path, config["dataset"], config, log=lambda line: None)
    stats = split.read_stats(path, config["dataset"], config["imagefolder"])
    splits = split.load_splits(config["dataset"], "cpu", stats)
    pipeline = streaming.Pipeline.from_config(config["imagefolder"])
    alone = _epoch(sources.Streamed(splits.train, pipeline, 5, 0, "cpu"), seed=3)
    assert [len(labels) for _, labels, _, _ in alone] == [5, 5, 4]  # 14 of the 18 decodable training images
    assert all(images.shape[1:] == (3, 16, 16) and 0 <= images.min() <= images.max() <= 1 for images, *_ in alone)
    with_workers = _epoch(sources.Streamed(splits.train, pipeline, 5, 2, "cpu"), seed=3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(alone, with_workers))
    shares = [_epoch(sources.Streamed(splits.train, pipeline, 5, 0, "cpu"), 3, Processes(rank, 2)) for rank in (0, 1)]
    for whole, first, second in zip(alone, *shares):
        assert torch.equal(torch.cat([first[0], second[0]]), whole[0])
        assert first[2] == 0 and second[2] == len(first[1]) and first[3] == second[3] == len(whole[1])
    other = _epoch(sources.Streamed(splits.train, pipeline, 5, 0, "cpu"), seed=4)
    assert not torch.equal(torch.cat([b[0] for b in other]), torch.cat([b[0] for b in alone]))


@pytest.mark.workflow
def test_an_imagefolder_study_runs_from_snakemake_to_its_tables_and_report(tmp_path):
    """studies/imagefolder.yaml on a tree the script writes (odd sizes, JPEG / PNG / WebP, one damaged file),
    by snakemake as the README runs a study: every table and the report."""
    write_tree(tmp_path / "data" / "images", classes=3, train=8, test=3)
    study = [ROOT / "studies" / "imagefolder.yaml"]
    # one distilled point (the study's two are one pack): a teacher, a baseline and a kd run; confirmation off
    # (config.yaml confirms on fresh seeds by default): this test is of the data
    overrides = ("soft_weights=[0.9]", "confirm={seeds: []}")
    snakemake(tmp_path, "--cores", "2", "--config", *overrides, configfiles=study)
    results = tmp_path / "results" / "imagefolder"
    import pandas as pd

    runs = pd.read_csv(results / "tables" / "runs.csv")
    assert sorted(runs["role"]) == ["baseline", "kd", "teacher"] and set(runs["dataset"]) == {"imagefolder"}
    assert runs["test_acc"].notna().all() and runs["agreement"].notna().all()
    robustness = pd.read_csv(results / "tables" / "robustness.csv")  # each run: FGSM, APGD-DLR, their worst case
    assert sorted(robustness["attack"]) == sorted(["fgsm", "apgd_dlr", "worst"] * 3)
    stats = json.loads((results / "data" / "stats.json").read_text())
    assert [entry["file"] for entry in stats["skipped"]] == ["train/class1/damaged.jpg"]
    metrics = json.loads((results / "runs" / "kd" / "mobilenet_v3_small_T4_soft0.9_seed0" / "metrics.json").read_text())
    assert metrics["config"]["dataset"]["skipped"] == 1 and metrics["config"]["imagefolder"]["train_crop"] == 32
    snakemake(tmp_path, "--report", "results/imagefolder/report.html", "--config", *overrides, configfiles=study)
    assert (results / "report.html").stat().st_size > 0


# ---------------------------------------------------------------- bad files (a hostile user's)

def _stats(tree, tmp_path, skip="false"):
    config = config_of(tree, f"dataset.skip_damaged={skip}")
    return split.write_stats(tmp_path / "stats.json", config["dataset"], config, log=lambda line: None)


@pytest.fixture
def clean_tree(tmp_path):
    return write_tree(tmp_path / "images", classes=3, train=6, test=2, damaged=False)


def test_a_zero_byte_jpeg_and_a_text_file_named_jpg_are_damaged_files_named_in_the_decoders_words(clean_tree, tmp_path):
    """Each is refused by name, or with skip_damaged left out and counted; the reason is the decoder's own
    sentence (torchvision's message less its source location: formerly only the tail after its last comma)."""
    (clean_tree / "train" / "class0" / "zero.jpg").write_bytes(b"")
    (clean_tree / "train" / "class2" / "text.jpg").write_text("hello, not an image")
    with pytest.raises(KdsweepError, match=r"2 of the 26 image files .* cannot be decoded: train/class0/zero.jpg "
                                           r"\(the file is empty\); train/class2/text.jpg \(Unsupported image file.*"
                                           r"set dataset.skip_damaged: true"):
        _stats(clean_tree, tmp_path)
    stats = _stats(clean_tree, tmp_path, "true")
    assert [entry["file"] for entry in stats["skipped"]] == ["train/class0/zero.jpg", "train/class2/text.jpg"]
    assert stats["skipped"][1]["reason"].startswith("Unsupported image file. Only jpeg, png, webp and gif")


def test_a_png_named_jpg_is_read_by_its_contents(clean_tree, tmp_path):
    """The decoder goes by the bytes, not the name: a PNG called .jpg is one more training image, decoded right."""
    shutil.copy(clean_tree / "train" / "class2" / "train_2_0001.png", clean_tree / "train" / "class0" / "png.jpg")
    before = len(imagefolder.listings(config_of(clean_tree)["dataset"])[1])
    stats = _stats(clean_tree, tmp_path)
    assert stats["skipped"] == [] and stats["n_train"] + stats["n_val"] == before == 19
    as_jpg = streaming.decode((clean_tree / "train" / "class0" / "png.jpg").read_bytes(), "train/class0/png.jpg")
    as_png = streaming.decode((clean_tree / "train" / "class2" / "train_2_0001.png").read_bytes(), "a.png")
    assert torch.equal(as_jpg, as_png)


@pytest.mark.parametrize("link", ["loop to its class folder", "loop to the split folder", "to itself", "dangling"])
def test_a_looping_or_broken_symbolic_link_is_one_sentence(clean_tree, link):
    """A link to a folder that holds it made the listing follow it until the system's link limit (194 training
    images listed instead of 18, each many times); a file link to itself or to nothing ended the listing in an
    OSError traceback. Each is now refused by name, before any image is read."""
    folder = clean_tree / "train" / "class0"
    target, name = {"loop to its class folder": (folder, "again"),
                    "loop to the split folder": (clean_tree / "train", "up"),
                    "to itself": ("self.jpg", "self.jpg"),
                    "dangling": (clean_tree / "nowhere.jpg", "gone.jpg")}[link]
    (folder / name).symlink_to(target)
    with pytest.raises(KdsweepError) as refused:
        imagefolder.listings(config_of(clean_tree)["dataset"])
    message = str(refused.value)
    assert message.startswith(f"the imagefolder file train/class0/{name} ") and "\n" not in message
    assert message.endswith("; remove it or fix the link")


def test_a_symbolic_link_to_another_folder_is_followed_as_torchvision_does(clean_tree):
    """Not a loop: a class folder that links to images kept elsewhere is listed, in torchvision's order."""
    from torchvision.datasets import ImageFolder

    shutil.move(clean_tree / "train" / "class2", clean_tree / "kept")
    (clean_tree / "train" / "class2").symlink_to(clean_tree / "kept")
    _, train, _ = imagefolder.listings(config_of(clean_tree)["dataset"])
    assert [train.path(i) for i in range(len(train))] == [p for p, _ in ImageFolder(str(clean_tree / "train")).samples]


def test_a_training_class_with_no_images_is_one_sentence(clean_tree):
    """An empty class folder (or one of notes only) was a class the model was never shown; torchvision's
    ImageFolder refuses it too. A test class without images is only a class not tested."""
    (clean_tree / "train" / "class9").mkdir()
    (clean_tree / "train" / "class9" / "notes.txt").write_text("to do")
    with pytest.raises(KdsweepError, match=r"^the imagefolder training folder .*/train has a class 'class9' with no "
                                           r"image files; put its training images in .*/class9, or remove that folder$"):
        imagefolder.listings(config_of(clean_tree)["dataset"])
    shutil.rmtree(clean_tree / "train" / "class9")
    for image in (clean_tree / "val" / "class1").iterdir():
        image.unlink()
    classes, _, test = imagefolder.listings(config_of(clean_tree)["dataset"])
    assert classes == ["class0", "class1", "class2"] and sorted(set(test.labels.tolist())) == [0, 2]


def test_odd_file_names_and_files_that_are_not_regular(clean_tree, tmp_path):
    """A name with a newline is an image like any other (and a damaged one is named on one line); a name that is
    not UTF-8 (raised UnicodeEncodeError) and a FIFO named .jpg (its read would wait forever) are refused by name;
    a folder named .jpg is a folder."""
    folder = clean_tree / "train" / "class0"
    shutil.copy(clean_tree / "train" / "class2" / "train_2_0001.png", folder / "new\nline.png")
    (folder / "dir.jpg").mkdir()
    stats = _stats(clean_tree, tmp_path)
    assert stats["skipped"] == [] and stats["n_train"] + stats["n_val"] == 19
    (folder / "cut\nshort.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(KdsweepError) as refused:
        _stats(clean_tree, tmp_path / "again")
    assert "\n" not in str(refused.value) and "train/class0/cut\\nshort.jpg" in str(refused.value)
    (folder / "cut\nshort.jpg").unlink()
    bad = os.fsencode(folder) + b"/bad\xff.png"
    shutil.copy(folder / "new\nline.png", bad)
    with pytest.raises(KdsweepError, match=r"^the imagefolder file train/class0/bad\\udcff.png has a name that is not "
                                           r"UTF-8; rename it$"):
        imagefolder.listings(config_of(clean_tree)["dataset"])
    os.unlink(bad)
    os.mkfifo(folder / "pipe.jpg")
    with pytest.raises(KdsweepError, match=r"^the imagefolder file train/class0/pipe.jpg is not a regular file .*; "
                                           r"remove it or fix the link$"):
        imagefolder.listings(config_of(clean_tree)["dataset"])


def test_an_unreadable_file_is_a_damaged_file_named_with_the_reason():
    """chmod 000 does not stop root (these tests may run as root), so the read itself is made to fail: the
    file is named with the system's reason, as a damaged one (streaming.read)."""
    listing = imagefolder.Listing(Path("/proc/self"), np.asarray([b"mem"], dtype=bytes), np.zeros(1, dtype=np.int64),
                                  np.zeros(1, dtype=np.int64))
    with pytest.raises(streaming.Damaged, match=r"^self/mem \(Input/output error\)$"):
        streaming.read(listing, 0)
