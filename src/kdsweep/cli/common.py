"""What the commands of `python -m kdsweep` share: the parser whose errors are one line, the checked path and
epoch arguments, the config options (--config files and key=value overrides), and the refusal of an output
path that would overwrite an input (kdsweep.paths)."""

import argparse
from pathlib import Path

EPILOG = "Overrides are dotted config keys with YAML values, e.g. training.lr=0.01 runtime.device=cpu seeds=[0,1]."


class Parser(argparse.ArgumentParser):
    """argparse, whose errors (a missing flag, `--seed abc`) are one `kdsweep: error:` line like every other."""

    def error(self, message):
        self.exit(2, f"kdsweep: error: {message}; see `{self.prog} --help`\n")


def path_type(text: str) -> str:
    """A path argument: not empty (which would mean the current folder) and without a NUL byte."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} holds a NUL byte, which no path can")
    return text


def epochs_type(text: str) -> int:
    """A number of epochs: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is no number of epochs; give a whole number of at least 1")
    return value


def config_args(parser):
    parser.add_argument("--config", action="append", default=[], metavar="YAML", type=path_type,
                        help="study config file; repeat to merge several in order "
                             "(default: ./config.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides applied after the files, e.g. training.max_epochs=5")


def load(args):
    from ..config import load_config

    return load_config(args.config, args.overrides)


def _config_files(paths) -> list:
    """(what, path) of every config file a command reads: config.yaml's defaults, then its --config files
    (none given: ./config.yaml where there is one, as load_config reads them)."""
    from ..config import DEFAULTS_PATH

    paths = list(paths) or (["config.yaml"] if Path("config.yaml").is_file() else [])
    return [("config.yaml (the defaults)", DEFAULTS_PATH), *(("the config file", path) for path in paths)]


def _dataset(config) -> list:
    """(what, path) of what a job reads of its dataset (kdsweep.paths)."""
    from ..datasets import source

    where = source(config["dataset"]["name"], config["dataset"]["root"])
    return [] if where is None else [(f"the {config['dataset']['name']} data", where)]


def _holds_run(folder) -> bool:
    from ..layout import METRICS

    try:
        return folder is not None and (Path(folder) / METRICS).is_file()
    except (OSError, ValueError):
        return False


def refuse_overwrite(args, config=None, runs=(), writes=(), trains=(), reads=()):
    """kdsweep.paths.check for a command's config files, its dataset (config given), the run folders it
    reads (runs: (what, folder); one that holds no finished run is left to the job, which refuses it
    with its own sentence) and its other inputs."""
    from ..paths import check

    check(reads=[*_config_files(getattr(args, "config", [])), *reads],
          read_folders=[*(_dataset(config) if config is not None else []),
                        *((what, folder) for what, folder in runs if _holds_run(folder))],
          writes=writes, trains=trains)


def command(subparsers, name, func, help_text, description=None):
    """The parser of command `name` of `python -m kdsweep`, which func(args) runs (None: main() runs it itself):
    help_text in the list of commands, and its --help."""
    parser = subparsers.add_parser(name, help=help_text, description=description or help_text, epilog=EPILOG)
    parser.set_defaults(func=func)
    return parser

