"""Architectures of the study: torchvision's networks with the CIFAR stem, normalisation inside.

A model takes images in [0, 1] and normalises them itself, with the training split's
per-channel mean/std stored as buffers, so attacks work in pixel space and a saved
model carries the statistics it was trained with.

Two layers of torchvision's networks are swapped for equivalents that keep a GPU run exact
and its logits full-precision (the state dict is unchanged):
- every global average pool (`AdaptiveAvgPool2d(1)`, the head's and the squeeze-excitation
  blocks') is a mean over the spatial dimensions, whose gradient CUDA computes
  deterministically (adaptive_avg_pool2d's backward has no deterministic CUDA kernel);
- the classifier's last Linear layer computes in fp32 under bf16 autocast, so the loss and the
  attacks see logits that were never rounded to bf16.
"""

from pathlib import Path

import torch
from torch import nn
from torchvision import models as tv

from .errors import KdsweepError
from .io import torch_save


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers, so they are saved but never trained."""

    def __init__(self, mean, std):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        if mean.shape != std.shape:
            raise ValueError(f"mean has {mean.numel()} channels but std has {std.numel()}")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std

    def extra_repr(self):
        return f"channels={self.mean.numel()}"


class Classifier(nn.Module):
    """normalize -> net: `net` is the bare torchvision network, fed normalised images."""

    def __init__(self, normalize: Normalize, net: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x):
        return self.net(self.normalize(x))

    @property
    def num_classes(self) -> int:
        return [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1].out_features


class GlobalAvgPool(nn.Module):
    """AdaptiveAvgPool2d(1) as a mean over H and W: the same values, a deterministic backward on CUDA."""

    def forward(self, x):
        return x.mean(dim=(-2, -1), keepdim=True)


class FullPrecisionLinear(nn.Linear):
    """A Linear layer that computes in fp32 even under autocast (the classifier's last layer).

    Under bf16 autocast a Linear layer rounds its output to bf16 (8-bit mantissa): at T = 20
    that put 2% error into the KD loss's gradient, and more as the student nears the teacher.
    """

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def _exact_and_full_precision(net: nn.Module) -> nn.Module:
    """Swap the global pools and the last Linear layer of `net` for the classes above, in place."""
    names = dict(net.named_modules())
    linears = [name for name, module in names.items() if type(module) is nn.Linear]
    for name, module in names.items():
        if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            _set_submodule(net, name, GlobalAvgPool())
    if linears:
        head = names[linears[-1]]
        # skip_init: no random draws, so every later initialisation is what torchvision's would be
        full = torch.nn.utils.skip_init(FullPrecisionLinear, head.in_features, head.out_features,
                                        bias=head.bias is not None)
        with torch.no_grad():
            full.weight.copy_(head.weight)
            if head.bias is not None:
                full.bias.copy_(head.bias)
        _set_submodule(net, linears[-1], full)
    return net


def _set_submodule(root: nn.Module, name: str, module: nn.Module):
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _stem_conv(in_channels, out_channels):
    # CIFAR images are 32x32: a stride-2 stem (and a max-pool) would throw away most
    # of the resolution before the first block. Initialised as torchvision initialises
    # every other conv of these networks, so the stem is not the odd one out.
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _cifar_resnet(constructor):
    def build(num_classes, in_channels):
        net = constructor(weights=None, num_classes=num_classes)
        net.conv1 = _stem_conv(in_channels, net.conv1.out_channels)
        net.maxpool = nn.Identity()
        return net

    return build


def _cifar_mobilenet_v3(constructor):
    def build(num_classes, in_channels):
        net = constructor(weights=None, num_classes=num_classes)
        first = net.features[0][0]
        net.features[0][0] = _stem_conv(in_channels, first.out_channels)
        return net

    return build


# name -> build(num_classes, in_channels) returning the bare network. A new architecture
# is added here and to the model enum of config.schema.yaml (a test keeps the two equal).
MODELS = {
    "resnet18": _cifar_resnet(tv.resnet18),
    "resnet50": _cifar_resnet(tv.resnet50),
    "mobilenet_v3_small": _cifar_mobilenet_v3(tv.mobilenet_v3_small),
}


def _unknown(name):
    return KdsweepError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")


def build_model(name, num_classes, mean, std, bn_momentum=None) -> nn.Module:
    """A freshly initialised `name` with `num_classes` outputs for images in [0, 1].

    The input has len(mean) channels. bn_momentum, if not None, is set on every
    BatchNorm layer: torchvision's MobileNetV3 uses 0.01, too slow for the running
    statistics of a run of a few hundred steps to settle (eval accuracy at chance).
    """
    if name not in MODELS:
        raise _unknown(name)
    normalize = Normalize(mean, std)
    net = _exact_and_full_precision(MODELS[name](int(num_classes), normalize.mean.numel()))
    if bn_momentum is not None:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = float(bn_momentum)
    return Classifier(normalize, net)


def save_model(path, model, name, num_classes):
    """Write `{"model", "num_classes", "state_dict"}` atomically (temp name, then rename)."""
    # torch.compile wraps the module; the weights belong to the original.
    model = getattr(model, "_orig_mod", model)
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    return torch_save({"model": name, "num_classes": int(num_classes), "state_dict": state_dict}, path)


def load_model(path, device="cpu") -> nn.Module:
    """The model saved by save_model, on `device`, in eval mode; KdsweepError if unusable."""
    path = Path(path)
    rerun = "delete it and rerun the job that makes it"
    if not path.is_file():
        raise KdsweepError(f"model file {path} does not exist; run the job that makes it first")
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise KdsweepError(
            f"model file {path} cannot be read: it is truncated, corrupt or not a kdsweep "
            f"model ({type(exc).__name__}); {rerun}"
        ) from exc
    keys = ("model", "num_classes", "state_dict")
    if not isinstance(saved, dict) or any(key not in saved for key in keys):
        raise KdsweepError(f"{path} is not a kdsweep model file (no {'/'.join(keys)} entries); {rerun}")
    name, num_classes, state_dict = (saved[key] for key in keys)
    if not isinstance(num_classes, int) or not isinstance(state_dict, dict):
        raise KdsweepError(f"{path} is not a kdsweep model file (malformed num_classes or state_dict); {rerun}")
    if not isinstance(name, str) or name not in MODELS:
        raise KdsweepError(
            f"{path} holds a model {name!r} that this kdsweep does not know "
            f"(known: {', '.join(sorted(MODELS))}); {rerun}"
        )
    mean = state_dict.get("normalize.mean")
    if not isinstance(mean, torch.Tensor):
        raise KdsweepError(f"{path} has no normalisation statistics (normalize.mean); {rerun}")
    # Placeholder statistics of the right channel count: load_state_dict fills the real ones.
    channels = mean.numel()
    model = build_model(name, num_classes, [0.0] * channels, [1.0] * channels)
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise KdsweepError(
            f"the weights in {path} do not fit a {name} with {num_classes} classes; {rerun}"
        ) from exc
    model.architecture = name  # what the file says it is: runs.load checks it against the run's record
    return model.to(device).eval()
