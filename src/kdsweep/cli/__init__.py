"""`python -m kdsweep <command>`: every job of the workflow, runnable by hand.

Each command takes the study config as YAML files (`--config`, repeatable,
merged in order) and trailing `key=value` overrides, like snakemake's
--configfile and --config. Errors a user can cause end with one sentence on
stderr and exit status 2 (a bad flag too); an output path that would overwrite
one of the command's inputs is refused before any work (kdsweep.paths). Ctrl-C
stops training as SLURM's signals do (exit 75: the checkpoint is kept) and any
other command with `kdsweep: interrupted` (exit 130); every file is written
whole or not at all (kdsweep.io).

Each command's options live beside its code, in a module of this package that `register`s them (and its
function, as `func`) on the subparsers; this module only assembles them in the order --help lists them,
and ends every command the same way. The modules import what a command needs inside its function, so that
a job's start-up pays for its own command only.
"""

import argparse
import os
import sys

from ..errors import KdsweepError
from . import attack, bench, decisions, evaluate, listings, prepare, report, slurm_profile, study, train
from .common import Parser

# The commands' modules, in the order --help lists their commands.
COMMANDS = (prepare, train, attack, evaluate, report, decisions, bench, study, slurm_profile, listings)
# Exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it); a training job
# stopped so exits runtime.EXIT_PREEMPTED instead (its checkpoint is kept).
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m kdsweep",
        description="Knowledge-distillation study jobs. Each command is one job of the Snakemake workflow.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def _fail(message: str, status: int = 2):
    print(f"kdsweep: {message}", file=sys.stderr)
    sys.exit(status)


class _Interrupt:
    """Ctrl-C while a command runs: KeyboardInterrupt, as Python's own handler raises it, and a note that
    it came, so that whatever it turns into on its way out (an import cut in half can surface as another
    exception) ends as `kdsweep: interrupted`. A training loop takes SIGINT over while it runs
    (runtime.SignalStop). Left alone where SIGINT is ignored (a background job) or not this process's to
    handle (a thread other than the main one). final (the process ends with the command: `python -m
    kdsweep`): a Ctrl-C that comes once the command is done, while the process exits, is ignored, so
    the exit status stays the command's (75 for a stopped training run)."""

    def __init__(self, final=False):
        self.received = False
        self.final = final
        self._previous = None

    def _handle(self, signum, frame):
        if self.received:
            return  # the first is already unwinding the command: let it end in its one line
        self.received = True
        raise KeyboardInterrupt

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN if self.final else self._previous)
        return False


def _run(argv):
    if argv[:1] == ["bench"]:
        # the bench package imports torch to build its parser; the jobs' commands must not pay that at start-up.
        bench.run(argv[1:])
        return
    parser = build_parser()
    # key=value overrides may come anywhere after the command, also between options
    args, extras = parser.parse_known_args(argv)
    from ..config import OVERRIDE

    unknown = [arg for arg in extras if not OVERRIDE.match(arg) or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extras:
        args.overrides = [*args.overrides, *extras]
    args.argv = argv  # a training job of several processes starts each with the same command line
    args.func(args)


def main(argv=None):
    final = argv is None  # the process's own command line: it ends when the command does
    argv = sys.argv[1:] if argv is None else list(argv)
    if final:
        from ..joblog import keep_attempts

        keep_attempts(" ".join(argv[:1]))  # a workflow job: its log keeps every attempt (kdsweep.joblog)
    with _Interrupt(final) as interrupt:
        try:
            _run(argv)
        except SystemExit:
            raise
        except BaseException as err:  # noqa: BLE001 - each kind a user can cause ends in one line; others re-raised
            _end(err, interrupt.received)


def _end(err: BaseException, interrupted: bool):
    """How a command that raised `err` ends: one line and its exit status, or the exception itself (a bug)."""
    if interrupted or isinstance(err, KeyboardInterrupt):
        # Ctrl-C outside a training loop (which stops at its next batch instead: exit 75). Every file is
        # written whole or not at all (kdsweep.io), so nothing half-written looks finished.
        # CPython 3.8-3.12 marks the process to die by SIGINT at exit when the KeyboardInterrupt passed
        # through code run from a string (exec, eval: dataclasses and namedtuples are made so, also while
        # torch imports), caught or not; each such run clears the mark first, so one more makes the exit
        # status this 130 (python/cpython#128130 moved the mark to where this cannot reach it, 3.13 on).
        exec("None")  # noqa: S102 - a constant string
        _fail("interrupted", EXIT_INTERRUPTED)
    if isinstance(err, KdsweepError):
        from ..distributed import Echoed

        if isinstance(err, Echoed):
            sys.exit(2)  # the first process of the job says it (kdsweep.distributed)
        _fail(f"error: {err}")
    if isinstance(err, BrokenPipeError):
        # The reader of the output went away (`... | head`): say nothing more to it.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        sys.exit(1)
    if isinstance(err, OSError):
        # A file-system problem that no check foresaw (a name too long, a file gone mid-read).
        where = f" {err.filename}" if err.filename else ""
        _fail(f"error: cannot read or write{where} ({err.strerror or err.__class__.__name__}); check the path and "
              "the file system")
    if isinstance(err, RuntimeError) and (err.__class__.__name__ == "OutOfMemoryError"
                                          or "can't allocate memory" in str(err)):
        _fail("error: the job ran out of memory; lower training.batch_size, training.eval_batch_size or "
              "runtime.pack_size, or run it on a device with more memory")
    raise err
