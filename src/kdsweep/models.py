"""Architectures of a study: any torchvision classification network by name (and timm's, `timm:<name>`,
where timm is installed), with the family's small-image stem, normalisation inside.

The registry (`names`, `family`, `check_name`) is torchvision's own list of classification models
(`torchvision.models.list_models(module=torchvision.models)`, built by `get_model`), so the schema, `kdsweep
models` and the checks before any job all read one list. Images of at most SMALL_IMAGE pixels a side (CIFAR's
32, the digits' 8) get the family's small-image stem, a rule per family (STEM_RULES, docs/models.md): ResNet,
RegNet, MobileNet, EfficientNet, MNASNet, ShuffleNet and DenseNet have their first convolution replaced by a
3 x 3 stride-1 one and their stem's max-pool dropped; ConvNeXt patchifies by max(1, size // 16) instead of 4;
a ViT takes patches of about size / 8 pixels. A family without a rule is refused in one sentence naming the
fix. The reference study's CIFAR ResNets and MobileNetV3 are two cases of that rule, drawn exactly as before.

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

import functools
import math
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tv

from .errors import KdsweepError
from .io import load_weights, torch_save

# Images of at most this many pixels a side get their family's small-image stem (STEM_RULES).
SMALL_IMAGE = 64
TIMM = "timm:"  # the prefix of a timm model's name
FIX_NAME = "`python -m kdsweep models` lists them"


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


# ---------------------------------------------------------------- the registry


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """torchvision's classification networks (its detection, segmentation, video and quantized ones are
    submodules, not listed)."""
    return tuple(tv.list_models(module=tv))


@functools.cache
def timm_names() -> tuple[str, ...]:
    """timm's networks as `timm:<name>`, or none where timm is not installed (the optional extra)."""
    try:
        import timm
    except ImportError:
        return ()
    return tuple(TIMM + name for name in timm.list_models())


def names() -> tuple[str, ...]:
    """Every architecture a study can name: torchvision's, then timm's."""
    return torchvision_names() + timm_names()


def check_name(name: str) -> str:
    """`name`, or KdsweepError in one sentence naming the fix."""
    if name.startswith(TIMM):
        if not timm_names():
            raise KdsweepError(f"model {name!r} is a timm model, but timm is not installed; install the optional "
                               "extra (pip install 'kdsweep[timm]'), or name a torchvision model")
        if name not in timm_names():
            raise KdsweepError(f"model {name!r} is not one of timm's models; {FIX_NAME}")
        return name
    if name not in torchvision_names():
        import difflib

        close = difflib.get_close_matches(name, torchvision_names(), n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise KdsweepError(f"model {name!r} is no torchvision classification model{hint}; name one such as resnet18 "
                           f"or efficientnet_b0, or timm:<name> with timm installed; {FIX_NAME}")
    return name


@functools.cache
def family(name: str) -> str:
    """A network's family: the torchvision module its builder lives in (resnet, mobilenetv3, convnext, ...) or,
    for timm, `timm.` + its class (built on the meta device: no memory, no random draws)."""
    check_name(name)
    if name.startswith(TIMM):
        import timm

        with torch.device("meta"):
            return "timm." + type(timm.create_model(name[len(TIMM):], pretrained=False)).__name__
    return tv.get_model_builder(name).__module__.rsplit(".", 1)[1]


# ---------------------------------------------------------------- small-image stems


def _stem_conv(in_channels, out_channels, kernel_size=3, stride=1):
    # CIFAR images are 32x32: a stride-2 stem (and a max-pool) would throw away most
    # of the resolution before the first block. Initialised as torchvision initialises
    # every other conv of these networks, so the stem is not the odd one out. A pretrained
    # teacher's stem keeps its checkpoint's kernel (ImageNet ResNets' 7x7) at stride 1.
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                     padding=(kernel_size - stride + 1) // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def first_conv(net: nn.Module) -> str:
    """The name of a network's first convolution (in module order): its stem."""
    return next(name for name, module in net.named_modules() if isinstance(module, nn.Conv2d))


def _conv_stem(pool: str | None = None):
    """The CNN rule: the first convolution becomes 3x3 (or the checkpoint's kernel) at stride 1, and the stem's
    max-pool `pool`, where the family has one, is dropped."""

    def apply(net, in_channels, size, kernel):
        name = first_conv(net)
        _set_submodule(net, name, _stem_conv(in_channels, net.get_submodule(name).out_channels, kernel or 3))
        if pool:
            _set_submodule(net, pool, nn.Identity())
        return net

    return apply


def convnext_patch(size: int) -> int:
    """ConvNeXt's small-image patchify stride: 2 for 32 px (16 x 16 tokens in its first stage), 1 below 32."""
    return max(1, size // 16)


def _convnext(net, in_channels, size, kernel):
    patch = convnext_patch(size)
    kernel = kernel or patch
    conv = nn.Conv2d(in_channels, net.features[0][0].out_channels, kernel_size=kernel, stride=patch,
                     padding=(kernel - patch + 1) // 2)
    nn.init.trunc_normal_(conv.weight, std=0.02)  # as torchvision's ConvNeXt initialises its convolutions
    nn.init.zeros_(conv.bias)
    net.features[0][0] = conv
    return net


def vit_patch(size: int) -> int:
    """A ViT's small-image patch: the largest divisor of the side up to size / 8 (4 for 32 px: 64 tokens)."""
    return max(d for d in range(1, max(1, size // 8) + 1) if size % d == 0)


def _vit(name, num_classes, in_channels, size):
    with torch.device("meta"):  # the variant's depth and widths, without its weights
        reference = tv.get_model(name, weights=None)
    net = tv.VisionTransformer(image_size=size, patch_size=vit_patch(size), num_layers=len(reference.encoder.layers),
                               num_heads=reference.encoder.layers[0].self_attention.num_heads,
                               hidden_dim=reference.hidden_dim, mlp_dim=reference.mlp_dim, num_classes=num_classes)
    if in_channels != 3:
        conv = nn.Conv2d(in_channels, net.hidden_dim, kernel_size=net.patch_size, stride=net.patch_size)
        nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / (in_channels * net.patch_size ** 2)))
        nn.init.zeros_(conv.bias)
        net.conv_proj = conv
    return net


# family -> rule(net, in_channels, image_size, stem kernel or None) for images of at most SMALL_IMAGE px.
# The ResNet rule and the MobileNetV3 rule are the reference study's hand-made stems, drawn exactly as before.
STEM_RULES = {
    "resnet": _conv_stem("maxpool"),  # ResNet, ResNeXt, Wide ResNet
    "regnet": _conv_stem(),
    "mobilenetv2": _conv_stem(),
    "mobilenetv3": _conv_stem(),
    "efficientnet": _conv_stem(),  # EfficientNet and EfficientNetV2
    "mnasnet": _conv_stem(),
    "shufflenetv2": _conv_stem("maxpool"),
    "densenet": _conv_stem("features.pool0"),
    "convnext": _convnext,
    "vision_transformer": None,  # built whole at the image size (_vit)
    "timm.ResNet": _conv_stem("maxpool"),
    "timm.EfficientNet": _conv_stem(),
    "timm.MobileNetV3": _conv_stem(),
    "timm.VisionTransformer": None,
}
# A family's stem whose kernel a checkpoint can choose (the others refuse another kernel: it does not fit).
KERNEL_FROM_CHECKPOINT = {family for family, rule in STEM_RULES.items() if rule is not None}
FAMILIES_WITH_RULES = ("ResNet, ResNeXt, Wide ResNet, RegNet, MobileNetV2/V3, EfficientNet(V2), MNASNet, "
                       "ShuffleNetV2, DenseNet, ConvNeXt, ViT")


def check_buildable(name: str, image_size: int) -> str:
    """`name`, if it is known and its family has a rule for images of this size; else one sentence naming the fix."""
    found = family(check_name(name))
    if image_size <= SMALL_IMAGE and found not in STEM_RULES:
        raise KdsweepError(
            f"model {name!r} is of the {found} family, for which kdsweep has no small-image stem rule, and this "
            f"study's images are {image_size} px (rules apply up to {SMALL_IMAGE}); name a network of a family with "
            f"one ({FAMILIES_WITH_RULES}; e.g. resnet18, efficientnet_b0, shufflenet_v2_x0_5), see docs/models.md")
    return name


def build_network(name, num_classes, in_channels=3, image_size=32, stem_kernel=None) -> nn.Module:
    """The bare network `name` (freshly initialised from torch's RNG) with `num_classes` outputs for images of
    in_channels x image_size x image_size: its family's small-image stem up to SMALL_IMAGE px (stem_kernel: the
    stem's kernel a checkpoint holds, for a family whose stem is a convolution; None: the rule's)."""
    check_buildable(name, image_size)
    found = family(name)
    num_classes, size = int(num_classes), int(image_size)
    if name.startswith(TIMM):
        return _timm(name[len(TIMM):], found, num_classes, in_channels, size, stem_kernel)
    if found == "vision_transformer" and size <= SMALL_IMAGE:
        return _vit(name, num_classes, in_channels, size)
    large = {"image_size": size} if found == "vision_transformer" else {}
    net = tv.get_model(name, weights=None, num_classes=num_classes, **large)
    if size <= SMALL_IMAGE:
        return STEM_RULES[found](net, in_channels, size, stem_kernel)
    return _with_channels(net, in_channels)


def _with_channels(net, in_channels):
    """A large-image network whose first convolution takes in_channels (torchvision's take 3)."""
    name = first_conv(net)
    first = net.get_submodule(name)
    if first.in_channels != in_channels:
        _set_submodule(net, name, nn.Conv2d(in_channels, first.out_channels, first.kernel_size, first.stride,
                                            first.padding, bias=first.bias is not None))
    return net


def _timm(name, found, num_classes, in_channels, size, stem_kernel):
    import timm

    options = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    if size > SMALL_IMAGE:
        return timm.create_model(name, **options)
    if found == "timm.VisionTransformer":
        return timm.create_model(name, img_size=size, patch_size=vit_patch(size), **options)
    return STEM_RULES[found](timm.create_model(name, **options), in_channels, size, stem_kernel)


def parameter_count(name, num_classes=10, image_size=32, in_channels=3) -> int:
    """Parameters of `name` as a study builds it (built on the meta device where its builder allows: no memory;
    never a draw from the caller's RNG)."""
    try:
        with torch.device("meta"):
            net = build_network(name, num_classes, in_channels, image_size)
    except NotImplementedError:  # a builder that computes its widths from tensors (RegNet): on the CPU
        with torch.random.fork_rng(devices=[]):
            net = build_network(name, num_classes, in_channels, image_size)
    return sum(p.numel() for p in net.parameters())


def build_model(name, num_classes, mean, std, bn_momentum=None, image_size=32, stem_kernel=None) -> nn.Module:
    """A freshly initialised `name` with `num_classes` outputs for images in [0, 1] of image_size pixels a side
    (32, CIFAR's, by default: the ResNet and MobileNet rules do not depend on it).

    The input has len(mean) channels. bn_momentum, if not None, is set on every
    BatchNorm layer: torchvision's MobileNetV3 uses 0.01, too slow for the running
    statistics of a run of a few hundred steps to settle (eval accuracy at chance).
    stem_kernel: a checkpoint's stem kernel (build_network).
    """
    normalize = Normalize(mean, std)
    net = _exact_and_full_precision(build_network(name, num_classes, normalize.mean.numel(), image_size, stem_kernel))
    if bn_momentum is not None:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = float(bn_momentum)
    model = Classifier(normalize, net)
    # what load_model needs to build it again (save_model writes it)
    model.geometry = {"image_size": int(image_size), **({"stem_kernel": int(stem_kernel)} if stem_kernel else {})}
    return model


def save_model(path, model, name, num_classes):
    """Write `{"model", "num_classes", "state_dict"}` and the model's geometry (`image_size`, a checkpoint's
    `stem_kernel`) atomically (temp name, then rename)."""
    # torch.compile wraps the module; the weights belong to the original.
    model = getattr(model, "_orig_mod", model)
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    return torch_save({"model": name, "num_classes": int(num_classes), "state_dict": state_dict,
                       **getattr(model, "geometry", {})}, path)


def load_model(path, device="cpu") -> nn.Module:
    """The model saved by save_model, on `device`, in eval mode; KdsweepError if unusable."""
    path = Path(path)
    rerun = "delete it and rerun the job that makes it"
    if not path.is_file():
        raise KdsweepError(f"model file {path} does not exist; run the job that makes it first")
    saved = load_weights(path, "model file", rerun, map_location=device)
    keys = ("model", "num_classes", "state_dict")
    if not isinstance(saved, dict) or any(key not in saved for key in keys):
        raise KdsweepError(f"{path} is not a kdsweep model file (no {'/'.join(keys)} entries); {rerun}")
    name, num_classes, state_dict = (saved[key] for key in keys)
    if not isinstance(num_classes, int) or not isinstance(state_dict, dict):
        raise KdsweepError(f"{path} is not a kdsweep model file (malformed num_classes or state_dict); {rerun}")
    if not isinstance(name, str) or not _known(name):
        raise KdsweepError(f"{path} holds a model {name!r} that this kdsweep does not know ({FIX_NAME}); {rerun}")
    # a file of an earlier version has no geometry: a ResNet or MobileNet, whose stem does not depend on it
    geometry = {key: saved[key] for key in ("image_size", "stem_kernel") if key in saved}
    if not all(isinstance(value, int) and value > 0 for value in geometry.values()):
        raise KdsweepError(f"{path} is not a kdsweep model file (malformed image_size or stem_kernel); {rerun}")
    mean = state_dict.get("normalize.mean")
    if not isinstance(mean, torch.Tensor):
        raise KdsweepError(f"{path} has no normalisation statistics (normalize.mean); {rerun}")
    # Placeholder statistics of the right channel count: load_state_dict fills the real ones.
    channels = mean.numel()
    try:
        model = build_model(name, num_classes, [0.0] * channels, [1.0] * channels, **geometry)
    except KdsweepError as exc:
        raise KdsweepError(f"{path} holds a {name} that cannot be built here ({exc}); {rerun}") from exc
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise KdsweepError(
            f"the weights in {path} do not fit a {name} with {num_classes} classes; {rerun}"
        ) from exc
    model.architecture = name  # what the file says it is: runs.load checks it against the run's record
    return model.to(device).eval()


def _known(name) -> bool:
    return name in torchvision_names() or name in timm_names()
