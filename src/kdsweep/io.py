"""Atomic file output: a killed job never leaves a file that looks finished."""

import json
import os
import tempfile
from pathlib import Path

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); results are shared like any file the user writes.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path, data: bytes):
    return _atomic(path, lambda handle: handle.write(data))


def write_text(path, text: str):
    return write_bytes(path, text.encode())


def write_json(path, obj):
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def torch_save(obj, path):
    return _atomic(path, lambda handle: torch.save(obj, handle))


def read_json(path):
    return json.loads(Path(path).read_text())
