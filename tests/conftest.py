"""Shared pytest fixtures."""

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]  # the checkout


def kd_run(role, model, seed, temperature=None, soft_weight=None):
    """A run as the reference study has them: a teacher or baseline, or a kd point (T, w)."""
    from kdsweep.plan import Run

    if temperature is None and soft_weight is None:
        return Run(role, model, seed)
    return Run.distilled_run(role, model, seed, "kd", {"temperature": temperature, "soft_weight": soft_weight})


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

# The digits cut every training test uses: 400 training images (360 train / 40 val), all 360 test images, one thread.
TINY_STUDY = {
    "dataset": {"name": "digits", "subset": 400},
    "training": {"batch_size": 64, "max_epochs": 3, "eval_batch_size": 512, "bn_momentum": 0.1,
                 "early_stopping_patience": 10},
    "attacks": {"pgd": {"steps": 2}},
    "runtime": {"device": "cpu", "threads": 1},
}


def built_once(tmp_path_factory, name, build):
    """The folder `name` of this test run, filled by build(folder) once and shared by every xdist
    worker (pytest-xdist's recipe for a session fixture that runs once: a lock in the test run's
    shared temporary folder). A build that failed midway is thrown away and tried again by the next
    worker that asks (pytest keeps a session fixture's error for the rest of its worker). Tests read
    what it holds and write into folders of their own."""
    import fcntl
    import os
    import shutil

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' basetemps are popen-gwN under the run's
    folder, built = root / name, root / f"{name}.built"
    with open(root / f"{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


class TinyStudy:
    """A folder with tiny.yaml (TINY_STUDY), stats.json and a trained MobileNetV3-small teacher
    (TinyStudy.build(folder) writes them)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.config = ["--config", ROOT / "config.yaml", "--config", self.folder / "tiny.yaml"]
        self.stats = self.folder / "stats.json"
        self.teacher = self.folder / "teacher"

    @classmethod
    def build(cls, folder):
        import json

        study = cls(folder)
        (study.folder / "tiny.yaml").write_text(json.dumps(TINY_STUDY))
        run_kdsweep("stats", *study.config, "--out", study.stats, cwd=study.folder)
        run_kdsweep("train", *study.config, "--role", "teacher", "--model", "mobilenet_v3_small", "--seed", 0,
                    "--stats", study.stats, "--out", study.teacher, "training.max_epochs=1", cwd=study.folder)
        return study

    def beside(self, folder):
        """folder (created), with links to this study's tiny.yaml, stats.json and teacher: a module's
        own folder that trains runs of the shared study."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tiny.yaml", "stats.json", "teacher"):
            (folder / name).symlink_to(self.folder / name)
        return folder


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """One tiny digits study with a trained teacher, shared by every test of a test run (read it,
    never change it: train runs in a folder of your own, TinyStudy.beside)."""
    return TinyStudy(built_once(tmp_path_factory, "tiny-study", TinyStudy.build))


# ---------------------------------------------------------------- one finished tiny workflow per test run

TINY_WORKFLOW = ROOT / "tests" / "studies" / "tiny.yaml"


def snakemake(workdir, *args, configfiles=(), check=True, timeout=900):
    """Run snakemake on the repository's Snakefile in workdir (config.yaml, then configfiles); return the
    CompletedProcess, or fail the test with its output."""
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(ROOT / "config.yaml"), *map(str, configfiles),
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def job_counts(output: str):
    """The first 'Job stats' table of a snakemake run, as a Counter {rule: count}."""
    from collections import Counter

    lines = output.splitlines()
    start = lines.index("Job stats:") + 3  # title, header, dashes
    counts = Counter()
    for line in lines[start:]:
        if not line.strip():
            break
        rule, count = line.split()
        counts[rule] = int(count)
    return counts


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A working directory in which the workflow ran tests/studies/tiny.yaml to the end (a real run,
    about a minute), once per test run. Read it; a test that runs snakemake on it works on its own
    copy (copy_of)."""
    return built_once(tmp_path_factory, "tiny-workflow",
                      lambda folder: snakemake(folder, "--cores", "2", "--show-failed-logs",
                                               configfiles=[TINY_WORKFLOW]))


def copy_of(folder, destination):
    """A copy of a workflow's working directory (file times kept, so snakemake sees what is up to date)."""
    import shutil

    shutil.copytree(folder, destination, symlinks=True)
    return destination


# The order tests start in (pyproject: --dist load --maxschedchunk 1). xdist hands each worker the test
# it runs and the next one, so each test of LONG_FIRST (a minute or more here, by name, in any file)
# is followed by one of the quickest: no long test waits behind another on one worker. The SLURM
# tests come first, the time-limit test (the longest chain of waits) first of all: the cluster runs
# two jobs at a time, so it has to be busy from the start, while the CPU-bound tests fill the cores
# beside it. The node-failure test has the cluster to itself (tests/test_slurm.py): it starts once
# the others have, and the CPU-bound tests after it run while it waits on SLURM's clocks. Then the
# other tests, by file: SLOWEST_FIRST, then the rest.
LONG_FIRST = (
    "test_training_over_its_time_limit_is_stopped_retried_with_a_longer_limit_and_resumed",
    "test_more_ready_distill_jobs_than_jobs_admits_beside_ready_attack_jobs_and_a_failing_sacct",
    "test_study_runs_every_gpu_job_on_slurm_with_one_gpu",
    "test_the_distillation_sweep_goes_out_as_one_job_array",
    "test_a_killed_snakemake_is_restarted_and_nothing_is_trained_twice_or_lost",
    "test_tiny_study_end_to_end",  # the first to ask builds the tiny workflow (conftest.tiny)
    "test_an_imagefolder_study_runs_from_snakemake_to_its_tables_and_report",
    "test_two_processes_distil_as_one_and_resume_after_being_killed_mid_epoch",
    "test_a_cancelled_training_job_is_resubmitted_and_resumes_from_its_checkpoint",
    "test_bf16_accuracy_is_within_run_to_run_noise_of_fp32",
    "test_a_pack_of_sweep_points_is_one_slurm_job_with_one_gpu",
    "test_a_node_failure_mid_job_is_requeued_or_failed_and_either_way_resumes_from_its_checkpoint",
    "test_tiny_study_confirms_its_point_on_two_fresh_seeds",
    "test_tiny_staged_study_resolves_its_checkpoint",
    "test_a_new_pack_size_and_a_respelled_study_file_plan_nothing_and_the_rungs_stand",  # builds halving_paused
    "test_remade_rung_records_decide_the_same_and_shorter_rungs_table_every_finished_run",  # halving_finished
    "test_a_halving_study_then_the_grid_on_the_same_folder",
    "test_tiny_study_packed_equals_unpacked",
    "test_points_taken_out_of_the_config_leave_the_tables_in_one_line_and_stay_on_disk",
    "test_tiny_study_is_up_to_date_and_reruns_on_a_changed_value",
    "test_status_of_runs_really_trained_killed_running_and_broken",
)
SLOWEST_FIRST = ("test_workflow.py", "test_runtime.py", "test_train.py", "test_slurm.py", "test_status.py",
                 "test_confirm.py", "test_bench.py")


def pytest_collection_modifyitems(config, items):
    position = {name: index for index, name in enumerate(LONG_FIRST)}
    long = sorted((item for item in items if item.originalname in position), key=lambda item: position[item.originalname])

    def rank(item):
        name = item.path.name
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    rest = sorted((item for item in items if item.originalname not in position), key=rank)  # stable: file order
    quick = [rest.pop() for _ in range(min(len(long), len(rest)))]  # from the end: the quick files
    items[:] = [item for pair in zip(long, quick) for item in pair] + long[len(quick):] + rest


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject): a worker per core, and two more when the SLURM tests run: those wait on
    the cluster's jobs, which use the cores, most of the time."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    expression = config.getoption("markexpr") or ""
    return cores + (0 if "not slurm" in expression else 2)
