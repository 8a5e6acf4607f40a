"""`evaluate`: what a finished run's test logits say: fidelity to the teacher, calibration, logit scale
(kdsweep.evaluation)."""

from .common import command, config_args, load, path_type, refuse_overwrite


def register(subparsers):
    p = command(subparsers, "evaluate", cmd_evaluate,
                "fidelity to the teacher, calibration and logit scale of a finished run on the whole test set")
    config_args(p)
    p.add_argument("--run", type=path_type, required=True, help="finished run folder (holds metrics.json and model.pt)")
    p.add_argument("--teacher", type=path_type, required=True,
                   help="the study's finished teacher run folder (agreement and KL are measured against it)")
    p.add_argument("--out", type=path_type, required=True,
                   help="JSON file to write (the workflow's name: evaluation/<role>/<run>.json)")


def cmd_evaluate(args):
    from ..evaluation import evaluate_job

    config = load(args)
    refuse_overwrite(args, config, runs=[("the run folder", args.run), ("the teacher run folder", args.teacher)],
                     writes=[("--out", args.out)])
    evaluate_job(config, args.run, args.teacher, args.out)

