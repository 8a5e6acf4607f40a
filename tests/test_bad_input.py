"""Bad input and faults through the real command line (cli.main, in this process): each ends with exit
status 2, no traceback, the one line `kdsweep: error: <sentence>` naming the thing at fault, and no
file that looks finished.

The table CASES is what was tried; `python tests/test_bad_input.py` prints it with the sentence each
case gives (the table of the hardening issue's note).
"""

import contextlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import _dump, run_kdsweep, write_synthetic_cifar
from kdsweep import io, lock

ROOT = Path(__file__).resolve().parents[1]
# Files whose presence says "finished" (a run's metrics.json etc., a job's JSON or table).
FINISHED = ("metrics.json", "model.pt", "history.csv")


class Bad:
    """A folder of broken inputs beside the shared tiny study (conftest.tiny_study)."""

    def __init__(self, tiny, folder):
        self.tiny, self.folder = tiny, folder
        self.config = tiny.config
        self.stats, self.teacher = tiny.stats, tiny.teacher
        self.file = folder / "a-file"
        self.file.write_text("not a folder\n")
        # a teacher trained on CIFAR-10 (its record says so), for a digits student
        self.cifar_teacher = folder / "cifar-teacher"
        shutil.copytree(tiny.teacher, self.cifar_teacher)
        metrics = io.read_json(self.cifar_teacher / "metrics.json")
        metrics["config"]["dataset"] = {**metrics["config"]["dataset"], "name": "cifar10", "subset": None}
        io.write_json(self.cifar_teacher / "metrics.json", metrics)
        # a teacher whose metrics.json is not JSON
        self.torn_teacher = folder / "torn-teacher"
        shutil.copytree(tiny.teacher, self.torn_teacher)
        (self.torn_teacher / "metrics.json").write_text('{"role": "teacher", "model": ')
        # stats files that parse but are wrong inside
        stats = io.read_json(tiny.stats)
        self.typo_stats = folder / "typo-stats.json"
        io.write_json(self.typo_stats, {**stats, "mean": "abc"})
        self.flat_stats = folder / "flat-stats.json"
        io.write_json(self.flat_stats, {**stats, "std": [0.0, 0.0, 0.0]})
        # an empty study folder, and one whose runs.csv was cut mid-row
        self.empty = folder / "empty-study"
        (self.empty / "runs").mkdir(parents=True)
        self.torn_tables = folder / "torn-study"
        (self.torn_tables / "tables").mkdir(parents=True)
        for name in ("runs.csv", "table1.csv", "kd_vs_hard.csv", "grid.csv", "methods.csv", "method_grid.csv",
                     "per_class.csv"):
            (self.torn_tables / "tables" / name).write_text("dataset,model,role\ndigits,resnet18,base")
        # inputs of this folder's own that an output must not overwrite (the shared study's stay safe if a
        # refusal ever breaks): a teacher, a stats file, a config file and a link to it
        self.own_teacher = folder / "own-teacher"
        shutil.copytree(tiny.teacher, self.own_teacher)
        self.own_stats = folder / "own-stats.json"
        shutil.copy(tiny.stats, self.own_stats)
        self.study_file = folder / "study.yaml"
        shutil.copy(tiny.folder / "tiny.yaml", self.study_file)
        self.study_link = folder / "study-link.yaml"
        self.study_link.symlink_to(self.study_file)
        self.own_config = ["--config", ROOT / "config.yaml", "--config", self.study_file]
        # CIFAR-10 folders (the real format, tests/conftest.py), each damaged in one way
        self.cifar = {name: self._cifar(name, damage) for name, damage in CIFAR_DAMAGE.items()}

    def _cifar(self, name, damage):
        root = self.folder / f"cifar-{name}"
        write_synthetic_cifar(root, "cifar10", n_train=50, n_test=20)
        damage(root / "cifar-10-batches-py")
        return root

    def stats_of(self, cifar, out):
        return ["stats", *self.config, "dataset.name=cifar10", f"dataset.root={self.cifar[cifar]}", "dataset.subset=null",
                "--out", out]

    def train(self, out, *extra, stats=None):
        return ["train", *self.config, "--role", "baseline", "--model", "mobilenet_v3_small", "--seed", 1,
                "--stats", stats or self.stats, "--out", out, "training.max_epochs=1", *extra]

    def distill(self, outs, teacher=None, *extra):
        points = [arg for i, out in enumerate(outs)
                  for arg in ("--temperature", 4, "--soft-weight", 0.5 + 0.1 * i, "--out", out)]
        return ["distill", *self.config, "--student", "mobilenet_v3_small", "--teacher", teacher or self.teacher,
                "--seed", 1, "--stats", self.stats, *points, "training.max_epochs=1", *extra]

    def attack(self, out, run=None, *extra, epsilon=0.05):
        return ["attack", *self.config, "--run", run or self.teacher, "--epsilon", epsilon, "--out", out, *extra]

    def evaluate(self, out, run=None, *extra):
        return ["evaluate", *self.config, "--run", run or self.teacher, "--teacher", self.teacher, "--out", out, *extra]


def _change(file, change):
    """Rewrite one pickled CIFAR file after change(entry)."""
    def damage(folder):
        with open(folder / file, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        change(entry)
        _dump(folder / file, entry)
    return damage


CIFAR_DAMAGE = {
    "label-10": _change("data_batch_2", lambda entry: entry["labels"].__setitem__(3, 10)),
    "few-labels": _change("data_batch_1", lambda entry: entry.update(labels=entry["labels"][:-2])),
    "a-string": lambda folder: (folder / "data_batch_3").write_bytes(pickle.dumps("not a batch")),
    "five-classes": _change("batches.meta", lambda entry: entry.update(label_names=entry["label_names"][:5])),
    "int64-pixels": _change("test_batch", lambda entry: entry.update(data=entry["data"].astype("int64"))),
    "cut-short": lambda folder: (folder / "data_batch_4").write_bytes((folder / "data_batch_4").read_bytes()[:300]),
}
LONG_NAME = "x" * 300  # longer than a file name may be (255)


# (id, arguments given the Bad folder f and a fresh folder t, words the sentence must hold)
CASES = [
    # silent data loss or wrong results before
    ("two points, one folder", lambda f, t: f.distill([t / "same", t / "same"]), ["need folders of their own", "same"]),
    ("a point's folder inside another's", lambda f, t: f.distill([t / "outer", t / "outer" / "inner"]),
     ["overlaps", "outer"]),
    ("a digits student from a CIFAR-10 teacher", lambda f, t: f.distill([t / "kd"], f.cifar_teacher),
     ["cifar-teacher", "dataset.name = 'cifar10'", "'digits'"]),
    ("an attack on a run of another dataset", lambda f, t: f.attack(t / "x.json", f.cifar_teacher),
     ["dataset.name = 'cifar10'"]),
    ("an evaluation of a run of another dataset", lambda f, t: f.evaluate(t / "x.json", f.cifar_teacher),
     ["dataset.name = 'cifar10'"]),
    ("attack --epsilon 5", lambda f, t: f.attack(t / "x.json", epsilon=5), ["--epsilon 5.0 is out of bounds", "maximum of 1"]),
    ("attack --epsilon nan", lambda f, t: f.attack(t / "x.json", epsilon="nan"), ["--epsilon nan is out of bounds"]),
    ("distill --temperature inf", lambda f, t: [a if a != 4 else "inf" for a in f.distill([t / "kd"])],
     ["--temperature inf is out of bounds"]),
    ("train --seed -1", lambda f, t: [a if a != 1 else -1 for a in f.train(t / "run")], ["--seed -1 is out of bounds"]),
    ("aggregate of a folder without runs", lambda f, t: ["aggregate", f.empty], ["holds no finished run"]),
    ("plots without tables or runs", lambda f, t: ["plots", f.empty, "--soft-weight", 0.9], ["holds no finished run"]),
    ("plots of a runs.csv cut mid-row", lambda f, t: ["plots", f.torn_tables, "--soft-weight", 0.9],
     ["runs.csv is cut short", "python -m kdsweep aggregate"]),
    # tracebacks before
    ("--config a folder", lambda f, t: ["stats", "--config", t, "--out", t / "stats.json"], ["is a folder, not a file"]),
    ("--config a missing file", lambda f, t: ["stats", "--config", t / "nope.yaml", "--out", t / "s.json"],
     ["does not exist"]),
    ("an override that is not YAML", lambda f, t: f.train(t / "run", "temperatures=[1,"),
     ["override 'temperatures=[1,' is not valid YAML"]),
    ("a stats.json with a wrong type inside", lambda f, t: f.train(t / "run", stats=f.typo_stats),
     ["typo-stats.json is damaged", "'mean' is 'abc'"]),
    ("a teacher's metrics.json that is not JSON", lambda f, t: f.distill([t / "kd"], f.torn_teacher),
     ["torn-teacher", "is not valid JSON"]),
    ("train --out an existing file", lambda f, t: f.train(f.file), ["a-file", "File exists"]),
    ("train --out under a file", lambda f, t: f.train(f.file / "run"), ["a-file", "Not a directory"]),
    ("stats --out under a file", lambda f, t: ["stats", *f.config, "--out", f.file / "stats.json"],
     ["cannot write", "a-file"]),
    ("attack --out under a file", lambda f, t: f.attack(f.file / "x.json"), ["cannot write", "a-file"]),
    ("stats --out on a pseudo file system", lambda f, t: ["stats", *f.config, "--out", "/proc/kdsweep/stats.json"],
     ["cannot write /proc/kdsweep/stats.json"]),
    ("training.lr=nan", lambda f, t: f.train(t / "run", "training.lr=.nan"),
     ["'training.lr' is nan", "the override 'training.lr=.nan'"]),
    ("training.lr=.inf", lambda f, t: f.train(t / "run", "training.lr=.inf"), ["'training.lr' is inf"]),
    ("training.lr=1e6 (validation loss goes NaN)", lambda f, t: f.train(t / "run", "training.lr=1e6"),
     ["non-finite", "lower training.lr"]),
    # misleading before
    ("a bad override names itself", lambda f, t: f.train(t / "run", "training.batch_size=-3"),
     ["'training.batch_size'", "the override 'training.batch_size=-3'"]),
    ("a study file's bad value names the file", lambda f, t: ["stats", *f.config, "--config", f.folder / "bad.yaml",
                                                              "--out", t / "s.json"], ["bad.yaml"]),
    ("a stats file with std 0", lambda f, t: f.train(t / "run", stats=f.flat_stats),
     ["standard deviation of 0.0", "constant"]),
    ("--stats a folder", lambda f, t: f.train(t / "run", stats=f.folder), ["is a folder, not a stats file"]),
    # issue 23: nothing waits forever (an unwritable run folder with --wait-for-lock looped at 100% CPU;
    # test_an_unwritable_run_folder_with_wait_for_lock_ends_within_seconds times it)
    ("train --wait-for-lock into a folder under a file", lambda f, t: f.train(f.file / "run", "--wait-for-lock"),
     ["cannot create the run folder", "a-file/run", "Not a directory"]),
    ("status --watch 0", lambda f, t: ["status", "--configfile", ROOT / "config.yaml", "--watch", 0],
     ["--watch 0.0 is no pause", "above 0"]),
    ("status --watch nan", lambda f, t: ["status", "--configfile", ROOT / "config.yaml", "--watch", "nan"],
     ["--watch nan"]),
    ("status --watch inf", lambda f, t: ["status", "--configfile", ROOT / "config.yaml", "--watch", "inf"],
     ["--watch inf", "at most 86400"]),
    # issue 23: every value the schema admits works, or the schema refuses it
    ("train --seed 2**32 (numpy's seeds end at 2**32 - 1)", lambda f, t: [a if a != 1 else 2**32 for a in f.train(t / "run")],
     ["--seed 4294967296 is out of bounds", "maximum of 4294967295"]),
    ("dataset.split_seed=2**64", lambda f, t: ["stats", *f.config, f"dataset.split_seed={2**64}", "--out", t / "s.json"],
     ["'dataset.split_seed'", "maximum of 4294967295"]),
    ("attacks.pgd.seed=2**32", lambda f, t: f.attack(t / "x.json", None, "--attack", "pgd", f"attacks.pgd.seed={2**32}"),
     ["'attacks.pgd.seed'", "maximum of 4294967295"]),
    ("confirm.seeds=[2**32] (a confirmation job's seed)",
     lambda f, t: ["stats", *f.config, f"confirm.seeds=[{2**32}]", "--out", t / "s.json"], ["'confirm.seeds.0'"]),
    ("teacher.seed=2**40", lambda f, t: ["stats", *f.config, f"teacher.seed={2**40}", "--out", t / "s.json"],
     ["'teacher.seed'"]),
    ("training.batch_size=1 (BatchNorm cannot train on one image)", lambda f, t: f.train(t / "run", "training.batch_size=1"),
     ["'training.batch_size'", "minimum of 2"]),
    ("training.batch_size=2.5", lambda f, t: f.train(t / "run", "training.batch_size=2.5"), ["2.5 is not of type 'integer'"]),
    ("distill --temperature 1e30 (T**2 overflows float32)", lambda f, t: [a if a != 4 else "1e30" for a in f.distill([t / "kd"])],
     ["--temperature 1e+30 is out of bounds", "maximum of 1000"]),
    ("temperatures=[1e-30]", lambda f, t: ["stats", *f.config, "temperatures=[1e-30]", "--out", t / "s.json"],
     ["'temperatures.0'", "minimum of 0.001"]),
    ("attacks.pgd.relative_step_size=1e300 (NaN pixels)",
     lambda f, t: f.attack(t / "x.json", None, "--attack", "pgd", "attacks.pgd.relative_step_size=1e300"),
     ["'attacks.pgd.relative_step_size'", "maximum of 100"]),
    ("attacks.pgd.steps=2**70 (an attack that never ends)",
     lambda f, t: f.attack(t / "x.json", None, "--attack", "pgd", f"attacks.pgd.steps={2**70}"), ["'attacks.pgd.steps'"]),
    ("evaluation.ece_bins=10**12 (8 TB of bins)", lambda f, t: f.evaluate(t / "x.json", None, f"evaluation.ece_bins={10**12}"),
     ["'evaluation.ece_bins'", "maximum of 10000"]),
    ("augmentation.pad=10**6", lambda f, t: f.train(t / "run", f"augmentation.pad={10**6}"), ["'augmentation.pad'"]),
    ("runtime.threads=2**40", lambda f, t: f.train(t / "run", f"runtime.threads={2**40}"), ["'runtime.threads'"]),
    ("a study name of 300 characters", lambda f, t: ["config", *f.config, "study=" + LONG_NAME, "--out", t / "c.yaml"],
     ["'study'", "too long"]),
    # issue 23: every dataset file a job reads is checked against its format
    ("a CIFAR label out of range", lambda f, t: f.stats_of("label-10", t / "s.json"),
     ["data_batch_2", "the label 10", "0 to 9", "python -m kdsweep download"]),
    ("a CIFAR batch with fewer labels than images", lambda f, t: f.stats_of("few-labels", t / "s.json"),
     ["data_batch_1", "10 images but 8 labels"]),
    ("a CIFAR batch that is another pickle", lambda f, t: f.stats_of("a-string", t / "s.json"),
     ["data_batch_3", "holds a str, not a CIFAR batch"]),
    ("a CIFAR meta file naming 5 classes", lambda f, t: f.stats_of("five-classes", t / "s.json"),
     ["batches.meta", "5 class names", "not the 10"]),
    ("a CIFAR batch of int64 pixels", lambda f, t: f.stats_of("int64-pixels", t / "s.json"),
     ["test_batch", "int64", "not rows of 3072 bytes"]),
    ("a CIFAR batch cut short", lambda f, t: f.stats_of("cut-short", t / "s.json"),
     ["data_batch_4", "unreadable", "cut short"]),
    # issue 23: an output path that would overwrite an input is refused, before any work
    ("train --record RUN/metrics.json", lambda f, t: f.train(t / "run", "--record", t / "run" / "metrics.json"),
     ["--record", "lies inside the run folder --out", "give --record a path outside it"]),
    ("train --record the stats file", lambda f, t: f.train(t / "run", "--record", f.own_stats, stats=f.own_stats),
     ["would overwrite the stats file", "own-stats.json"]),
    ("train --record a --config file", lambda f, t: [*f.train(t / "run", "--record", f.study_file), *f.own_config],
     ["would overwrite the config file", "study.yaml"]),
    ("distill --out the teacher's folder, --rerun-stale",
     lambda f, t: f.distill([f.own_teacher], f.own_teacher, "--rerun-stale"), ["is the teacher run folder", "own-teacher"]),
    ("distill --out a folder inside the teacher's", lambda f, t: f.distill([f.own_teacher / "kd"], f.own_teacher),
     ["lies inside the teacher run folder"]),
    ("distill --out a folder that holds the teacher's", lambda f, t: f.distill([f.folder], f.own_teacher),
     ["holds the teacher run folder"]),
    ("attack --out RUN/model.pt", lambda f, t: f.attack(f.own_teacher / "model.pt", f.own_teacher),
     ["--out", "model.pt lies inside the run folder", "own-teacher"]),
    ("evaluate --out the teacher's metrics.json",
     lambda f, t: ["evaluate", *f.config, "--run", f.teacher, "--teacher", f.own_teacher, "--out", f.own_teacher / "metrics.json"],
     ["lies inside the teacher run folder"]),
    ("stats --out a --config file", lambda f, t: ["stats", *f.own_config, "--out", f.study_file],
     ["would overwrite the config file", "study.yaml"]),
    ("stats --out a link to a --config file", lambda f, t: ["stats", *f.own_config, "--out", f.study_link],
     ["study-link.yaml would overwrite the config file"]),
    ("stats --out a dataset file", lambda f, t: f.stats_of("label-10", f.cifar["label-10"] / "cifar-10-batches-py" / "x"),
     ["lies inside the cifar10 data"]),
    ("config --out its own --config file", lambda f, t: ["config", "--config", f.study_file, "--out", f.study_file],
     ["would overwrite the config file"]),
    ("best-point --out RUN/metrics.json", lambda f, t: ["best-point", "--out", f.own_teacher / "metrics.json", f.own_teacher],
     ["lies inside the run folder"]),
    ("bench --json a --config file", lambda f, t: ["bench", *f.own_config, "--quick", "--json", f.study_file],
     ["--json", "would overwrite the config file"]),
    # issue 23: command-line values
    ("train --seed abc", lambda f, t: [a if a != 1 else "abc" for a in f.train(t / "run")], ["argument --seed: invalid int value: 'abc'"]),
    ("a missing flag", lambda f, t: [a for a in f.train(t / "run") if a != "--model" and a != "mobilenet_v3_small"],
     ["the following arguments are required: --model"]),
    ("train --out ''", lambda f, t: f.train(""), ["argument --out: an empty path"]),
    ("attack --run a name longer than 255", lambda f, t: f.attack(t / "x.json", t / LONG_NAME), ["File name too long"]),
    ("--stats a name longer than 255", lambda f, t: f.train(t / "run", stats=t / LONG_NAME), ["File name too long"]),
    ("plots --soft-weight nan", lambda f, t: ["plots", f.torn_tables, "--soft-weight", "nan"],
     ["--soft-weight nan is out of bounds"]),
    ("plots --students of no architecture", lambda f, t: ["plots", f.torn_tables, "--soft-weight", 0.5, "--students", "vgg"],
     ["--students names 'vgg'"]),
    ("bench --seed abc", lambda f, t: ["bench", "--seed", "abc"], ["argument --seed: invalid int value: 'abc'"]),
    ("bench --seed 2**32", lambda f, t: ["bench", "--quick", "--seed", 2**32], ["--seed 4294967296 is out of bounds"]),
]


@pytest.fixture(scope="module")
def bad(tiny_study, tmp_path_factory):
    folder = tmp_path_factory.mktemp("test_bad_input")
    (folder / "bad.yaml").write_text("training:\n  lr_patience: -2\n")
    return Bad(tiny_study, folder)


def snapshot(folder):
    """Every file under folder with its inode, size and modification time: an atomic write (a new inode)
    or any write in place changes it."""
    return {str(p): (s.st_ino, s.st_size, s.st_mtime_ns) for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and (s := p.stat())}


def finished_files(folder):
    return sorted(str(p) for p in Path(folder).rglob("*")
                  if p.name in FINISHED or (p.suffix == ".json" and p.parent.name != "tensorboard"))


@pytest.mark.parametrize("name, arguments, words", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_sentence_and_leaves_nothing_finished(bad, tmp_path, name, arguments, words):
    inputs = snapshot(bad.folder)
    result = run_kdsweep(*arguments(bad, tmp_path), cwd=tmp_path, check=False)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdsweep: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert finished_files(tmp_path) == [], "nothing that looks finished"
    assert not list(tmp_path.rglob(io.TEMPORARY)), "no temporary file left"
    assert snapshot(bad.folder) == inputs, "the inputs are as they were"


def test_overrides_may_come_anywhere_and_a_study_file_needs_no_config_yaml(bad, tmp_path):
    """Two things that used to fail: key=value before the options, and --config studies/demo.yaml alone
    (config.yaml's defaults always come first)."""
    args = bad.train(tmp_path / "run")
    run_kdsweep(*args[:1], "training.max_epochs=1", *args[1:], cwd=tmp_path)
    assert (tmp_path / "run" / "metrics.json").is_file()
    run_kdsweep("stats", "--config", ROOT / "studies" / "demo.yaml", "--out", tmp_path / "demo-stats.json", cwd=tmp_path)
    assert io.read_json(tmp_path / "demo-stats.json")["dataset"] == "digits"


def test_scratch_of_a_killed_write_goes_when_the_run_finishes(bad, tmp_path):
    """A SIGKILL during the write of best.pt leaves its temporary file (.best.pt.<random>.tmp): the run
    removes it with its other scratch once it finishes."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".best.pt.x1y2.tmp").write_bytes(b"half a file")
    run_kdsweep(*bad.train(run), cwd=tmp_path)
    assert (run / "metrics.json").is_file() and not list(run.glob(io.TEMPORARY))


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (real ENOSPC on write), or a skip where this process may not mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_disk_that_fills_up_mid_write_is_one_sentence_and_leaves_nothing(bad, small_disk):
    """Training into a 1 MiB file system: the first best.pt (6 MB) cannot be written."""
    run = small_disk / "run"
    result = run_kdsweep(*bad.train(run), cwd=small_disk, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("kdsweep: error: cannot write ") and "No space left on device" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not any((run / name).exists() for name in FINISHED) and not list(run.glob(io.TEMPORARY))


def test_a_read_only_file_system_is_one_sentence(bad, small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for args in (["stats", *bad.config, "--out", small_disk / "stats.json"], bad.attack(small_disk / "x.json"),
                 bad.train(small_disk / "run")):
        result = run_kdsweep(*args, cwd=small_disk, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "Read-only file system" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(small_disk.iterdir()) == []


# ---------------------------------------------------------------- issue 23: nothing waits forever


class Overran(BaseException):
    """Raised by `deadline`: a BaseException, so that no `except OSError` or `except Exception` of the code
    under test can swallow it (a TimeoutError is an OSError)."""


@contextlib.contextmanager
def deadline(seconds):
    """Overran in this (main) thread after `seconds`: a wait that would never end fails the test instead
    of hanging it (where the test runs in another thread, nothing is armed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise Overran(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def ends_within_seconds(args, cwd, words, seconds=5):
    started = time.monotonic()
    with deadline(60):
        result = run_kdsweep(*args, cwd=cwd, check=False)
    elapsed = time.monotonic() - started
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and all(word in result.stderr for word in words), result.stderr
    assert elapsed < seconds, f"took {elapsed:.1f} s"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_unwritable_run_folder_with_wait_for_lock_ends_within_seconds(bad, tmp_path):
    """--wait-for-lock (every workflow job) waits for a held lock only: a run folder that cannot be made
    (under /proc, which refuses a new folder even to root, or under a regular file) is one sentence at
    once; it used to spin at 100% CPU, forever."""
    ends_within_seconds(bad.train("/proc/kdsweep-test/run", "--wait-for-lock"), tmp_path,
                        ["cannot create the run folder /proc/kdsweep-test/run"])
    ends_within_seconds(bad.distill([tmp_path / "kd", bad.file / "kd"], None, "--wait-for-lock"), tmp_path,
                        ["cannot create the run folder", "a-file/kd", "Not a directory"])
    assert not (tmp_path / "kd" / "metrics.json").exists()


def test_a_read_only_run_folder_with_wait_for_lock_ends_within_seconds(bad, small_disk):
    """The issue's own case: a read-only file system (a real one: root writes through file modes)."""
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    ends_within_seconds(bad.train(small_disk / "run", "--wait-for-lock"), small_disk,
                        ["cannot create the run folder", "Read-only file system"])


def test_wait_for_lock_still_waits_for_a_live_holder(tmp_path):
    """What --wait-for-lock is for: a folder held by another process (here another open file of this
    one: flock locks belong to open files) is waited for, with one line said, and taken once let go."""
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    holder = open(run / lock.LOCK, "a+")
    fcntl.flock(holder, fcntl.LOCK_EX)
    holder.write("process 1 on elsewhere")
    holder.flush()

    def let_go():
        (run / lock.LOCK).unlink()  # as run_folders lets go: the file first, then the lock
        holder.close()

    said = []
    timer = threading.Timer(1.0, let_go)
    started = time.monotonic()
    timer.start()
    try:
        with deadline(60), lock.run_folders([run], wait=True, log=said.append):
            waited = time.monotonic() - started
            assert lock.read_holder(run).pid == os.getpid()
    finally:
        timer.join()
    assert waited >= 0.9 and len(said) == 1 and "process 1 on elsewhere" in said[0] and "waiting" in said[0]
    assert not (run / lock.LOCK).exists()


# ---------------------------------------------------------------- issue 23: every admitted value works


def test_seeds_at_the_schema_bound_work_end_to_end(bad, tmp_path):
    """The largest seed the schema admits (2**32 - 1, numpy's last) as the split seed, a run's seed and
    PGD's: stats, one epoch of training and an attack all finish."""
    from kdsweep.config import schema

    top = schema()["$defs"]["seed"]["maximum"]
    stats = tmp_path / "stats.json"
    run_kdsweep("stats", *bad.config, f"dataset.split_seed={top}", "--out", stats, cwd=tmp_path)
    run = tmp_path / "run"
    args = [a if a != 1 else top for a in bad.train(run, f"dataset.split_seed={top}", stats=stats)]
    run_kdsweep(*args, cwd=tmp_path)
    metrics = io.read_json(run / "metrics.json")
    assert metrics["seed"] == top and metrics["config"]["dataset"]["split_seed"] == top
    run_kdsweep(*bad.attack(tmp_path / "pgd.json", run, "--attack", "pgd", f"attacks.pgd.seed={top}",
                            f"dataset.split_seed={top}"), cwd=tmp_path)
    assert io.read_json(tmp_path / "pgd.json")["params"]["seed"] == top


def test_whole_floats_are_counts_and_yaml_exponents_are_numbers():
    """64.0 passes JSON Schema's integer but no Python count, and YAML 1.1 reads 1e-3 in a list as a
    string: the config has the numbers the schema means, from overrides and from snakemake alike."""
    from kdsweep.config import coerce_strings, load_config

    config = load_config([ROOT / "config.yaml"], ["training.batch_size=64.0", "dataset.subset=4e2", "seeds=[1.0, 2]",
                                                  "temperatures=[1e-1, 4]", "training.lr=1e-3"])
    assert config["training"]["batch_size"] == 64 and isinstance(config["training"]["batch_size"], int)
    assert config["dataset"]["subset"] == 400 and isinstance(config["dataset"]["subset"], int)
    assert config["seeds"] == [1, 2] and all(isinstance(seed, int) for seed in config["seeds"])
    assert config["temperatures"] == [0.1, 4] and config["training"]["lr"] == 0.001
    coerced = coerce_strings({"seeds": ["3.0"], "training": {"bn_momentum": 1.0, "lr": 0.5}})
    assert coerced == {"seeds": [3], "training": {"bn_momentum": 1, "lr": 0.5}}
    # one spelling per number, also where the schema takes any number: a study file's 1.0 is its 1
    assert isinstance(coerced["training"]["bn_momentum"], int)


# ---------------------------------------------------------------- issue 23: an interrupted command ends cleanly


def test_ctrl_c_during_an_attack_is_one_line_and_leaves_no_result(bad, tmp_path):
    """Ctrl-C (SIGINT) outside training: `kdsweep: interrupted`, exit 130, no traceback, no result file."""
    out = tmp_path / "pgd.json"
    args = bad.attack(out, None, "--attack", "pgd", "attacks.pgd.steps=10000")
    process = subprocess.Popen([sys.executable, "-m", "kdsweep", *map(str, args)], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = process.stdout.readline()  # the attack's first line: its model and data are loaded
    assert "attacking" in started, (started, process.stderr.read()[-2000:])
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and err.strip() == "kdsweep: interrupted", (process.returncode, err[-2000:])
    assert not out.exists() and not list(tmp_path.glob(io.TEMPORARY))


def test_an_interrupt_that_came_through_code_run_from_a_string_still_exits_130(tmp_path):
    """CPython (3.8-3.12) kills a process started as `python -m` by SIGINT at exit where a KeyboardInterrupt
    ever left code run from a string (dataclasses and namedtuples are made so while torch imports), caught
    or not: a Ctrl-C there gave returncode -2, not 130."""
    (tmp_path / "interrupted_in_exec.py").write_text(
        "from kdsweep.cli import _end\ntry:\n    exec('raise KeyboardInterrupt')\n"
        "except KeyboardInterrupt as err:\n    _end(err, False)\n")
    result = subprocess.run([sys.executable, "-m", "interrupted_in_exec"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 130 and result.stderr == "kdsweep: interrupted\n", result


def test_slurm_profile_refuses_values_sbatch_would_refuse(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for args, words in ((["--jobs", 0], "--jobs 0 would let no job run"),
                        (["--account", "my project"], "--account 'my project' is no SLURM account name"),
                        (["--partition", ""], "--partition '' is no SLURM partition name")):
        result = run_kdsweep("slurm-profile", *args, check=False)
        assert result.returncode == 2 and result.stderr.startswith(f"kdsweep: error: {words}"), result.stderr
    assert not list(tmp_path.rglob("*")), "no profile written"


if __name__ == "__main__":
    # The table of the note: every case and the sentence it gives.
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import TinyStudy

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "study").mkdir()
        tiny = TinyStudy.build(scratch / "study")
        folder = scratch / "bad"
        folder.mkdir()
        (folder / "bad.yaml").write_text("training:\n  lr_patience: -2\n")
        setup = Bad(tiny, folder)
        print("| input or fault | exit | what kdsweep says |\n| --- | --- | --- |")
        for name, arguments, _ in CASES:
            case = scratch / name.replace(" ", "_").replace("/", "_")
            case.mkdir()
            result = run_kdsweep(*arguments(setup, case), cwd=case, check=False)
            text = result.stderr.strip().replace(str(scratch), "…").replace("|", "\\|")
            print(f"| {name} | {result.returncode} | {text} |")
