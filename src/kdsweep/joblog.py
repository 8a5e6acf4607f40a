"""A workflow job's log across its attempts.

Snakemake deletes a job's log before every attempt (a retry, a job rerun after a killed snakemake, a
SLURM job step after a requeue), so the lines of an attempt that was stopped -- "received SIGTERM", the
epochs it finished -- would be gone by the time anyone asks why the job ran twice. The workflow's jobs
keep them: the rules append to their log (`>> {log} 2>&1`) and the shell prefix marks the command as a job
(ENV), and the command, first thing, makes the log a second name (a hard link) of a hidden file beside it,
`.<log name>.attempts`, which Snakemake never deletes: a later attempt finds it, makes the new log that file
again, and appends. Every attempt begins with a header line (HEADER ...) naming its number, time, host and
SLURM job; kdsweep.status reads a log's verdict from its last attempt only.

Where the log's path cannot be known (no /proc, as off Linux) or the file system has no hard links, the
attempt is headed all the same and the earlier attempts' lines are gone, as before. Nothing here imports
torch.
"""

from __future__ import annotations

import os
import platform
import stat
import sys
import time
from pathlib import Path

ENV = "KDSWEEP_JOB_LOG"  # set (to 1) by the workflow's shell prefix: stdout and stderr are the job's log
HEADER = "==== kdsweep attempt"


def history(log: Path) -> Path:
    """The hidden file that holds every attempt of a log."""
    return log.with_name(f".{log.name}.attempts")


def _path_of_stdout() -> Path | None:
    """The regular file stdout writes to, by its path (Linux's /proc); None for anything else."""
    try:
        info = os.fstat(1)
        path = Path(os.readlink("/proc/self/fd/1"))
        same = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or (same.st_dev, same.st_ino) != (info.st_dev, info.st_ino):
        return None
    return path


def _attempts(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(line.startswith(HEADER.encode()) for line in handle)
    except OSError:
        return 0


def keep_attempts(command: str):
    """Where this process is a workflow job (ENV) whose stdout is its log: keep the earlier attempts' lines
    in it (module docstring) and write this attempt's header."""
    if os.environ.get(ENV) != "1":
        return
    log = _path_of_stdout()
    if log is not None:
        kept = history(log)
        try:
            if kept.is_file() and not os.path.samefile(kept, log):
                _continue(kept, log)
            elif not kept.exists():
                os.link(log, kept)
        except OSError:
            pass  # no hard links here: this attempt's lines only
    number = _attempts(log) + 1 if log is not None else None
    slurm = os.environ.get("SLURM_JOB_ID")
    where = f", SLURM job {slurm} (restart {os.environ.get('SLURM_RESTART_COUNT', '0')})" if slurm else ""
    earlier = " (the lines above are the earlier attempts')" if number and number > 1 else ""
    print(f"{HEADER} {number or '?'} of this job{earlier}: kdsweep {command} at "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()}{where}", flush=True)


def _continue(kept: Path, log: Path):
    """Make `log` (this attempt's, new) a second name of `kept` (every attempt before), keeping what this
    attempt wrote to it already, and point stdout (and stderr, where it is the log too) at it."""
    sys.stdout.flush()
    sys.stderr.flush()
    already = log.read_bytes()
    link = log.with_name(f".{log.name}.{os.getpid()}.link")
    os.link(kept, link)
    os.replace(link, log)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        if already:
            os.write(fd, already)
        both = os.path.sameopenfile(1, 2)
        os.dup2(fd, 1)
        if both:
            os.dup2(fd, 2)
    finally:
        os.close(fd)


def last_attempt(lines: list[str]) -> list[str]:
    """The lines of a log's last attempt (all of them where it has no header)."""
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith(HEADER):
            return lines[index + 1:]
    return lines
