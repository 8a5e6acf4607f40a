"""Feature maps of any network for the feature-based KD methods: which stage outputs to tap, and the taps.

**The tap rule.** A network's stage outputs are found by one probe forward pass of two blank images of the
study's size (eval mode, through autograd; nothing drawn at random, no weight or statistic changed):

1. Every module's output that is a feature map (N, C, H, W), with H x W of the image's aspect, is recorded
   in the order the modules finish, from the first module with parameters of its own on (the image and its
   normalisation are no stage). A module called more than once per pass, or whose output a later module
   changes in place, is passed over: a hook could not tell which value is meant.
2. The trunk: the maps through which all of the computation from the image to the logits passes (cuts of
   the autograd graph): a residual block's output, never a layer inside it that its shortcut bypasses, nor
   a squeeze-excitation branch.
3. The trunk ends at the global pooling (a pooling module, by its class name, whose output is 1 x 1); a map
   larger than one before it (VGG's adaptive pool to 7 x 7) is passed over.
4. A stage output is, for each spatial size, the trunk map of the outermost modules of that size (fewest
   enclosing modules: a stage or a block, not a layer inside a block), the last of them.

So a CIFAR ResNet-18 has four stage outputs (layer1 to layer4: 32, 16, 8 and 4 pixels wide on 32 x 32
images; 8, 4, 2, 1 on the 8 x 8 digits), MobileNetV3-small five (its stem, features.1, .3, .8 and the last
convolution), EfficientNet-B0 and ConvNeXt their stages. A vision transformer's only map is its patch
embedding; a network whose trunk is channels-last (Swin) shows only its convolutional maps.

Each method takes what it needs of the two lists (kdsweep.methods.base.Method.taps: e.g. attention
transfer the last `stages` of each, paired from the deepest) and matches channels and sizes with its own
adapter. A network with too few stage outputs for a point is refused when its training job starts, in one
sentence naming the hyperparameter to lower: the count depends on the architecture and the image size,
which only the job's probe pass sees.

During training, forward hooks on the tapped modules keep their outputs (`Recorder`): the forward pass
computes exactly what it computes without them, and a point that taps nothing has no hook at all.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass

import torch

from .errors import KdsweepError


@dataclass(frozen=True)
class Stage:
    """One stage output: the module that produces it (its name in the network) and its (C, H, W)."""

    name: str
    shape: tuple[int, int, int]

    def __str__(self):
        return "x".join(map(str, self.shape))


def _cuts(root, leaf) -> set:
    """The autograd nodes through which every path from `root` (the logits) to `leaf` (the image) passes.

    In any topological order of the nodes on such paths, a node is a cut exactly when no edge jumps over it
    (every node on those paths is an ancestor or a descendant of a cut, so an edge around it would be a path
    that avoids it)."""
    children, postorder, seen = {}, [], {root}
    stack = [(root, iter(root.next_functions))]
    children[root] = []
    while stack:  # iterative depth-first search: networks are deeper than Python's recursion limit
        node, rest = stack[-1]
        for child, _ in rest:
            if child is None:
                continue
            children[node].append(child)
            if child not in seen:
                seen.add(child)
                children[child] = []
                stack.append((child, iter(child.next_functions)))
                break
        else:
            stack.pop()
            postorder.append(node)
    reaches = {leaf}
    for node in postorder:  # children before parents
        if any(child in reaches for child in children[node]):
            reaches.add(node)
    order = [node for node in reversed(postorder) if node in reaches]
    position = {node: i for i, node in enumerate(order)}
    cuts, furthest = set(), -1
    for i, node in enumerate(order):
        if furthest <= i:
            cuts.add(node)
        furthest = max([furthest, i, *(position[child] for child in children[node] if child in reaches)])
    return cuts


def find_stages(model: torch.nn.Module, image_shape, device="cpu") -> tuple[Stage, ...]:
    """The stage outputs of `model` on images of image_shape (C, H, W), shallowest first (module docstring)."""
    channels, height, width = (int(v) for v in image_shape)
    records, calls = [], {}

    def keep(name, module, args, output):
        calls[name] = calls.get(name, 0) + 1
        if torch.is_tensor(output) and output.dim() == 4:
            records.append((name, module, output, output.grad_fn, output._version))

    modules = [(name, module) for name, module in model.named_modules() if name]
    modes = {module: module.training for module in model.modules()}
    handles = [module.register_forward_hook(functools.partial(keep, name)) for name, module in modules]
    image = torch.zeros(2, channels, height, width, device=device, requires_grad=True)
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(image)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    if not torch.is_tensor(logits) or logits.grad_fn is None:
        return ()
    leaf = _leaf_node(logits.grad_fn, image)
    cuts = _cuts(logits.grad_fn, leaf) if leaf is not None else set()

    trunk, started, smallest = [], False, (height, width)
    for name, module, output, node, version in records:
        started = started or any(True for _ in module.parameters(recurse=False))
        h, w = output.shape[-2:]
        if not started or node not in cuts or calls[name] > 1 or output._version != version:
            continue
        if h * width != w * height or h > smallest[0] or w > smallest[1]:
            continue  # not of the image's aspect (a channels-last map), or larger than a map before it
        if (h, w) == (1, 1) and "pool" in type(module).__name__.lower():
            break  # the global pooling
        smallest = (h, w)
        trunk.append((name, tuple(int(v) for v in output.shape[1:])))
    chosen = {}
    for name, shape in trunk:
        size = shape[1:]
        if size not in chosen or name.count(".") <= chosen[size][0].count("."):
            chosen[size] = (name, shape)
    return tuple(Stage(name, shape) for name, shape in sorted(chosen.values(), key=trunk.index))


def _leaf_node(root, image):
    """The autograd node of the image itself (its AccumulateGrad), found from the logits."""
    stack, seen = [root], {root}
    while stack:
        node = stack.pop()
        if getattr(node, "variable", None) is image:
            return node
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return None


_STAGES = weakref.WeakKeyDictionary()  # module -> {(image shape): stages}: a job's teacher is probed once


def stages(model, image_shape, device="cpu") -> tuple[Stage, ...]:
    """find_stages, kept per module and image shape."""
    known = _STAGES.setdefault(model, {})
    key = tuple(int(v) for v in image_shape)
    if key not in known:
        known[key] = find_stages(model, key, device)
    return known[key]


class Recorder:
    """Forward hooks on named modules of one network, keeping their outputs while `recording`.

    A hook is installed once per module and stays (a compiled network is not retraced each epoch); outside
    `recording` it keeps nothing, so evaluation passes hold no feature maps."""

    def __init__(self, model):
        self.model = model
        self.handles = {}
        self.wanted = frozenset()
        self.maps = {}

    def watch(self, names):
        modules = dict(self.model.named_modules())
        for name in names:
            if name not in self.handles:
                self.handles[name] = modules[name].register_forward_hook(functools.partial(self._keep, name))

    def _keep(self, name, module, args, output):
        if name in self.wanted:
            self.maps[name] = output

    @contextlib.contextmanager
    def recording(self, names):
        """Yields {name: output} of the named modules, filled by the forward passes inside."""
        self.watch(names)
        self.wanted, self.maps = frozenset(names), {}
        try:
            yield self.maps
        finally:
            self.wanted = frozenset()


_RECORDERS = weakref.WeakKeyDictionary()


def recorder(model) -> Recorder:
    """The one Recorder of a network (a torch.compile wrapper's: that of the module it wraps)."""
    model = getattr(model, "_orig_mod", model)
    if model not in _RECORDERS:
        _RECORDERS[model] = Recorder(model)
    return _RECORDERS[model]


@dataclass(frozen=True)
class Shapes:
    """The (C, H, W) of the maps a point's loss reads, student's and teacher's, in the order it gets them."""

    student: tuple
    teacher: tuple


@dataclass(frozen=True)
class Taps:
    """What a feature point taps: the student's and the teacher's modules, in the order its loss reads them."""

    student: tuple[str, ...]
    teacher: tuple[str, ...]
    shapes: Shapes


def describe(found) -> str:
    return ", ".join(map(str, found)) if found else "none"


def plan_taps(method, hparams, student_stages, teacher_stages, student_name, teacher_name, image_shape) -> Taps:
    """The taps of a point of `method` between networks with these stage outputs; KdsweepError (one sentence
    naming the fix) where a network has too few."""
    chosen = []
    for who, found in ((f"the student {student_name}", student_stages), (f"the teacher {teacher_name}", teacher_stages)):
        picked = method.taps(hparams, len(found)) if found else (
            "it has no 4-D feature map (N, C, H, W) on its trunk (a vision transformer's tokens are none)")
        if isinstance(picked, str):
            size = "x".join(map(str, image_shape[1:]))
            reason = picked
            raise KdsweepError(f"{method.name} cannot tap {who} on {size} images, which has {len(found)} stage "
                               f"outputs ({describe(found)}): {reason}; or distil it with a logit method")
        chosen.append(tuple(found[i] for i in picked))
    student, teacher = chosen
    return Taps(tuple(stage.name for stage in student), tuple(stage.name for stage in teacher),
                Shapes(tuple(stage.shape for stage in student), tuple(stage.shape for stage in teacher)))
