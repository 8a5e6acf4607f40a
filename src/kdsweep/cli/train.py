"""`train` and `distill`: a teacher or a hard-target baseline, and a pack of distilled students, with the
job's record (kdsweep.records.JobRecord) once every run of it has finished."""

import sys
from pathlib import Path

from ..errors import KdsweepError
from .common import command, config_args, epochs_type, load, path_type, refuse_overwrite


def register(subparsers):
    p = command(subparsers, "train", cmd_train, "train a teacher or a hard-target baseline")
    config_args(p)
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
    _job_arguments(p)
    p.add_argument("--out", type=path_type, required=True, help="run folder; a checkpoint there is resumed")

    p = command(subparsers, "distill", cmd_distill,
                "distil a student from a trained teacher: points of any KD methods (kdsweep.methods)")
    config_args(p)
    p.add_argument("--role", choices=["sweep", "kd", "confirm"], default="sweep",
                   help="points of the sweep (default; each of its method's role: kd, dkd, ...; `kd` "
                        "says the same of kd points) or of a confirmation on fresh seeds; only the "
                        "name differs")
    p.add_argument("--student", required=True, help="student architecture")
    p.add_argument("--teacher", type=path_type, required=True,
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
    _job_arguments(p)
    p.add_argument("--until-epoch", type=epochs_type, metavar="N",
                   help="successive halving's rung: train each point to epoch N at most and keep its "
                        "checkpoint there (a later job continues it, exactly); a point early stopping "
                        "ends first is finished")
    p.add_argument("--out", type=path_type, required=True, action="append",
                   help="run folder; a checkpoint there is resumed. Repeat --point and --out (or kd's "
                        "--temperature, --soft-weight and --out) together to train several points of one "
                        "student and seed in one job (they share the data stream and the teacher's forward pass)")


def _job_arguments(p):
    """The options of every training job, train's and distill's alike."""
    p.add_argument("--seed", type=int, required=True, help="seed of the run (python, numpy, torch, data order)")
    p.add_argument("--rerun-stale", action="store_true",
                   help="train again a folder that holds a finished run (or a checkpoint) of another "
                        "configuration, instead of refusing it (the workflow passes this)")
    p.add_argument("--record", type=path_type, metavar="JSON",
                   help="file to write once every point has finished: the job's points and their config "
                        "hashes (the workflow's output of a training job)")
    p.add_argument("--wait-for-lock", action="store_true",
                   help="if another process is training a run folder of this job, wait for it to finish "
                        "instead of stopping (the workflow passes this: a job of a killed snakemake may "
                        "still be training the run)")
    p.add_argument("--stats", type=path_type, required=True, help="stats file written by `python -m kdsweep stats`")


def _train(args, runs, out_dirs, teacher_dir=None):
    from ..datasets import geometry
    from ..models import check_buildable
    from ..runtime import EXIT_PREEMPTED, Preempted
    from ..train import train_points

    config = load(args)
    check_buildable(runs[0].model, geometry(config)[1])
    checkpoint = getattr(args, "checkpoint", None)
    if getattr(args, "fine_tune", False) and checkpoint is None:
        raise KdsweepError("--fine-tune fine-tunes a teacher's checkpoint; give --checkpoint too")
    from ..plan import WEIGHTS_NAME

    read = [("the teacher's checkpoint", checkpoint)] if checkpoint and not WEIGHTS_NAME.match(checkpoint) else []
    refuse_overwrite(args, config, reads=[("the stats file", args.stats), *read],
                     runs=[("the teacher run folder", teacher_dir)],
                     writes=[("--record", args.record)], trains=[("--out", out) for out in out_dirs])
    from ..distributed import Processes, launch

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
        write_record(args.record, out_dirs, results, getattr(args, "until_epoch", None), histories)
    return results


def write_record(path, out_dirs, results, until_epoch=None, histories=None):
    """The job's record, written once every run has finished (or, until_epoch, paused there): the workflow's
    output of a training job; histories {out_dir: its validation epochs} (kdsweep.train.train_points)."""
    from ..records import JobPoint, JobRecord
    from ..runtime import environment

    histories = {Path(out): history for out, history in (histories or {}).items()}
    JobRecord(points=[JobPoint.of(out, metrics, finished=metrics.test_acc is not None,
                                  history=histories.get(Path(out)))
                      for out, metrics in zip(out_dirs, results)],
              slurm=environment()["slurm"], until_epoch=until_epoch).write(path)


def cmd_train(args):
    from ..config import check_value
    from ..plan import Run

    check_value("seeds.items", args.seed, "--seed")
    if (args.architecture or args.checkpoint) and args.role != "teacher":
        raise KdsweepError("--architecture and --checkpoint are a teacher's; give --role teacher")
    # a teacher named otherwise than its architecture (teacher.name): --model is its name, --architecture its model
    named = args.architecture is not None and args.architecture != args.model
    _train(args, [Run(role=args.role, model=args.architecture or args.model, seed=args.seed,
                      teacher=args.model if named else None)], [args.out])


def cmd_distill(args):
    from ..config import check_value
    from ..plan import Run, parse_point

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
