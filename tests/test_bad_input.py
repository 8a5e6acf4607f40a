"""Bad input and faults through the real command line (cli.main, in this process): each ends with exit
status 2, no traceback, the one line `kdsweep: error: <sentence>` naming the thing at fault, and no
file that looks finished.

The table CASES is what was tried; `python tests/test_bad_input.py` prints it with the sentence each
case gives (the table of the hardening issue's note).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_kdsweep
from kdsweep import io

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
        for name in ("runs.csv", "table1.csv", "kd_vs_hard.csv", "grid.csv"):
            (self.torn_tables / "tables" / name).write_text("dataset,model,role\ndigits,resnet18,base")

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

    def evaluate(self, out, run=None):
        return ["evaluate", *self.config, "--run", run or self.teacher, "--teacher", self.teacher, "--out", out]


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
]


@pytest.fixture(scope="module")
def bad(tiny_study, tmp_path_factory):
    folder = tmp_path_factory.mktemp("test_bad_input")
    (folder / "bad.yaml").write_text("training:\n  lr_patience: -2\n")
    return Bad(tiny_study, folder)


def finished_files(folder):
    return sorted(str(p) for p in Path(folder).rglob("*")
                  if p.name in FINISHED or (p.suffix == ".json" and p.parent.name != "tensorboard"))


@pytest.mark.parametrize("name, arguments, words", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_sentence_and_leaves_nothing_finished(bad, tmp_path, name, arguments, words):
    result = run_kdsweep(*arguments(bad, tmp_path), cwd=tmp_path, check=False)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdsweep: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert finished_files(tmp_path) == [], "nothing that looks finished"
    assert not list(tmp_path.rglob(io.TEMPORARY)), "no temporary file left"


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
