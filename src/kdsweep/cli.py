"""`python -m kdsweep <command>`: every job of the workflow, runnable by hand.

Each command takes the study config as YAML files (`--config`, repeatable,
merged in order) and trailing `key=value` overrides, like snakemake's
--configfile and --config. Errors a user can cause end with one sentence on
stderr and exit status 2 (a bad flag too); an output path that would overwrite
one of the command's inputs is refused before any work (kdsweep.paths). Ctrl-C
stops training as SLURM's signals do (exit 75: the checkpoint is kept) and any
other command with `kdsweep: interrupted` (exit 130); every file is written
whole or not at all (kdsweep.io).
"""

import argparse
import math
import os
import sys
from pathlib import Path

from .errors import KdsweepError

EPILOG = "Overrides are dotted config keys with YAML values, e.g. training.lr=0.01 runtime.device=cpu seeds=[0,1]."
# status --watch: the longest pause between two refreshes (a day)
WATCH_MAX_SECONDS = 86400
# Exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it); a training job
# stopped so exits runtime.EXIT_PREEMPTED instead (its checkpoint is kept).
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, whose errors (a missing flag, `--seed abc`) are one `kdsweep: error:` line like every other."""

    def error(self, message):
        self.exit(2, f"kdsweep: error: {message}; see `{self.prog} --help`\n")


def _path(text: str) -> str:
    """A path argument: not empty (which would mean the current folder) and without a NUL byte."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} holds a NUL byte, which no path can")
    return text


def _epochs(text: str) -> int:
    """A number of epochs: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is no number of epochs; give a whole number of at least 1")
    return value


def _config_args(parser):
    parser.add_argument("--config", action="append", default=[], metavar="YAML", type=_path,
                        help="study config file; repeat to merge several in order "
                             "(default: ./config.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides applied after the files, e.g. training.max_epochs=5")


def _load(args):
    from .config import load_config

    return load_config(args.config, args.overrides)


def _config_files(paths) -> list:
    """(what, path) of every config file a command reads: config.yaml's defaults, then its --config files
    (none given: ./config.yaml where there is one, as load_config reads them)."""
    from .config import DEFAULTS_PATH

    paths = list(paths) or (["config.yaml"] if Path("config.yaml").is_file() else [])
    return [("config.yaml (the defaults)", DEFAULTS_PATH), *(("the config file", path) for path in paths)]


def _dataset(config) -> list:
    """(what, path) of what a job reads of its dataset (kdsweep.paths)."""
    from .datasets import source

    where = source(config["dataset"]["name"], config["dataset"]["root"])
    return [] if where is None else [(f"the {config['dataset']['name']} data", where)]


def _holds_run(folder) -> bool:
    from .layout import METRICS

    try:
        return folder is not None and (Path(folder) / METRICS).is_file()
    except (OSError, ValueError):
        return False


def _refuse_overwrite(args, config=None, runs=(), writes=(), trains=(), reads=()):
    """kdsweep.paths.check for a command's config files, its dataset (config given), the run folders it
    reads (runs: (what, folder); one that holds no finished run is left to the job, which refuses it
    with its own sentence) and its other inputs."""
    from .paths import check

    check(reads=[*_config_files(getattr(args, "config", [])), *reads],
          read_folders=[*(_dataset(config) if config is not None else []),
                        *((what, folder) for what, folder in runs if _holds_run(folder))],
          writes=writes, trains=trains)


def _command(subparsers, name, help_text, description=None):
    parser = subparsers.add_parser(name, help=help_text, description=description or help_text, epilog=EPILOG)
    return parser


def cmd_download(args):
    from . import datasets

    config = _load(args)
    _refuse_overwrite(args, writes=[("--record", getattr(args, "record", None))])
    path = datasets.download(config["dataset"]["name"], config["dataset"]["root"])
    print(f"{config['dataset']['name']} is ready in {path}")
    from .plan import WEIGHTS_NAME, teachers as study_teachers

    for teacher in study_teachers(config):  # pretrained weights named by torchvision: fetched here, never in a job
        if teacher.checkpoint and WEIGHTS_NAME.match(teacher.checkpoint):
            from .teachers import download as download_weights

            print(f"{teacher.checkpoint} is ready in {download_weights(teacher.checkpoint)}")
    if args.record:
        from . import io

        io.write_json(args.record, {"dataset": config["dataset"]["name"], "folder": str(path)})


def cmd_stats(args):
    from . import data

    from .imagefolder import arrays_of

    config = _load(args)
    arrays = arrays_of(args.out) if config["dataset"]["name"] == "imagefolder" else ()
    _refuse_overwrite(args, config, writes=[("--out", args.out), *(("--out", path) for path in arrays)])
    stats = data.write_stats(args.out, config["dataset"], config)
    print(f"wrote {args.out}: mean {['%.4f' % m for m in stats['mean']]} std {['%.4f' % s for s in stats['std']]}")


def _train(args, runs, out_dirs, teacher_dir=None):
    from .datasets import geometry
    from .models import check_buildable
    from .runtime import EXIT_PREEMPTED, Preempted
    from .train import train_points

    config = _load(args)
    check_buildable(runs[0].model, geometry(config)[1])
    checkpoint = getattr(args, "checkpoint", None)
    if getattr(args, "fine_tune", False) and checkpoint is None:
        raise KdsweepError("--fine-tune fine-tunes a teacher's checkpoint; give --checkpoint too")
    from .plan import WEIGHTS_NAME

    read = [("the teacher's checkpoint", checkpoint)] if checkpoint and not WEIGHTS_NAME.match(checkpoint) else []
    _refuse_overwrite(args, config, reads=[("the stats file", args.stats), *read],
                      runs=[("the teacher run folder", teacher_dir)],
                      writes=[("--record", args.record)], trains=[("--out", out) for out in out_dirs])
    from .distributed import Processes, launch

    # several processes (runtime.processes, or a SLURM job's tasks): this one starts them and waits
    status = launch(args.argv, config["runtime"]["processes"])
    if status is not None:
        sys.exit(status if status >= 0 else 128 - status)
    histories = {}
    try:
        results = train_points(config, runs, args.stats, out_dirs, teacher_dir=teacher_dir,
                               rerun_stale=args.rerun_stale, wait_for_lock=args.wait_for_lock,
                               until_epoch=getattr(args, "until_epoch", None), teacher_checkpoint=checkpoint,
                               fine_tune=getattr(args, "fine_tune", False), histories=histories)
    except Preempted:
        sys.exit(EXIT_PREEMPTED)
    if args.record and Processes.from_environment().main:
        _write_record(args.record, out_dirs, results, getattr(args, "until_epoch", None), histories)
    return results


def _write_record(path, out_dirs, results, until_epoch=None, histories=None):
    """The job's record, written once every run has finished (or, until_epoch, paused there): the workflow's
    output of a training job; histories {out_dir: its validation epochs} (kdsweep.train.train_points)."""
    from .records import JobPoint, JobRecord
    from .runtime import environment

    histories = {Path(out): history for out, history in (histories or {}).items()}
    JobRecord(points=[JobPoint.of(out, metrics, finished=metrics.test_acc is not None,
                                  history=histories.get(Path(out)))
                      for out, metrics in zip(out_dirs, results)],
              slurm=environment()["slurm"], until_epoch=until_epoch).write(path)


def cmd_train(args):
    from .config import check_value
    from .plan import Run

    check_value("seeds.items", args.seed, "--seed")
    if (args.architecture or args.checkpoint) and args.role != "teacher":
        raise KdsweepError("--architecture and --checkpoint are a teacher's; give --role teacher")
    # a teacher named otherwise than its architecture (teacher.name): --model is its name, --architecture its model
    named = args.architecture is not None and args.architecture != args.model
    _train(args, [Run(role=args.role, model=args.architecture or args.model, seed=args.seed,
                      teacher=args.model if named else None)], [args.out])


def cmd_distill(args):
    from .config import check_value
    from .plan import Run, parse_point

    check_value("seeds.items", args.seed, "--seed")
    if args.point and (args.temperature or args.soft_weight):
        raise KdsweepError("give the points as --point METHOD:NAME=VALUE,... or as kd's --temperature and "
                           "--soft-weight, not both")
    if args.point:
        if len(args.point) != len(args.out):
            raise KdsweepError(f"give --point and --out once per point, the same number of times (got "
                               f"{len(args.point)} and {len(args.out)})")
        points = [parse_point(spec) for spec in args.point]
    else:
        if not len(args.temperature) == len(args.soft_weight) == len(args.out) > 0:
            raise KdsweepError("give --temperature, --soft-weight and --out once per sweep point, "
                               f"the same number of times (got {len(args.temperature)}, {len(args.soft_weight)}, "
                               f"{len(args.out)}), or --point METHOD:NAME=VALUE,... and --out pairs")
        for temperature, weight in zip(args.temperature, args.soft_weight):
            check_value("temperatures.items", temperature, "--temperature")
            check_value("soft_weights.items", weight, "--soft-weight")
        points = [("kd", {"temperature": t, "soft_weight": w}) for t, w in zip(args.temperature, args.soft_weight)]
    if args.role == "kd" and any(method != "kd" for method, _ in points):
        raise KdsweepError("--role kd is for kd points; give --role sweep (the default) for points of other methods")
    runs = [Run.distilled_run("confirm" if args.role == "confirm" else method, args.student, args.seed, method, values,
                              args.teacher_name)
            for method, values in points]
    _train(args, runs, args.out, teacher_dir=args.teacher)


def cmd_attack(args):
    config = _load(args)
    runs = [("the run folder", args.run), ("the teacher run", args.teacher), ("the baseline run", args.baseline)]
    if args.out_dir is None:
        if args.out is None or args.epsilon is None or args.masking or args.teacher or args.baseline:
            raise KdsweepError("attack takes --attack NAME --epsilon E --out FILE (one attack), or --out-dir DIR "
                               "--masking FILE [--teacher RUN] [--baseline RUN] (every attack of the config)")
        from .attacks.job import attack_job

        _refuse_overwrite(args, config, runs=runs[:1], writes=[("--out", args.out)])
        attack_job(config, args.run, args.attack or "fgsm", args.epsilon, args.out)
        return
    if args.out is not None or args.epsilon is not None or args.attack is not None or args.masking is None:
        raise KdsweepError("attack --out-dir runs every attack of the config at every epsilon and takes --masking "
                           "FILE, not --attack, --epsilon or --out")
    from .attacks.job import outputs, robustness_job
    from .attacks.suite import Suite

    files = outputs(Suite.from_config(config), args.out_dir)
    _refuse_overwrite(args, config, runs=runs,
                      writes=[*(("--out-dir", path) for path in files), ("--masking", args.masking)])
    robustness_job(config, args.run, args.out_dir, args.masking, args.teacher, args.baseline)


def cmd_evaluate(args):
    from .evaluation import evaluate_job

    config = _load(args)
    _refuse_overwrite(args, config, runs=[("the run folder", args.run), ("the teacher run folder", args.teacher)],
                      writes=[("--out", args.out)])
    evaluate_job(config, args.run, args.teacher, args.out)


def cmd_aggregate(args):
    from .board import INSTALL_HINT, write_hparams
    from .tables import write_tables

    config = None
    if args.overrides:
        from .config import load_config

        config = load_config([], args.overrides)
    for path in write_tables(Path(args.results), args.search, config):
        print(f"wrote {path}")
    # the study as TensorBoard HParams sessions, from the tables just written
    sessions = write_hparams(Path(args.results))
    if sessions is None:
        print(f"TensorBoard HParams not written: the tensorboard package is not installed ({INSTALL_HINT})")
    else:
        print(f"wrote {len(sessions) - 1} TensorBoard HParams sessions (tensorboard --logdir {args.results})")


def cmd_plots(args):
    from .config import check_value
    from .models import check_name
    from .plots import write_figures

    check_value("soft_weights.items", args.soft_weight, "--soft-weight")
    for name in args.students or ():
        try:
            check_name(name)
        except KdsweepError as err:
            raise KdsweepError(f"--students names '{name}', which is no architecture: {err}") from None
    from .methods import METHODS

    if unknown := [name for name in args.methods or () if name not in METHODS]:
        raise KdsweepError(f"--methods names '{unknown[0]}', which is no KD method; choose among {', '.join(METHODS)}")
    for path in write_figures(Path(args.results), args.soft_weight, students=args.students, methods=args.methods):
        print(f"wrote {path}")


def cmd_best_temperature(args):
    from .records import StagedChoice
    from .tables.choices import best_temperature

    _refuse_overwrite(args, runs=[("the run folder", run) for run in args.runs], writes=[("--out", args.out)])
    choice = StagedChoice.from_dict(best_temperature([Path(run) for run in args.runs]))
    choice.write(args.out)
    print(f"best temperature for {choice.student}: T={choice.temperature:g} (mean val acc {choice.val_acc:.2f}%)")


# ---- best-point: the confirmation's checkpoint (issue 16), its command and its parser


def cmd_best_point(args):
    from .records import BestPoint
    from .tables.choices import best_point

    _refuse_overwrite(args, runs=[("the run folder", run) for run in args.runs], writes=[("--out", args.out)])
    choice = BestPoint.from_dict(best_point([Path(run) for run in args.runs]))
    choice.write(args.out)
    point = ", ".join(f"{name}={value:g}" for name, value in choice.hparams.items())
    print(f"best {choice.method} point for {choice.student}: {point} "
          f"(mean val acc {choice.val_acc:.2f}% over {choice.n} seed(s), of {len(choice.candidates)} candidates)")


# ---- rung-decision: successive halving's checkpoint (kdsweep.search.halving)


def cmd_rung_decision(args):
    from .config import check_value
    from .search.halving import decide

    # the config's bounds (halving.keep, min_kept, rungs; seeds), as the workflow's values have them
    check_value("halving.keep", args.keep, "--keep")
    check_value("halving.min_kept", args.min_kept, "--min-kept")
    check_value("halving.rungs.items", args.rung, "--rung")
    for seed in args.seeds:
        check_value("seeds.items", seed, "--seeds")
    if not 0 <= args.stage < args.rung:
        raise KdsweepError(f"--stage {args.stage} is no index of a rung at epoch {args.rung}: halving.rungs increase "
                           "from epoch 1, so rung k (from 0) is at epoch k + 1 or later; give the rung's index in "
                           "halving.rungs")
    _refuse_overwrite(args, reads=[("the pack record", record) for record in args.records],
                      writes=[("--out", args.out)])
    decision = decide(args.records, args.student, args.stage, args.rung, args.keep, args.min_kept, args.seeds)
    decision.write(args.out)
    kept = sum(candidate.kept for candidate in decision.candidates)
    print(f"rung {decision.rung} of {decision.student}: {kept} of {len(decision.candidates)} points go on")
    for tie in decision.ties or ():
        print(f"tie at the cut: {tie}")


def _rung_decision_parser(subparsers):
    p = _command(subparsers, "rung-decision",
                 "successive halving: judge a student's points at one rung on mean validation accuracy over the "
                 "seeds, within each KD method, and keep the best (the workflow's checkpoint)")
    p.add_argument("records", type=_path, nargs="+",
                   help="the pack records of the rung (packs/<pack>_rung<epochs>.json) of every seed")
    p.add_argument("--student", required=True, help="the student whose points they are")
    p.add_argument("--stage", type=int, required=True, help="the rung's index in halving.rungs (from 0)")
    p.add_argument("--rung", type=_epochs, required=True, help="the rung's epoch")
    p.add_argument("--keep", type=float, required=True, help="halving.keep: the fraction of each method's points kept")
    p.add_argument("--min-kept", type=int, required=True, help="halving.min_kept: the fewest points kept")
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="the sweep's seeds: every point has each")
    p.add_argument("--out", type=_path, required=True, help="JSON file to write (halving/<student>_rung<epochs>.json)")
    p.set_defaults(func=cmd_rung_decision)


def _best_point_parser(subparsers):
    p = _command(subparsers, "best-point",
                 "pick a student's distilled point of one KD method on mean validation accuracy over the sweep's "
                 "seeds (the confirmation's checkpoint); the record names every candidate and its mean")
    p.add_argument("runs", type=_path, nargs="+",
                   help="finished run folders of one student's sweep of one method (points that do not use the "
                        "teacher, kd's w = 0, are left out: hard targets only)")
    p.add_argument("--out", type=_path, required=True,
                   help="JSON file to write (the workflow's: confirm/<student>.json for kd, "
                        "confirm/<student>_<method>.json for another method)")
    p.set_defaults(func=cmd_best_point)


def cmd_config(args):
    import yaml

    from . import io

    from .commands import select

    config = _load(args)
    _refuse_overwrite(args, writes=[("--out", args.out)])
    if args.section:
        try:
            config = select(config, args.section)
        except (KeyError, TypeError):
            raise KdsweepError(f"the config has no section {', '.join(args.section)!r} (give top-level sections such as "
                               f"{', '.join(config)}, or dotted keys such as dataset.root)") from None
    text = yaml.safe_dump(config, sort_keys=False)
    if args.out:
        io.write_text(args.out, text)
    else:
        print(text, end="")


def cmd_status(args):
    from .config import OVERRIDE
    from .status import show

    configfiles = [*args.configfile, *(item for item in args.config if not OVERRIDE.match(item))]
    overrides = [*(item for item in args.config if OVERRIDE.match(item)), *args.overrides]
    folder = None
    if args.study is not None:
        if OVERRIDE.match(args.study):
            overrides.insert(0, args.study)
        else:
            folder = args.study
    if folder is not None and configfiles:
        raise KdsweepError("give the study folder or its config files, not both")
    if args.watch is not None and not (math.isfinite(args.watch) and 0 < args.watch <= WATCH_MAX_SECONDS):
        raise KdsweepError(f"--watch {args.watch} is no pause between refreshes; give a number of seconds above 0 "
                           f"and at most {WATCH_MAX_SECONDS} (a day), e.g. --watch 30")
    try:
        show(configfiles, overrides, folder, watch=args.watch)
    except KeyboardInterrupt:
        if not args.watch:
            raise
        print()  # Ctrl-C is how a watch ends, also mid-refresh


def cmd_slurm_profile(args):
    from .slurm import WORKFLOW_PROFILE, dropped_sentence, dropped_settings, read_profile, write_site_profile

    if args.jobs < 1:
        raise KdsweepError(f"--jobs {args.jobs} would let no job run; give at least 1 (default 100)")
    for flag in ("account", "partition", "qos"):
        value = getattr(args, flag)
        if value is not None and (not value or not value.isprintable()
                                  or any(c.isspace() or c in ",'\"" for c in value)):
            raise KdsweepError(f"--{flag} {value!r} is no SLURM {flag} name (empty, or with a space, comma, quote or "
                               f"control character); give the name as `sacctmgr show assoc` lists it, or leave "
                               f"--{flag} out")
    path, written = write_site_profile(args.account, args.partition, args.qos, args.jobs, requeue=not args.no_requeue)
    if written:
        print(f"wrote {path}: `snakemake --profile slurm` now submits to SLURM with it")
        return
    print(f"{path} exists: `snakemake --profile slurm` uses it; left as it is")
    if WORKFLOW_PROFILE.is_file():
        dropped = dropped_settings(read_profile(path), read_profile(WORKFLOW_PROFILE))
        if dropped:
            print(f"warning: {dropped_sentence(path, WORKFLOW_PROFILE, dropped)}", file=sys.stderr)


def cmd_models(args):
    from .models import SMALL_IMAGE, STEM_RULES, family, names, parameter_count

    if args.classes < 1 or args.image_size < 1:
        raise KdsweepError("--classes and --image-size must be at least 1")
    small = args.image_size <= SMALL_IMAGE
    print(f"{'model':<28} {'family':<20} {'parameters':>14}  ({args.classes} classes, {args.image_size} px"
          f"{', small-image stems' if small else ''})")
    for name in names():
        found = family(name)
        if small and found not in STEM_RULES:
            count = "no small-image rule"
        else:
            count = f"{parameter_count(name, args.classes, args.image_size):,}"
        print(f"{name:<28} {found:<20} {count:>14}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m kdsweep",
        description="Knowledge-distillation study jobs. Each command is one job of the Snakemake workflow.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = _command(subparsers, "download", "download dataset.name into dataset.root (run once, on a login node)")
    _config_args(p)
    p.add_argument("--record", type=_path, help="a JSON file to write once the data is there (the workflow's output)")
    p.set_defaults(func=cmd_download)

    p = _command(subparsers, "stats", "split the training set and store its per-channel mean and std")
    _config_args(p)
    p.add_argument("--out", type=_path, required=True, help="stats file to write, e.g. results/<study>/data/stats.json")
    p.set_defaults(func=cmd_stats)

    for name, help_text in (
        ("train", "train a teacher or a hard-target baseline"),
        ("distill", "distil a student from a trained teacher: points of any KD methods (kdsweep.methods)"),
    ):
        p = _command(subparsers, name, help_text)
        _config_args(p)
        if name == "train":
            p.add_argument("--role", choices=["teacher", "baseline", "confirm"], default="baseline",
                           help="teacher, hard-target baseline (default), or the baseline of a confirmation "
                                "on fresh seeds; only the name differs")
            p.add_argument("--model", required=True,
                           help="architecture (see `python -m kdsweep models`); a teacher named otherwise "
                                "(teacher.name, with --architecture): its name")
            p.add_argument("--architecture", metavar="MODEL",
                           help="a teacher whose name (--model) is not its architecture: the architecture")
            p.add_argument("--checkpoint", metavar="FILE_OR_WEIGHTS",
                           help="a teacher from a checkpoint (teacher.checkpoint: a state dict file or a torchvision "
                                "weights name; docs/models.md): evaluated as it is, or fine-tuned with --fine-tune")
            p.add_argument("--fine-tune", action="store_true",
                           help="fine-tune the --checkpoint on the study's data with `training` (a head for its "
                                "classes where the checkpoint's differ)")
        else:
            p.add_argument("--role", choices=["sweep", "kd", "confirm"], default="sweep",
                           help="points of the sweep (default; each of its method's role: kd, dkd, ...; `kd` "
                                "says the same of kd points) or of a confirmation on fresh seeds; only the "
                                "name differs")
            p.add_argument("--student", required=True, help="student architecture")
            p.add_argument("--teacher", type=_path, required=True,
                           help="run folder of the trained teacher (holds model.pt)")
            p.add_argument("--teacher-name", metavar="NAME",
                           help="the teacher's name, for a teacher but the study's first (its students' folder "
                                "names carry it: <student>_from_<teacher>_...)")
            p.add_argument("--point", action="append", default=[], metavar="METHOD:NAME=VALUE,...",
                           help="a point of any KD method (kdsweep.methods), e.g. "
                                "dkd:alpha=1,beta=8,temperature=4,warmup_epochs=20; with one --out each")
            p.add_argument("--temperature", type=float, action="append", default=[],
                           help="kd's softmax temperature T > 0 (with --soft-weight and --out: a kd point)")
            p.add_argument("--soft-weight", type=float, action="append", default=[],
                           help="kd's weight w of the soft (teacher) term in [0, 1]; 1 - w weighs the hard labels")
        p.add_argument("--seed", type=int, required=True, help="seed of the run (python, numpy, torch, data order)")
        p.add_argument("--rerun-stale", action="store_true",
                       help="train again a folder that holds a finished run (or a checkpoint) of another "
                            "configuration, instead of refusing it (the workflow passes this)")
        p.add_argument("--record", type=_path, metavar="JSON",
                       help="file to write once every point has finished: the job's points and their config "
                            "hashes (the workflow's output of a training job)")
        p.add_argument("--wait-for-lock", action="store_true",
                       help="if another process is training a run folder of this job, wait for it to finish "
                            "instead of stopping (the workflow passes this: a job of a killed snakemake may "
                            "still be training the run)")
        p.add_argument("--stats", type=_path, required=True, help="stats file written by `python -m kdsweep stats`")
        if name == "distill":
            p.add_argument("--until-epoch", type=_epochs, metavar="N",
                           help="successive halving's rung: train each point to epoch N at most and keep its "
                                "checkpoint there (a later job continues it, exactly); a point early stopping "
                                "ends first is finished")
        p.add_argument("--out", type=_path, required=True, action="append" if name == "distill" else None,
                       help="run folder; a checkpoint there is resumed" + (
                           ". Repeat --point and --out (or kd's --temperature, --soft-weight and --out) "
                           "together to train several points of one student and seed in one job (they share "
                           "the data stream and the teacher's forward pass)"
                           if name == "distill" else ""))
        p.set_defaults(func=cmd_train if name == "train" else cmd_distill)

    p = _command(subparsers, "attack", "accuracy of a finished run under attack: one attack on the whole test set "
                                       "at one epsilon (--out), or every attack of the config at every epsilon with "
                                       "the worst case, transfer attacks and masking checks (--out-dir)")
    _config_args(p)
    p.add_argument("--run", type=_path, required=True, help="finished run folder (holds metrics.json and model.pt)")
    p.add_argument("--attack", default=None, metavar="NAME",
                   help="with --out: the attack, named under attacks: in the config, which gives its parameters "
                        "(fgsm, pgd, apgd_ce, apgd_dlr, apgd_t, square; default: fgsm)")
    p.add_argument("--epsilon", type=float, default=None,
                   help="with --out: perturbation size (L-inf) in [0, 1] pixel units")
    p.add_argument("--out", type=_path, default=None,
                   help="JSON file to write for one attack (the workflow's name: attacks/<role>/<run>/<attack>_eps<eps>.json)")
    p.add_argument("--out-dir", type=_path, default=None,
                   help="folder to write every attack's and the worst case's <attack>_eps<eps>.json into "
                        "(the workflow's: attacks/<role>/<run>)")
    p.add_argument("--masking", type=_path, default=None,
                   help="with --out-dir: the run's transfer attacks and masking checks (masking/<role>/<run>.json)")
    p.add_argument("--teacher", type=_path, default=None,
                   help="with --out-dir: the finished teacher run, source of a transfer attack")
    p.add_argument("--baseline", type=_path, default=None,
                   help="with --out-dir: the finished hard-target run of the same student and seed, source of a "
                        "transfer attack")
    p.set_defaults(func=cmd_attack)

    p = _command(subparsers, "evaluate",
                 "fidelity to the teacher, calibration and logit scale of a finished run on the whole test set")
    _config_args(p)
    p.add_argument("--run", type=_path, required=True, help="finished run folder (holds metrics.json and model.pt)")
    p.add_argument("--teacher", type=_path, required=True,
                   help="the study's finished teacher run folder (agreement and KL are measured against it)")
    p.add_argument("--out", type=_path, required=True,
                   help="JSON file to write (the workflow's name: evaluation/<role>/<run>.json)")
    p.set_defaults(func=cmd_evaluate)

    p = _command(subparsers, "aggregate", "write the tables of a study from whatever runs have finished")
    p.add_argument("results", type=_path, help="the study's folder, results/<study>")
    p.add_argument("--search", choices=("grid", "staged", "halving"),
                   help="the study's search (config sweep), which every table names (default: that of "
                        "results/<study>/study.yaml, else grid); halving's pruned points are read from halving/")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="the study's config, over config.yaml's defaults (the workflow gives it whole); default: "
                        "results/<study>/study.yaml. The tables hold what it asks for (docs/search.md)")
    p.set_defaults(func=cmd_aggregate)

    p = _command(subparsers, "plots", "draw the study's figures from its tables")
    p.add_argument("results", type=_path, help="the study's folder, results/<study>")
    p.add_argument("--soft-weight", type=float, required=True,
                   help="soft weight of the accuracy-vs-temperature figure (the config's staged.soft_weight)")
    p.add_argument("--students", nargs="+", metavar="MODEL",
                   help="students to draw (default: those with a finished run); each gets its figures "
                        "even before its runs finish")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="KD methods whose heat maps to draw (default: those with a finished run); kd's "
                        "figures are the reference study's")
    p.set_defaults(func=cmd_plots)

    p = _command(subparsers, "best-temperature",
                 "pick a student's temperature on validation accuracy (the staged sweep's checkpoint)")
    p.add_argument("runs", type=_path, nargs="+",
                   help="finished distillation run folders of one student at one soft weight")
    p.add_argument("--out", type=_path, required=True, help="JSON file to write")
    p.set_defaults(func=cmd_best_temperature)
    _best_point_parser(subparsers)
    _rung_decision_parser(subparsers)

    # Listed here for --help; main() hands `bench ...` to bench.main, which has its own parser.
    _command(subparsers, "bench", "images per second of this pipeline against a plain PyTorch loop, and the "
                                  "FLOP floor (docs/performance.md; `bench --help` lists its options)")

    p = _command(subparsers, "config", "print (or write) the study config the given files and overrides make, "
                                       "validated: config.yaml's defaults, then --config files, then key=value")
    _config_args(p)
    p.add_argument("--section", action="append",
                   help="only this section (e.g. runtime) or key (e.g. dataset.root); repeatable")
    p.add_argument("--out", type=_path, help="YAML file to write instead of printing")
    p.set_defaults(func=cmd_config)

    p = _command(subparsers, "status",
                 "where a study stands: runs planned, finished, training, stopped, failed, not started; "
                 "GPU-hours; SLURM jobs (reads files only: safe beside a live sweep)",
                 description="Where a study stands, from its files alone: per role and model the runs planned "
                             "(the workflow's plan), finished, training now (epoch k of at most N), stopped (resume "
                             "on their next attempt), failed (with the reason from the job's log) and not started; "
                             "training GPU-hours spent and an estimate of what remains; the SLURM jobs pending and "
                             "running in this folder (where squeue is on PATH). Give the config as you give it to "
                             "snakemake (--configfile FILE ..., --config key=value ...), run in the folder "
                             "snakemake runs in, or give the study folder (results/<study>).")
    p.add_argument("study", type=_path, nargs="?", metavar="RESULTS_DIR",
                   help="the study's folder, results/<study> (read from its study.yaml); instead of the config")
    p.add_argument("--configfile", type=_path, nargs="+", action="extend", default=[], metavar="YAML",
                   help="study config files, as given to snakemake (config.yaml's defaults come first)")
    p.add_argument("--config", nargs="+", action="extend", default=[], metavar="key=value",
                   help="config overrides as given to snakemake (key=value, YAML values); a YAML file "
                        "path here is read as a config file, as with the other kdsweep commands")
    p.add_argument("--watch", nargs="?", type=float, const=10.0, metavar="SECONDS",
                   help="refresh every SECONDS (default 10) until Ctrl-C")
    p.set_defaults(func=cmd_status, overrides=[])

    p = _command(subparsers, "slurm-profile",
                 "write a minimal SLURM site profile, so that `snakemake --profile slurm` works; "
                 "an existing one is never overwritten",
                 description="Write a minimal Snakemake site profile named slurm (executor, job cap, status "
                             "polling, and the account, partition and QoS given) into ~/.config/snakemake/slurm/ "
                             "($XDG_CONFIG_HOME/snakemake/slurm/), unless a profile named slurm exists there or in "
                             "/etc/xdg/snakemake/: that one is left as it is. The workflow's own settings come "
                             "from profiles/default/, which Snakemake adds by itself.")
    p.add_argument("--account", help="SLURM account of every job (sbatch -A); default: the plugin guesses it")
    p.add_argument("--partition", help="SLURM partition of every job (sbatch -p); default: the cluster's")
    p.add_argument("--qos", help="SLURM QoS of every job (sbatch --qos); default: the cluster's")
    p.add_argument("--jobs", type=int, default=100,
                   help="at most this many jobs submitted at once (default: 100)")
    p.add_argument("--no-requeue", action="store_true",
                   help="where the site forbids requeueing: a job of a failed node fails and Snakemake "
                        "resubmits it, instead of SLURM requeueing it (sbatch --requeue, the default)")
    p.set_defaults(func=cmd_slurm_profile)

    p = _command(subparsers, "models", "list the architectures a study can name (torchvision's classification "
                                       "models, and timm's where installed), their family and parameter count as "
                                       "a study builds them (docs/models.md)")
    p.add_argument("--classes", type=int, default=10, help="output classes to count the head with (default 10)")
    p.add_argument("--image-size", type=int, default=32,
                   help="image side in pixels (default 32, CIFAR's): up to 64, the small-image stems")
    p.set_defaults(func=cmd_models)
    return parser


def _bench(argv):
    """`python -m kdsweep bench`: kdsweep.bench's command line, with this one's errors and output check."""
    from .bench.command import add_arguments, run
    from .config import OVERRIDE, check_value

    parser = add_arguments(_Parser(prog="python -m kdsweep bench",
                                   description="images per second of this pipeline against a plain PyTorch loop, "
                                               "and the FLOP floor (docs/bench/README.md)"))
    # key=value overrides may come anywhere, also after an option that takes several values
    overrides = [arg for arg in argv if OVERRIDE.match(arg)]
    args = parser.parse_args([arg for arg in argv if not OVERRIDE.match(arg)]
                             + (["--", *overrides] if overrides else []))
    check_value("seeds.items", args.seed, "--seed")
    if args.json is not None and (not args.json.strip() or "\0" in args.json):
        parser.error(f"argument --json: {args.json!r} is no file name")
    _refuse_overwrite(args, writes=[("--json", args.json)])
    return run(args)


def _fail(message: str, status: int = 2):
    print(f"kdsweep: {message}", file=sys.stderr)
    sys.exit(status)


class _Interrupt:
    """Ctrl-C while a command runs: KeyboardInterrupt, as Python's own handler raises it, and a note that
    it came, so that whatever it turns into on its way out (an import cut in half can surface as another
    exception) ends as `kdsweep: interrupted`. A training loop takes SIGINT over while it runs
    (runtime.SignalStop). Left alone where SIGINT is ignored (a background job) or not this process's to
    handle (a thread other than the main one). final (the process ends with the command: `python -m
    kdsweep`): a Ctrl-C that comes once the command is done, while the process exits, is ignored, so
    the exit status stays the command's (75 for a stopped training run)."""

    def __init__(self, final=False):
        self.received = False
        self.final = final
        self._previous = None

    def _handle(self, signum, frame):
        if self.received:
            return  # the first is already unwinding the command: let it end in its one line
        self.received = True
        raise KeyboardInterrupt

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN if self.final else self._previous)
        return False


def _run(argv):
    if argv[:1] == ["bench"]:
        # the bench package imports torch to build its parser; the jobs' commands must not pay that at start-up.
        _bench(argv[1:])
        return
    parser = build_parser()
    # key=value overrides may come anywhere after the command, also between options
    args, extras = parser.parse_known_args(argv)
    from .config import OVERRIDE

    unknown = [arg for arg in extras if not OVERRIDE.match(arg) or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extras:
        args.overrides = [*args.overrides, *extras]
    args.argv = argv  # a training job of several processes starts each with the same command line
    args.func(args)


def main(argv=None):
    final = argv is None  # the process's own command line: it ends when the command does
    argv = sys.argv[1:] if argv is None else list(argv)
    if final:
        from .joblog import keep_attempts

        keep_attempts(" ".join(argv[:1]))  # a workflow job: its log keeps every attempt (kdsweep.joblog)
    with _Interrupt(final) as interrupt:
        try:
            _run(argv)
        except SystemExit:
            raise
        except BaseException as err:  # noqa: BLE001 - each kind a user can cause ends in one line; others re-raised
            _end(err, interrupt.received)


def _end(err: BaseException, interrupted: bool):
    """How a command that raised `err` ends: one line and its exit status, or the exception itself (a bug)."""
    if interrupted or isinstance(err, KeyboardInterrupt):
        # Ctrl-C outside a training loop (which stops at its next batch instead: exit 75). Every file is
        # written whole or not at all (kdsweep.io), so nothing half-written looks finished.
        # CPython 3.8-3.12 marks the process to die by SIGINT at exit when the KeyboardInterrupt passed
        # through code run from a string (exec, eval: dataclasses and namedtuples are made so, also while
        # torch imports), caught or not; each such run clears the mark first, so one more makes the exit
        # status this 130 (python/cpython#128130 moved the mark to where this cannot reach it, 3.13 on).
        exec("None")  # noqa: S102 - a constant string
        _fail("interrupted", EXIT_INTERRUPTED)
    if isinstance(err, KdsweepError):
        from .distributed import Echoed

        if isinstance(err, Echoed):
            sys.exit(2)  # the first process of the job says it (kdsweep.distributed)
        _fail(f"error: {err}")
    if isinstance(err, BrokenPipeError):
        # The reader of the output went away (`... | head`): say nothing more to it.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        sys.exit(1)
    if isinstance(err, OSError):
        # A file-system problem that no check foresaw (a name too long, a file gone mid-read).
        where = f" {err.filename}" if err.filename else ""
        _fail(f"error: cannot read or write{where} ({err.strerror or err.__class__.__name__}); check the path and "
              "the file system")
    if isinstance(err, RuntimeError) and (err.__class__.__name__ == "OutOfMemoryError"
                                          or "can't allocate memory" in str(err)):
        _fail("error: the job ran out of memory; lower training.batch_size, training.eval_batch_size or "
              "runtime.pack_size, or run it on a device with more memory")
    raise err


if __name__ == "__main__":
    main()
