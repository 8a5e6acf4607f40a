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
import errno
import fcntl
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import KdsweepError

LOCK = ".lock"


@contextlib.contextmanager
def run_folders(folders, wait=False, log=print):
    """Hold the lock of every folder (created if missing) while the block runs; KdsweepError if any is
    held, or with wait (the workflow's jobs) wait for its holder to let go, saying so with `log`.

    Folders are locked in one order (sorted), so that jobs waiting for each other cannot deadlock."""
    handles = []
    try:
        for folder in sorted({Path(f).resolve() for f in folders}):
            handles.append(_acquire_waiting(folder, log) if wait else _acquire(folder))
        yield
    finally:
        for folder, handle in reversed(handles):
            # removed while still held: a process that opened it before cannot lock it, one after makes a new one
            (folder / LOCK).unlink(missing_ok=True)
            handle.close()


@dataclass(frozen=True)
class Holder:
    """The process a lock file names: `python -m kdsweep status` tells a live holder from a dead one."""

    pid: int
    host: str
    slurm_job: str | None = None

    def __str__(self):
        return f"process {self.pid} on {self.host}" + (f" (SLURM job {self.slurm_job})" if self.slurm_job else "")

    @property
    def where(self) -> str:
        """Where the holder runs, as a user finds it: its SLURM job where it has one, else its process."""
        return f"SLURM job {self.slurm_job} on {self.host}" if self.slurm_job else f"process {self.pid} on {self.host}"


_HOLDER = re.compile(r"process (\d+) on (\S+?)(?: \(SLURM job (\S+)\))?\s*$")


def describe_holder() -> str:
    """What a lock file says about its holder: `process PID on HOST[ (SLURM job ID)]`."""
    return str(Holder(os.getpid(), platform.node(), os.environ.get("SLURM_JOB_ID") or None))


def read_holder(folder) -> Holder | None:
    """The holder the lock file of a run folder names; None where there is no lock file, or its
    text is not (yet) a holder's: being written this instant."""
    try:
        text = (Path(folder) / LOCK).read_text()
    except OSError:
        return None
    match = _HOLDER.search(text)
    if not match:
        return None
    pid, host, job = match.groups()
    return Holder(int(pid), host, job)


def _acquire_waiting(folder: Path, log):
    """_acquire, but while another process holds the folder: wait for it (a job of a killed snakemake
    still training the run, a zombie job of a failed node), then lock the folder's lock file as it is
    then (the holder removes the file it held as it lets go).

    Only a held lock is waited for: each turn of the loop follows a change of its holder (it let go,
    or a new one took it). Every other error (a folder that cannot be made or written, a file system
    without flock) cannot change by waiting: it ends the wait at once with its sentence."""
    said = False
    while True:
        try:
            return _acquire(folder)
        except Held:
            pass
        try:
            handle = open(folder / LOCK, "r")
        except FileNotFoundError:
            continue  # let go since: try again
        except OSError as err:
            raise _cannot_lock(folder, err) from err
        with handle:
            if not said:
                holder = handle.read().strip() or "another process"
                log(f"run folder {folder} is being trained by {holder}: waiting for it to finish (the run is "
                    "then finished, or resumes from its checkpoint)")
                said = True
            try:
                fcntl.flock(handle, fcntl.LOCK_SH)  # blocks until the holder lets go (or dies)
            except OSError as err:
                raise _cannot_lock(folder, err, flock=True) from err


class Held(KdsweepError):
    """The run folder is locked by another process: the one error that waiting can end."""


def _cannot_lock(folder: Path, err: OSError, flock: bool = False) -> KdsweepError:
    """The sentence for a run folder that cannot be locked; flock: the error is flock()'s own."""
    if flock and err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return KdsweepError(f"the file system of {folder} does not support flock() ({err.strerror}), which keeps two "
                            "jobs out of one run folder; put the results on a file system that does (a local disk, "
                            "NFSv4, Lustre or GPFS mounted with flock)")
    return KdsweepError(f"cannot create the run folder {folder} ({err.strerror}); choose an --out folder you can write")


def _acquire(folder: Path):
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / LOCK, "a+")
        except OSError as err:
            raise _cannot_lock(folder, err) from err
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise Held(f"run folder {folder} is being trained by {holder}; wait for it to finish, or stop "
                       "it and start this job again (it resumes from the checkpoint)") from None
        except OSError as err:
            handle.close()
            raise _cannot_lock(folder, err, flock=True) from err
        # Opened just before its holder removed it and let go: that file is no one's lock any more.
        try:
            current = os.stat(folder / LOCK).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(describe_holder())
        handle.flush()
    except OSError as err:  # a full disk
        handle.close()
        raise _cannot_lock(folder, err) from err
    return folder, handle
