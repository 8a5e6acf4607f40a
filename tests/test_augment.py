"""kdsweep.augment: each step of the batched augmentation against torchvision's per-image op, image by image."""

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from kdsweep import augment as augmentation


def rand_images(n, h, w, seed=0):
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


EDGE_ANGLES = [0.0, 15.0, -15.0, 90.0, -90.0, 180.0, 45.0, 1e-6, -1e-6, 0.5, -7.5, 89.99]


@pytest.mark.parametrize("h, w", [(40, 40), (40, 37), (9, 14), (16, 16)])
def test_rotate_equals_torchvision_per_image(h, w):
    """Exact: rotate_images replicates torchvision's float math op for op (float64 matrix rounded to
    float32, the same grid, bmm and grid_sample), so both run the same arithmetic through the same
    kernels on any machine, and nearest neighbour picks the same pixel even on a pixel boundary. The
    one other path, torch.cos/sin against Python's math.cos/sin, differs by an ulp in 0.2% of float64
    values, which the rounding to float32 removes (in none of 10^6 random angles did one survive it)."""
    extra = 28
    angles = torch.cat([torch.tensor(EDGE_ANGLES, dtype=torch.float64),
                        torch.rand(extra, dtype=torch.float64, generator=torch.Generator().manual_seed(h * w)) * 360 - 180])
    images = rand_images(len(angles), h, w, seed=w)
    out = augmentation.rotate_images(images, angles)
    assert out.dtype == torch.uint8
    for image, angle, got in zip(images, angles.tolist(), out):
        expected = TF.rotate(image, angle, interpolation=InterpolationMode.NEAREST, expand=False, center=None, fill=0)
        assert torch.equal(got, expected), (h, w, angle)
    floats = augmentation.rotate_images(images.float() / 255, angles)
    assert torch.equal(floats, out.float() / 255)


def test_pad_flip_crop_equal_torchvision_per_image():
    pad, n, h, w = 4, 20, 12, 9
    images = rand_images(n, h, w)
    padded = augmentation.pad_images(images, pad)
    flip = torch.arange(n) % 3 == 0
    flipped = augmentation.flip_images(padded, flip)
    tops = torch.randint(0, 2 * pad + 1, (n,), generator=torch.Generator().manual_seed(1))
    lefts = torch.randint(0, 2 * pad + 1, (n,), generator=torch.Generator().manual_seed(2))
    tops[0], lefts[0], tops[1], lefts[1] = 0, 0, 2 * pad, 2 * pad
    cropped = augmentation.crop_images(flipped, tops, lefts, h, w)
    for i in range(n):
        assert torch.equal(padded[i], TF.pad(images[i], [pad], fill=0))
        assert torch.equal(flipped[i], TF.horizontal_flip(padded[i]) if flip[i] else padded[i])
        assert torch.equal(cropped[i], TF.crop(flipped[i], int(tops[i]), int(lefts[i]), h, w))
    assert not torch.equal(flipped, padded)


@pytest.mark.parametrize("h, w", [(32, 32), (8, 8), (10, 7)])
def test_augment_equals_the_torchvision_composition(h, w):
    augment = augmentation.Augment(pad=4, flip_p=0.5, rotation_degrees=15)
    images = rand_images(24, h, w)
    params = augment.sample(len(images), torch.Generator().manual_seed(7))
    out = augment.apply(images, params)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert 0 <= out.min() and out.max() <= 1
    for i in range(len(images)):
        x = TF.pad(images[i], [4], fill=0)
        if params.flip[i]:
            x = TF.horizontal_flip(x)
        x = TF.rotate(x, float(params.angles[i]), interpolation=InterpolationMode.NEAREST, fill=0)
        x = TF.crop(x, int(params.tops[i]), int(params.lefts[i]), h, w)
        assert torch.equal(out[i], x.float() / 255), i


def test_augment_is_a_function_of_the_generator_state():
    augment = augmentation.Augment.from_config({"pad": 2, "flip_p": 0.5, "rotation_degrees": 30})
    images = rand_images(16, 8, 8)
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    first = augment(images, generator)
    second = augment(images, generator)
    generator.set_state(state)
    assert torch.equal(augment(images, generator), first)
    assert not torch.equal(first, second)


def test_identity_augmentation():
    augment = augmentation.Augment(pad=0, flip_p=0.0, rotation_degrees=0)
    images = rand_images(5, 6, 7)
    assert torch.equal(augment(images, torch.Generator().manual_seed(0)), images.float() / 255)


def test_sampled_parameter_distributions():
    pad, p, degrees, n = 3, 0.3, 12.0, 20000
    params = augmentation.Augment(pad, p, degrees).sample(n, torch.Generator().manual_seed(0))
    assert abs(params.flip.float().mean().item() - p) < 0.02
    assert params.angles.min() >= -degrees and params.angles.max() <= degrees
    assert params.angles.min() < -0.99 * degrees and params.angles.max() > 0.99 * degrees
    assert abs(params.angles.mean().item()) < 0.5
    for offsets in (params.tops, params.lefts):
        assert offsets.min() == 0 and offsets.max() == 2 * pad
        assert torch.bincount(offsets).min() > n / (2 * pad + 1) * 0.9
    assert not torch.equal(params.tops, params.lefts)
    always = augmentation.Augment(pad, 1.0, degrees).sample(100, torch.Generator().manual_seed(0))
    assert always.flip.all()
