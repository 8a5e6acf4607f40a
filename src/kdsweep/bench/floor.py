"""The floor of each measurement: FLOPs per image of a step, and the device's peak FLOP/s.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on the real models (convolutions
and matrix products; backward counted as executed): a memory-bound network like MobileNetV3 sits far
below the peak. The peak: on CUDA dense bf16 FLOP/s from a table by device name (`PEAK_BF16`; a GPU
not in it gets a measured bf16 matmul), on the CPU a measured fp32 `torch.mm`.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ..errors import KdsweepError

# Dense bf16 tensor-core peak by GPU name (first match wins; the PCIe H100 is slower than the SXM).
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak(device, override) -> tuple[float, str]:
    if override is not None:
        if not override > 0:
            raise KdsweepError(f"--peak-flops {override} must be a positive number of FLOP/s, e.g. 989e12")
        return float(override), "--peak-flops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_BF16:
            if key in name:
                return flops, f"table: {key} dense bf16 ({'fp16' if key == 'V100' else 'bf16'} tensor cores)"
        return (measure_matmul(device, torch.bfloat16, 8192),
                f"measured: bf16 torch.mm 8192x8192 ({name} not in the table)")
    return measure_matmul(device, torch.float32, 2048, rounds=8, per_round=2), \
        "measured: fp32 torch.mm 2048x2048, best of 8 rounds of 2"


def measure_matmul(device, dtype, n, rounds=3, per_round=5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(rounds):
        sync(device)
        started = time.perf_counter()
        for _ in range(per_round):
            torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - started)
    return 2.0 * n**3 * per_round / best


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of aten.convolution_backward: each of grad_input and grad_weight costs one forward.

    torch's own formula counts grad_weight of a grouped convolution `groups` times too high (it
    treats it as a dense convolution over the batch), which made MobileNetV3's depthwise layers
    look 30x more expensive to train than to run.
    """
    forward = 2 * x_shape[0] * math.prod((x_shape if transposed else grad_out_shape)[2:]) * math.prod(w_shape)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return float(counter.get_total_flops())


def model_flops(model, image_size, num_classes) -> dict:
    """{"forward", "train" (forward + backward), "fgsm"} per image of one model, counted at batch 2."""
    n = 2
    x = torch.rand(n, *image_size)
    y = torch.arange(n) % num_classes

    def train_step():
        F.cross_entropy(model(x), y).backward()

    model.train()
    train = flops(train_step)
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.inference_mode():
        forward = flops(lambda: model(x))
    # FGSM's work in kdsweep.attacks: forward, gradient w.r.t. the input only, forward of the
    # adversarial batch. (Counted with backward() on a frozen model: FlopCounterMode's module
    # tracker cannot follow the torch.autograd.grad that kdsweep.attacks uses; the ops are the same.)
    model.requires_grad_(False)
    x_attack = x.clone().requires_grad_(True)

    def input_gradient():
        F.cross_entropy(model(x_attack), y, reduction="sum").backward()

    fgsm = flops(input_gradient) + forward
    model.requires_grad_(True)
    return {"forward": forward / n, "train": train / n, "fgsm": fgsm / n}


def flops_per_image(models: dict, image_size, num_classes) -> dict:
    """{name: {"forward", "train", "fgsm"}} per image, counted on the CPU."""
    return {name: model_flops(model, image_size, num_classes) for name, model in models.items()}
