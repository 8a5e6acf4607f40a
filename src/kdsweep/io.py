"""Files: atomic output (a killed job never leaves a file that looks finished), and reading what a
user or an earlier job wrote, where every file-system, JSON or YAML problem a user can cause becomes
one KdsweepError sentence that names the path, the cause and the fix.

Nothing read runs code (docs/reliability.md): JSON and YAML are parsed as data (`yaml.safe_load`), and
every file kdsweep reads with torch goes through `load_weights`, torch's restricted unpickler
(`weights_only=True`), which builds tensors and plain containers and refuses any other object before
making it. (The CIFAR files, pickles of numpy arrays, have their own restricted reader: kdsweep.datasets.)
"""

import errno
import io
import json
import os
import re
import tempfile
from pathlib import Path

import yaml

from .errors import KdsweepError

# Temporary names of the atomic writes: .<name>.<random>.tmp beside the file.
TEMPORARY = ".*.tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cause(err: BaseException) -> str:
    if isinstance(err, OSError):
        return err.strerror or err.__class__.__name__
    return str(err).splitlines()[0] if str(err) else err.__class__.__name__


def cannot_write(path, err: BaseException) -> KdsweepError:
    """The sentence for a file that could not be written."""
    where = Path(path)
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        fix = f"free space on the file system of {where.parent}, or write elsewhere"
    elif isinstance(err, OSError) and err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = f"choose a folder you can write instead of {where.parent}"
    elif isinstance(err, (FileExistsError, NotADirectoryError, IsADirectoryError)):
        fix = "a file stands where a folder is needed, or a folder where the file goes; choose another path"
    else:
        fix = "check the path and the file system"
    return KdsweepError(f"cannot write {where} ({_cause(err)}): {fix}")


def _atomic(path, write):
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise cannot_write(path, err) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); results are shared like any file the user writes.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise cannot_write(path, err) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path, data: bytes):
    return _atomic(path, lambda handle: handle.write(data))


def write_stream(path, write):
    """A file written by write(handle) as it goes (too large to hold in memory first), whole or not at all."""
    return _atomic(path, write)


def write_text(path, text: str):
    return write_bytes(path, text.encode())


def json_text(obj) -> str:
    """A JSON file's text as write_json writes it: the same object, the same bytes."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_json(path, obj):
    return write_text(path, json_text(obj))


def torch_save(obj, path):
    # Serialised in memory first: torch's zip writer turns a failed write (a full disk) into an
    # opaque RuntimeError, while a plain write of the bytes reports the OSError itself.
    import torch  # here, not at the top: the table and figure jobs write no tensors and need no torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getbuffer())


def load_weights(path, what: str = "file", fix: str = "delete it and rerun the job that writes it",
                 map_location="cpu", mmap: bool = False):
    """What a torch file holds (a state dict, a checkpoint, an external model's weights), read with
    `torch.load(weights_only=True)`: tensors, numbers, strings and dicts, lists and tuples of them, never
    an object whose unpickling could run code. KdsweepError naming the file, and what it holds that is
    refused, otherwise; a file that is no torch file (cut short, garbled) is said to be damaged. mmap: memory-map
    the file where its format allows (only what is read is loaded: a large external checkpoint)."""
    import pickle

    import torch

    path = Path(path)
    if path.is_dir():
        raise KdsweepError(f"{what} {path} is a folder, not a file; {fix}")
    try:
        if mmap:
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            except RuntimeError:  # torch's legacy (non-zip) format cannot be memory-mapped
                pass
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise KdsweepError(f"{what} {path} does not exist; {fix}") from None
    except pickle.UnpicklingError as err:
        refused = _refused(path, err)
        if refused:
            raise KdsweepError(
                f"{what} {path} holds {refused}, which kdsweep never loads (unpickling it could run code: a file "
                f"planted by someone else, or written by other software); {fix}") from None
        raise KdsweepError(f"{what} {path} cannot be read: it is corrupt or truncated ({_cause(err)}); {fix}") from None
    except OSError as err:
        raise KdsweepError(f"{what} {path} cannot be read ({_cause(err)}); {fix}") from err
    except Exception as err:  # noqa: BLE001 - a damaged zip or pickle raises nearly anything
        raise KdsweepError(f"{what} {path} cannot be read: it is corrupt or truncated ({err.__class__.__name__}); {fix}") from None


def _refused(path, err) -> str | None:
    """What a torch file holds that the restricted unpickler refused (the Python objects it names, found
    without unpickling anything, or torch's reason); None where it refused nothing (a damaged file)."""
    import torch

    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - a file of torch's legacy format, or too damaged to scan
        names = []
    if names:
        return ", ".join(sorted(names)[:3])
    if "Weights only load failed" not in str(err) or "Unsupported operand" in str(err):
        return None  # no object refused: bytes that are no pickle opcode, a damaged file
    reason = re.search(r"WeightsUnpickler error:\s*([^\n]+?)(?: was not an allowed| Please|\n|$)", str(err))
    return f"what torch's restricted loader refuses ({reason.group(1).strip() if reason else 'not tensors'})"


def remove_temporaries(folder):
    """Delete the temporary files of writes that were killed before their rename (scratch, never a result)."""
    for stray in Path(folder).glob(TEMPORARY):
        stray.unlink(missing_ok=True)


# ---------------------------------------------------------------- reading


def read_text(path, what: str = "file", fix: str = "check the path") -> str:
    path = Path(path)
    if path.is_dir():
        raise KdsweepError(f"{what} {path} is a folder, not a file; {fix}")
    try:
        return path.read_text()
    except FileNotFoundError:
        raise KdsweepError(f"{what} {path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise KdsweepError(f"{what} {path} cannot be read ({_cause(err)}); {fix}") from err


class NotJsonNumber(ValueError):
    """NaN, Infinity or -Infinity in a JSON text: Python's literals, no JSON number."""


def _no_constant(name):
    raise NotJsonNumber(name)


def loads(text: str):
    """JSON as the standard has it: Python's NaN, Infinity and -Infinity literals are refused (no record
    holds them; a number that is not finite is no accuracy, loss or hyperparameter)."""
    return json.loads(text, parse_constant=_no_constant)


def read_json(path, what: str = "file", fix: str = "delete it and rerun the job that writes it", required=()):
    """The JSON object in `path`, with `required` keys; KdsweepError naming the path otherwise."""
    text = read_text(path, what, fix)
    try:
        record = loads(text)
    except json.JSONDecodeError as err:
        raise KdsweepError(f"{what} {path} is not valid JSON ({err.msg} at line {err.lineno}); {fix}") from None
    except NotJsonNumber as err:
        raise KdsweepError(f"{what} {path} holds {err}, which is no number (JSON has no NaN or Infinity); "
                           f"{fix}") from None
    if required:
        missing = [key for key in required if key not in record] if isinstance(record, dict) else list(required)
        if missing:
            raise KdsweepError(f"{what} {path} lacks {', '.join(missing)}; {fix}")
    return record


def read_yaml(path, what: str = "config file", fix: str = "check the --config path") -> dict:
    """The YAML mapping in `path`; KdsweepError naming the path otherwise."""
    text = read_text(path, what, fix)
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise KdsweepError(f"{what} {path} is not valid YAML{where} ({getattr(err, 'problem', None) or err.__class__.__name__}); "
                           "fix its syntax") from None
    if not isinstance(loaded, dict):
        raise KdsweepError(f"{what} {path} must hold a mapping of keys to values, not a {type(loaded).__name__}")
    return loaded
