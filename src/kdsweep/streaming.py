"""An imagefolder dataset's images, streamed from disk: decoding, the transforms, and the seeded draws.

Decoding: `read_image` reads a file's bytes and decodes them with torchvision.io.decode_image
(libjpeg-turbo, libpng, libwebp: JPEG, PNG and WebP, the formats of nearly every dataset) into uint8
3 x H x W, in RGB whatever the file holds (grey, palette, alpha, CMYK; 16-bit PNGs scaled to 8 bits);
the other extensions torchvision's ImageFolder takes (BMP, PPM, PGM, TIFF) go through Pillow, which
torchvision's ImageFolder itself uses. A file neither can decode is `Damaged`, with the decoder's
reason. Decoding runs in DataLoader worker processes (runtime.loader_workers), so the memory of a job
is that of its workers' prefetched batches, whatever the number of images.

Transforms (config `imagefolder`, `Pipeline`):
- training: torchvision's RandomResizedCrop (its own `get_params`: the crop's area a fraction in
  `scale` of the image's, its aspect ratio in `ratio`, up to 10 tries then the central crop), resized
  to train_crop x train_crop (bilinear, antialiased), then a horizontal flip with probability flip_p;
- evaluation: the shorter side resized to eval_resize (bilinear, antialiased), then the central
  eval_crop x eval_crop (torchvision's Resize + CenterCrop).

Seeds: an image's random draws in an epoch come from torch's CPU generator seeded by a 64-bit mix
(SplitMix64) of (epoch seed, image index), so they depend on nothing but the run's data
generator (which draws the epoch seed, kdsweep.sources) and the image: not on the worker that decodes
it, the number of workers or processes, or where a resumed run starts again.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from .errors import KdsweepError
from .imagefolder import Listing, shown

# decoded by torchvision.io (libjpeg-turbo, libpng, libwebp); the other image extensions by Pillow
NATIVE = (".jpg", ".jpeg", ".png", ".webp")


class Damaged(Exception):
    """An image file that cannot be read or decoded: its name (relative to the dataset root) and why."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name} ({reason})")
        self.name, self.reason = name, reason

    def __reduce__(self):  # from a DataLoader worker to the training process
        return Damaged, (self.name, self.reason)


def _reason(err: BaseException) -> str:
    """The decoder's own words, without torchvision's source location ("decode_jpeg, .../x.cpp:171, ...")."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
    return re.sub(r"^\w+, \S+\.cpp:\d+, ", "", text)


@functools.lru_cache(maxsize=1)
def _decoder():
    with warnings.catch_warnings():
        # torchvision 0.29 announces that its decoders move to TorchCodec; they still decode
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision")
        from torchvision.io import ImageReadMode, decode_image
    return ImageReadMode, decode_image


def decode(data: bytes, name: str) -> torch.Tensor:
    """uint8 3 x H x W (RGB) of an image file's bytes; Damaged if they are no image."""
    ImageReadMode, decode_image = _decoder()
    if not data:
        raise Damaged(name, "the file is empty")
    try:
        if name.lower().endswith(NATIVE):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision")
                image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)
        else:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as opened:
                image = torch.from_numpy(np.array(opened.convert("RGB"))).permute(2, 0, 1).contiguous()
    except Exception as err:  # noqa: BLE001 - each decoder raises its own (RuntimeError, OSError, ValueError, ...)
        raise Damaged(name, _reason(err)) from err
    if image.ndim != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
        raise Damaged(name, f"decoded to a tensor of shape {tuple(image.shape)}, not one 3-channel image")
    if image.dtype != torch.uint8:  # 16-bit PNG
        from torchvision.transforms.v2.functional import to_dtype

        image = to_dtype(image, torch.uint8, scale=True)
    return image


def read(listing: Listing, index: int) -> bytes:
    """The bytes of a listed file; Damaged if it cannot be read or is not the size listed."""
    name = listing.name(index)
    try:
        with open(listing.path(index), "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise Damaged(name, err.strerror or err.__class__.__name__) from err
    if len(data) != listing.sizes[index]:
        raise Damaged(name, f"{len(data)} bytes, not the {listing.sizes[index]} listed: it changed while the job ran")
    return data


_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's output function (Steele, Lea and Flood 2014): a 64-bit mix whose outputs for
    consecutive inputs are uncorrelated (numpy's SeedSequence does as well, 40 times slower)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def image_seed(epoch_seed: int, index: int) -> int:
    """The seed of image `index`'s draws in the epoch of `epoch_seed` (module docstring)."""
    return _splitmix64(_splitmix64(int(epoch_seed)) ^ int(index))


@dataclass(frozen=True)
class Pipeline:
    """The transforms of config `imagefolder` (module docstring)."""

    train_crop: int
    scale: tuple
    ratio: tuple
    flip_p: float
    eval_resize: int
    eval_crop: int

    @classmethod
    def from_config(cls, section: dict) -> "Pipeline":
        pipeline = cls(int(section["train_crop"]), tuple(map(float, section["scale"])),
                       tuple(map(float, section["ratio"])), float(section["flip_p"]), int(section["eval_resize"]),
                       int(section["eval_crop"]))
        for key in ("scale", "ratio"):
            low, high = getattr(pipeline, key)
            if low > high:
                raise KdsweepError(f"imagefolder.{key} is [{low:g}, {high:g}], not a range (low, high); give it "
                                   "in increasing order")
        if pipeline.eval_crop > pipeline.eval_resize:
            raise KdsweepError(f"imagefolder.eval_crop {pipeline.eval_crop} is larger than imagefolder.eval_resize "
                               f"{pipeline.eval_resize}, so the central crop would pad the image; give a crop of at "
                               "most the resized side (the ImageNet recipe: 224 of 256)")
        return pipeline

    def train_params(self, image: torch.Tensor, seed: int) -> tuple[int, int, int, int, bool]:
        """(top, left, height, width, flip) of an image's training transform, drawn from `seed` alone."""
        # a generator of the image's own: torchvision's get_params draws from the global one, which the
        # fork leaves as it was (the training process draws its dropout masks from it)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone (torch.manual_seed would seed every device too: 70 times slower)
            torch.default_generator.manual_seed(seed)
            top, left, height, width = RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
            flip = torch.rand(1).item() < self.flip_p
        return top, left, height, width, flip

    def train_image(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """uint8 3 x train_crop x train_crop: RandomResizedCrop then the flip, drawn from `seed`."""
        top, left, height, width, flip = self.train_params(image, seed)
        out = F.resized_crop(image, top, left, height, width, [self.train_crop, self.train_crop], antialias=True)
        return F.horizontal_flip(out) if flip else out

    def eval_image(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 3 x eval_crop x eval_crop: the shorter side resized to eval_resize, the centre cropped."""
        resized = F.resize(image, [self.eval_resize], antialias=True)
        return F.center_crop(resized, [self.eval_crop, self.eval_crop])

    @property
    def eval_size(self) -> list:
        return [3, self.eval_crop, self.eval_crop]


# ---------------------------------------------------------------- what DataLoader workers return


class TrainImages(torch.utils.data.Dataset):
    """The training transform of listed files; an item's key is (index, epoch seed). A damaged file
    (changed since the stats job checked it) comes back as its Damaged, for the training process to
    name in one sentence (an exception raised in a worker reaches it wrapped in a traceback)."""

    def __init__(self, listing: Listing, pipeline: Pipeline):
        self.listing, self.pipeline = listing, pipeline

    def __len__(self) -> int:
        return len(self.listing)

    def __getitem__(self, key):
        index, epoch_seed = key
        try:
            image = decode(read(self.listing, index), self.listing.name(index))
        except Damaged as err:
            return err
        return self.pipeline.train_image(image, image_seed(epoch_seed, index)), int(self.listing.labels[index])


class CheckedImages(torch.utils.data.Dataset):
    """What the stats job reads of every listed file: its sha256, and its evaluation transform
    (uint8 3 x eval_crop x eval_crop), or the Damaged that stops it."""

    def __init__(self, listing: Listing, pipeline: Pipeline):
        self.listing, self.pipeline = listing, pipeline

    def __len__(self) -> int:
        return len(self.listing)

    def __getitem__(self, index):
        name = self.listing.name(index)
        try:
            data = read(self.listing, index)
            return hashlib.sha256(data).hexdigest(), self.pipeline.eval_image(decode(data, name))
        except Damaged as err:
            return hashlib.sha256(b"").hexdigest(), err


def collate_checked(samples):
    """A batch of the stats job: (sha256s, images or Damaged), unstacked (a damaged image has no tensor)."""
    return [sha for sha, _ in samples], [item for _, item in samples]


def collate_training(samples):
    """(uint8 B x 3 x S x S, int64 labels) of a training batch; its first Damaged raised as one sentence."""
    for sample in samples:
        if isinstance(sample, Damaged):
            raise KdsweepError(f"the image file {shown(sample.name)} cannot be decoded ({sample.reason}), though the stats "
                               "job read it: it changed since; restore it, or delete the study's data/stats.json to "
                               "check the files again")
    return torch.stack([image for image, _ in samples]), torch.tensor([label for _, label in samples])


def workers(setting, processes: int = 1) -> int:
    """runtime.loader_workers as a number: auto = the CPUs this process may use, less one for training,
    shared among the job's processes on this machine."""
    if setting != "auto":
        return int(setting)
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, cpus // max(1, processes) - 1)


def loader(dataset, batch_sampler=None, *, batch_size=None, workers: int, collate, pin: bool = False,
           persistent: bool = False):
    """A DataLoader of `dataset` in order (a batch_sampler's, or consecutive batches), decoding in `workers`
    processes (forked: each sees the listing without copying it)."""
    _decoder()  # torchvision.io imported once here, not by every worker it forks

    options = {"num_workers": workers, "collate_fn": collate, "pin_memory": pin}
    if workers:
        options.update(persistent_workers=persistent, prefetch_factor=4)
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **options)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **options)
