"""Batched training augmentation on the device, following the reference study's order:
zero pad -> horizontal flip -> rotation (nearest, zero fill) -> random crop back to the input size.

Each step equals torchvision.transforms.v2.functional's per-image op exactly
(tests/test_augment.py checks this).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .runtime import to_device

# Batched versions of torchvision.transforms.v2.functional's pad / horizontal_flip / rotate / crop,
# equal to them image by image.


def pad_images(images: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(images, [pad] * 4) if pad else images


def flip_images(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def rotate_images(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its angle in degrees (counter-clockwise), nearest neighbour, zero fill.

    torchvision's rotate_image (expand=False, center=None) with its float math replicated
    (float64 matrix from the angle mod 360, float32 grid in pixel units, normalised after the
    matrix product), so that nearest-neighbour rounding picks the same pixel even where a sample
    point falls on a pixel boundary (e.g. 90 degrees on a non-square image). Everything is
    computed where the angles and the images are: nothing is copied from the host.
    """
    n, _, h, w = images.shape
    device = images.device
    # torchvision: matrix = _get_inverse_affine_matrix(center=[0, 0], -angle, ...) with zero
    # translate/shear and scale 1, i.e. [cos, sin, 0, -sin, cos, 0] of radians(-(angle % 360)),
    # in float64 (torchvision: Python floats).
    rad = torch.deg2rad(-torch.remainder(angles.to(device, torch.float64), 360))
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([cos, sin, zero, -sin, cos, zero], dim=1).to(torch.float32).view(n, 2, 3)
    # torchvision's _affine_grid, batched.
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    # A divisor tensor filled on the device (a Python scalar divisor would be a multiplication
    # by its reciprocal on CUDA, one bit off torchvision's division).
    half_size = torch.stack([torch.full((), 0.5 * w, device=device), torch.full((), 0.5 * h, device=device)])
    scaled = theta.transpose(1, 2).div_(half_size)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(scaled).view(n, h, w, 2)
    floating = images.is_floating_point()
    out = F.grid_sample(images if floating else images.float(), grid, mode="nearest",
                        padding_mode="zeros", align_corners=False)
    return out if floating else out.round_().to(images.dtype)


def crop_images(images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """images[i, :, tops[i]:tops[i]+height, lefts[i]:lefts[i]+width] for every i, in one gather."""
    n, c = images.shape[:2]
    device = images.device
    rows = tops.to(device).view(n, 1, 1, 1) + torch.arange(height, device=device).view(1, 1, height, 1)
    cols = lefts.to(device).view(n, 1, 1, 1) + torch.arange(width, device=device).view(1, 1, 1, width)
    return images[torch.arange(n, device=device).view(n, 1, 1, 1), torch.arange(c, device=device).view(1, c, 1, 1), rows, cols]


class AugmentParams(NamedTuple):
    """The random draws of `Augment` for a run of images, one entry per image, on one device."""

    flip: torch.Tensor    # bool, per image
    angles: torch.Tensor  # float64 degrees
    tops: torch.Tensor    # int64 crop offsets into the padded image
    lefts: torch.Tensor

    def to(self, device) -> "AugmentParams":
        """On `device`, copied asynchronously (a training loop moves a whole epoch's draws at once)."""
        return AugmentParams(*(to_device(field, device) for field in self))

    def __getitem__(self, index) -> "AugmentParams":
        if isinstance(index, int):  # NamedTuple field access stays as it was
            return tuple.__getitem__(self, index)
        return AugmentParams(*(field[index] for field in self))


class Augment:
    """pad -> horizontal flip -> rotation -> random crop back to the input size, on whole batches.

    `sample` draws every random number from the generator passed in (in a fixed order: flips,
    angles, tops, lefts), so a training loop that checkpoints the generator's state resumes
    with the same augmentations; a CPU generator gives the same draws for any device. `apply`
    runs on the images' device and returns float [0,1].
    """

    def __init__(self, pad: int, flip_p: float, rotation_degrees: float):
        self.pad, self.flip_p, self.rotation_degrees = int(pad), float(flip_p), float(rotation_degrees)

    @classmethod
    def from_config(cls, augmentation_cfg: dict) -> "Augment":
        return cls(augmentation_cfg["pad"], augmentation_cfg["flip_p"], augmentation_cfg["rotation_degrees"])

    def sample(self, batch_size: int, generator: torch.Generator) -> AugmentParams:
        kw = {"generator": generator, "device": generator.device}
        flip = torch.rand(batch_size, **kw) < self.flip_p
        angles = (torch.rand(batch_size, dtype=torch.float64, **kw) * 2 - 1) * self.rotation_degrees
        tops = torch.randint(0, 2 * self.pad + 1, (batch_size,), **kw)
        lefts = torch.randint(0, 2 * self.pad + 1, (batch_size,), **kw)
        return AugmentParams(flip, angles, tops, lefts)

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """uint8 N x C x H x W -> augmented float N x C x H x W in [0,1].

        With `params` already on the images' device (`AugmentParams.to`) nothing is copied from
        the host, so a GPU's queue never drains here.
        """
        h, w = images.shape[-2:]
        device = images.device
        if params.flip.device != device:
            params = params.to(device)
        x = pad_images(images, self.pad)
        x = flip_images(x, params.flip)
        if self.rotation_degrees:
            x = rotate_images(x, params.angles)
        x = crop_images(x, params.tops, params.lefts, h, w)
        return x.float().div_(255)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.sample(len(images), generator))

    def __repr__(self) -> str:
        return f"Augment(pad={self.pad}, flip_p={self.flip_p}, rotation_degrees={self.rotation_degrees})"
