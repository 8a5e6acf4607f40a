"""`python -m kdsweep status`: where a study stands, from its files alone (safe beside a live sweep).

Per role and model: the runs planned (kdsweep.plan, the plan the workflow uses, with the staged
sweep's checkpoint files), finished (metrics.json of this configuration), training now (epoch k of
at most N, from checkpoint.json, the JSON twin of the run's checkpoint), stopped (a checkpoint and
no live process: a time limit, preemption or a killed job; the next attempt resumes it), failed
(the one-sentence reason from its job's log) and not started; the training GPU-hours spent so far
(train_seconds of finished and stopped or running jobs; a pack's points share one job, counted
once), an estimate of what remains from the jobs finished so far, and, where squeue is on the
PATH, the SLURM jobs pending and running in the study's working directory; and the runs of earlier
configurations kept aside (kdsweep.identity).

A run is training now when the holder of its folder's lock (kdsweep.lock: `process PID on HOST
(SLURM job ID)`) is alive: a process of this machine, or a job squeue lists as running. Nothing
here writes, locks or imports torch: it stats and reads small files, so it takes well under two
seconds for a 10-seed study of the reference grid.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import KdsweepError
from .identity import ASIDE, is_this_run, study_aside
from .joblog import last_attempt
from .lock import LOCK, read_holder
from .layout import CHECKPOINT, METRICS, PROGRESS, Layout, not_in_study_sentence
from .plan import ROLES, Plan, Run, recorded_packs
from .attacks import cost
from .records import BestPoint, Masking, Metrics, point_of

STATES = ("finished", "training", "stopped", "failed", "not started")
PRUNED = "pruned"  # successive halving: a point a rung dropped (its run keeps the rung's checkpoint)
_ERROR = re.compile(r"kdsweep: error: (.+)")
_EXCEPTION = re.compile(r"^(\w+(?:\.\w+)*(?:Error|Exception|Interrupt)): (.+)$")
_STOP = re.compile(r"received (SIG\w+): stopped")


@dataclass
class RunStatus:
    run: Run
    state: str
    epochs: int = 0  # epochs finished
    seconds: float = 0.0  # training seconds so far (all attempts)
    reason: str = ""  # failed: the log's sentence; stopped: the signal; training: where


@dataclass
class StudyStatus:
    plan: Plan
    root: Path
    runs: list[RunStatus]
    waiting: dict  # staged sweep: {student: stage-2 runs waiting for the temperature}
    evaluations: tuple[int, int]  # (files present, files planned) of the runs planned so far
    slurm: dict | None  # {"pending": n, "running": n} of jobs in root, or None without squeue
    gpu_seconds: float
    remaining_seconds: float | None  # None: no job of some kind has finished yet to go by
    unestimated: int  # jobs left out of remaining_seconds for want of a finished one like them
    aside: list = field(default_factory=list)  # run versions kept aside (kdsweep.identity.study_aside)
    rungs: list = field(default_factory=list)  # successive halving: the rungs decided so far (RungDecision)
    saved_seconds: float | None = None  # successive halving: the training seconds the pruned points did not take
    left_out: list = field(default_factory=list)  # run folders and records the config does not ask for
    # the attack jobs: {"done", "flagged" (a masking check failed), "planned", "flops" and "flops_every_image"
    # (kdsweep.attacks.cost: on the evaluation subset, and as if every test image were attacked), "uncounted"}
    attacks: dict = field(default_factory=dict)
    taken: float = field(default_factory=time.time)


# ---------------------------------------------------------------- reading the files


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing, or being replaced right now: read again next time


def _holder_alive(folder: Path, running_jobs: set | None, host: str) -> tuple[bool, str]:
    """(whether the folder's lock is held by a live process, where), from the lock file alone."""
    holder = read_holder(folder)
    if holder is None:
        held = (folder / LOCK).exists()  # a lock file being written this instant
        return held, "lock held" if held else ""
    if holder.slurm_job and running_jobs is not None:
        return holder.slurm_job in running_jobs, holder.where
    if holder.host == host:
        return _pid_alive(holder.pid), holder.where
    # another machine, and no queue to ask: the lock file says so
    return True, holder.where


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log_verdict(path: Path) -> tuple[str, str] | None:
    """("failed", sentence) or ("stopped", signal) from the end of a job's log; None if it says neither."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 20000))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(last_attempt(lines)):  # an earlier attempt's verdict is not this one's
        if match := _ERROR.search(line):
            return "failed", match.group(1).strip()
        if match := _STOP.search(line):
            return "stopped", f"stopped by {match.group(1)}"
        if match := _EXCEPTION.match(line.strip()):
            return "failed", f"{match.group(1)}: {match.group(2)}"
    return None


def run_status(layout: Layout, root: Path, run: Run, teacher_hash, running_jobs, host, data_digest=None) -> RunStatus:
    folder = root / layout.run_dir(run)
    metrics = Metrics.peek(folder / METRICS)
    if metrics is not None and is_this_run(layout.plan, run, metrics, teacher_hash, data_digest):
        return RunStatus(run, "finished", metrics.epochs or 0, float(metrics.train_seconds or 0))
    progress = _read_json(folder / PROGRESS) if (folder / CHECKPOINT).exists() else None
    epochs = int(progress.get("epoch", 0)) if progress else 0
    seconds = float(progress.get("train_seconds", 0.0)) if progress else 0.0
    alive, where = _holder_alive(folder, running_jobs, host)
    if alive:
        return RunStatus(run, "training", epochs, seconds, where)
    verdict = _log_verdict(root / layout.training_log(run))
    if verdict and verdict[0] == "failed":
        return RunStatus(run, "failed", epochs, seconds, verdict[1])
    if progress or (folder / CHECKPOINT).exists():
        return RunStatus(run, "stopped", epochs, seconds, verdict[1] if verdict else "no process holds it")
    return RunStatus(run, "not started")


# ---------------------------------------------------------------- the study


def load_plan(configfiles=(), overrides=(), folder=None) -> tuple[Plan, Path]:
    """The study's plan and the folder snakemake runs in: from config files and overrides as
    snakemake gets them, or from a study folder's study.yaml (written by the workflow)."""
    from .config import load_config

    if folder is not None:
        folder = Path(folder)
        record = folder / "study.yaml"
        if not record.is_file():
            raise KdsweepError(f"{folder} has no study.yaml (the workflow writes it with its first job); "
                               "give the study's --configfile instead")
        config = load_config([record], overrides)
        root = folder.resolve().parent.parent
        if (root / "results" / config["study"]).resolve() != folder.resolve():
            raise KdsweepError(f"{record} is of study {config['study']!r}, whose folder is "
                               f"results/{config['study']}, not {folder}")
    else:
        config, root = load_config(list(configfiles), list(overrides)), Path.cwd()
    # the packs trained so far keep their runs, as the workflow's plan keeps them
    return Plan(config, recorded_packs(root / "results" / config["study"])), root


def study_status(plan: Plan, root: Path, queue=None) -> StudyStatus:
    """Everything `render` prints. queue: kdsweep.slurm.queue()'s jobs (None: no squeue)."""
    root = Path(root)
    host = platform.node()
    running_jobs = None
    slurm = None
    if queue is not None:
        mine = [job for job in queue if _same_folder(job.workdir, root)]
        slurm = {"pending": sum(job.state == "PENDING" for job in mine),
                 "running": sum(job.state in ("RUNNING", "COMPLETING") for job in mine)}
        running_jobs = {job.job_id for job in queue if job.state in ("RUNNING", "COMPLETING")}
    layout = Layout(plan)
    # the checkpoints' choices so far, as the plan reads them
    confirmed = {choice: layout.confirm_record(*choice) for choice in plan.choices()}
    runs, waiting = plan.planned(layout.decided(root), _records(BestPoint, root, confirmed))
    # the rung records this config's halving made (others lie on disk, not read), each read checked (a damaged
    # record is one sentence, as for the workflow), and what the config does not ask for
    rungs = list(layout.current_decisions(root, lambda kind, path: kind.read(root / path)
                                          if (root / path).exists() else None).values())
    left_out = layout.not_in_study(root, runs, {(decision.student, decision.stage): decision for decision in rungs})
    digest = (_read_json(root / plan.results / "data" / "stats.json") or {}).get("data_digest")
    # each teacher's hash: what the runs distilled from it record
    hashes = {teacher.name: getattr(Metrics.peek(root / layout.run_dir(teacher.run) / METRICS), "config_hash", None)
              for teacher in plan.teachers}
    statuses = [run_status(layout, root, run, hashes[plan.teacher_of(run).name], running_jobs, host, digest)
                for run in runs]
    saved = _prune(plan, statuses, rungs) if plan.search.prunes else None
    present = planned = 0
    attacked, flagged = [], []
    kept = [entry.run for entry in statuses if entry.state != PRUNED]
    for run in kept:
        for path in layout.evaluations(run):
            planned += 1
            present += (root / path).exists()
        masking = Masking.peek(root / layout.file("masking", role=run.role, run=run.name))
        if masking is not None:
            attacked.append(run)
            if masking.suspected:
                flagged.append(run)
    spent, remaining, unestimated = _gpu_time(plan, statuses, waiting)
    attacks = {"done": len(attacked), "flagged": len(flagged), "planned": len(kept),
               "flops": cost.study_flops(plan, kept), "flops_every_image": cost.study_flops(plan, kept, every_image=True),
               "uncounted": cost.uncounted(plan, kept)}
    return StudyStatus(plan, root, statuses, waiting, (present, planned), slurm, spent, remaining, unestimated,
                       study_aside(root / plan.results), rungs, saved, left_out, attacks)


def _prune(plan: Plan, statuses, rungs) -> float:
    """Successive halving: mark the runs of the points a rung dropped as pruned (also one that early stopping
    happened to finish: no table counts it); return an estimate of the training seconds they did not take
    against the grid: each pruned run's epochs short of the mean epochs of its student's finished distilled
    runs, at its student's seconds per point and epoch (a pack's epoch is one, shared by its points: its
    seconds are its longest point's)."""
    dropped = {(decision.student, point_of(candidate.as_dict())) for decision in rungs
               for candidate in decision.candidates if not candidate.kept}
    saved = 0.0
    for student in {entry.run.model for entry in statuses if entry.run.distilled}:
        mine = [entry for entry in statuses if entry.run.distilled and entry.run.model == student]
        for entry in mine:
            if (student, (entry.run.method, entry.run.hparams)) in dropped:
                entry.state = PRUNED
        finished = [entry.epochs for entry in mine if entry.state == "finished"]
        epochs = sum(entry.epochs for entry in mine)
        packs = {}
        for entry in mine:
            pack = plan.pack_of(entry.run).name
            packs[pack] = max(packs.get(pack, 0.0), entry.seconds)
        if not finished or not epochs:
            continue
        per_epoch = sum(packs.values()) / epochs
        full = sum(finished) / len(finished)
        saved += sum(max(full - entry.epochs, 0) * per_epoch for entry in mine if entry.state == PRUNED)
    return saved


def _records(kind, root: Path, paths: dict) -> dict:
    """{key: (record, its path)} of the records written so far, each read checked (a checkpoint's record is
    written whole or not at all: one that cannot be read is damaged, and said so in one sentence), as
    Plan.planned takes them."""
    return {key: (kind.read(root / path), path) for key, path in paths.items() if (root / path).exists()}


def _same_folder(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _gpu_time(plan: Plan, statuses, waiting):
    """(seconds spent, seconds to go or None, jobs not estimated) over the study's training jobs.

    A job is a run, or a pack of distilled runs that share one GPU (counted once: its longest
    point). What is left of a job is the mean of the finished jobs of its kind (role, model)
    minus what it has spent."""
    jobs = {}
    for status in statuses:
        run = status.run
        key = ("pack", plan.pack_of(run).name) if run.distilled else ("run", run)
        jobs.setdefault(key, []).append(status)
    spent = 0.0
    by_kind = {}
    for key, members in jobs.items():
        seconds = max(status.seconds for status in members)
        spent += seconds
        run = members[0].run
        done = all(status.state in ("finished", PRUNED) for status in members)
        by_kind.setdefault((run.role, run.model), []).append((done, seconds))
    remaining, unestimated = 0.0, 0
    for (role, model), entries in by_kind.items():
        finished = [seconds for done, seconds in entries if done]
        left = [seconds for done, seconds in entries if not done]
        left += [0.0] * _waiting_jobs(plan, role, waiting.get((role, model), 0))  # not yet planned
        if not left:
            continue
        if not finished:
            unestimated += len(left)
            continue
        mean = sum(finished) / len(finished)
        remaining += sum(max(mean - seconds, 0.0) for seconds in left)
    for (role, student), count in waiting.items():
        if (role, student) not in by_kind:
            unestimated += _waiting_jobs(plan, role, count)
    return spent, remaining, unestimated


def _waiting_jobs(plan: Plan, role: str, runs: int) -> int:
    """Jobs of `runs` runs of one student waiting for a choice: a stage-2 sweep (spread evenly over the
    seeds, packed), or confirmation runs (a job each: one per confirm seed)."""
    if role == "confirm":
        return runs
    per_seed = runs // len(plan.seeds)
    return len(plan.seeds) * -(-per_seed // plan.pack_size)


# ---------------------------------------------------------------- the text


def _hours(seconds) -> str:
    hours = seconds / 3600
    return f"{hours:.2f}" if hours < 10 else f"{hours:.1f}" if hours < 100 else f"{hours:.0f}"


def render(status: StudyStatus, limit: int = 12) -> str:
    plan = status.plan
    max_epochs = plan.config["training"]["max_epochs"]
    rows = {}
    for entry in status.runs:
        key = (entry.run.role, entry.run.model)
    states = (*STATES, PRUNED) if plan.search.prunes else STATES
    for entry in status.runs:
        key = (entry.run.role, entry.run.model)
        counts = rows.setdefault(key, dict.fromkeys(("planned", *states), 0))
        counts["planned"] += 1
        counts[entry.state] += 1
    for key, count in status.waiting.items():
        counts = rows.setdefault(key, dict.fromkeys(("planned", *states), 0))
        counts["planned"] += count
        counts["not started"] += count
    order = {role: index for index, role in enumerate(ROLES)}
    header = ["role", "model", "planned", *states]
    table = [header] + [[role, model, *map(str, counts.values())]
                        for (role, model), counts in sorted(rows.items(), key=lambda item: (order[item[0][0]], item[0][1]))]
    totals = [sum(int(row[i]) for row in table[1:]) for i in range(2, len(header))]
    table.append(["all", "", *map(str, totals)])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [f"study {plan.study} ({status.root / plan.results}) at {time.strftime('%H:%M:%S', time.localtime(status.taken))}", ""]
    for i, row in enumerate(table):
        lines.append("  ".join(cell.ljust(w) if j < 2 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0 or i == len(table) - 2:
            lines.append("  ".join("-" * w for w in widths))
    staged = sum(count for (role, _), count in status.waiting.items() if role == "kd")
    confirming = sum(count for (role, _), count in status.waiting.items() if role == "confirm")
    if staged:
        lines.append(f"(staged sweep: {staged} soft-weight runs wait for their student's temperature, chosen "
                     "when the temperature sweep has finished)")
    if confirming:
        lines.append(f"(confirmation: {confirming} distilled runs wait for their student's point, chosen when "
                     "its sweep has finished)")
    if plan.search.prunes:
        lines += ["", "successive halving (per student: the points judged at each rung, kept and dropped; finished: "
                      "ended by early stopping before it):"]
        decided = {(decision.student, decision.stage): decision for decision in status.rungs}
        for student in plan.students:
            for stage, rung in enumerate(plan.rungs):
                decision = decided.get((student, stage))
                if decision is None:
                    lines.append(f"  {student} rung {stage + 1} (epoch {rung}): not decided yet")
                    continue
                candidates = decision.candidates
                kept = sum(candidate.kept for candidate in candidates)
                finished = sum(bool(candidate.finished) for candidate in candidates)
                lines.append(f"  {student} rung {stage + 1} (epoch {rung}): {len(candidates)} judged, {kept} kept, "
                             f"{len(candidates) - kept} dropped, {finished} finished")
    for state, title in (("training", "training now"), ("stopped", "stopped (resume on their next attempt)"),
                         ("failed", "failed")):
        entries = [entry for entry in status.runs if entry.state == state]
        if not entries:
            continue
        lines += ["", f"{title}:"]
        for entry in entries[:limit]:
            name = f"{entry.run.role}/{entry.run.name}"
            if state == "failed":
                lines.append(f"  {name}: {entry.reason}")
            else:
                lines.append(f"  {name}: epoch {entry.epochs} of at most {max_epochs} done ({entry.reason})")
        if len(entries) > limit:
            lines.append(f"  ... and {len(entries) - limit} more")
    lines.append("")
    estimate = ""
    if status.remaining_seconds is not None:
        estimate = f"; about {_hours(status.remaining_seconds)} to go"
        if status.unestimated:
            estimate += f" plus {status.unestimated} jobs of kinds none of which has finished yet"
        estimate += " (from the jobs finished so far)"
    lines.append(f"training GPU-hours: {_hours(status.gpu_seconds)} spent{estimate}")
    if status.saved_seconds is not None:
        lines.append(f"saved by successive halving so far: about {_hours(status.saved_seconds)} GPU-hours against the "
                     "grid (the pruned points' missing epochs, estimated from their students' finished runs)")
    present, planned = status.evaluations
    lines.append(f"evaluations (attacks, fidelity, calibration): {present} of {planned} files")
    lines += attack_lines(plan, status.attacks)
    if status.slurm is not None:
        lines.append(f"SLURM jobs in {status.root}: {status.slurm['running']} running, {status.slurm['pending']} pending")
    if sentence := not_in_study_sentence(status.left_out):
        lines.append(sentence)
    if status.aside:
        finished = sum((folder / METRICS).exists() for folder in status.aside)
        folder = status.root / plan.results / ASIDE
        lines.append(f"kept aside (runs of earlier configurations; one comes back if its configuration returns): "
                     f"{len(status.aside)} in {folder} ({finished} finished, {len(status.aside) - finished} "
                     f"partial); `rm -r {folder}` clears them")
        for entry in status.aside[:limit]:
            lines.append(f"  {entry.parent.name}/{entry.name}")
        if len(status.aside) > limit:
            lines.append(f"  ... and {len(status.aside) - limit} more")
    return "\n".join(lines)


def attack_lines(plan: Plan, attacks: dict) -> list[str]:
    """The attack jobs: done, flagged, what the headline is, and their cost estimated from FLOPs."""
    if not attacks:
        return []
    suite = plan.suite
    subset = "every test image" if suite.subset_size is None else f"a fixed subset of {suite.subset_size} test images"
    lines = [f"attack jobs: {attacks['done']} of {attacks['planned']} runs attacked, {attacks['flagged']} with a "
             f"gradient-masking check failed (tables/masking.md); headline: the worst case per image over "
             f"{', '.join(suite.headline)} on {subset}"]
    flops, every = attacks["flops"], attacks["flops_every_image"]
    lines.append(f"attack cost, estimated (not measured; docs/robustness.md): at most {flops:.2g} FLOPs for these "
                 f"runs, {cost.gpu_hours(flops):.2f} GPU-hours at an H100's fp32 peak ("
                 f"{cost.gpu_hours(flops, 'tf32'):.2f} with runtime.tf32), a floor: small models run far below it"
                 + (f"; on every test image instead of the subset: {cost.gpu_hours(every):.2f} ("
                    f"{cost.gpu_hours(every, 'tf32'):.2f} with tf32)" if every > flops else "")
                 + (f"; not counted: {', '.join(attacks['uncounted'])} (no FLOP count in kdsweep.attacks.cost)"
                    if attacks.get("uncounted") else ""))
    return lines


def show(configfiles=(), overrides=(), folder=None, watch=None, out=None):
    """Print the status once, or every `watch` seconds until interrupted."""
    from .slurm import queue

    out = out or sys.stdout
    plan, root = load_plan(configfiles, overrides, folder)
    while True:
        text = render(study_status(plan, root, queue()))
        if watch:
            out.write("\033[H\033[2J" + text + f"\n\n(every {watch:g} s; Ctrl-C ends)\n")
        else:
            out.write(text + "\n")
        out.flush()
        if not watch:
            return
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            out.write("\n")
            return
