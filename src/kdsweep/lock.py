"""One process at a time in a run folder: an advisory lock that a dead process cannot hold.

A training job holds `.lock` in each of its run folders (`fcntl.flock`) from start to end. A
second process for the same folder (a second snakemake, an old SLURM job still running after
its snakemake was killed, a run started by hand) stops with one sentence instead of training
the run twice. The kernel drops the lock when its holder dies, also on SIGKILL, so nothing
stale is left to clean up. On a cluster the run folders must be on a file system whose
flock() reaches every node (NFSv4 and Lustre/GPFS mounted with flock do).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
from pathlib import Path

from .errors import KdsweepError

LOCK = ".lock"


@contextlib.contextmanager
def run_folders(folders):
    """Hold the lock of every folder (created if missing) while the block runs; KdsweepError if any is held."""
    handles = []
    try:
        for folder in sorted({Path(f).resolve() for f in folders}):
            handles.append(_acquire(folder))
        yield
    finally:
        for folder, handle in reversed(handles):
            # removed while still held: a process that opened it before cannot lock it, one after makes a new one
            (folder / LOCK).unlink(missing_ok=True)
            handle.close()


def _acquire(folder: Path):
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK, "a+")
    except OSError as err:
        raise KdsweepError(f"cannot create the run folder {folder} ({err.strerror}); "
                           "choose an --out folder you can write") from err
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise KdsweepError(f"run folder {folder} is being trained by {holder}; wait for it to finish, or stop it "
                           "and start this job again (it resumes from the checkpoint)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {platform.node()}")
    handle.flush()
    return folder, handle
