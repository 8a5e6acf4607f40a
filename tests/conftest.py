"""Shared pytest fixtures."""

import pickle
import struct

import numpy as np
import pytest


# ---------------------------------------------------------------- data: synthetic CIFAR files

class _Py2Pickler(pickle._Pickler):
    """Pickles str and bytes as Python 2 `str`, as the real CIFAR files were written.

    Read back with encoding="latin1" (what torchvision does) the keys are str ('data');
    with encoding="bytes" they are b'data', exactly as with the downloaded files.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def _dump(path, obj):
    with open(path, "wb") as handle:
        _Py2Pickler(handle, protocol=2).dump(obj)


def write_synthetic_cifar(root, name="cifar10", n_train=50, n_test=20, seed=0):
    """Random images in CIFAR's on-disk layout under root; returns (train, test) as
    (uint8 N x 3 x 32 x 32, int64 labels) numpy pairs, in file order."""
    rng = np.random.default_rng(seed)
    num_classes = 10 if name == "cifar10" else 100
    names = [f"class{i}" for i in range(num_classes)]

    def part(n, offset):
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = (np.arange(n) + offset) % num_classes
        return images, labels

    train, test = part(n_train, 0), part(n_test, 3)

    def batch(images, labels, label_key, label):
        entry = {"batch_label": label, "data": images.reshape(len(images), 3072),  # channel-major rows
                 label_key: [int(x) for x in labels], "filenames": [f"img_{i}.png" for i in range(len(labels))]}
        if label_key == "fine_labels":
            entry["coarse_labels"] = [int(x) // 5 for x in labels]
        return entry

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        chunks = np.array_split(np.arange(n_train), 5)
        for i, idx in enumerate(chunks, start=1):
            _dump(folder / f"data_batch_{i}",
                  batch(train[0][idx], train[1][idx], "labels", f"training batch {i} of 5"))
        _dump(folder / "test_batch", batch(*test, "labels", "testing batch 1 of 1"))
        _dump(folder / "batches.meta", {"num_cases_per_batch": len(chunks[0]), "label_names": names, "num_vis": 3072})
    elif name == "cifar100":
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        _dump(folder / "train", batch(*train, "fine_labels", "training batch 1 of 1"))
        _dump(folder / "test", batch(*test, "fine_labels", "testing batch 1 of 1"))
        _dump(folder / "meta", {"fine_label_names": names, "coarse_label_names": [f"super{i}" for i in range(20)]})
    else:
        raise ValueError(name)
    return train, test


@pytest.fixture
def synthetic_cifar(tmp_path):
    """synthetic_cifar(name="cifar10", n_train=50, n_test=20, seed=0) -> (root, (train, test)).

    Writes small random CIFAR files in torchvision's layout under a fresh folder of tmp_path,
    so the real torchvision loading code runs on them (their md5s do not match the real ones).
    """
    def make(name="cifar10", n_train=50, n_test=20, seed=0):
        root = tmp_path / f"data_{name}_{seed}"
        return root, write_synthetic_cifar(root, name, n_train, n_test, seed)

    return make


# ---------------------------------------------------------------- the command line, in this process

class Result:
    """What a `python -m kdsweep ...` process would give: exit status, stdout, stderr."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_kdsweep(*args, cwd=None, check=True) -> Result:
    """`python -m kdsweep ARGS` run by cli.main in this process (the same code, without the seconds a
    fresh interpreter spends importing torch). An exception that would end the process with a
    traceback gives exit status 1 and the traceback on stderr, as the process would."""
    import contextlib
    import io
    import os
    import traceback

    from kdsweep import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main([str(arg) for arg in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except Exception:  # noqa: BLE001 - what the interpreter would print
            traceback.print_exc(file=err)
            code = 1
    result = Result(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"kdsweep {args[0]} failed ({code}):\n{result.stderr}")
    return result


def run_until_epoch(folder, args, epoch, stop_signal):
    """Start `python -m kdsweep ARGS` as a process, wait until it logs `epoch`, send it a signal;
    return its exit status (negative: killed by that signal)."""
    import os
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "kdsweep", *map(str, args)], cwd=folder,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        if f"  epoch {epoch:3d}" in line:
            process.send_signal(stop_signal)
            break
    process.stdout.read()
    return process.wait()


# ---------------------------------------------------------------- one trained teacher per test run

# The digits cut every training test uses: 400 images (360 train / 40 val), 40 test images, one thread.
TINY_STUDY = {
    "dataset": {"name": "digits", "subset": 400},
    "training": {"batch_size": 64, "max_epochs": 3, "eval_batch_size": 512, "bn_momentum": 0.1,
                 "early_stopping_patience": 10},
    "attacks": {"pgd": {"steps": 2}},
    "runtime": {"device": "cpu", "threads": 1},
}


class TinyStudy:
    """A folder with tiny.yaml (TINY_STUDY), stats.json and a trained MobileNetV3-small teacher."""

    def __init__(self, folder):
        from pathlib import Path
        import json

        self.folder = Path(folder)
        self.root = Path(__file__).resolve().parents[1]
        (self.folder / "tiny.yaml").write_text(json.dumps(TINY_STUDY))
        self.config = ["--config", self.root / "config.yaml", "--config", self.folder / "tiny.yaml"]
        self.stats = self.folder / "stats.json"
        self.teacher = self.folder / "teacher"
        run_kdsweep("stats", *self.config, "--out", self.stats, cwd=self.folder)
        run_kdsweep("train", *self.config, "--role", "teacher", "--model", "mobilenet_v3_small", "--seed", 0,
                    "--stats", self.stats, "--out", self.teacher, "training.max_epochs=1", cwd=self.folder)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """One tiny digits study with a trained teacher, shared by every test of a test run (read it,
    never change it: write runs into folders of your own under it)."""
    return TinyStudy(tmp_path_factory.mktemp("tiny-study"))


# Files that take longest first, so that their tests start first (pyproject: --dist load --maxschedchunk 1).
SLOWEST_FIRST = ("test_slurm.py", "test_workflow.py", "test_runtime.py", "test_train.py", "test_bf16_parity.py",
                 "test_status.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        first = SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)
        # a test that fails the cluster's node has it to itself (tests/test_slurm.py): after the others
        return first, item.get_closest_marker("fails_the_node") is not None

    items.sort(key=rank)  # stable: the order within a file stays


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject): a worker per core, and two more when the SLURM tests run: those wait on
    the cluster's jobs, which use the cores, most of the time."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    expression = config.getoption("markexpr") or ""
    return cores + (0 if "not slurm" in expression else 2)
