"""`bench`: the throughput benchmark (kdsweep.bench), whose parser is its own: main() hands it the command
line, so that the jobs' commands do not import torch to build theirs."""

from .common import Parser, command, refuse_overwrite


def register(subparsers):
    """`bench` in the list of commands, for --help only."""
    command(subparsers, "bench", None, "images per second of this pipeline against a plain PyTorch loop, and the "
                                       "FLOP floor (docs/performance.md; `bench --help` lists its options)")


def run(argv):
    """`python -m kdsweep bench`: kdsweep.bench's command line, with this one's errors and output check."""
    from ..bench.command import add_arguments, run as run_bench
    from ..config import OVERRIDE, check_value

    parser = add_arguments(Parser(prog="python -m kdsweep bench",
                                  description="images per second of this pipeline against a plain PyTorch loop, "
                                              "and the FLOP floor (docs/bench/README.md)"))
    # key=value overrides may come anywhere, also after an option that takes several values
    overrides = [arg for arg in argv if OVERRIDE.match(arg)]
    args = parser.parse_args([arg for arg in argv if not OVERRIDE.match(arg)]
                             + (["--", *overrides] if overrides else []))
    check_value("seeds.items", args.seed, "--seed")
    if args.json is not None and (not args.json.strip() or "\0" in args.json):
        parser.error(f"argument --json: {args.json!r} is no file name")
    refuse_overwrite(args, writes=[("--json", args.json)])
    return run_bench(args)

