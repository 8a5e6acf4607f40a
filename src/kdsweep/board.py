"""TensorBoard: each run's per-epoch curves, written while it trains (the reference study monitored
with it), and the whole study as HParams sessions, written by the aggregation (`write_hparams`), so
that `tensorboard --logdir results/<study>` shows the T x w landscape next to the curves.

The tensorboard package is optional (`pip install -e '.[tensorboard]'`); without it nothing is written.
"""

from __future__ import annotations

import math


def summary_writer(log_dir):
    """A torch SummaryWriter for log_dir, or None where the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


class EpochBoard:
    """One scalar per history column and epoch, under the run folder's tensorboard/."""

    def __init__(self, log_dir):
        self.writer = summary_writer(log_dir)

    def epoch(self, row: dict):
        if self.writer:
            for key, value in row.items():
                if key != "epoch" and value is not None and not (isinstance(value, float) and math.isnan(value)):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def close(self):
        if self.writer:
            self.writer.close()


# ---------------------------------------------------------------- the study as HParams sessions

# The hyperparameters of a session: where its run sits in the study (T and w for kd runs, as the reference
# study names them), its KD method, and each other method's hyperparameters as `<method>.<name>`
# (kdsweep.methods), for the runs of that method only.
HPARAMS = ("role", "model", "method", "T", "w", "seed")
# Metrics from tables/runs.csv (a run's row), then one per attack and epsilon from robustness.csv.
RUN_METRICS = ("val_acc", "test_acc", "agreement", "ece", "kl_to_teacher", "nll", "max_logit", "logit_norm")
METRIC_PREFIX = "hparams/"
# What TensorBoard reads (the name must hold "tfevents"); each refresh replaces the earlier file.
HPARAMS_SUFFIX = ".kdsweep.hparams"
EXPERIMENT_FOLDER = "hparams"
INSTALL_HINT = "pip install -e '.[tensorboard]'"


def hparams_available() -> bool:
    try:
        import tensorboard.plugins.hparams.plugin_data_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def _number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _read_csv(path):
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _method_hparams(results_dir, run) -> dict:
    """A distilled run's method and hyperparameters, from its metrics.json (kd's as T and w)."""
    from .records import Metrics, point_of
    from .layout import METRICS

    metrics = Metrics.peek(results_dir / run / METRICS)
    point = point_of(metrics) if metrics is not None else None
    if point is None:
        return {}
    method, hparams = point
    if method == "kd":
        return {"method": "kd", "T": float(dict(hparams)["temperature"]), "w": float(dict(hparams)["soft_weight"])}
    return {"method": method, **{f"{method}.{name}": float(value) for name, value in hparams}}


def _sessions(tables):
    """{run folder (runs/<role>/<run>): (hparams, {metric tag: value})} from the study's tables (and a
    distilled run's metrics.json: its method's hyperparameters)."""
    from .plan import fmt

    sessions = {}
    for row in _read_csv(tables / "runs.csv"):
        hparams = {"role": row["role"], "model": row["model"], "seed": int(float(row["seed"]))}
        hparams.update(_method_hparams(tables.parent, row["run"]))
        metrics = {name: _number(row.get(name)) for name in RUN_METRICS}
        sessions[row["run"]] = (hparams, {key: value for key, value in metrics.items() if value is not None})
    robustness = tables / "robustness.csv"
    for row in _read_csv(robustness) if robustness.exists() else []:
        value = _number(row.get("adv_acc"))
        if row["run"] in sessions and value is not None:
            sessions[row["run"]][1][f"{row['attack']}_eps{fmt(row['epsilon'])}"] = value
    return sessions


def _events(summaries, wall_time):
    """The bytes of an event file holding these Summary protos (TFRecord framing)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    class _Buffer(list):
        def write(self, data):
            self.append(data)

    buffer = _Buffer()
    writer = RecordWriter(buffer)
    writer.write(event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2").SerializeToString())
    for summary in summaries:
        writer.write(event_pb2.Event(wall_time=wall_time, step=0, summary=summary).SerializeToString())
    return b"".join(buffer)


def _write_events(folder, summaries, wall_time):
    from . import io

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"):
        old.unlink(missing_ok=True)
    path = folder / f"events.out.tfevents.{int(wall_time)}{HPARAMS_SUFFIX}"
    io.write_bytes(path, _events(summaries, wall_time))
    return path


def write_hparams(results_dir) -> list | None:
    """The study as TensorBoard HParams sessions, from its tables (tables/runs.csv, robustness.csv).

    One session per finished run, in the run's own tensorboard/ folder next to its epoch curves:
    hparams role, model, T, w (distilled runs) and seed; metrics (scalars `hparams/<name>`) the
    validation and test accuracy, the accuracy under each attack at each epsilon
    (`hparams/fgsm_eps0.01`), agreement with the teacher, ECE, KL, NLL and logit scale. The
    experiment (every hparam with its values, every metric) is results/<study>/hparams/. Each
    call replaces the files of the one before, so `tensorboard --logdir results/<study>` shows
    the runs finished by the last aggregation. Returns the files written, or None where the
    tensorboard package is not installed (INSTALL_HINT).
    """
    import time
    from pathlib import Path

    if not hparams_available():
        return None
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    def summary(tag, data):
        return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=tag, metadata=metadata.create_summary_metadata(data))])

    results_dir = Path(results_dir)
    sessions = _sessions(results_dir / "tables")
    wall_time = time.time()
    names = [*HPARAMS, *sorted({name for hparams, _ in sessions.values() for name in hparams} - set(HPARAMS))]
    domains = {name: sorted({hparams[name] for hparams, _ in sessions.values() if name in hparams})
               for name in names}
    metric_names = sorted({name for _, metrics in sessions.values() for name in metrics},
                          key=lambda name: (name not in RUN_METRICS,
                                            RUN_METRICS.index(name) if name in RUN_METRICS else 0, name))
    from google.protobuf import struct_pb2

    infos = []
    for name in names:
        numeric = name in ("T", "w", "seed") or "." in name
        values = [_value(value, numeric) for value in domains[name]]
        infos.append(api_pb2.HParamInfo(
            name=name, type=api_pb2.DATA_TYPE_FLOAT64 if numeric else api_pb2.DATA_TYPE_STRING,
            domain_discrete=struct_pb2.ListValue(values=values)))
    experiment = api_pb2.Experiment(
        description="kdsweep study: one session per finished run (python -m kdsweep aggregate refreshes it)",
        time_created_secs=wall_time, hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=METRIC_PREFIX + name), display_name=name)
                      for name in metric_names])
    written = [_write_events(results_dir / EXPERIMENT_FOLDER,
                             [summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))],
                             wall_time)]
    for run, (hparams, metrics) in sorted(sessions.items()):
        start = plugin_data_pb2.SessionStartInfo(start_time_secs=wall_time)
        for name, value in hparams.items():
            start.hparams[name].CopyFrom(_value(value, isinstance(value, (int, float))))
        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=wall_time)
        summaries = [summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start))]
        summaries += [summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=METRIC_PREFIX + name, simple_value=value)])
                      for name, value in metrics.items()]
        summaries.append(summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)))
        written.append(_write_events(results_dir / run / "tensorboard", summaries, wall_time))
    # a run no longer in the tables (deleted, or being trained again) loses its session
    current = set(written)
    for old in results_dir.glob(f"runs/*/*/tensorboard/events.out.tfevents.*{HPARAMS_SUFFIX}"):
        if old not in current:
            old.unlink(missing_ok=True)
    return written


def _value(value, numeric):
    from google.protobuf import struct_pb2

    return struct_pb2.Value(number_value=float(value)) if numeric else struct_pb2.Value(string_value=str(value))
