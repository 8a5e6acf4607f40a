"""kdsweep.records: each record kind written and read back with the keys of its file format, the records of
earlier versions read as they are, and a damaged record refused with one sentence naming the file and the fix."""

import json
from dataclasses import dataclass

import pytest

from kdsweep import io
from kdsweep.cli.train import write_record
from kdsweep.errors import KdsweepError
from kdsweep.identity import held, result_matches
from kdsweep.records import (AttackResult, BestPoint, Evaluation, JobPoint, JobRecord, Masking, Metrics, Record,
                             StagedChoice, key, point_of)

# A teacher's and a dkd run's metrics.json as kdsweep.train writes them (this version's keys).
TEACHER = {"role": "teacher", "model": "resnet50", "seed": 0, "temperature": None, "soft_weight": None,
           "dataset": "cifar10", "num_classes": 10, "teacher_run": None, "epochs": 3, "best_epoch": 2,
           "stopped_early": False, "val_loss": 0.5, "val_acc": 90.0, "test_loss": 0.6, "test_acc": 89.5,
           "train_seconds": 12.5, "resumed": 0, "device": "cpu", "precision": "fp32", "runtime": {"compile": False},
           "versions": {"python": "3.11"}, "slurm": {"job_id": None}, "host": "h", "config": {"dataset": {}},
           "config_hash": "abc", "model_digest": "d1"}
DKD = {**TEACHER, "role": "dkd", "model": "resnet18", "temperature": 4, "soft_weight": None, "method": "dkd",
       "hparams": {"alpha": 1, "beta": 8, "temperature": 4, "warmup_epochs": 20}, "teacher_run": "runs/teacher/x"}


@pytest.mark.parametrize("record", [TEACHER, DKD], ids=["teacher", "dkd"])
def test_metrics_write_and_read_back_the_same_keys(tmp_path, record):
    metrics = Metrics.from_dict(record)
    path = metrics.write(tmp_path / "metrics.json")
    assert json.loads(path.read_text()) == record  # the file holds exactly these keys, nulls included
    assert Metrics.read(path) == metrics and Metrics.read(path, needs=Metrics.BOUND + Metrics.TABULATED) == metrics
    assert metrics["test_acc"] == 89.5 and metrics.hparams == record.get("hparams")


def test_a_metrics_json_of_an_earlier_version_reads_as_it_is(tmp_path):
    """Before KD methods and model digests: no method, hparams or model_digest; kd's point flat; and a key
    this version does not know is kept and written back."""
    old = {key: value for key, value in TEACHER.items() if key != "model_digest"}
    old.update(role="kd", model="resnet18", temperature=4.0, soft_weight=0.9, retired_key=[1, 2])
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(old))
    metrics = Metrics.read(path, needs=Metrics.BOUND + Metrics.TABULATED)
    assert (metrics.method, metrics.hparams, metrics.model_digest) == (None, None, None)
    assert point_of(metrics) == ("kd", (("temperature", 4.0), ("soft_weight", 0.9)))
    assert metrics.extra == {"retired_key": [1, 2]}
    assert json.loads(metrics.write(tmp_path / "again.json").read_text()) == old


def test_a_damaged_record_is_one_sentence_naming_the_file_and_the_fix(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({**TEACHER, "seed": "zero"}))
    with pytest.raises(KdsweepError, match=r"metrics.json has seed = 'zero', which is not a whole number; delete it"):
        Metrics.read(path)
    path.write_text(json.dumps({"role": "kd", "model": "resnet18", "seed": 0}))
    with pytest.raises(KdsweepError, match=r"result file .*metrics.json lacks config_hash, config; train it again"):
        Metrics.read(path, fix="train it again", needs=Metrics.BOUND)
    path.write_text('{"role": "kd", "mod')
    with pytest.raises(KdsweepError, match="is not valid JSON"):
        Metrics.read(path)
    path.write_text("[1, 2]")
    with pytest.raises(KdsweepError, match="lacks role, model, seed"):
        Metrics.read(path)
    path.write_text(json.dumps({**TEACHER, "val_acc": None}))
    with pytest.raises(KdsweepError, match="val_acc = null, which is not a number"):
        Metrics.read(path)


def test_a_record_that_read_would_refuse_is_never_written(tmp_path):
    with pytest.raises(ValueError, match="lacks seed"):
        Metrics(role="kd", model="resnet18").write(tmp_path / "metrics.json")
    with pytest.raises(ValueError, match="epochs"):
        Metrics(role="kd", model="resnet18", seed=0, epochs=1.5).write(tmp_path / "metrics.json")
    assert not (tmp_path / "metrics.json").exists()


def test_peek_never_raises_and_reads_what_it_can(tmp_path):
    path = tmp_path / "metrics.json"
    assert Metrics.peek(path) is None  # missing
    path.write_text('{"epochs": 3, "config_')  # being written
    assert Metrics.peek(path) is None
    path.write_text(json.dumps({"epochs": 3, "train_seconds": "soon", "config_hash": "abc"}))
    peeked = Metrics.peek(path)
    assert (peeked.epochs, peeked.train_seconds, peeked.config_hash, peeked.role) == (3, None, "abc", None)
    assert held(tmp_path) == ("finished", None, "abc")
    path.write_text("[]")
    assert Metrics.peek(path) is None and held(tmp_path) == ("finished", None, "damaged")


def test_the_job_record_keeps_its_keys(tmp_path):
    """packs/<pack>.json: a kd point has run, T, w, config hash and test accuracy, and where it got to (seed,
    epochs, validation accuracy, finished, training seconds); another method's point also its method and
    hyperparameters. A halving rung's record (until_epoch) has a paused point without test accuracy."""
    out = tmp_path / "pack.json"
    write_record(out, ["runs/teacher/t", "runs/dkd/d"], [Metrics.from_dict(TEACHER), Metrics.from_dict(DKD)])
    record = json.loads(out.read_text())
    assert set(record) == {"points", "slurm"}
    reached = {"seed": 0, "epochs": 3, "val_acc": 90.0, "finished": True, "train_seconds": 12.5}
    assert record["points"][0] == {"run": "runs/teacher/t", "temperature": None, "soft_weight": None,
                                   "config_hash": "abc", "test_acc": 89.5, **reached}
    assert record["points"][1] == {"run": "runs/dkd/d", "temperature": 4, "soft_weight": None, "method": "dkd",
                                   "hparams": DKD["hparams"], "config_hash": "abc", "test_acc": 89.5, **reached}
    paused = Metrics.from_dict({key: value for key, value in DKD.items() if not key.startswith("test_")})
    write_record(tmp_path / "rung.json", ["runs/dkd/d"], [paused], until_epoch=3)
    rung = json.loads((tmp_path / "rung.json").read_text())
    assert rung["until_epoch"] == 3 and rung["points"][0]["finished"] is False
    assert "test_acc" not in rung["points"][0]
    read = JobRecord.read(out)
    assert isinstance(read.points[1], JobPoint) and read.points[1].method == "dkd"
    assert read == JobRecord.from_dict(record)
    out.write_text(json.dumps({"points": [{"run": "x"}]}))
    with pytest.raises(KdsweepError, match="has an entry of points that lacks config_hash"):
        JobRecord.read(out)


def test_results_of_an_earlier_version_match_only_runs_of_that_version(tmp_path):
    """identity.result_matches on the records: a result without run_hash (an earlier version's) matches a run
    without a model digest only; one with both matches the version it measured."""
    attack = {"attack": "fgsm", "epsilon": 0.01, "role": "teacher", "model": "resnet50", "temperature": None,
              "soft_weight": None, "seed": 0, "clean_acc": 90.0, "adv_acc": 50.0, "adv_acc_on_correct": None}
    path = tmp_path / "fgsm_eps0.01.json"
    path.write_text(json.dumps(attack))
    old_result = AttackResult.read(path)
    new_run, old_run = Metrics.from_dict(TEACHER), Metrics.from_dict({k: v for k, v in TEACHER.items()
                                                                      if k != "model_digest"})
    assert old_result.run_hash is None and result_matches(old_result, old_run)
    assert not result_matches(old_result, new_run)
    measured = AttackResult.from_dict({**attack, "run_hash": "abc", "model_digest": "d1"})
    assert result_matches(measured, new_run) and result_matches(measured, old_run)
    assert not result_matches(AttackResult.from_dict({**attack, "run_hash": "abc", "model_digest": "d2"}), new_run)
    # null-able keys are always written: adv_acc_on_correct with no correct image, the run version measured
    written = json.loads(AttackResult.from_dict(attack).write(tmp_path / "again.json").read_text())
    assert written == {**attack, "dataset": None, "run_hash": None, "model_digest": None}


def test_an_evaluation_needs_only_its_measures(tmp_path):
    measures = {"agreement": 90.0, "kl_to_teacher": 0.25, "ece": 3.5, "nll": 0.75, "max_logit": 6.5,
                "logit_norm": 9.25}
    path = io.write_json(tmp_path / "evaluation.json", measures)
    evaluation = Evaluation.read(path)
    # (an earlier version's file: no per-class accuracy, so no worst class)
    assert evaluation.measures() == {**measures, "worst_class_acc": None} and evaluation.teacher_run_hash is None
    io.write_json(path, {**measures, "ece": "3.5"})
    with pytest.raises(KdsweepError, match="ece = '3.5', which is not a number"):
        Evaluation.read(path)


def test_each_result_writes_null_for_the_run_keys_it_may_lack(tmp_path):
    """An attack result, a masking record and an evaluation say alike which run they measured and its version
    (records.Result): left unset, the keys that may hold null (where the run sits, the version measured, and each
    kind's own) are written as null, the others left out; and each kind checks their types."""
    run = {"role": "teacher", "model": "resnet50", "seed": 0}
    nulls = dict.fromkeys(("dataset", "temperature", "soft_weight", "run_hash", "model_digest"))
    measures = {"agreement": 100.0, "kl_to_teacher": 0.0, "ece": 3.5, "nll": 0.75, "max_logit": 6.5, "logit_norm": 9.25}
    attack = {**run, "attack": "fgsm", "epsilon": 0.01, "clean_acc": 90.0, "adv_acc": 50.0}
    cases = [(AttackResult, attack, {"adv_acc_on_correct": None}),
             (Masking, {**run, "checks": []}, {"large_epsilon": None}),
             (Evaluation, measures, {"teacher_model": None, "test_acc_metrics": None, "teacher_run_hash": None})]
    for kind, given, own_nulls in cases:
        path = kind(**given).write(tmp_path / f"{kind.__name__}.json")
        assert json.loads(path.read_text()) == {**given, **nulls, **own_nulls}, kind
        assert kind.read(path) == kind(**given)
        io.write_json(path, {**given, **nulls, **own_nulls, "seed": True})
        with pytest.raises(KdsweepError, match="has seed = true, which is not a whole number"):
            kind.read(path)


@dataclass(kw_only=True)
class Entry(Record):
    """An entry of a list of records: a test's own record kind."""

    REQUIRED = ("name",)

    name: str = key()
    count: int | None = key()


@dataclass(kw_only=True)
class Probe(Record):
    """A record kind of one key of each JSON type, as a test declares one."""

    whole: int | None = key()
    number: float | None = key()
    flag: bool | None = key()
    text: str | None = key(null=True)
    table: dict | None = key()
    values: list | None = key()
    entries: list[Entry] | None = key()


def test_a_key_is_of_its_annotations_json_type(tmp_path):
    """`key()` reads a key's JSON type off its annotation: a bool is no whole number nor number, a float no whole
    number, NaN and infinity no number; null only where the key may hold it; a list of records checks and reads
    each entry as a record of that kind."""
    accepted = {"whole": [0, -3], "number": [1, 1.5], "flag": [True, False], "text": ["", None], "table": [{}],
                "values": [[], [1, "a"]], "entries": [[], [{"name": "a"}, {"name": "b", "count": 2}]]}
    refused = {"whole": [True, 1.0, "1", None], "number": [True, float("nan"), float("inf"), "1.5", None],
               "flag": [1, "true", None], "text": [1, ["a"]], "table": [[], "{}", None], "values": [{}, "[]", None],
               "entries": [{}, None, [1], [{"count": 2}], [{"name": "a", "count": True}]]}
    for name, values in accepted.items():
        for value in values:
            assert Probe._problem({name: value}) is None, (name, value)
    for name, values in refused.items():
        for value in values:
            assert Probe._problem({name: value}) is not None, (name, value)
    written = {"entries": [{"name": "a", "count": 2}], "text": None}
    read = Probe.read(io.write_json(tmp_path / "probe.json", written))
    assert read.entries == [Entry(name="a", count=2)]
    assert json.loads(read.write(tmp_path / "again.json").read_text()) == written

    @dataclass(kw_only=True)
    class Untyped(Record):
        entries: list[int] | None = key()  # a list's entries are checked only as records

    with pytest.raises(TypeError, match="annotated list\\[int\\], which is none of str, int, float, bool"):
        Untyped.keys()


def test_a_best_point_record_holds_each_hyperparameter_twice_and_an_earlier_one_once(tmp_path):
    hparams = {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20.0}
    record = {"student": "resnet18", "dataset": "cifar10", "method": "dkd", "hparams": hparams, **hparams,
              "val_acc": 91.0, "n": 2, "seeds": [0, 1], "chosen_on": "...", "candidates": [],
              "hard_target_runs_left_out": 0}
    choice = BestPoint.from_dict(record)
    assert choice.extra == {} and choice.as_dict() == record
    assert point_of(choice) == ("dkd", tuple(hparams.items()))
    old = {"student": "resnet18", "temperature": 1.0, "soft_weight": 0.5, "val_acc": 92.0, "n": 1,
           "candidates": [{"temperature": 1.0, "soft_weight": 0.5, "val_acc_mean": 92.0, "n": 1}]}
    read = BestPoint.read(io.write_json(tmp_path / "resnet18.json", old))
    assert read.method is None and point_of(read) == ("kd", (("temperature", 1.0), ("soft_weight", 0.5)))
    assert read.as_dict() == old


def test_a_staged_choice_reads_as_its_file(tmp_path):
    choice = StagedChoice(student="resnet18", temperature=4.0, soft_weight=0.9, val_acc=82.1,
                          candidates={1.0: 80.1, 4.0: 82.1})
    read = StagedChoice.read(choice.write(tmp_path / "staged.json"))
    assert (read.student, read.temperature, read.candidates) == ("resnet18", 4.0, {"1.0": 80.1, "4.0": 82.1})
    assert StagedChoice.peek(io.write_json(tmp_path / "partial.json", {"student": "resnet18", "temperature": 4.0})
                             ).as_dict() == {"student": "resnet18", "temperature": 4.0}
