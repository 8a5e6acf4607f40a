"""`config` and `status`: the study config a set of files and overrides makes, and where a study stands
(kdsweep.status), both read from files only."""

import math

from ..errors import KdsweepError
from .common import command, config_args, load, path_type, refuse_overwrite

# status --watch: the longest pause between two refreshes (a day)
WATCH_MAX_SECONDS = 86400


def register(subparsers):
    p = command(subparsers, "config", cmd_config,
                "print (or write) the study config the given files and overrides make, validated: config.yaml's "
                "defaults, then --config files, then key=value")
    config_args(p)
    p.add_argument("--section", action="append",
                   help="only this section (e.g. runtime) or key (e.g. dataset.root); repeatable")
    p.add_argument("--out", type=path_type, help="YAML file to write instead of printing")

    p = command(subparsers, "status", cmd_status,
                "where a study stands: runs planned, finished, training, stopped, failed, not started; "
                "GPU-hours; SLURM jobs (reads files only: safe beside a live sweep)",
                description="Where a study stands, from its files alone: per role and model the runs planned "
                            "(the workflow's plan), finished, training now (epoch k of at most N), stopped (resume "
                            "on their next attempt), failed (with the reason from the job's log) and not started; "
                            "training GPU-hours spent and an estimate of what remains; the SLURM jobs pending and "
                            "running in this folder (where squeue is on PATH). Give the config as you give it to "
                            "snakemake (--configfile FILE ..., --config key=value ...), run in the folder "
                            "snakemake runs in, or give the study folder (results/<study>).")
    p.add_argument("study", type=path_type, nargs="?", metavar="RESULTS_DIR",
                   help="the study's folder, results/<study> (read from its study.yaml); instead of the config")
    p.add_argument("--configfile", type=path_type, nargs="+", action="extend", default=[], metavar="YAML",
                   help="study config files, as given to snakemake (config.yaml's defaults come first)")
    p.add_argument("--config", nargs="+", action="extend", default=[], metavar="key=value",
                   help="config overrides as given to snakemake (key=value, YAML values); a YAML file "
                        "path here is read as a config file, as with the other kdsweep commands")
    p.add_argument("--watch", nargs="?", type=float, const=10.0, metavar="SECONDS",
                   help="refresh every SECONDS (default 10) until Ctrl-C")
    p.set_defaults(overrides=[])


def cmd_config(args):
    import yaml

    from .. import io

    from ..commands import select

    config = load(args)
    refuse_overwrite(args, writes=[("--out", args.out)])
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
    from ..config import OVERRIDE
    from ..status import show

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

