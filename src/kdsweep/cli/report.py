"""`aggregate` and `plots`: a study's tables from whatever runs have finished, and its figures from the
tables (kdsweep.tables, kdsweep.plots)."""

from pathlib import Path

from ..errors import KdsweepError
from ..search import STRATEGIES
from .common import command, path_type


def register(subparsers):
    p = command(subparsers, "aggregate", cmd_aggregate, "write the tables of a study from whatever runs have finished")
    p.add_argument("results", type=path_type, help="the study's folder, results/<study>")
    p.add_argument("--search", choices=tuple(STRATEGIES),
                   help="the study's search (config sweep), which every table names (default: that of "
                        "results/<study>/study.yaml, else grid); halving's pruned points are read from halving/")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="the study's config, over config.yaml's defaults (the workflow gives it whole); default: "
                        "results/<study>/study.yaml. The tables hold what it asks for (docs/search.md)")

    p = command(subparsers, "plots", cmd_plots, "draw the study's figures from its tables")
    p.add_argument("results", type=path_type, help="the study's folder, results/<study>")
    p.add_argument("--soft-weight", type=float, required=True,
                   help="soft weight of the accuracy-vs-temperature figure (the config's staged.soft_weight)")
    p.add_argument("--students", nargs="+", metavar="MODEL",
                   help="students to draw (default: those with a finished run); each gets its figures "
                        "even before its runs finish")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="KD methods whose heat maps to draw (default: those with a finished run); kd's "
                        "figures are the reference study's")


def cmd_aggregate(args):
    from ..board import INSTALL_HINT, write_hparams
    from ..tables import write_tables

    config = None
    if args.overrides:
        from ..config import load_config

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
    from ..config import check_value
    from ..models import check_name
    from ..plots import write_figures

    check_value("soft_weights.items", args.soft_weight, "--soft-weight")
    for name in args.students or ():
        try:
            check_name(name)
        except KdsweepError as err:
            raise KdsweepError(f"--students names '{name}', which is no architecture: {err}") from None
    from ..methods import METHODS

    if unknown := [name for name in args.methods or () if name not in METHODS]:
        raise KdsweepError(f"--methods names '{unknown[0]}', which is no KD method; choose among {', '.join(METHODS)}")
    for path in write_figures(Path(args.results), args.soft_weight, students=args.students, methods=args.methods):
        print(f"wrote {path}")

