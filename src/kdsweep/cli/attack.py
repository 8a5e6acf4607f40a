"""`attack`: a finished run's accuracy under attack, one attack at one epsilon or the config's whole suite
with its worst case, transfer attacks and masking checks (kdsweep.attacks.job)."""

from ..attacks import ATTACKS
from ..errors import KdsweepError
from .common import command, config_args, load, path_type, refuse_overwrite


def register(subparsers):
    p = command(subparsers, "attack", cmd_attack,
                "accuracy of a finished run under attack: one attack on the whole test set "
                "at one epsilon (--out), or every attack of the config at every epsilon with "
                "the worst case, transfer attacks and masking checks (--out-dir)")
    config_args(p)
    p.add_argument("--run", type=path_type, required=True,
                   help="finished run folder (holds metrics.json and model.pt)")
    one = p.add_argument_group("one attack at one epsilon (--out)")
    one.add_argument("--attack", metavar="NAME",
                     help="the attack, named under attacks: in the config, which gives its parameters "
                          f"({', '.join(ATTACKS)}; default: fgsm)")
    one.add_argument("--epsilon", type=float, help="perturbation size (L-inf) in [0, 1] pixel units")
    one.add_argument("--out", type=path_type, metavar="FILE",
                     help="JSON file to write (the workflow's name: attacks/<role>/<run>/<attack>_eps<eps>.json)")
    every = p.add_argument_group("every attack of the config, transfer attacks and masking checks (--out-dir)")
    every.add_argument("--out-dir", type=path_type, metavar="DIR",
                       help="folder to write every attack's and the worst case's <attack>_eps<eps>.json into "
                            "(the workflow's: attacks/<role>/<run>)")
    every.add_argument("--masking", type=path_type, metavar="FILE",
                       help="the run's transfer attacks and masking checks (masking/<role>/<run>.json)")
    every.add_argument("--teacher", type=path_type, metavar="RUN",
                       help="the run's finished teacher run, source of a transfer attack and what --evaluation "
                            "measures fidelity to")
    every.add_argument("--baseline", type=path_type, metavar="RUN",
                       help="the finished hard-target run of the same student and seed, source of a transfer attack")
    every.add_argument("--evaluation", type=path_type, metavar="FILE",
                       help="also write the run's fidelity to --teacher (a teacher run: to itself), calibration and "
                            "logit scale, as `evaluate` does (the workflow's: evaluation/<role>/<run>.json)")


def cmd_attack(args):
    config = load(args)
    runs = [("the run folder", args.run), ("the teacher run", args.teacher), ("the baseline run", args.baseline)]
    if args.out_dir is None:
        if args.out is None or args.epsilon is None or args.masking or args.teacher or args.baseline or \
                args.evaluation:
            raise KdsweepError("attack takes --attack NAME --epsilon E --out FILE (one attack), or --out-dir DIR "
                               "--masking FILE [--teacher RUN] [--baseline RUN] [--evaluation FILE] (every attack "
                               "of the config)")
        from ..attacks.job import attack_job

        refuse_overwrite(args, config, runs=runs[:1], writes=[("--out", args.out)])
        attack_job(config, args.run, args.attack or "fgsm", args.epsilon, args.out)
        return
    if args.out is not None or args.epsilon is not None or args.attack is not None or args.masking is None:
        raise KdsweepError("attack --out-dir runs every attack of the config at every epsilon and takes --masking "
                           "FILE, not --attack, --epsilon or --out")
    from ..attacks.job import outputs, robustness_job
    from ..attacks.suite import Suite

    files = outputs(Suite.from_config(config), args.out_dir)
    refuse_overwrite(args, config, runs=runs,
                     writes=[*(("--out-dir", path) for path in files), ("--masking", args.masking),
                             *([("--evaluation", args.evaluation)] if args.evaluation else [])])
    robustness_job(config, args.run, args.out_dir, args.masking, args.teacher, args.baseline, args.evaluation)

