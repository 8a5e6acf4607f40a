"""A training run between its epochs: the state a stopped run resumes from.

Two scratch files in the run folder, each written whole under a temporary name and renamed
(kdsweep.io): `checkpoint.pt` after every epoch (weights, Adam, the LR schedule, the torch RNG
stream of the point, the data generator, and the `RunState`), and `best.pt`, the
best-validation weights so far. `checkpoint.json`, written right after checkpoint.pt, holds the
RunState's numbers without the history (`progress`): what `python -m kdsweep status` reads
without loading torch. Neither is a Snakemake output: a failed attempt leaves them
and the next one resumes.

Both are read with torch's restricted unpickler (kdsweep.io.load_weights, `weights_only=True`): their
non-tensor state (Adam's and the schedule's state dicts, the RNG states, which are tensors, and the
RunState with its history rows, a dict of numbers, strings and lists) is of the types it admits, so
nothing needs adding to torch's allow-list, and a planted file whose unpickling would run code is refused
before any of it is made (docs/reliability.md). Checkpoints written before this change hold the same
types and resume as they are. They go when the whole job has finished (train.train_points), not
when each point does, so that a finished point of a pack whose job then dies is written
again from them, not trained again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from . import io
from .errors import KdsweepError
from .layout import BEST, CHECKPOINT, PROGRESS



@dataclass
class RunState:
    """Where a run's training stands after its last finished epoch."""

    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list = field(default_factory=list)  # one row of history.csv per epoch (train.history_fields)
    train_seconds: float = 0.0
    resumed: int = 0
    stopped: bool = False  # max_epochs or early stopping reached: only the test evaluation is left

    @classmethod
    def from_dict(cls, state: dict) -> "RunState":
        return cls(**{key: state[key] for key in cls.__dataclass_fields__ if key in state})

    def as_dict(self) -> dict:
        return asdict(self)


def weights(state_dict: dict) -> dict:
    """A model state dict without torch.compile's `_orig_mod.` prefix (checkpoints of earlier versions had it)."""
    state_dict = dict(state_dict)
    consume_prefix_in_state_dict_if_present(state_dict, "_orig_mod.")
    return state_dict


def match_layouts(optimizer: torch.optim.Optimizer):
    """Give every optimiser state tensor its parameter's memory layout (strides).

    Adam's state is saved with the strides it had; resumed under another runtime.channels_last
    (or on another device) it would keep them, and CUDA's fused Adam refuses a parameter and a
    state of different layouts. The values are copied unchanged.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def save(folder: Path, run_hash: str, identity: dict, module, optimizer, scheduler, rng: dict, data_state,
         state: RunState, method_state=None):
    """checkpoint.pt (with the KD method's trainable state, where it has one: CTKD's temperature) and
    checkpoint.json."""
    saved = {"config_hash": run_hash, "model": module.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": rng, "data": data_state, "state": state.as_dict()}
    if method_state is not None:
        saved["method_state"] = method_state.state_dict()
    io.torch_save(saved, Path(folder) / CHECKPOINT)
    io.write_json(Path(folder) / PROGRESS, progress(run_hash, identity, state))


def progress(run_hash: str, identity: dict, state: RunState) -> dict:
    """checkpoint.json: the epochs done, the training seconds so far, ... (`RunState` without history),
    and the run's identity (kdsweep.identity: which run the checkpoint is of)."""
    record = {key: value for key, value in state.as_dict().items() if key != "history"}
    record["best_val_loss"] = None if math.isinf(record["best_val_loss"]) else record["best_val_loss"]
    return {**record, "config_hash": run_hash, "identity": identity}


START_OVER = "delete it and the run's checkpoint.pt to start the run over"
# What restore takes from a checkpoint, and the type of each (a RunState is stored as a plain dict).
_SAVED = {"config_hash": str, "model": dict, "optimizer": dict, "scheduler": dict, "rng": dict,
          "data": torch.Tensor, "state": dict}


def load(path: Path, accepted_hashes) -> dict:
    """The checkpoint at `path`; KdsweepError if it is unreadable, holds anything but tensors and plain
    values (kdsweep.io.load_weights), or is of another run than the one whose hashes are `accepted_hashes`
    (its own, an earlier version's)."""
    checkpoint = io.load_weights(path, "checkpoint", "delete it to start the run over")
    if not isinstance(checkpoint, dict) or "config_hash" not in checkpoint:
        raise KdsweepError(f"{path} is not a kdsweep checkpoint; delete it to start the run over")
    wrong = [key for key, kind in _SAVED.items() if not isinstance(checkpoint.get(key), kind)]
    if wrong or not torch.is_tensor(checkpoint["rng"].get("cpu")):
        raise KdsweepError(f"{path} is not a checkpoint of this kdsweep version (its {(wrong or ['rng'])[0]} is "
                           "missing or of another kind); delete it to start the run over")
    if checkpoint["config_hash"] not in accepted_hashes:
        raise KdsweepError(
            f"checkpoint {path} was written for another configuration (hash {checkpoint['config_hash']}, "
            f"this run is {sorted(accepted_hashes)[0]}); delete it, or rerun with the settings it was made with"
        )
    return checkpoint


def _read_best(path: Path, device="cpu") -> dict:
    state_dict = io.load_weights(path, "best weights", START_OVER, map_location=device)
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise KdsweepError(f"{path} holds no model weights; {START_OVER}")
    return weights(state_dict)


def check_best(path: Path, checkpoint: dict):
    """The best weights a checkpoint relies on (best.pt, once an epoch was best) are there and readable:
    checked as the checkpoint itself is, before a run resumes on them."""
    if RunState.from_dict(checkpoint["state"]).best_epoch > 0:
        if not Path(path).exists():
            raise KdsweepError(f"{path} is missing, though the run's checkpoint relies on it; delete the run's "
                               "checkpoint.pt to start the run over")
        _read_best(Path(path))


def best_weights(folder: Path, device) -> dict:
    """The best-validation weights of a run that has stopped. Damaged (a disk fault since its last check),
    the run's scratch goes, so that the next attempt trains it again, and a sentence says so."""
    path = Path(folder) / BEST
    try:
        return _read_best(path, device)
    except KdsweepError as err:
        remove_scratch(folder)
        raise KdsweepError(f"{err}".split(";")[0] + f"; the checkpoints of {folder} are removed, so that the next "
                           "attempt trains the run again from the start") from err


def restore(checkpoint: dict, module, optimizer, scheduler, method_state=None) -> tuple[dict, object, RunState]:
    """Load a checkpoint into a point's module, optimiser, schedule and method state; return (rng, data
    state, state)."""
    module.load_state_dict(weights(checkpoint["model"]))
    if method_state is not None:
        if "method_state" not in checkpoint:
            raise KdsweepError("the checkpoint holds no state of the run's KD method; delete it to start the run over")
        method_state.load_state_dict(checkpoint["method_state"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    match_layouts(optimizer)
    scheduler.load_state_dict(checkpoint["scheduler"])
    return checkpoint["rng"], checkpoint["data"], RunState.from_dict(checkpoint["state"])


def remove_scratch(folder: Path):
    """The run's scratch: its checkpoint, its best weights, and temporary files of writes that were killed."""
    for name in (CHECKPOINT, BEST, PROGRESS):
        (Path(folder) / name).unlink(missing_ok=True)
    io.remove_temporaries(folder)
