"""`python -m kdsweep <command>`: every job of the workflow, runnable by hand.

Each command takes the study config as YAML files (`--config`, repeatable,
merged in order) and trailing `key=value` overrides, like snakemake's
--configfile and --config. Errors a user can cause end with one sentence on
stderr and exit status 2.
"""

import argparse
import sys
from pathlib import Path

from .errors import KdsweepError

EPILOG = "Overrides are dotted config keys with YAML values, e.g. training.lr=0.01 runtime.device=cpu seeds=[0,1]."


def _config_args(parser):
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="study config file; repeat to merge several in order "
                             "(default: ./config.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides applied after the files, e.g. training.max_epochs=5")


def _load(args):
    from .config import load_config

    return load_config(args.config, args.overrides)


def _command(subparsers, name, help_text, description=None):
    parser = subparsers.add_parser(name, help=help_text, description=description or help_text, epilog=EPILOG)
    return parser


def cmd_download(args):
    from . import datasets

    config = _load(args)
    path = datasets.download(config["dataset"]["name"], config["dataset"]["root"])
    print(f"{config['dataset']['name']} is ready in {path}")


def cmd_stats(args):
    from . import data

    config = _load(args)
    stats = data.write_stats(args.out, config["dataset"])
    print(f"wrote {args.out}: mean {['%.4f' % m for m in stats['mean']]} std {['%.4f' % s for s in stats['std']]}")


def _train(args, runs, out_dirs, teacher_dir=None):
    from .models import MODELS
    from .runtime import EXIT_PREEMPTED, Preempted
    from .train import train_points

    if runs[0].model not in MODELS:
        raise KdsweepError(f"model '{runs[0].model}' is unknown; choose one of {', '.join(MODELS)}")
    config = _load(args)
    try:
        results = train_points(config, runs, args.stats, out_dirs, teacher_dir=teacher_dir,
                               rerun_stale=args.rerun_stale, wait_for_lock=args.wait_for_lock)
    except Preempted:
        sys.exit(EXIT_PREEMPTED)
    if args.record:
        _write_record(args.record, out_dirs, results)
    return results


def _write_record(path, out_dirs, results):
    """The job's record, written once every run has finished: the workflow's output of a training job."""
    from . import io
    from .runtime import environment

    io.write_json(path, {
        "points": [{"run": str(out), "temperature": metrics["temperature"], "soft_weight": metrics["soft_weight"],
                    "config_hash": metrics["config_hash"], "test_acc": metrics["test_acc"]}
                   for out, metrics in zip(out_dirs, results)],
        "slurm": environment()["slurm"]})


def cmd_train(args):
    from .config import check_value
    from .plan import Run

    check_value("seeds.items", args.seed, "--seed")
    _train(args, [Run(role=args.role, model=args.model, seed=args.seed)], [args.out])


def cmd_distill(args):
    from .config import check_value
    from .plan import Run

    if not len(args.temperature) == len(args.soft_weight) == len(args.out):
        raise KdsweepError("give --temperature, --soft-weight and --out once per sweep point, "
                           f"the same number of times (got {len(args.temperature)}, {len(args.soft_weight)}, "
                           f"{len(args.out)})")
    check_value("seeds.items", args.seed, "--seed")
    for temperature, weight in zip(args.temperature, args.soft_weight):
        check_value("temperatures.items", temperature, "--temperature")
        check_value("soft_weights.items", weight, "--soft-weight")
    runs = [Run(role=args.role, model=args.student, seed=args.seed, temperature=temperature, soft_weight=weight)
            for temperature, weight in zip(args.temperature, args.soft_weight)]
    _train(args, runs, args.out, teacher_dir=args.teacher)


def cmd_attack(args):
    from .attacks import attack_job

    attack_job(_load(args), args.run, args.attack, args.epsilon, args.out)


def cmd_evaluate(args):
    from .evaluation import evaluate_job

    evaluate_job(_load(args), args.run, args.teacher, args.out)


def cmd_aggregate(args):
    from .aggregate import write_tables
    from .board import INSTALL_HINT, write_hparams

    for path in write_tables(Path(args.results)):
        print(f"wrote {path}")
    # the study as TensorBoard HParams sessions, from the tables just written
    sessions = write_hparams(Path(args.results))
    if sessions is None:
        print(f"TensorBoard HParams not written: the tensorboard package is not installed ({INSTALL_HINT})")
    else:
        print(f"wrote {len(sessions) - 1} TensorBoard HParams sessions (tensorboard --logdir {args.results})")


def cmd_plots(args):
    from .plots import write_figures

    for path in write_figures(Path(args.results), args.soft_weight, students=args.students):
        print(f"wrote {path}")


def cmd_best_temperature(args):
    from . import io
    from .aggregate import best_temperature

    choice = best_temperature([Path(run) for run in args.runs])
    io.write_json(args.out, choice)
    print(f"best temperature for {choice['student']}: T={choice['temperature']:g} "
          f"(mean val acc {choice['val_acc']:.2f}%)")


# ---- best-point: the confirmation's checkpoint (issue 16), its command and its parser


def cmd_best_point(args):
    from . import io
    from .aggregate import best_point

    choice = best_point([Path(run) for run in args.runs])
    io.write_json(args.out, choice)
    print(f"best point for {choice['student']}: T={choice['temperature']:g}, w={choice['soft_weight']:g} "
          f"(mean val acc {choice['val_acc']:.2f}% over {choice['n']} seed(s), of {len(choice['candidates'])} "
          "candidates)")


def _best_point_parser(subparsers):
    p = _command(subparsers, "best-point",
                 "pick a student's distilled point (T, w > 0) on mean validation accuracy over the sweep's seeds "
                 "(the confirmation's checkpoint); the record names every candidate and its mean")
    p.add_argument("runs", nargs="+", help="finished distillation run folders of one student's sweep (w = 0 runs "
                                           "are left out: hard targets only)")
    p.add_argument("--out", required=True, help="JSON file to write (the workflow's: confirm/<student>.json)")
    p.set_defaults(func=cmd_best_point)


def cmd_config(args):
    import yaml

    from . import io

    config = _load(args)
    if args.section:
        if args.section not in config:
            raise KdsweepError(f"the config has no section {args.section!r}; choose one of {', '.join(config)}")
        config = {args.section: config[args.section]}
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
    show(configfiles, overrides, folder, watch=args.watch)


def cmd_slurm_profile(args):
    from .slurm import write_site_profile

    path, written = write_site_profile(args.account, args.partition, args.qos, args.jobs, requeue=not args.no_requeue)
    if written:
        print(f"wrote {path}: `snakemake --profile slurm` now submits to SLURM with it")
    else:
        print(f"{path} exists: `snakemake --profile slurm` uses it; left as it is")


def cmd_models(args):
    from .models import MODELS

    print("\n".join(MODELS))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kdsweep",
        description="Knowledge-distillation study jobs. Each command is one job of the Snakemake workflow.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = _command(subparsers, "download", "download dataset.name into dataset.root (run once, on a login node)")
    _config_args(p)
    p.set_defaults(func=cmd_download)

    p = _command(subparsers, "stats", "split the training set and store its per-channel mean and std")
    _config_args(p)
    p.add_argument("--out", required=True, help="stats file to write, e.g. results/<study>/data/stats.json")
    p.set_defaults(func=cmd_stats)

    for name, help_text in (
        ("train", "train a teacher or a hard-target baseline"),
        ("distill", "distil a student from a trained teacher at one temperature and soft weight"),
    ):
        p = _command(subparsers, name, help_text)
        _config_args(p)
        if name == "train":
            p.add_argument("--role", choices=["teacher", "baseline", "confirm"], default="baseline",
                           help="teacher, hard-target baseline (default), or the baseline of a confirmation "
                                "on fresh seeds; only the name differs")
            p.add_argument("--model", required=True, help="architecture (see `python -m kdsweep models`)")
        else:
            p.add_argument("--role", choices=["kd", "confirm"], default="kd",
                           help="a point of the sweep (default) or of a confirmation on fresh seeds; only the "
                                "name differs")
            p.add_argument("--student", required=True, help="student architecture")
            p.add_argument("--teacher", required=True, help="run folder of the trained teacher (holds model.pt)")
            p.add_argument("--temperature", type=float, required=True, action="append",
                           help="softmax temperature T > 0")
            p.add_argument("--soft-weight", type=float, required=True, action="append",
                           help="weight w of the soft (teacher) term in [0, 1]; 1 - w weighs the hard labels")
        p.add_argument("--seed", type=int, required=True, help="seed of the run (python, numpy, torch, data order)")
        p.add_argument("--rerun-stale", action="store_true",
                       help="train again a folder that holds a finished run (or a checkpoint) of another "
                            "configuration, instead of refusing it (the workflow passes this)")
        p.add_argument("--record", metavar="JSON",
                       help="file to write once every point has finished: the job's points and their config "
                            "hashes (the workflow's output of a training job)")
        p.add_argument("--wait-for-lock", action="store_true",
                       help="if another process is training a run folder of this job, wait for it to finish "
                            "instead of stopping (the workflow passes this: a job of a killed snakemake may "
                            "still be training the run)")
        p.add_argument("--stats", required=True, help="stats file written by `python -m kdsweep stats`")
        p.add_argument("--out", required=True, action="append" if name == "distill" else None,
                       help="run folder; a checkpoint there is resumed" + (
                           ". Repeat --temperature, --soft-weight and --out together to train several sweep "
                           "points in one job (they share the data stream and the teacher's forward pass)"
                           if name == "distill" else ""))
        p.set_defaults(func=cmd_train if name == "train" else cmd_distill)

    p = _command(subparsers, "attack", "accuracy of a finished run under one attack (FGSM, PGD) on the whole "
                                       "test set at one epsilon")
    _config_args(p)
    p.add_argument("--run", required=True, help="finished run folder (holds metrics.json and model.pt)")
    p.add_argument("--attack", default="fgsm", metavar="NAME",
                   help="attack named under attacks: in the config, which gives its parameters "
                        "(fgsm or pgd; default: fgsm)")
    p.add_argument("--epsilon", type=float, required=True, help="perturbation size (L-inf) in [0, 1] pixel units")
    p.add_argument("--out", required=True,
                   help="JSON file to write (the workflow's name: attacks/<role>/<run>/<attack>_eps<eps>.json)")
    p.set_defaults(func=cmd_attack)

    p = _command(subparsers, "evaluate",
                 "fidelity to the teacher, calibration and logit scale of a finished run on the whole test set")
    _config_args(p)
    p.add_argument("--run", required=True, help="finished run folder (holds metrics.json and model.pt)")
    p.add_argument("--teacher", required=True,
                   help="the study's finished teacher run folder (agreement and KL are measured against it)")
    p.add_argument("--out", required=True,
                   help="JSON file to write (the workflow's name: evaluation/<role>/<run>.json)")
    p.set_defaults(func=cmd_evaluate)

    p = _command(subparsers, "aggregate", "write the tables of a study from whatever runs have finished")
    p.add_argument("results", help="the study's folder, results/<study>")
    p.set_defaults(func=cmd_aggregate)

    p = _command(subparsers, "plots", "draw the study's figures from its tables")
    p.add_argument("results", help="the study's folder, results/<study>")
    p.add_argument("--soft-weight", type=float, required=True,
                   help="soft weight of the accuracy-vs-temperature figure (the config's staged.soft_weight)")
    p.add_argument("--students", nargs="+", metavar="MODEL",
                   help="students to draw (default: those with a finished run); each gets its figures "
                        "even before its runs finish")
    p.set_defaults(func=cmd_plots)

    p = _command(subparsers, "best-temperature",
                 "pick a student's temperature on validation accuracy (the staged sweep's checkpoint)")
    p.add_argument("runs", nargs="+", help="finished distillation run folders of one student at one soft weight")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.set_defaults(func=cmd_best_temperature)
    _best_point_parser(subparsers)

    # Listed here for --help; main() hands `bench ...` to bench.main, which has its own parser.
    _command(subparsers, "bench", "images per second of this pipeline against a plain PyTorch loop, and the "
                                  "FLOP floor (README: Performance; `bench --help` lists its options)")

    p = _command(subparsers, "config", "print (or write) the study config the given files and overrides make, "
                                       "validated: config.yaml's defaults, then --config files, then key=value")
    _config_args(p)
    p.add_argument("--section", help="only this top-level section (e.g. runtime)")
    p.add_argument("--out", help="YAML file to write instead of printing")
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
    p.add_argument("study", nargs="?", metavar="RESULTS_DIR",
                   help="the study's folder, results/<study> (read from its study.yaml); instead of the config")
    p.add_argument("--configfile", nargs="+", action="extend", default=[], metavar="YAML",
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

    p = _command(subparsers, "models", "list the architectures that can be named in the config")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # bench.py imports torch to build its parser; the jobs' commands must not pay that at start-up.
        from .bench import main as bench_main

        bench_main(argv[1:])
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
    try:
        args.func(args)
    except KdsweepError as err:
        print(f"kdsweep: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
