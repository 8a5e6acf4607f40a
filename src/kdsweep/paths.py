"""An output path that would overwrite an input is refused, before the command does any work.

Every command of `python -m kdsweep` says what it reads and what it writes (`check`): files it reads
(config files, stats.json), folders it reads (a run folder: its metrics.json and model.pt; a
teacher's; the dataset's files), files it writes (--out, --record, --json) and run folders it
trains (train's and distill's --out). A file written must not be a file read (by its path, through
a symbolic link, or as a hard link), nor lie inside a folder read or trained: `--record
RUN/metrics.json`, `attack --out RUN/model.pt`, `stats --out config.yaml`. A run folder trained must
not overlap a folder read (distill --out the teacher's folder would replace the teacher's model),
and must not be where an input lies among the files a run writes there (`--stats RUN/metrics.json`).

Paths are compared as the file system resolves them (`os.path.realpath`); nothing here needs the
paths to exist, and nothing here imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import KdsweepError
from .layout import BEST, CHECKPOINT, HISTORY, METRICS, MODEL, PROGRESS

# What a training job writes into its run folder (with kdsweep.lock's .lock), besides tensorboard/.
RUN_FILES = (METRICS, MODEL, HISTORY, CHECKPOINT, BEST, PROGRESS, ".lock")
BOARD = "tensorboard"


def _real(path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def _same_file(a, b) -> bool:
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)  # a hard link
    except (OSError, ValueError):
        return False


def _within(path, folder) -> bool:
    """Whether path is folder or lies below it."""
    return _real(path).is_relative_to(_real(folder))


def check(reads=(), read_folders=(), writes=(), trains=()):
    """KdsweepError (one sentence naming the fix) for the first output that would overwrite an input.

    reads: (what, path) of files read, e.g. ("the config file", "study.yaml");
    read_folders: (what, path) of folders read, e.g. ("the run folder", RUN) (a single file read whole,
        such as scikit-learn's digits file, may stand here too);
    writes: (flag, path) of files written, e.g. ("--out", "x.json");
    trains: (flag, path) of run folders trained (written into), e.g. ("--out", RUN)."""
    reads = [(what, path) for what, path in reads if path is not None]
    read_folders = [(what, path) for what, path in read_folders if path is not None]
    writes = [(flag, path) for flag, path in writes if path is not None]
    trains = [(flag, path) for flag, path in trains if path is not None]
    for flag, out in writes:
        for what, path in reads:
            if _same_file(out, path):
                raise KdsweepError(f"{flag} {out} would overwrite {what} {path}, which this command reads; "
                                   f"give {flag} another path")
        for what, folder, verb in [*((w, f, "reads") for w, f in read_folders),
                                   *((f"the run folder {flag}", f, "trains") for flag, f in trains)]:
            if _within(out, folder):
                where = "is" if _real(out) == _real(folder) else "lies inside"
                raise KdsweepError(f"{flag} {out} {where} {what} {folder}, which this command {verb}; "
                                   f"give {flag} a path outside it")
    for flag, run in trains:
        for what, path in reads:
            if _same_file(run, path) or any(_same_file(Path(run) / name, path) for name in RUN_FILES) \
                    or _within(path, Path(run) / BOARD):
                raise KdsweepError(f"{flag} {run} would overwrite {what} {path}, which this command reads (a run "
                                   f"writes {', '.join(RUN_FILES[:3])} and more into its folder); give {flag} "
                                   "another folder")
        for what, folder in read_folders:
            if _within(run, folder) or _within(folder, run):
                where = ("is" if _real(run) == _real(folder) else "lies inside" if _within(run, folder)
                         else "holds")
                raise KdsweepError(f"{flag} {run} {where} {what} {folder}, which this command reads; give {flag} "
                                   "a run folder of its own, apart from it")
