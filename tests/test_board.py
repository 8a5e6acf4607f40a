"""The study as TensorBoard HParams sessions, written by `python -m kdsweep aggregate`, read back the
way TensorBoard reads them (its event multiplexer and the HParams plugin's protos).

A small fake study in the documented file formats: a teacher, a baseline, two kd runs and a DKD run,
FGSM and PGD at two epsilons, evaluations (one run without one: a sweep in progress).
"""

import json
import sys

import pytest
from conftest import kd_run

from kdsweep import cli
from kdsweep.layout import attack_file
from kdsweep.plan import Run

RUNS = [Run("teacher", "resnet50", 0), Run("baseline", "resnet18", 0),
        kd_run("kd", "resnet18", 0, 4.0, 0.9), kd_run("kd", "resnet18", 1, 2.0, 0.5),
        Run.distilled_run("dkd", "resnet18", 0, "dkd", {"alpha": 1.0, "beta": 8.0, "temperature": 4.0,
                                                        "warmup_epochs": 20})]
EPSILONS = (0.01, 0.05)
NOT_EVALUATED = RUNS[3]


def accuracy(run, offset=0.0):
    return round(80 + 3 * RUNS.index(run) + offset + 0.125, 3)


def write_study(root):
    """The files of a fake study under root (results/<study>); returns {run folder: expected metrics}."""
    expected = {}
    for run in RUNS:
        folder = root / run.folder
        folder.mkdir(parents=True)
        metrics = {"role": run.role, "dataset": "cifar10", "model": run.model, "seed": run.seed,
                   "temperature": run.temperature, "soft_weight": run.soft_weight, "epochs": 10, "best_epoch": 8,
                   "stopped_early": False, "val_acc": accuracy(run, 1), "val_loss": 0.5, "test_acc": accuracy(run),
                   "test_loss": 0.6, "train_seconds": 100.0, "device": "cpu",
                   **({"method": run.method, "hparams": run.params} if run.method == "dkd" else {})}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        want = {"val_acc": metrics["val_acc"], "test_acc": metrics["test_acc"]}
        for attack in ("fgsm", "pgd"):
            for i, eps in enumerate(EPSILONS):
                record = {"attack": attack, "epsilon": eps, "role": run.role, "model": run.model,
                          "temperature": run.temperature, "soft_weight": run.soft_weight, "seed": run.seed,
                          "clean_acc": metrics["test_acc"], "adv_acc": accuracy(run, -10 * (i + 1) - (attack == "pgd")),
                          "adv_acc_on_correct": 50.0, "n": 100, "n_correct": 80, "params": {}}
                path = root / "attacks" / run.role / run.name / attack_file(attack, eps)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record))
                want[f"{attack}_eps{eps:g}"] = record["adv_acc"]
        if run != NOT_EVALUATED:
            evaluation = {"agreement": accuracy(run, 5), "kl_to_teacher": 0.25, "ece": 3.5, "nll": 0.75,
                          "max_logit": 6.5, "logit_norm": 9.25}
            path = root / "evaluation" / run.role / f"{run.name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(evaluation))
            want.update(evaluation)
        expected[run.folder] = want
    return expected


def read_sessions(root):
    """{TensorBoard run: (hparams, {metric: value})} and the experiment, as TensorBoard's backend sees them."""
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2
    from tensorboard.util import tensor_util

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(root))
    multiplexer.Reload()
    sessions, experiments = {}, []
    for run, tags in multiplexer.PluginRunToTagToContent(metadata.PLUGIN_NAME).items():
        for tag, content in tags.items():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if tag == metadata.EXPERIMENT_TAG:
                experiments.append(data.experiment)
            elif tag == metadata.SESSION_START_INFO_TAG:
                hparams = {name: value.string_value or value.number_value
                           for name, value in data.session_start_info.hparams.items()}
                metrics = {}
                for metric in multiplexer.GetAccumulator(run).Tags()["tensors"]:
                    if metric.startswith("hparams/"):
                        event = multiplexer.Tensors(run, metric)[-1]
                        metrics[metric[len("hparams/"):]] = float(tensor_util.make_ndarray(event.tensor_proto))
                sessions[run] = (hparams, metrics)
    return sessions, experiments


def test_every_finished_run_is_a_session_with_its_hparams_and_metrics(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    root = tmp_path / "results" / "fake"
    expected = write_study(root)
    cli.main(["aggregate", str(root)])
    assert "wrote 5 TensorBoard HParams sessions" in capsys.readouterr().out
    sessions, experiments = read_sessions(root)

    # one session per run, in the run's own tensorboard/ folder (next to its epoch curves)
    assert sorted(sessions) == sorted(f"{run.folder}/tensorboard" for run in RUNS)
    for run in RUNS:
        hparams, metrics = sessions[f"{run.folder}/tensorboard"]
        want = {"role": run.role, "model": run.model, "seed": run.seed}
        if run.role == "kd":  # kd's as the reference study names them (a record of an earlier version too)
            want.update(method="kd", T=run.temperature, w=run.soft_weight)
        if run.role == "dkd":  # another method's, each as <method>.<name>
            want.update(method="dkd", **{f"dkd.{name}": float(value) for name, value in run.hparams})
        assert hparams == want
        # the values as stored: TensorBoard scalars are float32 (relative rounding below 1e-7)
        assert metrics.keys() == expected[run.folder].keys(), run
        for name, value in expected[run.folder].items():
            assert metrics[name] == pytest.approx(value, rel=1e-7), (run, name)

    # one experiment, naming every hparam with its values and every metric
    (experiment,) = experiments
    domains = {info.name: sorted(v.string_value or v.number_value for v in info.domain_discrete.values)
               for info in experiment.hparam_infos}
    assert domains == {"role": ["baseline", "dkd", "kd", "teacher"], "model": ["resnet18", "resnet50"],
                       "method": ["dkd", "kd"], "T": [2.0, 4.0], "w": [0.5, 0.9], "seed": [0.0, 1.0],
                       "dkd.alpha": [1.0], "dkd.beta": [8.0], "dkd.temperature": [4.0], "dkd.warmup_epochs": [20.0]}
    tags = {info.name.tag for info in experiment.metric_infos}
    assert tags == {f"hparams/{name}" for want in expected.values() for name in want}


def test_aggregating_again_replaces_the_sessions(tmp_path):
    pytest.importorskip("tensorboard")
    root = tmp_path / "results" / "fake"
    write_study(root)
    cli.main(["aggregate", str(root)])
    cli.main(["aggregate", str(root)])
    for run in RUNS:
        files = list((root / run.folder / "tensorboard").glob("events.out.tfevents.*"))
        assert len(files) == 1, files
    assert len(list((root / "hparams").glob("events.out.tfevents.*"))) == 1
    # a run that is no longer finished (deleted, or trained again) loses its session
    (root / RUNS[1].folder / "metrics.json").unlink()
    cli.main(["aggregate", str(root)])
    sessions, _ = read_sessions(root)
    assert sorted(sessions) == sorted(f"{run.folder}/tensorboard" for run in RUNS if run != RUNS[1])


def test_without_tensorboard_one_line_says_how_to_get_it_and_the_tables_come_out(tmp_path, capsys, monkeypatch):
    for name in [name for name in sys.modules if name == "tensorboard" or name.startswith("tensorboard.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard...` raises ImportError
    root = tmp_path / "results" / "fake"
    write_study(root)
    cli.main(["aggregate", str(root)])
    out = capsys.readouterr().out
    hints = [line for line in out.splitlines() if "TensorBoard" in line]
    assert hints == ["TensorBoard HParams not written: the tensorboard package is not installed "
                     "(pip install -e '.[tensorboard]')"]
    assert (root / "tables" / "runs.csv").stat().st_size > 0
    assert not list(root.rglob("events.out.tfevents.*"))
