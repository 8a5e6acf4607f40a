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


def _shape(tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "a scalar"


def _misfit(part: str, saved: dict, own: dict) -> str | None:
    """How a saved state dict differs from this run's (keys, shapes, dtypes); None where it fits."""
    if missing := [key for key in own if key not in saved]:
        return f"its {part} lacks {missing[0]}"
    if extra := [key for key in saved if key not in own]:
        return f"its {part} has {extra[0]}, which this run's {part} has not"
    for key, value in own.items():
        theirs = saved[key]
        if not torch.is_tensor(theirs):
            return f"its {part}'s {key} is no tensor"
        if theirs.shape != value.shape:
            return f"its {part}'s {key} is of shape {_shape(theirs)}, this run's {part}'s {_shape(value)}"
        if theirs.dtype != value.dtype:
            return (f"its {part}'s {key} is {str(theirs.dtype).removeprefix('torch.')}, this run's {part}'s "
                    f"{str(value.dtype).removeprefix('torch.')}")
    return None


def _optimizer_misfit(saved: dict, optimizer) -> str | None:
    own = optimizer.state_dict()
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or not isinstance(saved.get("state"), dict) or [
            len(group.get("params", ())) if isinstance(group, dict) else None for group in groups] != [
            len(group["params"]) for group in own["param_groups"]]:
        return "its optimizer's parameter groups are not this run's"
    params = [param for group in optimizer.param_groups for param in group["params"]]
    for index, state in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(state, dict):
            return f"its optimizer holds state of a parameter {index!r} this run has not"
        for key, value in state.items():
            if not torch.is_tensor(value) or (value.dim() > 0 and value.shape != params[index].shape):
                return f"its optimizer's state of parameter {index} ({key}) does not fit that parameter"
    return None


def _rng_misfit(rng: dict, data) -> str | None:
    cpu = torch.get_rng_state()
    if rng["cpu"].dtype != cpu.dtype or rng["cpu"].shape != cpu.shape:
        return f"its rng's cpu state is {_shape(rng['cpu'])} {rng['cpu'].dtype}, not torch's {_shape(cpu)} {cpu.dtype}"
    if rng.get("cuda") is not None and (not torch.is_tensor(rng["cuda"]) or rng["cuda"].dtype != torch.uint8):
        return "its rng's cuda state is no byte tensor"
    generator = torch.Generator().get_state()
    if data.dtype != generator.dtype or data.shape != generator.shape:
        return f"its data generator's state is {_shape(data)} {data.dtype}, not {_shape(generator)} {generator.dtype}"
    return None


_COUNTS = ("epoch", "best_epoch", "bad_epochs", "resumed")


def _state_misfit(state: dict) -> str | None:
    for key in _COUNTS:
        value = state.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"its state's {key} is {value!r}, not a count"
    for key in ("best_val_loss", "train_seconds"):
        value = state.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            return f"its state's {key} is {value!r}, not a number of at least 0"
    if not isinstance(state.get("stopped", False), bool) or not isinstance(state.get("history", []), list):
        return "its state's stopped or history is of another kind"
    if state.get("best_epoch", 0) > state.get("epoch", 0) or len(state.get("history", [])) != state.get("epoch", 0):
        return "its state's epochs, best epoch and history rows do not agree"
    return None


def check_fits(path: Path, checkpoint: dict, module, optimizer, method_state=None):
    """Refuses, before anything is loaded, a checkpoint (as `load` read it) that does not fit this run: weights of
    other keys, shapes or dtypes than the model's (another architecture, another torch's defaults, a hand edit:
    load_state_dict would convert another float dtype silently), an optimiser, RNG or data-generator state of
    another form, numbers of the wrong kind in its RunState. Keys kdsweep does not read are ignored."""
    misfit = (_misfit("model", weights(checkpoint["model"]), module.state_dict())
              or (None if method_state is None else
                  "it holds no state of the run's KD method" if not isinstance(checkpoint.get("method_state"), dict)
                  else _misfit("method state", checkpoint["method_state"], method_state.state_dict()))
              or _optimizer_misfit(checkpoint["optimizer"], optimizer)
              or _rng_misfit(checkpoint["rng"], checkpoint["data"])
              or _state_misfit(checkpoint["state"]))
    if misfit:
        raise KdsweepError(f"checkpoint {path} does not fit this run: {misfit}; delete it to start the run over")


def _read_best(path: Path, device="cpu") -> dict:
    state_dict = io.load_weights(path, "best weights", START_OVER, map_location=device)
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise KdsweepError(f"{path} holds no model weights; {START_OVER}")
    return weights(state_dict)


def check_best(path: Path, checkpoint: dict, module=None):
    """The best weights a checkpoint relies on (best.pt, once an epoch was best) are there, readable and, with
    `module`, of its keys, shapes and dtypes: checked as the checkpoint itself is, before a run resumes on them
    (not at the run's end, after its epochs)."""
    if RunState.from_dict(checkpoint["state"]).best_epoch > 0:
        if not Path(path).exists():
            raise KdsweepError(f"{path} is missing, though the run's checkpoint relies on it; delete the run's "
                               "checkpoint.pt to start the run over")
        best = _read_best(Path(path))
        if module is not None and (misfit := _misfit("model", best, module.state_dict())):
            raise KdsweepError(f"{path} does not fit this run: {misfit}; {START_OVER}")


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
