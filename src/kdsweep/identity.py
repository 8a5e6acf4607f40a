"""A run's identity, in one home: exactly what changes its result, its hash, the checks that a folder,
a checkpoint or a result belongs to it, and the runs kept aside.

- `run_identity(config, run, teacher_hash, data_digest)`: what a training run is. The data it learns
  from (`dataset.name`, `subset`, `val_fraction`, `split_seed`, and the digest of the loaded images
  and labels that the stats job records in stats.json), `training`, `augmentation`, where the run
  sits (model, seed, temperature, soft weight, role) and, for a distilled run, its teacher's hash. A teacher
  from a checkpoint (kdsweep.teachers) also records `teacher_checkpoint`: the file's sha256, its architecture
  and whether it was fine-tuned; its hash, and so every run distilled from it, changes with the file.
  An imagefolder dataset's run also holds its transforms (the `imagefolder` section), and its data
  digest is that of the files' contents, which the stats job reads once (kdsweep.imagefolder: a job
  checks the files' names and sizes against it, without reading 140 GB again); the number of damaged
  files left out (dataset.skip_damaged) is recorded beside the digest.
  Not in it: where the data lies (`dataset.root`) and the `runtime` section (device, precision,
  threads, ...): they change no result beyond floating-point noise, so moving the data, or the study
  to another cluster with the same files, retrains nothing. Different files under the same path have
  another digest: the jobs refuse them (kdsweep.split) and, once stats.json is made again from them,
  every run's identity changes.
- `same_run(recorded, identity)`: whether a recorded identity (metrics.json's `config`, a checkpoint's)
  is this run's. Records made before data digests existed (they hold `dataset.root` and no digest)
  are the same run when everything else agrees: a study finished by an earlier version is not trained
  again.
- Kept aside (`put_aside`, `bring_back`, `kept_aside`): a job that finds its folder holding a run of
  another identity (the config changed) moves that run's files to
  `results/<study>/aside/<role>/<run>@<its hash>/` and trains its own; when the config returns, the
  job brings the kept run back instead of training it again. Nothing finished is ever deleted.
  `python -m kdsweep status` lists what is kept aside; deleting that folder clears it.
- `file_digest(path)`: a model file's sha256, recorded in metrics.json (`model_digest`) and in every
  attack and evaluation result (with the run's hash, `run_hash`), so that no table pairs the numbers
  of two versions of a run; `measures_run_now(results, run_dir)`: whether a job's results on disk measured the
  run's model as it is now (the workflow's rerun trigger of an attack or evaluation).

Nothing here imports torch: the status view imports this module.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

from . import io
from .config import config_hash
from .errors import KdsweepError
from .layout import CHECKPOINT, METRICS, PROGRESS
from .records import AttackResult, Evaluation, Masking, Metrics, Result

# The dataset settings that make a run's data what it is, besides the digest of the data itself.
DATASET_KEYS = ("name", "subset", "val_fraction", "split_seed")
DIGEST = "digest"
CHECKPOINT_KEY = "teacher_checkpoint"  # a teacher run's provenance in its identity
# an imagefolder dataset's: its transforms' section of the config, and the damaged files left out
IMAGEFOLDER = "imagefolder"
SKIPPED = "skipped"
ASIDE = "aside"
LOCK = ".lock"  # kdsweep.lock's file: never moved


def file_digest(path) -> str:
    """sha256 of a file (a model's weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _where(run) -> dict:
    """A run's coordinates: role, model, seed and, distilled, its method's hyperparameters (floats, or ints
    where the method says so: the plan's `4` and the job's `4.0` are one run). A teacher, a baseline and a
    kd run keep the form of the reference study's versions ({role, model, seed, temperature,
    soft_weight}), so that their identities, and every finished run's hash, are those they had."""
    from .methods import METHODS

    where = {"role": run.role, "model": run.model, "seed": run.seed}
    if run.method is None:
        return {**where, "temperature": None, "soft_weight": None}
    canonical = METHODS[run.method].canonical(run.hparams)
    if run.method == "kd":
        return {**where, **canonical}
    return {**where, "method": run.method, "hparams": canonical}


def run_identity(config: dict, run, teacher_hash: str | None, data_digest: str | None,
                 checkpoint: dict | None = None, skipped: int | None = None) -> dict:
    """What a training run is (module docstring); data_digest None where it is not known (a status
    view without stats.json); checkpoint: a teacher's provenance (kdsweep.teachers.provenance), None for a
    teacher trained from scratch (whose identity is the reference study's); skipped: the damaged files an
    imagefolder dataset leaves out."""
    dataset = {key: config["dataset"][key] for key in DATASET_KEYS}
    dataset[DIGEST] = data_digest
    where = {**_where(run), "teacher_config_hash": teacher_hash}
    if checkpoint is not None:
        where[CHECKPOINT_KEY] = checkpoint
    identity = {"dataset": dataset, "training": config["training"], "augmentation": config["augmentation"],
                "run": where}
    if config["dataset"]["name"] == IMAGEFOLDER:
        # (only here: every other dataset's runs keep the identity, and the hash, they always had)
        dataset[SKIPPED] = skipped
        identity[IMAGEFOLDER] = config[IMAGEFOLDER]
    return identity


# The dataset section of the version before data digests: what its hashes were made of.
_LEGACY_DATASET = ("name", "root", "val_fraction", "split_seed", "subset")


def legacy_hash(config: dict, run, teacher_hash: str | None) -> str:
    """The hash a run had before data digests existed (the whole dataset section of then, root included):
    what a checkpoint of that version holds."""
    dataset = {key: config["dataset"][key] for key in _LEGACY_DATASET}
    return config_hash({"dataset": dataset, "training": config["training"],
                        "augmentation": config["augmentation"],
                        "run": {**_where(run), "teacher_config_hash": teacher_hash}})


def _comparable(identity: dict) -> dict:
    dataset = identity.get("dataset")
    if not isinstance(dataset, dict):
        return identity
    return {**identity, "dataset": {key: dataset.get(key) for key in DATASET_KEYS}}


def same_run(recorded, identity: dict) -> bool:
    """Whether `recorded` (an identity read from a file) is the run `identity` describes. A digest missing
    on either side (a record of an earlier version, a view without stats.json) is not compared."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("dataset"), dict):
        return False
    theirs, ours = recorded["dataset"].get(DIGEST), identity["dataset"].get(DIGEST)
    if theirs and ours and theirs != ours:
        return False
    return _comparable(recorded) == _comparable(identity)


# ---------------------------------------------------------------- what a run folder holds


def held(folder) -> tuple[str, dict | None, str | None] | None:
    """What a run folder holds: ("finished", identity, hash) from metrics.json, ("partial", identity or
    None, hash) from checkpoint.json (a stopped run), or None for nothing. A record that cannot be read
    gives hash "damaged"; a checkpoint.pt without its checkpoint.json (killed between the two writes)
    hash None: only the checkpoint itself can tell (kdsweep.checkpoint.load)."""
    folder = Path(folder)
    if (folder / METRICS).exists():
        metrics = Metrics.peek(folder / METRICS)
        if metrics is None:
            return "finished", None, "damaged"
        return "finished", metrics.config or None, metrics.config_hash or "damaged"
    if (folder / PROGRESS).exists():
        # checkpoint.json (kdsweep.checkpoint.progress), read here without torch
        try:
            record = json.loads((folder / PROGRESS).read_text())
        except (OSError, ValueError):
            return "partial", None, "damaged"
        if not isinstance(record, dict):
            return "partial", None, "damaged"
        return "partial", record.get("config") or record.get("identity"), str(record.get("config_hash") or "damaged")
    if (folder / CHECKPOINT).exists():
        return "partial", None, None
    return None


def aside_root(run_dir) -> Path:
    """Where a run folder's other versions are kept: results/<study>/aside/<role>/ for a folder of the
    study layout (results/<study>/runs/<role>/<run>), else a folder `.aside` beside it."""
    run_dir = Path(run_dir)
    if run_dir.parent.parent.name == "runs":
        return run_dir.parent.parent.parent / ASIDE / run_dir.parent.name
    return run_dir.parent / f".{ASIDE}"


def _move_contents(source: Path, destination: Path):
    destination.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        if entry.name == LOCK:
            continue
        target = destination / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(entry, target)


def put_aside(run_dir, run_hash: str) -> Path:
    """Move what a run folder holds (all but its lock) to the aside folder of its hash; return that folder.
    A version of that hash already kept there is replaced only by a finished one."""
    run_dir = Path(run_dir)
    destination = aside_root(run_dir) / f"{run_dir.name}@{run_hash}"
    try:
        if destination.exists() and (destination / METRICS).exists() and not (run_dir / METRICS).exists():
            # a finished version of that hash is kept already: the partial one here adds nothing
            for entry in run_dir.iterdir():
                if entry.name != LOCK:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            return destination
        if destination.exists():
            shutil.rmtree(destination)
        _move_contents(run_dir, destination)
    except OSError as err:
        raise KdsweepError(f"cannot keep the run in {run_dir} aside in {destination} ({err.strerror}): "
                           f"{_fix_for(err, destination)}, or move {run_dir} away yourself") from err
    return destination


def _fix_for(err: OSError, destination: Path) -> str:
    """What frees the way to a folder that could not be made or filled: a file in the way moved, a folder
    made writable."""
    if err.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY):
        for path in (destination, *destination.parents):
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                return f"a file is in the way: move {path} away"
        return f"something is in the way in {destination}: move it away"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        blocked = next((path for path in (destination, *destination.parents) if path.exists()), destination)
        return f"make {blocked} writable"
    return f"check {destination.parent} and its file system"


def bring_back(run_dir, identity: dict) -> Path | None:
    """Move the kept version of this identity back into run_dir (finished first, else the partial one
    with most epochs); return the folder it came from, or None where none is kept."""
    run_dir = Path(run_dir)
    candidates = []
    for folder in kept_aside(run_dir):
        found = held(folder)
        if found and found[1] is not None and same_run(found[1], identity):
            progress = _epochs(folder) if found[0] == "partial" else float("inf")
            candidates.append((progress, folder))
    if not candidates:
        return None
    _, folder = max(candidates, key=lambda item: item[0])
    try:
        _move_contents(folder, run_dir)
        folder.rmdir()
    except OSError as err:
        raise KdsweepError(f"cannot bring the run kept in {folder} back to {run_dir} ({err.strerror}): "
                           f"{_fix_for(err, run_dir)}, or move its files there yourself, or delete {folder} to "
                           "train the run again") from err
    return folder


def _epochs(folder: Path) -> float:
    try:
        return float(io.read_json(folder / PROGRESS).get("epoch", 0))
    except (KdsweepError, TypeError, ValueError):
        return 0.0


def kept_aside(run_dir) -> list[Path]:
    """The versions of a run folder kept aside."""
    run_dir = Path(run_dir)
    root = aside_root(run_dir)
    if not root.is_dir():
        return []
    return sorted(path for path in root.glob(f"{run_dir.name}@*") if path.is_dir())


def study_aside(results) -> list[Path]:
    """Every run version kept aside in a study folder (results/<study>)."""
    root = Path(results) / ASIDE
    return sorted(path for path in root.glob("*/*@*") if path.is_dir()) if root.is_dir() else []


# ---------------------------------------------------------------- results bound to a run version


def measured(metrics: Metrics) -> dict:
    """What an attack or evaluation result records of the run version it measured."""
    return {"run_hash": metrics.config_hash, "model_digest": metrics.model_digest}


def result_matches(result: Result, metrics: Metrics) -> bool:
    """Whether an attack job's or evaluation's record measured the run version metrics.json describes: the same
    run hash and model digest. A result of an earlier version (neither recorded) matches only a run of
    that version (no model digest recorded either)."""
    if result.run_hash is None:
        return metrics.model_digest is None
    if result.run_hash != metrics.config_hash:
        return False
    return result.model_digest == metrics.model_digest or metrics.model_digest is None


# The record of each file an attack or evaluate job writes, by its kdsweep.layout name (Layout.measurements).
RESULT_RECORDS = {"attack": AttackResult, "masking": Masking, "evaluation": Evaluation}


def is_this_run(plan, run, metrics: Metrics, teacher_hash, data_digest=None) -> bool:
    """metrics.json is of the run the plan's configuration describes now (a run of another one is kept aside by
    the workflow and this one trained). teacher_hash: a distilled run's teacher's (its metrics' config_hash);
    None for a distilled run: nothing to compare against, so True."""
    if run.distilled and teacher_hash is None:
        return True
    provenance = None
    if run.role == "teacher" and plan.teacher_of(run).checkpoint:
        # a teacher from a checkpoint: the file's digest is the job's to take (this reads no weights); its
        # architecture and fine-tuning are the plan's
        teacher = plan.teacher_of(run)
        provenance = ((metrics.config or {}).get("run") or {}).get(CHECKPOINT_KEY)
        if not isinstance(provenance, dict) or (provenance.get("architecture"), provenance.get("fine_tuned")) != (
                teacher.model, teacher.fine_tune):
            return False
    expected = run_identity(plan.config, run, teacher_hash if run.distilled else None, data_digest, provenance)
    return metrics.config_hash == config_hash(expected) or same_run(metrics.config, expected)


def trained_as_configured(plan, layout, run) -> bool:
    """Whether the run's metrics.json (and, for a distilled run, its teacher's) is of the configuration as it is
    now: where it is not, the run trains again in this invocation, so what measured the model on disk is stale
    even where its files match that model (workflow/rules/common.smk's finished())."""
    metrics = Metrics.peek(Path(layout.run_dir(run)) / METRICS)
    if metrics is None:
        return False
    teacher_hash = None
    if run.distilled:
        teacher = plan.teacher_of(run).run
        teacher_hash = _teacher_as_configured(plan, teacher, Path(layout.run_dir(teacher)))
        if teacher_hash is None:
            return False
    return is_this_run(plan, run, metrics, teacher_hash)


_TEACHERS_SEEN: dict = {}


def _teacher_as_configured(plan, teacher, folder: Path):
    """The teacher's config_hash where its metrics.json is of the configuration as it is now, else None: read once
    per teacher and version of that file, not once per run distilled from it (a DAG build asks for each)."""
    path = folder / METRICS
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (id(plan), str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)  # a rewrite is a new file (kdsweep.io)
    if key not in _TEACHERS_SEEN:
        recorded = Metrics.peek(path)
        ok = recorded is not None and is_this_run(plan, teacher, recorded, None)
        _TEACHERS_SEEN[key] = (plan, recorded.config_hash if ok else None)  # the plan kept: its id stays its own
    return _TEACHERS_SEEN[key][1]


def measures_run_now(results, run_dir) -> bool:
    """Whether every file one job wrote of a run (results: [(its kdsweep.layout name, path)], Layout.measurements:
    an attack job's every attack result, worst case and masking record; an evaluation's file) measured the run
    version that run_dir/metrics.json describes now (result_matches); False where any is missing or unreadable,
    never an error. The workflow measures a run again only if this is False (workflow/rules/common.smk)."""
    metrics = Metrics.peek(Path(run_dir) / METRICS)
    if metrics is None or not results:
        return False
    for kind, path in results:
        result = RESULT_RECORDS[kind].peek(path)
        if result is None or not result_matches(result, metrics):
            return False
    return True
