"""Bring-your-own teacher: a teacher from a checkpoint instead of a recipe (config `teacher.checkpoint`).

A checkpoint is a state dict file of the teacher's network (torchvision's or timm's key names, as
`torch.save(net.state_dict(), path)` writes them, optionally under a "state_dict" key or with DataParallel's
"module." prefix), a kdsweep model.pt, or a torchvision weights name (ResNet50_Weights.IMAGENET1K_V2) whose
file lies in torch's hub cache (`python -m kdsweep download` fetches it on a login node; a job never
downloads). Every file is read with torch.load(weights_only=True): nothing in it can run code.

- `fit(teacher, ...)` reads the state dict's keys and shapes only and checks them against the network a study
  builds (its small-image stem, the study's classes) before any job starts (`check_config`, called by the
  workflow and the training commands): a checkpoint that does not fit ends in one sentence naming the key. A
  small-image stem takes the checkpoint's own stem kernel (ImageNet ResNets' 7x7, at stride 1), so ImageNet
  weights load unchanged. A head with other classes than the study's is refused unless `fine_tune` is on:
  without fine-tuning a new head would be random.
- `load_into(model, source, fitted)` puts the weights into a built kdsweep model: all of them, or all but the
  head (fine-tuning: a head for the study's classes, drawn from the teacher's seed). Normalisation: a kdsweep
  model.pt's own statistics, a weights name's (its transforms' mean and std), else the study's split's.
- `provenance(...)`: what the teacher run's identity records of where it came from: the file's sha256, the
  architecture and whether it was fine-tuned, so that every run distilled from it changes identity when the
  file changes (kdsweep.identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import io
from .errors import KdsweepError
from .models import KERNEL_FROM_CHECKPOINT, build_network, check_buildable, family, first_conv
from .plan import WEIGHTS_NAME, Teacher, teachers

BATCH_COUNT = "num_batches_tracked"  # a BatchNorm buffer that older state dicts lack; it starts at 0


@dataclass
class Source:
    """A checkpoint's weights, keyed as the bare network's state dict, and the normalisation it carries."""

    path: Path
    state_dict: dict
    mean: list | None = None
    std: list | None = None


@dataclass(frozen=True)
class Fitted:
    """How a checkpoint fits the network a study builds: its stem kernel, and the head's keys left to draw."""

    stem_kernel: int | None
    fresh_head: tuple[str, ...] = ()


def hub_folder() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def checkpoint_path(spec: str) -> Path:
    """The file of a checkpoint: the path itself, or a torchvision weights name's file in torch's hub cache."""
    if not WEIGHTS_NAME.match(spec):
        return Path(spec)
    return hub_folder() / Path(_weights(spec).url).name


def _weights(spec: str):
    from torchvision.models import get_weight

    try:
        return get_weight(spec)
    except (ValueError, KeyError, AttributeError):
        raise KdsweepError(f"teacher.checkpoint {spec!r} is no torchvision weights name (e.g. "
                           "ResNet50_Weights.IMAGENET1K_V2); give one, or the path of a state dict file") from None


def download(spec: str) -> Path:
    """Fetch a weights name's file into torch's hub cache (on a login node: compute nodes never download)."""
    weights = _weights(spec)
    torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True, weights_only=True)
    return checkpoint_path(spec)


def read(spec: str) -> Source:
    """The checkpoint's weights (torch.load weights_only=True, memory-mapped where the file allows: only what is
    read is loaded); KdsweepError in one sentence for a file that is missing, unreadable or no state dict."""
    path = checkpoint_path(spec)
    if not path.is_file():
        fetch = (f"fetch it on a login node with `python -m kdsweep download --config <your study>`"
                 if WEIGHTS_NAME.match(spec) else "check teacher.checkpoint (relative paths are relative to the "
                 "directory snakemake runs in)")
        raise KdsweepError(f"the teacher's checkpoint {path} does not exist; {fetch}")
    saved = io.load_weights(path, "the teacher's checkpoint", "save the network's state_dict() with torch.save "
                            "and point teacher.checkpoint at that file", mmap=True)
    if isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict):
        saved = saved["state_dict"]  # a kdsweep model.pt, or a training script's {"state_dict": ...}
    if not isinstance(saved, dict) or not saved or not all(isinstance(value, torch.Tensor) for value in saved.values()):
        raise KdsweepError(f"the teacher's checkpoint {path} is no state dict (a mapping of names to tensors); save "
                           "the network's state_dict() with torch.save and point teacher.checkpoint at that file")
    if all(key.startswith("module.") for key in saved):  # saved from DataParallel
        saved = {key.removeprefix("module."): value for key, value in saved.items()}
    source = Source(path, saved)
    if "normalize.mean" in saved and "normalize.std" in saved:  # a kdsweep model: normalisation inside
        source.mean, source.std = saved["normalize.mean"].flatten().tolist(), saved["normalize.std"].flatten().tolist()
        source.state_dict = {key.removeprefix("net."): value for key, value in saved.items()
                             if key.startswith("net.")}
    elif WEIGHTS_NAME.match(spec):
        transforms = _weights(spec).transforms()
        source.mean, source.std = list(transforms.mean), list(transforms.std)
    return source


def _network(name, num_classes, channels, image_size, stem_kernel=None):
    """The network a study builds, for its keys and shapes: on the meta device where its builder allows."""
    try:
        with torch.device("meta"):
            return build_network(name, num_classes, channels, image_size, stem_kernel)
    except NotImplementedError:
        with torch.random.fork_rng(devices=[]):
            return build_network(name, num_classes, channels, image_size, stem_kernel)


def _shape(tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def fit(teacher: Teacher, source: Source, channels: int, image_size: int, num_classes: int) -> Fitted:
    """How the checkpoint fits `teacher.model` as a study of these images builds it; KdsweepError in one sentence
    naming the first key that does not fit and the fix."""
    name, theirs = teacher.model, source.state_dict
    check_buildable(name, image_size)
    net = _network(name, num_classes, channels, image_size)
    stem = first_conv(net) + ".weight"
    stem_kernel = None
    found = theirs.get(stem)
    if (found is not None and found.dim() == 4 and family(name) in KERNEL_FROM_CHECKPOINT
            and found.shape[-1] == found.shape[-2] and found.shape[-1] != net.get_parameter(stem).shape[-1]):
        stem_kernel = int(found.shape[-1])  # a pretrained stem's kernel, kept at the small-image stride
        net = _network(name, num_classes, channels, image_size, stem_kernel)
    ours = net.state_dict()
    head = [n for n, module in net.named_modules() if isinstance(module, torch.nn.Linear)][-1]
    head_keys = tuple(key for key in (f"{head}.weight", f"{head}.bias") if key in ours)
    where = f"teacher {teacher.name!r}: its checkpoint {source.path}"
    fix = (f"give a checkpoint of a {name} as kdsweep builds it for {image_size}-px images (docs/models.md: the "
           "small-image stems), or set teacher.model to the checkpoint's architecture")
    if unexpected := [key for key in theirs if key not in ours]:
        raise KdsweepError(f"{where} holds {len(unexpected)} weight(s) a {name} does not have (first: "
                           f"{unexpected[0]!r}); {fix}")
    if missing := [key for key in ours if key not in theirs and not key.endswith(BATCH_COUNT)]:
        raise KdsweepError(f"{where} lacks {len(missing)} weight(s) of a {name} (first: {missing[0]!r}); {fix}")
    wrong = [key for key in theirs if theirs[key].shape != ours[key].shape]
    if wrong and set(wrong) <= set(head_keys) and theirs[head_keys[0]].shape[1:] == ours[head_keys[0]].shape[1:]:
        classes = theirs[head_keys[0]].shape[0]
        if not teacher.fine_tune:
            raise KdsweepError(
                f"{where} has a head for {classes} classes but this study's data has {num_classes}, and without "
                "fine-tuning a new head would be random; set fine_tune: true in the teacher's entry (it fine-tunes "
                f"on the study's data first), or give a checkpoint with {num_classes} classes")
        return Fitted(stem_kernel, head_keys)
    if wrong:
        key = wrong[0]
        raise KdsweepError(f"{where} does not fit a {name}: {key!r} is {_shape(theirs[key])} there but "
                           f"{_shape(ours[key])} here; {fix}")
    return Fitted(stem_kernel)


def load_into(model, source: Source, fitted: Fitted):
    """Put the checkpoint's weights into a built kdsweep model (kdsweep.models.Classifier) with the fitted stem:
    all of them but a head drawn fresh for fine-tuning; its normalisation where the checkpoint carries one."""
    weights = {key: value for key, value in source.state_dict.items() if key not in fitted.fresh_head}
    missing, unexpected = model.net.load_state_dict(weights, strict=False)
    left = [key for key in missing if key not in fitted.fresh_head and not key.endswith(BATCH_COUNT)]
    if left or unexpected:  # fit() checked these: a checkpoint changed between the check and the job
        raise KdsweepError(f"the teacher's checkpoint {source.path} does not fit the network it was checked "
                           "against (changed since?); check teacher.checkpoint and rerun")
    if source.mean is not None:
        if len(source.mean) != model.normalize.mean.numel():
            raise KdsweepError(f"the teacher's checkpoint {source.path} normalises {len(source.mean)} channels but "
                               f"the study's images have {model.normalize.mean.numel()}; give a checkpoint of "
                               "images with as many channels")
        with torch.no_grad():
            model.normalize.mean.copy_(torch.tensor(source.mean).view_as(model.normalize.mean))
            model.normalize.std.copy_(torch.tensor(source.std).view_as(model.normalize.std))
    return model


def provenance(teacher: Teacher, source: Source) -> dict:
    """What the teacher run's identity records of its checkpoint (kdsweep.identity)."""
    from .identity import file_digest

    return {"digest": file_digest(source.path), "architecture": teacher.model, "fine_tuned": teacher.fine_tune}


def check_config(config: dict):
    """Every architecture of a study (students, teachers) known and with a rule for its images, and every
    teacher checkpoint fitting its architecture and the study's classes: before any job (the workflow's main
    process, the training commands). KdsweepError in one sentence otherwise."""
    from .datasets import geometry

    channels, side, classes = geometry(config)
    found = teachers(config)
    for name in dict.fromkeys([*config["students"], *(teacher.model for teacher in found)]):
        check_buildable(name, side)
    for teacher in found:
        if teacher.checkpoint:
            fit(teacher, read(teacher.checkpoint), channels, side, classes)
        elif teacher.fine_tune:
            raise KdsweepError(f"teacher {teacher.name!r} has fine_tune: true but no checkpoint to fine-tune; give "
                               "teacher.checkpoint, or set fine_tune: false (it then trains from scratch)")
