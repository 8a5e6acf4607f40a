"""`python -m kdsweep status` on study folders built file by file in the documented formats.

Each state comes from what a training job leaves (kdsweep.train, kdsweep.checkpoint, kdsweep.lock):
metrics.json of this configuration (finished), checkpoint.pt + checkpoint.json and a lock held by a
live process (training), the same with no live holder and a log that says it stopped (stopped), a
log ending in `kdsweep: error: ...` (failed), nothing (not started). tests/test_slurm.py builds the
same states on the real cluster by running, killing and breaking jobs.
"""

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdsweep import cli
from kdsweep.config import config_hash, load_config
from kdsweep.lock import Holder
from kdsweep.identity import run_identity
from kdsweep.layout import Layout
from kdsweep.plan import Plan
from kdsweep.slurm import QueuedJob
from kdsweep.status import load_plan, render, study_status

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "studies" / "tiny.yaml"


def run_hash(config, run, teacher_hash):
    """The hash a job gives a run of this config (no stats.json here: no data digest to compare)."""
    return config_hash(run_identity(config, run, teacher_hash if run.distilled else None, None))


class Study:
    """A study folder under root, written the way the workflow's jobs write it."""

    def __init__(self, root, overrides=()):
        self.root = Path(root)
        self.config = load_config([str(TINY)], list(overrides))
        self.plan = Plan(self.config)
        self.teacher_hash = run_hash(self.config, self.plan.teacher, None)

    def folder(self, run):
        return self.root / Layout(self.plan).run_dir(run)

    def finished(self, run, seconds=100.0, stale=False):
        folder = self.folder(run)
        folder.mkdir(parents=True, exist_ok=True)
        digest = "0" * 16 if stale else run_hash(self.config, run, self.teacher_hash)
        (folder / "metrics.json").write_text(json.dumps({"epochs": 3, "train_seconds": seconds, "config_hash": digest}))

    def checkpoint(self, run, epoch, seconds):
        folder = self.folder(run)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "checkpoint.pt").write_bytes(b"not read")
        (folder / "checkpoint.json").write_text(json.dumps({"epoch": epoch, "train_seconds": seconds}))

    def lock(self, run, pid, host=None, job=None):
        self.folder(run).mkdir(parents=True, exist_ok=True)
        (self.folder(run) / ".lock").write_text(str(Holder(pid, host or platform.node(), job)))

    def log(self, run, text):
        path = self.root / Layout(self.plan).training_log(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def status(self, queue=None):
        return study_status(self.plan, self.root, queue)


def states(status):
    return {f"{entry.run.role}/{entry.run.name}": entry.state for entry in status.runs}


@pytest.fixture
def sleeper():
    """A live process of this machine: the holder of a lock."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process.pid
    process.kill()
    process.wait()


def test_every_state_of_a_run_from_its_files(tmp_path, sleeper):
    study = Study(tmp_path, ["soft_weights=[0.1,0.5,0.9]", "seeds=[0,1]", "training.max_epochs=5"])
    plan = study.plan
    teacher, (baseline0, baseline1) = plan.teacher, plan.baselines()
    kd = {(run.soft_weight, run.seed): run for run in plan.grid()}
    study.finished(teacher, seconds=3600.0)
    study.finished(baseline0, seconds=1800.0)
    study.checkpoint(baseline1, epoch=2, seconds=900.0)  # training: a live holder of its lock
    study.lock(baseline1, sleeper)
    study.finished(kd[0.1, 0], seconds=1200.0)
    study.finished(kd[0.5, 0], stale=True)  # of another configuration: trained again
    study.checkpoint(kd[0.9, 0], epoch=1, seconds=400.0)  # stopped by SLURM's warning signal
    study.lock(kd[0.9, 0], 999999999)  # a dead holder (SIGKILL leaves the file, not the flock)
    study.log(kd[0.9, 0], "x  epoch   1 ...\nreceived SIGURG: stopped; each point resumes from the checkpoint ...\n")
    study.log(kd[0.1, 1], "Traceback (most recent call last):\n  ...\nkdsweep: error: the training loss became "
                          "non-finite (nan) in epoch 2 of x; lower training.lr\n")
    status = study.status()
    assert states(status) == {
        "teacher/mobilenet_v3_small_seed0": "finished",
        "baseline/mobilenet_v3_small_seed0": "finished",
        "baseline/mobilenet_v3_small_seed1": "training",
        "kd/mobilenet_v3_small_T4_soft0.1_seed0": "finished",
        "kd/mobilenet_v3_small_T4_soft0.5_seed0": "not started",
        "kd/mobilenet_v3_small_T4_soft0.9_seed0": "stopped",
        "kd/mobilenet_v3_small_T4_soft0.1_seed1": "failed",
        "kd/mobilenet_v3_small_T4_soft0.5_seed1": "not started",
        "kd/mobilenet_v3_small_T4_soft0.9_seed1": "not started",
    }
    by_name = {entry.run: entry for entry in status.runs}
    assert by_name[baseline1].epochs == 2 and by_name[kd[0.9, 0]].epochs == 1
    assert by_name[kd[0.1, 1]].reason == "the training loss became non-finite (nan) in epoch 2 of x; lower training.lr"
    # spent: every job's seconds (finished, training, stopped); to go: each unfinished job at the
    # mean of the finished jobs of its kind, less what it spent
    assert status.gpu_seconds == 3600 + 1800 + 900 + 1200 + 400
    assert status.remaining_seconds == (1800 - 900) + 4 * 1200 + (1200 - 400)
    text = render(status)
    assert "baseline/mobilenet_v3_small_seed1: epoch 2 of at most 5 done" in text
    assert "kd/mobilenet_v3_small_T4_soft0.1_seed1: the training loss became non-finite" in text
    assert "stopped by SIGURG" in text
    row = next(line.split() for line in text.splitlines() if line.startswith("kd "))
    assert row == ["kd", "mobilenet_v3_small", "6", "1", "0", "1", "1", "3"]


def test_the_lock_holder_is_alive_when_squeue_runs_its_job(tmp_path):
    """On a cluster the holder is on another node: its SLURM job, running or not, decides."""
    study = Study(tmp_path)
    first, second = study.plan.grid()
    for run, job in ((first, "101"), (second, "102")):
        study.checkpoint(run, epoch=1, seconds=10.0)
        study.lock(run, 4242, host="gpu-node-7", job=job)
    queue = [QueuedJob("101", "100_1", "RUNNING", str(tmp_path), "rule_distill"),
             QueuedJob("103", "103", "PENDING", str(tmp_path), "rule_distill"),
             QueuedJob("104", "104", "RUNNING", "/elsewhere", "rule_train")]
    status = study.status(queue)
    assert [entry.state for entry in status.runs if entry.run.role == "kd"] == ["training", "stopped"]
    assert next(entry.reason for entry in status.runs if entry.run.role == "kd") == "SLURM job 101 on gpu-node-7"
    assert status.slurm == {"pending": 1, "running": 1}
    assert "SLURM jobs in" in render(status) and "1 running, 1 pending" in render(status)
    # without squeue a lock on another machine counts as held
    assert [entry.state for entry in study.status(None).runs if entry.run.role == "kd"] == ["training", "training"]


def test_staged_sweep_plans_stage_two_once_the_temperature_is_chosen(tmp_path):
    study = Study(tmp_path, ["sweep=staged", "temperatures=[1,4]", "soft_weights=[0.5,0.9]", "seeds=[0,1]"])
    plan = study.plan
    status = study.status()
    kd = [entry.run for entry in status.runs if entry.run.role == "kd"]
    assert sorted((run.temperature, run.soft_weight, run.seed) for run in kd) == [
        (1, 0.9, 0), (1, 0.9, 1), (4, 0.9, 0), (4, 0.9, 1)]  # the temperature sweep at staged.soft_weight
    assert status.waiting == {("kd", "mobilenet_v3_small"): 2}  # w = 0.5 at the chosen T, two seeds
    assert "2 soft-weight runs wait" in render(status)
    choice = tmp_path / Layout(plan).staged_choice("mobilenet_v3_small")
    choice.parent.mkdir(parents=True)
    choice.write_text(json.dumps({"student": "mobilenet_v3_small", "temperature": 4.0}))
    status = study.status()
    kd = [entry.run for entry in status.runs if entry.run.role == "kd"]
    assert sorted((run.temperature, run.soft_weight, run.seed) for run in kd) == [
        (1, 0.9, 0), (1, 0.9, 1), (4, 0.5, 0), (4, 0.5, 1), (4, 0.9, 0), (4, 0.9, 1)]
    assert status.waiting == {}


def test_command_takes_snakemakes_config_options_or_the_study_folder(tmp_path, monkeypatch, capsys):
    study = Study(tmp_path)
    study.finished(study.plan.teacher)
    monkeypatch.chdir(tmp_path)
    cli.main(["status", "--configfile", str(TINY), "--config", "seeds=[0,1]"])
    by_config = capsys.readouterr().out
    total = next(line.split() for line in by_config.splitlines() if line.startswith("all "))
    assert "study tiny" in by_config and total == ["all", "7", "1", "0", "0", "0", "6"]
    record = tmp_path / Layout(study.plan).study_record()
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(Path(TINY).read_text() + "seeds: [0, 1]\n")
    cli.main(["status", str(tmp_path / "results" / "tiny")])
    by_folder = capsys.readouterr().out
    strip = lambda text: [line for line in text.splitlines() if not line.startswith("study ")]  # noqa: E731
    assert strip(by_folder) == strip(by_config)
    with pytest.raises(SystemExit):
        cli.main(["status", str(tmp_path / "results")])
    assert "has no study.yaml" in capsys.readouterr().err


@pytest.mark.workflow
def test_planned_runs_and_log_names_are_the_workflows(tmp_path):
    """What status counts as planned is what a dry run of the workflow would train, and each
    run's log is where the job's rule writes it."""
    config_args = ["--configfile", str(REPO / "config.yaml"), str(TINY), "--config", "seeds=[0,1]",
                   "runtime={pack_size: 2}"]
    result = subprocess.run([sys.executable, "-m", "snakemake", "--dry-run", "--snakefile", str(REPO / "Snakefile"),
                             "--directory", str(tmp_path), *config_args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = {line.split("log:", 1)[1].strip() for line in result.stdout.splitlines()
            if line.strip().startswith("log:") and ("/logs/runs/" in line or "/logs/packs/" in line)}
    plan, _ = load_plan([TINY], ["seeds=[0,1]", "runtime={pack_size: 2}"])
    runs, waiting = plan.planned(None, {})
    assert {Layout(plan).training_log(run) for run in runs} == logs and not waiting
    assert len(runs) == 1 + 2 + 2 * 2


def test_status_of_a_ten_seed_reference_study_reads_fast_and_writes_nothing(tmp_path):
    """987 runs (the reference grid with 10 seeds: 1 teacher, 20 baselines, 960 distilled runs, w = 0 being the
    baseline, and the confirmation's 6 baselines), most finished and evaluated. No timing is asserted
    (machines differ); the time is printed for the record (README: under 2 s on a 2-core machine)."""
    config = load_config([], ["seeds=[0,1,2,3,4,5,6,7,8,9]"])
    plan = Plan(config)
    study = Study.__new__(Study)
    study.root, study.config, study.plan = tmp_path, config, plan
    study.teacher_hash = run_hash(config, plan.teacher, None)
    runs = plan.fixed_runs()
    for i, run in enumerate(runs):
        if i % 10:
            study.finished(run)
            for path in Layout(plan).evaluations(run):
                (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / path).write_text("{}")
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    started = time.perf_counter()
    status = study.status()
    text = render(status)
    print(f"status of {len(runs)} runs: {time.perf_counter() - started:.2f} s")
    assert len(status.runs) == 1 + 20 + 10 * 2 * 8 * 6 + 6 == 987 and text.count("\n") > 5
    # nine runs in ten have their attack job's masking record; its cost estimated from FLOPs (kdsweep.attacks.cost)
    assert "attack jobs: 888 of 987 runs attacked, 0 with a gradient-masking check failed" in text
    assert f"at most {status.attacks['flops']:.2g} FLOPs" in text and status.attacks["flops"] > 1e18
    # the suite's attacks on every test image instead of the subset of 1,000 of 10,000: nearly ten times as much
    assert 8 * status.attacks["flops"] < status.attacks["flops_every_image"] < 10 * status.attacks["flops"]
    assert "on every test image instead of the subset: " in text
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_status_of_runs_really_trained_killed_running_and_broken(tmp_path):
    """A tiny study whose runs were really trained (the teacher), killed with SIGKILL after an epoch
    (a baseline), training while the status is taken (the other baseline), broken (a distilled run
    whose loss diverges, its job's output in the log the workflow gives it) or never started; the
    command reads each state from the files those processes left."""
    import signal

    from conftest import run_kdsweep, run_until_epoch

    configs = [REPO / "config.yaml", TINY]
    overrides = ["seeds=[0,1]", "training.max_epochs=2"]
    plan = Plan(load_config([str(p) for p in configs], overrides))
    config_args = [arg for path in configs for arg in ("--config", path)]
    stats = f"{plan.results}/data/stats.json"
    run_kdsweep("stats", *config_args, "--out", stats, cwd=tmp_path)
    teacher, (stopped, running) = plan.teacher, plan.baselines()
    broken, *never = plan.grid()

    def train(run, *extra):
        return ["train", *config_args, "--role", run.role, "--model", run.model, "--seed", run.seed, "--stats",
                stats, "--out", Layout(plan).run_dir(run), *overrides, *extra]

    run_kdsweep(*train(teacher), cwd=tmp_path)
    assert run_until_epoch(tmp_path, train(stopped, "training.max_epochs=20"), 1, signal.SIGKILL) == -signal.SIGKILL
    log = tmp_path / Layout(plan).training_log(broken)
    log.parent.mkdir(parents=True)
    with open(log, "w") as handle:  # as rule distill runs it: `> {log} 2>&1`
        diverged = subprocess.run([sys.executable, "-m", "kdsweep", "distill", *map(str, config_args), "--student",
                                   broken.model, "--seed", str(broken.seed), "--teacher", Layout(plan).run_dir(teacher),
                                   "--temperature", str(broken.temperature), "--soft-weight", str(broken.soft_weight),
                                   "--stats", stats, "--out", Layout(plan).run_dir(broken), *overrides, "training.lr=1e30"],
                                  cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT)
    assert diverged.returncode != 0
    process = subprocess.Popen([sys.executable, "-m", "kdsweep", *map(str, train(running, "training.max_epochs=200"))],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        progress = tmp_path / Layout(plan).run_dir(running) / "checkpoint.json"
        deadline = time.monotonic() + 120
        while not progress.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert progress.exists(), "the running baseline wrote no checkpoint"
        status = study_status(plan, tmp_path)
        text = run_kdsweep("status", *[arg for path in configs for arg in ("--configfile", path)],
                           "--config", *overrides, cwd=tmp_path).stdout
    finally:
        process.kill()
        process.wait()
    assert states(status) == {
        f"teacher/{teacher.name}": "finished", f"baseline/{stopped.name}": "stopped",
        f"baseline/{running.name}": "training", f"kd/{broken.name}": "failed",
        **{f"kd/{run.name}": "not started" for run in never}}
    by_run = {entry.run: entry for entry in status.runs}
    assert by_run[stopped].epochs >= 1 and by_run[running].epochs >= 1
    assert "non-finite" in by_run[broken].reason and "training.lr" in by_run[broken].reason, by_run[broken].reason
    assert f"kd/{broken.name}: {by_run[broken].reason}" in text and f"baseline/{running.name}: epoch" in text
