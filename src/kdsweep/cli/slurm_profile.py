"""`slurm-profile`: a minimal SLURM site profile for `snakemake --profile slurm` (kdsweep.slurm)."""

import sys

from ..errors import KdsweepError
from .common import command


def register(subparsers):
    p = command(subparsers, "slurm-profile", cmd_slurm_profile,
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


def cmd_slurm_profile(args):
    from ..slurm import WORKFLOW_PROFILE, dropped_sentence, dropped_settings, read_profile, write_site_profile

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
