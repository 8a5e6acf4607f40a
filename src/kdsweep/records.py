"""The records a study's jobs write and other jobs read: each a typed value with one home, as
checkpoint.RunState is for checkpoints. A record kind declares its keys, each of its annotation's JSON type
(`key`); `write(path)` writes it whole or not at all (kdsweep.io) and `read(path)` reads it back with every
key its readers need present and of its type, or ends with one sentence naming the file and the fix.

- `Metrics`       runs/<role>/<run>/metrics.json: a finished run (kdsweep.train writes it last, so its
                  presence means the run finished)
- `JobRecord`     packs/<pack>.json and trained/<role>/<run>.json: a training job's record, written once
                  every point (`JobPoint`) has finished (the workflow's output of a training job)
- `AttackResult`  attacks/<role>/<run>/<attack>_eps<eps>.json (kdsweep.attacks): one attack, or the worst
                  case over the headline's attacks (`worst_eps<eps>.json`), with the test images it left
                  correct as a bit mask (`robust`)
- `Masking`       masking/<role>/<run>.json: a run's transfer attacks and gradient-masking checks
                  (kdsweep.attacks.diagnostics)
- `Evaluation`    evaluation/<role>/<run>.json (kdsweep.evaluation: fidelity, calibration, logit scale)
- `BestPoint`     confirm/<choice>.json: the confirmation checkpoint's choice (kdsweep.tables.choices)
- `StagedChoice`  staged/<student>_seed-all.json: the staged sweep's temperature (kdsweep.tables.choices)
- `RungDecision`  halving/<student>_rung<epochs>.json: a successive-halving rung's points kept and dropped
                  (kdsweep.search.halving)

An attack result, a masking record and an evaluation are each a `Result`, which names the run it measured
and its version; an attack result and an evaluation are also a `Measurement`, which says how its job measured.

The JSON keys are the file formats' (docs/internals.md), so that a finished study keeps working. Records
of earlier versions, which finished studies hold, read as they are: a key added since (metrics.json's
`method`, `hparams` and `model_digest`; a result's `run_hash` and `model_digest`; a best-point record's
`method` and `hparams`) reads as None, and `point_of` reads an earlier record's point (kd's flat
temperature and soft weight). A key this version does not know is kept (`extra`) and written back.

In a file, a key whose value is None is left out, but for the keys that may hold null (`null=True`: a
teacher's temperature, the accuracy on correctly classified images when there are none, ...): the job
always writes those. `peek(path)` reads a live folder's record (the status view, a run folder's
identity): it never raises, None where there is no readable JSON object, and a value of the wrong type
reads as missing.

Nothing here imports torch: the status view and kdsweep.identity read records.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import ClassVar, get_args, get_origin, get_type_hints

import numpy as np

from . import io
from .errors import KdsweepError
from .methods import METHODS


@dataclass(frozen=True)
class _Type:
    """A JSON type a key's value must have, as a sentence names it."""

    name: str
    accepts: Callable[[object], bool]


TEXT = _Type("a string", lambda value: isinstance(value, str))
WHOLE = _Type("a whole number", lambda value: isinstance(value, int) and not isinstance(value, bool))
# NaN and infinity are no accuracy, loss or hyperparameter: a record holding one is refused (JSON has neither;
# Python's json reads its NaN and Infinity literals, which kdsweep.io.loads refuses too)
NUMBER = _Type("a number", lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
               and math.isfinite(value))
FLAG = _Type("true or false", lambda value: isinstance(value, bool))
OBJECT = _Type("an object", lambda value: isinstance(value, dict))
LIST = _Type("a list", lambda value: isinstance(value, list))


# A key's JSON type is its annotation's: `int | None` a whole number (None: the key absent), `list[JobPoint]` a
# list whose entries are each a record of that kind, checked as one.
JSON_TYPES = {str: TEXT, int: WHOLE, float: NUMBER, bool: FLAG, dict: OBJECT, list: LIST}


def key(null: bool = False):
    """A key of a record, of its annotation's JSON type (JSON_TYPES); null: it may hold null and is always
    written (None is left out of the file otherwise)."""
    return field(default=None, metadata={"null": null})


def _key_spec(annotation, null: bool) -> dict:
    """A key's JSON type (`kind`), whether it may hold null, and (`item`) the record kind of a list's entries,
    from its annotation; TypeError for an annotation that names no JSON type."""
    if isinstance(annotation, UnionType):  # `X | None`: None is the key absent (or null), not a type of its own
        named = [member for member in get_args(annotation) if member is not type(None)]
        annotation = named[0] if len(named) == 1 else annotation
    base, item = get_origin(annotation) or annotation, next(iter(get_args(annotation)), None)
    if base not in JSON_TYPES or item is not None and not (base is list and issubclass(item, Record)):
        raise TypeError(f"a record key is annotated {annotation}, which is none of "
                        f"{', '.join(kind.__name__ for kind in JSON_TYPES)}, list[<a record kind>] (or those | None)")
    return {"kind": JSON_TYPES[base], "null": null, "item": item}


@dataclass(kw_only=True)
class Record:
    """A JSON object of a file format: its keys are the fields made with `key`, those of its bases first."""

    WHAT: ClassVar[str] = "result file"  # how a sentence about a damaged file names it
    FIX: ClassVar[str] = "delete it and rerun the job that writes it"
    REQUIRED: ClassVar[tuple[str, ...]] = ()  # present in the records of every version

    extra: dict = field(default_factory=dict, repr=False)  # keys this version does not know, kept as found

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The keys of the format, in the order of the type."""
        return tuple(cls._specs())

    @classmethod
    @functools.cache
    def _specs(cls) -> dict:
        annotations = get_type_hints(cls)
        return {f.name: _key_spec(annotations[f.name], f.metadata["null"]) for f in fields(cls) if "null" in f.metadata}

    @classmethod
    def _spec(cls, name):
        return cls._specs()[name]

    @classmethod
    def _problem(cls, record: Mapping) -> str | None:
        """What is wrong with the types of a JSON object's known keys, as the end of a sentence, or None."""
        for name in cls.keys():
            if name not in record:
                continue
            spec, value = cls._spec(name), record[name]
            if value is None:
                if not spec["null"]:
                    return f"has {name} = null, which is not {spec['kind'].name}"
                continue
            if not spec["kind"].accepts(value):
                return f"has {name} = {_shown(value)}, which is not {spec['kind'].name}"
            if spec["item"] is not None:
                for entry in value:
                    if not isinstance(entry, dict):
                        return f"has an entry of {name} that is not an object ({_shown(entry)})"
                    missing = [key for key in spec["item"].REQUIRED if key not in entry]
                    if missing:
                        return f"has an entry of {name} that lacks {', '.join(missing)}"
                    if problem := spec["item"]._problem(entry) or spec["item"]._meaning(entry):
                        return f"has an entry of {name} that {problem}"
        return None

    @classmethod
    def _meaning(cls, record: Mapping) -> str | None:
        """What is wrong with a JSON object whose keys have their types, beyond the types (a point of no KD
        method, a rung after its epoch, ...), as the end of a sentence, or None; a kind's own checks."""
        return None

    @classmethod
    def from_dict(cls, record: Mapping):
        """The record of a JSON object (unchecked: `read` checks a file's)."""
        values, extra = {}, {}
        names = set(cls.keys())
        for name, value in record.items():
            if name not in names:
                extra[name] = value
                continue
            item = cls._spec(name)["item"]
            values[name] = [item.from_dict(entry) for entry in value] if item is not None and value else value
        return cls(**values, extra=extra)

    def as_dict(self) -> dict:
        """The JSON object of the file (None left out, but where the key may hold null)."""
        out = dict(self.extra)
        for name in self.keys():
            value, spec = getattr(self, name), self._spec(name)
            if value is None and not spec["null"]:
                continue
            out[name] = [entry.as_dict() for entry in value] if spec["item"] is not None and value else value
        return out

    def __getitem__(self, name):
        """A key's value as the file holds it (`metrics["test_acc"]`): what a caller that knows the file
        format rather than the type reads."""
        return self.as_dict()[name]

    def write(self, path) -> Path:
        """Write the record to `path` as JSON, whole or not at all (kdsweep.io)."""
        record = self.as_dict()
        missing = [name for name in self.REQUIRED if name not in record]
        problem = f"lacks {', '.join(missing)}" if missing else self._problem(record) or self._meaning(record)
        if problem:
            # the writer's bug, never the user's: a record that `read` would refuse is not written
            raise ValueError(f"a {type(self).__name__} for {path} {problem}")
        return io.write_json(path, record)

    @classmethod
    def read(cls, path, what: str | None = None, fix: str | None = None, needs: tuple[str, ...] = ()):
        """The record in `path`, with the keys of every version and `needs` (what this reader needs besides)
        present and every known key of its type; KdsweepError naming the file and the fix otherwise."""
        what, fix = what or cls.WHAT, fix or cls.FIX
        record = io.read_json(path, what, fix, required=(*cls.REQUIRED, *needs))
        if not isinstance(record, dict):
            raise KdsweepError(f"{what} {path} holds no JSON object; {fix}")
        if problem := cls._problem(record) or cls._meaning(record):
            raise KdsweepError(f"{what} {path} {problem}; {fix}")
        return cls.from_dict(record)

    @classmethod
    def peek(cls, path):
        """The record in `path` as far as it can be read, never an error: None where the file is missing,
        being replaced (a live folder) or no JSON object; a value of the wrong type reads as missing."""
        try:
            record = io.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        names = set(cls.keys())
        return cls.from_dict({name: value for name, value in record.items()
                              if name not in names or not cls._problem({name: value})})


def point_problem(method, hparams) -> str | None:
    """Why a record's (method, hparams) is no point of a KD method (kdsweep.methods: a known method, each of
    its hyperparameters once and within its bounds), as the end of a sentence; None where it is one."""
    if method not in METHODS:
        return f"names the KD method {_shown(method)}, which is none of {', '.join(METHODS)}"
    expected = [param.name for param in METHODS[method].params]
    if not isinstance(hparams, dict) or set(hparams) != set(expected):
        given = ", ".join(sorted(hparams)) if isinstance(hparams, dict) else _shown(hparams)
        return f"gives {method} the hyperparameters {given or 'none'}, not {', '.join(expected)}"
    for param in METHODS[method].params:
        if problem := param.problem(hparams[param.name]):
            return f"has {method}'s {problem}"
    return None


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- a run


@dataclass(kw_only=True)
class Metrics(Record):
    """metrics.json of a finished run (written by kdsweep.train, last)."""

    REQUIRED = ("role", "model", "seed")
    # what the tables and the checkpoints' choices read of a run (kdsweep.tables)
    TABULATED = ("dataset", "temperature", "soft_weight", "val_acc", "test_acc")
    # what a job that reads a finished run binds its result to (kdsweep.trained, kdsweep.identity)
    BOUND = ("config_hash", "config")

    role: str = key()  # teacher | baseline | a method's name | confirm
    model: str = key()
    seed: int = key()
    # kd's T and w (the hyperparameters of those names of any method; null for a teacher or baseline)
    temperature: float | None = key(null=True)
    soft_weight: float | None = key(null=True)
    method: str | None = key()  # a distilled run's KD method and its hyperparameters (earlier kd runs: none)
    hparams: dict | None = key()
    learned: dict | None = key()  # what the method learned, epoch by epoch (CTKD: its temperature)
    dataset: str | None = key()
    num_classes: int | None = key()
    teacher_run: str | None = key(null=True)  # the teacher's folder, null unless distilled
    # the teacher's name where the run's folder name carries it (kdsweep.plan.Run.teacher; earlier: none)
    teacher: str | None = key()
    checkpoint: dict | None = key()  # a teacher from a checkpoint: it and its provenance (kdsweep.teachers)
    params: int | None = key()  # the model's parameters
    train_images: int | None = key()  # images of one training epoch (images/s: epochs x these / seconds)
    epochs: int | None = key()  # epochs run
    best_epoch: int | None = key()
    stopped_early: bool | None = key()
    val_loss: float | None = key()  # val_* and test_*: of the best-validation weights
    val_acc: float | None = key()
    test_loss: float | None = key()
    test_acc: float | None = key()
    train_seconds: float | None = key()  # summed over resumes
    resumed: int | None = key()  # times
    device: str | None = key()
    precision: str | None = key()
    runtime: dict | None = key()  # the arithmetic (kdsweep.runtime.Runtime.record)
    versions: dict | None = key()  # {python, torch, torchvision, kdsweep, cuda, cudnn}
    slurm: dict | None = key()  # {job_id, array_job_id, array_task, restart_count, gpus}
    host: str | None = key()
    config: dict | None = key()  # the run's identity (kdsweep.identity.run_identity)
    config_hash: str | None = key()  # its hash
    model_digest: str | None = key()  # model.pt's sha256 (earlier versions: none)


# ---------------------------------------------------------------- a training job's record


@dataclass(kw_only=True)
class JobPoint(Record):
    """One run of a training job's record."""

    REQUIRED = ("run", "config_hash")

    run: str = key()  # its folder
    temperature: float | None = key(null=True)
    soft_weight: float | None = key(null=True)
    method: str | None = key()
    hparams: dict | None = key()
    config_hash: str = key()
    test_acc: float | None = key()  # a finished run's (a point paused at a rung has none)
    # where the point got to (earlier versions: none): its seed, epochs trained, the validation accuracy of
    # its best validation-loss epoch so far (what metrics.json would say were it stopped now), whether it
    # finished (early stopping or max_epochs), and its training seconds so far
    seed: int | None = key()
    epochs: int | None = key()
    val_acc: float | None = key()
    finished: bool | None = key()
    train_seconds: float | None = key()
    # each epoch's validation loss and accuracy so far, [{epoch, val_loss, val_acc}] (earlier versions: none):
    # what a successive-halving rung reads the point's state at its own epoch from (kdsweep.search.halving)
    history: list | None = key()

    @classmethod
    def of(cls, folder, metrics: Metrics, finished: bool = True, history=None) -> "JobPoint":
        """A point of a job's record from its metrics.json, or (finished False) from the metrics of a point
        paused at a rung (kdsweep.train: no test numbers); history: its validation epochs (kdsweep.train)."""
        return cls(run=str(folder), temperature=metrics.temperature, soft_weight=metrics.soft_weight,
                   method=metrics.method, hparams=metrics.hparams, config_hash=metrics.config_hash,
                   test_acc=metrics.test_acc if finished else None, seed=metrics.seed, epochs=metrics.epochs,
                   val_acc=metrics.val_acc, finished=finished, train_seconds=metrics.train_seconds,
                   history=history)


@dataclass(kw_only=True)
class JobRecord(Record):
    """packs/<pack>.json, trained/<role>/<run>.json: a training job's points, their config hashes and test
    accuracies, and its SLURM job. A pack of a halving rung (sweep: halving) trained its points to
    `until_epoch` at most: a point still training there is paused (finished false), its checkpoint kept."""

    REQUIRED = ("points",)

    points: list[JobPoint] = key()
    slurm: dict | None = key()
    until_epoch: int | None = key()


# ---------------------------------------------------------------- results measured on a finished run

# What a result copies of the run it measured: where the run sits (as its metrics.json).
RUN_KEYS = ("role", "dataset", "model", "temperature", "soft_weight", "seed")


def run_keys(metrics: Metrics) -> dict:
    """The RUN_KEYS of a run, as a result records them."""
    return {name: getattr(metrics, name) for name in RUN_KEYS}


def pack_mask(mask) -> str:
    """A boolean vector as compact text: its bits packed (numpy.packbits, little-endian bit order), base64. 10,000
    test images take 1,668 characters; nothing but bits is read back (no pickle)."""
    return base64.b64encode(np.packbits(np.asarray(mask, dtype=bool), bitorder="little").tobytes()).decode("ascii")


def unpack_mask(text: str, n: int) -> np.ndarray:
    """The boolean vector of length n that pack_mask wrote; ValueError for text that is not one."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"a mask of {n} bits takes {(n + 7) // 8} bytes, not {len(raw)}")
    return np.unpackbits(raw, count=n, bitorder="little").astype(bool)


@dataclass(kw_only=True)
class Result(Record):
    """What a result (an attack's, a masking record, an evaluation) says of the run it measured: its folder, where
    it sits (RUN_KEYS) and its version (kdsweep.identity; a result of an earlier version has neither run_hash nor
    model_digest). Which of them a file must hold is its kind's REQUIRED."""

    run: str | None = key()  # the run folder
    role: str | None = key()
    dataset: str | None = key(null=True)
    model: str | None = key()
    temperature: float | None = key(null=True)
    soft_weight: float | None = key(null=True)
    seed: int | None = key()
    run_hash: str | None = key(null=True)
    model_digest: str | None = key(null=True)


@dataclass(kw_only=True)
class Measurement(Result):
    """A result and how its job measured it: the seconds it took, the device and precision, the runtime section
    (kdsweep.runtime.Runtime.record) and the SLURM job."""

    seconds: float | None = key()
    device: str | None = key()
    precision: str | None = key()
    runtime: dict | None = key()
    slurm: dict | None = key()


@dataclass(kw_only=True)
class AttackResult(Measurement):
    """attacks/<role>/<run>/<attack>_eps<eps>.json: a finished run under one attack at one epsilon, or (attack
    `worst`) the worst case per test image over the headline's attacks (kdsweep.attacks)."""

    REQUIRED = ("attack", "epsilon", "role", "model", "temperature", "soft_weight", "seed", "clean_acc", "adv_acc",
                "adv_acc_on_correct")

    attack: str = key()  # an attack of kdsweep.attacks.ATTACKS, or worst
    params: dict | None = key()  # the config's attacks.<attack>; worst: {"attacks": [its attacks]}
    epsilon: float = key()
    n: int | None = key()  # test images attacked
    clean_acc: float = key()  # of those
    adv_acc: float = key()  # of those
    n_correct: int | None = key()  # clean
    adv_acc_on_correct: float | None = key(null=True)  # of those the model got right (none: null)
    # Which test images (earlier versions: none of these): the test set's size, the evaluation subset (null:
    # every test image) and the bit masks over the whole test set of the images attacked (`examples`; absent:
    # all) and of those still classified correctly under the attack (`robust`: correct before and at every
    # point the attack tried)
    n_test: int | None = key()
    subset: dict | None = key()  # {"size", "seed"} (absent: every test image)
    examples: str | None = key()
    robust: str | None = key()
    # per class (index = label) over the images attacked: how many, clean accuracy and accuracy under attack (%;
    # null for a class with none)
    class_n: list | None = key()
    class_clean_acc: list | None = key()
    class_adv_acc: list | None = key()

    def mask(self, name: str = "robust") -> np.ndarray | None:
        """The bit mask `robust` or `examples` over the test set (examples absent: every image), or None where
        the record has none (an earlier version's)."""
        if self.n_test is None:
            return None
        text = getattr(self, name)
        if text is None:
            return np.ones(self.n_test, dtype=bool) if name == "examples" else None
        return unpack_mask(text, self.n_test)


@dataclass(kw_only=True)
class TransferResult(Record):
    """A transfer attack of a run's Masking record: adversarial images crafted on another run (the teacher, the
    run's own seed's hard-target baseline) by `attack`, scored on this run, at one epsilon."""

    REQUIRED = ("source", "epsilon", "adv_acc")

    source: str = key()  # teacher | baseline
    source_run: str | None = key()  # its folder
    source_hash: str | None = key()  # its run hash
    attack: str | None = key()  # what crafted them on the source
    epsilon: float = key()
    n: int | None = key()
    adv_acc: float = key()  # this run's accuracy on them (%; wrong before the attack counts as wrong)
    robust: str | None = key()  # bit mask over the test set (n_test of the Masking record)


@dataclass(kw_only=True)
class MaskingCheck(Record):
    """One gradient-masking check of a run (kdsweep.attacks.diagnostics): `value` should not exceed `limit`."""

    REQUIRED = ("check", "passed")

    check: str = key()  # kdsweep.attacks.diagnostics.CHECKS
    attack: str | None = key(null=True)  # the attack checked
    against: str | None = key(null=True)  # what it is compared with
    epsilon: float | None = key(null=True)
    value: float | None = key(null=True)  # accuracy (%) of the attack checked
    limit: float | None = key(null=True)  # the largest value that passes
    n: int | None = key()  # test images compared
    passed: bool = key()
    sentence: str | None = key()  # what a failure means, in words


@dataclass(kw_only=True)
class Masking(Result):
    """masking/<role>/<run>.json: a run's transfer attacks, its accuracy at a large epsilon and its gradient-masking
    checks (kdsweep.attacks.diagnostics), written by its attack job after its attack results."""

    REQUIRED = ("role", "model", "seed", "checks")

    n_test: int | None = key()
    transfer: list[TransferResult] | None = key()
    large_epsilon: dict | None = key(null=True)  # {"epsilon", "n", "accuracy": {attack: %}}
    tolerance: float | None = key()
    checks: list[MaskingCheck] = key()
    suspected: bool | None = key()  # some check failed


# The measures of an evaluation: agreement with the teacher (%), KL(teacher || student) at T = 1, ECE (%),
# NLL, mean largest logit, mean logit L2 norm.
EVALUATION_MEASURES = ("agreement", "kl_to_teacher", "ece", "nll", "max_logit", "logit_norm")
# ... and, since per-class accuracy (absent from an earlier version's file): the lowest accuracy of a class (%)
CLASS_MEASURES = ("worst_class_acc",)


@dataclass(kw_only=True)
class Evaluation(Measurement):
    """evaluation/<role>/<run>.json: a finished run's fidelity to the teacher, calibration and logit scale
    (kdsweep.evaluation documents each key)."""

    REQUIRED = EVALUATION_MEASURES

    teacher_run: str | None = key()
    teacher_model: str | None = key(null=True)
    n: int | None = key()
    test_acc: float | None = key()
    test_acc_metrics: float | None = key(null=True)
    agreement: float = key()
    kl_to_teacher: float = key()
    ece: float = key()
    ece_bins: int | None = key()
    nll: float = key()
    max_logit: float = key()
    logit_norm: float = key()
    class_n: list | None = key()  # test images per class (index = label)
    class_acc: list | None = key()  # accuracy per class (%; null for a class without test images)
    worst_class_acc: float | None = key()  # the lowest of them
    teacher_run_hash: str | None = key(null=True)  # the version of the teacher it was measured against

    def measures(self) -> dict:
        return {name: getattr(self, name) for name in (*EVALUATION_MEASURES, *CLASS_MEASURES)}


# ---------------------------------------------------------------- the checkpoints' choices


@dataclass(kw_only=True)
class BestPoint(Record):
    """confirm/<choice>.json: the point of one student and KD method the confirmation trains again. Each
    hyperparameter is in `hparams` and also flat, as kd's temperature and soft_weight always were (a
    record of an earlier version has them flat only, and no method: kd's). No test number."""

    REQUIRED = ("student", "val_acc", "n", "candidates")

    student: str = key()
    dataset: str | None = key()
    method: str | None = key()
    hparams: dict | None = key()
    val_acc: float = key()  # the chosen point's mean validation accuracy over the sweep's seeds
    n: int = key()
    seeds: list | None = key()
    chosen_on: str | None = key()  # a sentence
    # [{<each hyperparameter>, val_acc_mean, n}] of every point that uses the teacher
    candidates: list = key()
    hard_target_runs_left_out: int | None = key()

    WHAT = "best-point record"
    FIX = "delete it so that the workflow chooses the point again"

    @classmethod
    def _meaning(cls, record):
        if record["n"] < 1:
            return f"has n = {record['n']}, not a number of seeds"
        if record.get("method") is not None or record.get("hparams") is not None:
            return point_problem(record.get("method"), record.get("hparams"))
        if point_of(record) is None:  # an earlier version's: kd's, its point flat
            return "names no point of a KD method (kd's temperature and soft_weight, or a method and its hparams)"
        return None

    @classmethod
    def from_dict(cls, record: Mapping):
        # the flat copies of `hparams` are written from it; an earlier record's flat point (no hparams) is
        # kept as found, in `extra`, where point_of reads it
        flat = set(record["hparams"]) if isinstance(record.get("hparams"), dict) else set()
        return super().from_dict({name: value for name, value in record.items() if name not in flat})

    def as_dict(self) -> dict:
        return {**(self.hparams or {}), **super().as_dict()}


@dataclass(kw_only=True)
class StagedChoice(Record):
    """staged/<student>_seed-all.json: the staged sweep's temperature for one student."""

    REQUIRED = ("student", "temperature")

    student: str = key()
    temperature: float = key()  # the chosen one: highest mean validation accuracy at soft_weight
    soft_weight: float | None = key()
    val_acc: float | None = key()
    candidates: dict | None = key()  # {temperature: its mean validation accuracy}

    WHAT = "staged-sweep choice"
    FIX = "delete it so that the workflow chooses the temperature again"


@dataclass(kw_only=True)
class RungCandidate(Record):
    """A point judged at a halving rung: its mean validation accuracy over the seeds there, and the verdict."""

    REQUIRED = ("method", "hparams", "val_acc_mean", "n", "kept")

    method: str = key()
    hparams: dict = key()
    val_acc_mean: float = key()
    n: int = key()  # seeds
    epochs: list | None = key()  # each seed's epochs trained at the rung (fewer: early stopping ended it)
    finished: bool | None = key()  # every seed finished (early stopping) by the rung
    kept: bool = key()
    # each seed's best validation-loss epoch up to the rung (whose validation accuracy it was judged on); the
    # first tie-breaker: fewer epochs to it ranks first (earlier versions: none)
    best_epochs: list | None = key()
    # false for a point that does not use the teacher (kd's w = 0): never ranked, never kept
    uses_teacher: bool | None = key()

    @classmethod
    def _meaning(cls, record):
        if record["n"] < 1:
            return f"has n = {record['n']}, not a number of seeds"
        return point_problem(record["method"], record["hparams"])


@dataclass(kw_only=True)
class RungDecision(Record):
    """halving/<student>_rung<epochs>.json: one successive-halving rung of a student, the points of each KD
    method judged there (validation accuracy only) and which go on. No test number."""

    REQUIRED = ("student", "rung", "stage", "candidates")

    student: str = key()
    rung: int = key()  # the epoch the points were trained to
    stage: int = key()  # its index in halving.rungs
    keep: float | None = key()
    min_kept: int | None = key()
    seeds: list | None = key()
    chosen_on: str | None = key()  # a sentence
    candidates: list[RungCandidate] = key()
    # the ties at the cut (points of equal mean validation accuracy, some kept and some not): each a sentence
    # naming the points and what broke the tie (kdsweep.search.halving.TIE_BREAK)
    ties: list | None = key()

    WHAT = "halving decision"
    FIX = "delete it so that the workflow decides the rung again"

    @classmethod
    def _meaning(cls, record):
        # halving.rungs increase from epoch 1 (the schema, kdsweep.plan): rung k (from 0) is at epoch k + 1 or later
        if record["rung"] < 1 or not 0 <= record["stage"] < record["rung"]:
            return f"has rung {record['rung']} at stage {record['stage']}, which no halving.rungs can give"
        if record.get("keep") is not None and not 0 < record["keep"] < 1:
            return f"has keep = {record['keep']}, not a fraction above 0 and below 1"
        if record.get("min_kept") is not None and record["min_kept"] < 1:
            return f"has min_kept = {record['min_kept']}, not at least 1"
        return None


def point_of(record) -> tuple[str, tuple] | None:
    """(method, hparams) a record names: a run's metrics.json, a pack or best-point record's entry (a record
    or its JSON object). A record of an earlier version (no `method`) is kd's, with flat temperature and
    soft_weight; None where it names no distilled point."""
    if isinstance(record, Record):
        record = record.as_dict()
    method = record.get("method") or ("kd" if record.get("temperature") is not None else None)
    if method not in METHODS:
        return None
    values = record.get("hparams") if isinstance(record.get("hparams"), dict) else record
    try:
        return method, METHODS[method].hparams(values)
    except (KeyError, TypeError, ValueError):
        return None
