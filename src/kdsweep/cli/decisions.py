"""The workflow's checkpoints, each a choice written once for later jobs to read: `best-temperature` (the
staged sweep's), `best-point` (the confirmation's) and `rung-decision` (successive halving's)."""

from pathlib import Path

from ..errors import KdsweepError
from .common import command, epochs_type, path_type, refuse_overwrite


def register(subparsers):
    p = command(subparsers, "best-temperature", cmd_best_temperature,
                "pick a student's temperature on validation accuracy (the staged sweep's checkpoint)")
    p.add_argument("runs", type=path_type, nargs="+",
                   help="finished distillation run folders of one student at one soft weight")
    p.add_argument("--out", type=path_type, required=True, help="JSON file to write")

    p = command(subparsers, "best-point", cmd_best_point,
                "pick a student's distilled point of one KD method on mean validation accuracy over the sweep's "
                "seeds (the confirmation's checkpoint); the record names every candidate and its mean")
    p.add_argument("runs", type=path_type, nargs="+",
                   help="finished run folders of one student's sweep of one method (points that do not use the "
                        "teacher, kd's w = 0, are left out: hard targets only)")
    p.add_argument("--out", type=path_type, required=True,
                   help="JSON file to write (the workflow's: confirm/<student>.json for kd, "
                        "confirm/<student>_<method>.json for another method)")

    p = command(subparsers, "rung-decision", cmd_rung_decision,
                "successive halving: judge a student's points at one rung on mean validation accuracy over the "
                "seeds, within each KD method, and keep the best (the workflow's checkpoint)")
    p.add_argument("records", type=path_type, nargs="+",
                   help="the pack records of the rung (packs/<pack>_rung<epochs>.json) of every seed")
    p.add_argument("--student", required=True, help="the student whose points they are")
    p.add_argument("--stage", type=int, required=True, help="the rung's index in halving.rungs (from 0)")
    p.add_argument("--rung", type=epochs_type, required=True, help="the rung's epoch")
    p.add_argument("--keep", type=float, required=True, help="halving.keep: the fraction of each method's points kept")
    p.add_argument("--min-kept", type=int, required=True, help="halving.min_kept: the fewest points kept")
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="the sweep's seeds: every point has each")
    p.add_argument("--out", type=path_type, required=True,
                   help="JSON file to write (halving/<student>_rung<epochs>.json)")


def cmd_best_temperature(args):
    from ..records import StagedChoice
    from ..search import write_decision
    from ..tables.choices import best_temperature

    refuse_overwrite(args, runs=[("the run folder", run) for run in args.runs], writes=[("--out", args.out)])
    choice = StagedChoice.from_dict(best_temperature([Path(run) for run in args.runs]))
    write_decision(choice, args.out, "staged choice")
    print(f"best temperature for {choice.student}: T={choice.temperature:g} (mean val acc {choice.val_acc:.2f}%)")


def cmd_best_point(args):
    from ..records import BestPoint
    from ..search import write_decision
    from ..tables.choices import best_point

    refuse_overwrite(args, runs=[("the run folder", run) for run in args.runs], writes=[("--out", args.out)])
    choice = BestPoint.from_dict(best_point([Path(run) for run in args.runs]))
    write_decision(choice, args.out, "best-point record")
    point = ", ".join(f"{name}={value:g}" for name, value in choice.hparams.items())
    print(f"best {choice.method} point for {choice.student}: {point} "
          f"(mean val acc {choice.val_acc:.2f}% over {choice.n} seed(s), of {len(choice.candidates)} candidates)")


def cmd_rung_decision(args):
    from ..config import check_value
    from ..search import deciding, write_decision

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
    refuse_overwrite(args, reads=[("the pack record", record) for record in args.records],
                     writes=[("--out", args.out)])
    decision = deciding("rung_decision").decide_rung(args.records, args.student, args.stage, args.rung, args.seeds,
                                                     keep=args.keep, min_kept=args.min_kept)
    write_decision(decision, args.out, "halving decision")
    kept = sum(candidate.kept for candidate in decision.candidates)
    print(f"rung {decision.rung} of {decision.student}: {kept} of {len(decision.candidates)} points go on")
    for tie in decision.ties or ():
        print(f"tie at the cut: {tie}")
