"""Throughput benchmark: kdsweep's training / distillation / FGSM pipeline against a plain reference loop.

`python -m kdsweep bench [--quick] [--device auto|cpu|cuda] [--json PATH] ...` measures, in one
process and one run, images per second of

- teacher training (config `teacher.model`, hard labels),
- hard-target training of each student (config `students`),
- distillation of each student (student forward + backward, teacher forward),
- FGSM evaluation of each student and of the teacher,

each twice:

ours       kdsweep's own pieces, called as a training job calls them: `train.train_epoch` itself
           (the whole dataset as uint8 N x C x H x W on the device, `data.Augment` on whole
           batches, the teacher under `torch.inference_mode`, `kd_losses`, each point on its own
           RNG stream) over `train.Point`s, built as a training job builds them (`build_model` with
           the normalisation inside, Adam, fused on CUDA), with the job's numeric settings
           `train._Precision` from the config's runtime section (on CUDA by default bf16 autocast
           and channels_last; on the CPU fp32, NCHW); FGSM through `attacks.evaluate_attack`, as
           the attack job calls it (fp32).
reference  the loop written the usual way: a Dataset of uint8 H x W x C images turned into PIL
           images one by one (as torchvision's CIFAR10 does), torchvision per-image transforms
           Pad -> RandomHorizontalFlip -> RandomRotation -> RandomCrop -> ToTensor -> Normalize,
           a DataLoader with `--workers` worker processes (default 2, shuffle, pin_memory on CUDA),
           the bare torchvision network (fp32 weights, NCHW) in PyTorch's default kernel settings
           (on Ampere and later GPUs cuDNN runs fp32 convolutions in TF32; no autotuning, no
           deterministic mode), the teacher under `torch.no_grad()`, Adam,
           `loss.item()` every step; FGSM with `loss.backward()` (parameter gradients included)
           over a DataLoader of ToTensor'd test images.

What is timed: one whole epoch over a fixed number of images (`--images`), for both, because that
is what a sweep pays. The reference's epoch therefore includes starting its DataLoader workers (a
fresh iterator per epoch, persistent_workers=False, the default); that start-up is also reported
on its own (`loader_startup_s`, the time until the first batch arrives), with the throughput
without it, since over a real 45,000-image epoch it is amortised and a `--quick` epoch is short.
Before the timed epoch each side runs `--warmup` untimed steps (allocator, cuDNN autotuning, oneDNN
primitives, lazy imports). Then `--repeats R` epochs per side are timed, alternating ours and the
reference so that load from other processes falls on both alike, and the fastest of each side
counts (noise only ever adds time). On CUDA the device is synchronised before every clock read.

Data: synthetic CIFAR-shaped images (uniform random uint8, 3 x size x size, 10 random labels),
seeded; throughput does not depend on pixel values. Normalisation statistics are computed from
them with `data.channel_stats`.

The floor: FLOPs per image of one step, counted with `torch.utils.flop_counter.FlopCounterMode`
on the real models at the benchmark's image size (convolutions and matrix products; backward
counted as executed, not estimated): training = forward + backward; distillation = student
forward + backward + teacher forward; FGSM = the work of `evaluate_attack` (forward, input gradient,
forward of the adversarial batch). `floor_seconds_per_epoch` is what one epoch of
`--epoch-images` (45,000: CIFAR-10's 90% training split) would take at the device's peak.
Peak: on CUDA dense bf16 FLOP/s from a table by device name (`PEAK_BF16`; a GPU not in it gets a
measured bf16 matmul), on the CPU measured with fp32 `torch.mm` of 2048 x 2048 matrices at the
start and at the end of the run, the higher kept (other processes only ever lower it); `--peak-flops`
overrides either. FlopCounterMode counts convolutions and matrix products only (not BatchNorm,
activations, the optimiser): a memory-bound network like MobileNetV3 sits far below the peak. Achieved FLOP/s is
flops_per_image * images_per_s; `peak_fraction` is that over the peak.

Packing (`--pack-sizes 1 4 8`): k sweep points of one student (different temperatures, as a sweep's
points differ) trained by one `train.train_epoch` on one augmented stream and one teacher forward
pass per batch (runtime.pack_size). A packed row (key `distill:<student>:pack<k>`) counts
point-images: ours images_per_s = k x images / seconds, flops_per_image = student step + teacher
forward / k. Its reference is the pack-1 row's (the usual loop trains points one after another).

JSON (`--json PATH`), every number positive unless marked:
  version                  1
  seconds                  wall time of the whole benchmark
  machine                  {device ("cpu" | "cuda:0"), name (CPU model or GPU name), cpu_count,
                            torch_threads, torch, torchvision, python, kdsweep, host}
  settings                 {quick (bool), image_size [C, H, W], batch_size, eval_batch_size, images
                            (timed per measurement and side), warmup_steps, repeats, workers (may be
                            0), temperature, soft_weight, epsilon, epoch_images, seed, teacher,
                            students [..], pack_sizes [..], data (str), precision (ours' arithmetic:
                            "bf16 autocast, fp32 logits" | "fp32" | "tf32"), channels_last (bool),
                            compile (bool), deterministic (bool), reference_precision (str)}
  peak                     {flops_per_s, source (str: "table: ...", "measured: ...", "--peak-flops")}
  load_before, load_after  os.getloadavg() (1, 5, 15 minutes) before and after, may be 0
  measurements             {key: entry}; keys "train:<teacher>", "train:<student>",
                           "distill:<student>", "fgsm:<student>", "fgsm:<teacher>"
    entry                  {label, task ("train" | "distill" | "fgsm"), model, teacher (null unless
                            distill), pack, flops_per_image, floor_seconds_per_epoch,
                            ours, reference, ratio (ours / reference images_per_s),
                            ratio_without_startup (ours / reference images_per_s_without_startup),
                            cpu_ratio (reference / ours CPU seconds per (point-)image: > 1 when
                            ours spends less CPU time on the same images)}
    ours                   {images, seconds (the fastest epoch), seconds_each [every timed epoch],
                            images_per_s, peak_fraction, others_cpu, cpu_seconds}
                           cpu_seconds: CPU time (user + system) of this process and its DataLoader
                           workers during the fastest epoch: the work, nearly independent of other
                           processes' load when torch runs 1 thread (with more, OpenMP spin-waits
                           count too)
    reference              the same + loader_startup_s, images_per_s_without_startup
                           others_cpu: share (0..1) of all cores that OTHER processes used while
                           the fastest epoch ran (/proc/stat minus this process and its workers);
                           null where /proc/stat is missing
  skipped                  [{key, label, reason}]: measurements asked for but not available (empty
                           unless a later version cannot measure something on some device)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, data
from .attacks import evaluate_attack
from .config import OVERRIDE
from .errors import KdsweepError
from .models import MODELS, build_model
from .runtime import Runtime, pytorch_defaults

# Dense bf16 tensor-core peak by GPU name (first match wins; the PCIe H100 is slower than the SXM).
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
)
# CIFAR-10's training split of the study (50,000 x 0.9): what one epoch of a sweep run sees.
EPOCH_IMAGES = 45_000
NUM_CLASSES = 10  # CIFAR-10 shaped synthetic data

# PyTorch's default arithmetic for fp32 weights on a GPU, which the reference loop runs in.
REFERENCE_PRECISION = "fp32 weights, PyTorch defaults (cuDNN convolutions in TF32 on Ampere and later)"

QUICK = {"batch_size": 32, "eval_batch_size": 32, "images": 64, "warmup": 1, "repeats": 2}
FULL = {"images": 15_000, "warmup": 10, "repeats": 2}  # batch sizes from the config (300, 1000)


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="study config (repeatable, merged in order; default ./config.yaml): models, "
                             "batch sizes, optimiser, augmentation, threads")
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes for a ~2 minute run on a 2-core CPU (batch {QUICK['batch_size']}, "
                             f"{QUICK['images']} timed images, {QUICK['warmup']} warm-up steps)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when a GPU is visible (default)")
    parser.add_argument("--json", metavar="PATH", help="write the numbers as JSON (keys: see the module docstring)")
    parser.add_argument("--teacher", metavar="MODEL", help="teacher architecture (default: config teacher.model)")
    parser.add_argument("--students", nargs="+", metavar="MODEL",
                        help="student architectures (default: config students)")
    parser.add_argument("--batch-size", type=int, help="training batch (default: config, or quick's)")
    parser.add_argument("--eval-batch-size", type=int, help="FGSM batch (default: config, or quick's)")
    parser.add_argument("--images", type=int,
                        help=f"images per timed epoch (default {FULL['images']}, quick {QUICK['images']})")
    parser.add_argument("--warmup", type=int,
                        help=f"untimed warm-up steps per side (default {FULL['warmup']}, quick {QUICK['warmup']})")
    parser.add_argument("--repeats", type=int, help="timed epochs per side, alternating ours / reference; the fastest "
                                                    f"counts (default {FULL['repeats']}, quick {QUICK['repeats']})")
    parser.add_argument("--image-size", type=int, default=32, help="side of the square images (default 32, CIFAR)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference (default 2)")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: config runtime.threads; 0 = torch's default)")
    parser.add_argument("--temperature", type=float, help="distillation temperature (default: config temperatures[0]; "
                                                          "throughput does not depend on it)")
    parser.add_argument("--soft-weight", type=float,
                        help="distillation soft weight in (0, 1] (default: config staged.soft_weight)")
    parser.add_argument("--epsilon", type=float, help="FGSM epsilon (default: config epsilons[0])")
    parser.add_argument("--pack-sizes", type=int, nargs="+", default=[1], metavar="K",
                        help="sweep points trained at once per distillation measurement (default: 1)")
    parser.add_argument("--peak-flops", type=float,
                        help="device peak FLOP/s for the floor (default: table on CUDA, measured on CPU)")
    parser.add_argument("--epoch-images", type=int, default=EPOCH_IMAGES,
                        help=f"images per epoch for the floor's seconds per epoch (default {EPOCH_IMAGES})")
    parser.add_argument("--only", nargs="+", choices=["train", "distill", "fgsm"], default=["train", "distill", "fgsm"],
                        help="which kinds of measurement to run (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, models and augmentation (default 0)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides after the files, as for every job (e.g. runtime.deterministic=false "
                             "runtime.compile=true): ours runs in the resulting runtime section")
    return parser


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m kdsweep bench", description=__doc__.split("\n\n")[0])
    argv = sys.argv[1:] if argv is None else list(argv)
    # key=value overrides may come anywhere, also after an option that takes several values
    overrides = [arg for arg in argv if OVERRIDE.match(arg)]
    argv = [arg for arg in argv if not OVERRIDE.match(arg)] + (["--", *overrides] if overrides else [])
    args = add_arguments(parser).parse_args(argv)
    try:
        return run(args)
    except KdsweepError as err:
        print(f"kdsweep: error: {err}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------- clocks and machine


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _CpuShare:
    """Share of all cores used by other processes between start() and stop() (Linux /proc/stat)."""

    def __init__(self):
        self.start_state, self.own_start = None, 0.0

    @staticmethod
    def _state():
        try:
            with open("/proc/stat") as handle:
                values = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal ...: busy = user+nice+system+irq+softirq
        busy = sum(values[:3]) + sum(values[5:7])
        return busy / os.sysconf("SC_CLK_TCK"), _CpuShare._own(), time.monotonic()

    @staticmethod
    def _own() -> float:
        own = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            own += usage.ru_utime + usage.ru_stime
        return own

    def start(self):
        self.own_start = self._own()
        self.start_state = self._state()

    def stop(self) -> tuple[float | None, float]:
        """(others' share of all cores or None, CPU seconds of this process and its reaped children)."""
        end = self._state()
        own_now = self._own()
        own = own_now - self.own_start
        if end is None or self.start_state is None:
            return None, own
        busy, own_proc, wall = (b - a for a, b in zip(self.start_state, end))
        if wall <= 0:
            return None, own
        return min(1.0, max(0.0, (busy - own_proc) / (wall * (os.cpu_count() or 1)))), own


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(device) -> dict:
    import torchvision

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        device_str = f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    else:
        name, device_str = _cpu_name(), "cpu"
    return {"device": device_str, "name": name, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
            "kdsweep": __version__, "host": platform.node()}


def _peak(device, override) -> tuple[float, str]:
    if override is not None:
        if not override > 0:
            raise KdsweepError(f"--peak-flops {override} must be a positive number of FLOP/s, e.g. 989e12")
        return float(override), "--peak-flops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_BF16:
            if key in name:
                return flops, f"table: {key} dense bf16 ({'fp16' if key == 'V100' else 'bf16'} tensor cores)"
        return (_measure_matmul(device, torch.bfloat16, 8192),
                f"measured: bf16 torch.mm 8192x8192 ({name} not in the table)")
    return _measure_matmul(device, torch.float32, 2048, rounds=8, per_round=2), \
        "measured: fp32 torch.mm 2048x2048, best of 8 rounds of 2"


def _measure_matmul(device, dtype, n, rounds=3, per_round=5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(rounds):
        _sync(device)
        started = time.perf_counter()
        for _ in range(per_round):
            torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2.0 * n**3 * per_round / best


# ---------------------------------------------------------------- the floor


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of aten.convolution_backward: each of grad_input and grad_weight costs one forward.

    torch's own formula counts grad_weight of a grouped convolution `groups` times too high (it
    treats it as a dense convolution over the batch), which made MobileNetV3's depthwise layers
    look 30x more expensive to train than to run.
    """
    forward = 2 * x_shape[0] * math.prod((x_shape if transposed else grad_out_shape)[2:]) * math.prod(w_shape)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return float(counter.get_total_flops())


def _model_flops(model, image_size) -> dict:
    """{"forward", "train" (forward + backward), "fgsm"} per image of one model, counted at batch 2."""
    n = 2
    x = torch.rand(n, *image_size)
    y = torch.arange(n) % NUM_CLASSES

    def train_step():
        F.cross_entropy(model(x), y).backward()

    model.train()
    train = _flops(train_step)
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.inference_mode():
        forward = _flops(lambda: model(x))
    # attacks.evaluate_attack's work: forward, gradient w.r.t. the input only, forward of the
    # adversarial batch. (Counted with backward() on a frozen model: FlopCounterMode's module
    # tracker cannot follow the torch.autograd.grad that attacks.py uses; the ops are the same.)
    model.requires_grad_(False)
    x_attack = x.clone().requires_grad_(True)

    def input_gradient():
        F.cross_entropy(model(x_attack), y, reduction="sum").backward()

    fgsm = _flops(input_gradient) + forward
    model.requires_grad_(True)
    return {"forward": forward / n, "train": train / n, "fgsm": fgsm / n}


def _flops_per_image(models: dict, image_size) -> dict:
    """{name: {"forward", "train", "fgsm"}} per image, counted on the CPU."""
    return {name: _model_flops(model, image_size) for name, model in models.items()}


# ---------------------------------------------------------------- reference: the usual loop


class _ReferenceDataset(torch.utils.data.Dataset):
    """As torchvision's CIFAR10: uint8 H x W x C array in memory, one PIL image per item, then the transform."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform):
        self.data, self.targets, self.transform = images_hwc, labels, transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), int(self.targets[index])


def _reference_transforms(augmentation, image_size, mean, std, train):
    from torchvision import transforms as T

    if not train:
        return T.ToTensor()  # pixel-space FGSM: the model normalises
    return T.Compose([
        T.Pad(augmentation["pad"]),
        T.RandomHorizontalFlip(augmentation["flip_p"]),
        T.RandomRotation(augmentation["rotation_degrees"]),
        T.RandomCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def _reference_loader(dataset, batch_size, workers, device, shuffle):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       pin_memory=device.type == "cuda")


class _Startup:
    """Time from the start of an epoch until its first batch is in the loop."""

    def __init__(self):
        self.seconds = None

    def wrap(self, loader):
        started = time.perf_counter()
        for i, batch in enumerate(loader):
            if i == 0:
                self.seconds = time.perf_counter() - started
            yield batch


def _reference_train_epoch(net, optimizer, loader, device, teacher=None, temperature=1.0, soft_weight=0.0,
                           startup=None):
    net.train()
    running_loss = 0.0
    for inputs, targets in (startup.wrap(loader) if startup else loader):
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        outputs = net(inputs)
        if teacher is not None:
            with torch.no_grad():
                teacher_outputs = teacher(inputs)
            soft = F.kl_div(F.log_softmax(outputs / temperature, dim=1),
                            F.softmax(teacher_outputs / temperature, dim=1),
                            reduction="batchmean") * temperature * temperature
            loss = soft_weight * soft + (1 - soft_weight) * F.cross_entropy(outputs, targets)
        else:
            loss = F.cross_entropy(outputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * inputs.size(0)
    return running_loss


def _reference_fgsm(model, loader, device, epsilon, startup=None):
    model.eval()
    correct = adv_correct = 0
    for images, labels in (startup.wrap(loader) if startup else loader):
        images, labels = images.to(device), labels.to(device)
        images.requires_grad = True
        outputs = model(images)
        loss = F.cross_entropy(outputs, labels)
        model.zero_grad()
        loss.backward()
        adversarial = (images + epsilon * images.grad.sign()).clamp(0, 1).detach()
        with torch.no_grad():
            adv_outputs = model(adversarial)
        correct += (outputs.argmax(1) == labels).sum().item()
        adv_correct += (adv_outputs.argmax(1) == labels).sum().item()
    return correct, adv_correct


# ---------------------------------------------------------------- measurements


@dataclass
class Case:
    key: str
    label: str
    task: str  # train | distill | fgsm
    model: str
    teacher: str | None = None
    pack: int = 1


def _cases(teacher, students, pack_sizes, only) -> list[Case]:
    cases = []
    if "train" in only:
        cases.append(Case(f"train:{teacher}", f"teacher train {teacher}", "train", teacher))
        cases += [Case(f"train:{s}", f"hard train {s}", "train", s) for s in students if s != teacher]
    if "distill" in only:
        for s in students:
            for pack in sorted(set(pack_sizes)):
                suffix = "" if pack == 1 else f":pack{pack}"
                label = f"distill {s} <- {teacher}" + ("" if pack == 1 else f" pack={pack}")
                cases.append(Case(f"distill:{s}{suffix}", label, "distill", s, teacher, pack))
    if "fgsm" in only:
        cases += [Case(f"fgsm:{s}", f"fgsm {s}", "fgsm", s) for s in students]
        if teacher not in students:
            cases.append(Case(f"fgsm:{teacher}", f"fgsm {teacher} (teacher)", "fgsm", teacher))
    return cases


class _Bench:
    def __init__(self, args, config, runtime):
        self.args, self.config, self.device = args, config, runtime.device
        self.training, self.augmentation = config["training"], config["augmentation"]
        # The job's arithmetic (runtime.precision / channels_last / deterministic / compile), as a job makes it.
        self.runtime = runtime
        size = args.image_size
        self.image_size = [3, size, size]
        generator = torch.Generator().manual_seed(args.seed)
        n = max(args.images, args.warmup * max(args.batch_size, args.eval_batch_size))
        images = torch.randint(0, 256, (n, *self.image_size), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
        self.mean, self.std = data.channel_stats(images)
        # ours: device-resident uint8 N x C x H x W; reference: H x W x C numpy, as CIFAR10 keeps it.
        self.images, self.labels = images.to(self.device), labels.to(self.device)
        self.images_hwc, self.labels_np = images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy()

    # models ------------------------------------------------------------
    def ours_model(self, name):
        torch.manual_seed(self.args.seed)
        model = build_model(name, NUM_CLASSES, self.mean, self.std, bn_momentum=self.training["bn_momentum"])
        return model.to(self.device)

    def ours_teacher(self, name):
        return self.ours_model(name).eval().requires_grad_(False)  # as train._load_teacher

    def reference_net(self, name):
        torch.manual_seed(self.args.seed)
        return MODELS[name](NUM_CLASSES, self.image_size[0]).to(self.device)  # the bare torchvision network

    def reference_classifier(self, name):
        torch.manual_seed(self.args.seed)
        return build_model(name, NUM_CLASSES, self.mean, self.std).to(self.device)  # normalisation inside

    # runners: (warm-up, timed epoch) per side ----------------------------
    def ours(self, case):
        a, n = self.args, self.args.images
        runtime = self.runtime
        if case.task == "fgsm":
            model = runtime.place(self.ours_model(case.model).eval())  # as the attack job places it
            bs = a.eval_batch_size

            def epoch(count):
                return evaluate_attack(model, self.images[:count], self.labels[:count], a.epsilon, bs,
                                       runtime=runtime)

            return (lambda: epoch(a.warmup * bs)), (lambda: epoch(n)), None
        from . import train

        augment = data.Augment.from_config(self.augmentation)
        generator = torch.Generator().manual_seed(a.seed)
        teacher = None
        if case.task == "distill":
            temperatures = self.config["temperatures"]
            # Packed points differ in temperature (and so in their soft targets), as a sweep's do.
            specs = [train.RunSpec("kd", case.model, a.seed, temperature=temperatures[i % len(temperatures)]
                                   if case.pack > 1 else a.temperature, soft_weight=a.soft_weight)
                     for i in range(case.pack)]
            teacher = runtime.compiled(runtime.place(self.ours_teacher(case.teacher)))  # as a distill job does
        else:
            specs = [train.RunSpec("teacher" if case.model == a.teacher else "baseline", case.model, a.seed)]
        points = [train.Point(spec, self.training, NUM_CLASSES, self.mean, self.std, runtime) for spec in specs]

        def epoch(count):
            return train.train_epoch(points, teacher, augment, self.images[:count], self.labels[:count],
                                     a.batch_size, generator, runtime)

        return (lambda: epoch(a.warmup * a.batch_size)), (lambda: epoch(n)), None

    def reference(self, case):
        a, n = self.args, self.args.images
        startup = _Startup()
        if case.task == "fgsm":
            model = self.reference_classifier(case.model)
            transform = _reference_transforms(self.augmentation, a.image_size, self.mean, self.std, train=False)
            bs = a.eval_batch_size

            def epoch(count):
                dataset = _ReferenceDataset(self.images_hwc[:count], self.labels_np[:count], transform)
                return _reference_fgsm(model, _reference_loader(dataset, bs, a.workers, self.device, False),
                                       self.device, a.epsilon, startup)

            return (lambda: epoch(a.warmup * bs)), (lambda: epoch(n)), startup
        net = self.reference_net(case.model)
        optimizer = torch.optim.Adam(net.parameters(), lr=self.training["lr"],
                                     weight_decay=self.training["weight_decay"])
        transform = _reference_transforms(self.augmentation, a.image_size, self.mean, self.std, train=True)
        teacher = self.reference_net(case.teacher).eval() if case.task == "distill" else None

        def epoch(count):
            dataset = _ReferenceDataset(self.images_hwc[:count], self.labels_np[:count], transform)
            loader = _reference_loader(dataset, a.batch_size, a.workers, self.device, True)
            return _reference_train_epoch(net, optimizer, loader, self.device, teacher, a.temperature,
                                          a.soft_weight, startup)

        return (lambda: epoch(a.warmup * a.batch_size)), (lambda: epoch(n)), startup

    def time_case(self, case, reference=None) -> tuple[dict, dict]:
        """Warm both sides up, then time `repeats` epochs of each, alternating ours / reference.

        `reference`: an earlier reference measurement to reuse (a packed row's: the usual loop trains
        the points one after another, at the point-images/s of one). Ours' images_per_s counts
        point-images: pack x images per second.
        """
        sides = {"ours": self.ours(case)}
        if reference is None:
            sides["reference"] = self.reference(case)
        for name, (warm, _, _) in sides.items():
            with contextlib.nullcontext() if name == "ours" else pytorch_defaults():
                warm()
        results = {name: {"images": self.args.images, "seconds": None, "seconds_each": []} for name in sides}
        for _ in range(self.args.repeats):
            for name, (_, timed, startup) in sides.items():
                share = _CpuShare()
                _sync(self.device)
                share.start()
                started = time.perf_counter()
                with contextlib.nullcontext() if name == "ours" else pytorch_defaults():
                    timed()
                    _sync(self.device)
                seconds = time.perf_counter() - started
                others, cpu_seconds = share.stop()
                best = results[name]
                best["seconds_each"].append(seconds)
                if best["seconds"] is None or seconds < best["seconds"]:
                    points = case.pack if name == "ours" else 1
                    best.update(seconds=seconds, images_per_s=points * self.args.images / seconds,
                                others_cpu=others, cpu_seconds=cpu_seconds)
                    if startup is not None:
                        best["loader_startup_s"] = startup.seconds
                        best["images_per_s_without_startup"] = self.args.images / max(seconds - startup.seconds, 1e-9)
        return results["ours"], results.get("reference", reference)


# ---------------------------------------------------------------- run


def _resolve(args, config):
    """Fill the defaults that come from the config or from --quick; check the numbers."""
    training = config["training"]
    sizes = QUICK if args.quick else FULL
    args.teacher = args.teacher or config["teacher"]["model"]
    args.students = args.students or list(config["students"])
    args.batch_size = args.batch_size or sizes.get("batch_size", training["batch_size"])
    args.eval_batch_size = args.eval_batch_size or sizes.get("eval_batch_size", training["eval_batch_size"])
    args.images = args.images or sizes["images"]
    args.warmup = sizes["warmup"] if args.warmup is None else args.warmup
    args.repeats = args.repeats or sizes["repeats"]
    args.temperature = config["temperatures"][0] if args.temperature is None else args.temperature
    args.soft_weight = config["staged"]["soft_weight"] if args.soft_weight is None else args.soft_weight
    args.epsilon = config["epsilons"][0] if args.epsilon is None else args.epsilon
    args.threads = config["runtime"]["threads"] if args.threads is None else args.threads
    for name in [args.teacher, *args.students]:
        if name not in MODELS:
            raise KdsweepError(f"model '{name}' is unknown; choose one of {', '.join(MODELS)}")
    for flag, value in (("--batch-size", args.batch_size), ("--eval-batch-size", args.eval_batch_size),
                        ("--images", args.images), ("--repeats", args.repeats), ("--image-size", args.image_size),
                        ("--epoch-images", args.epoch_images)):
        if value < 1:
            raise KdsweepError(f"{flag} {value} must be at least 1")
    if args.warmup < 1:
        raise KdsweepError(f"--warmup {args.warmup} must be at least 1: warm-up steps are never timed")
    if args.workers < 0:
        raise KdsweepError(f"--workers {args.workers} must be 0 or more")
    if not 0 < args.soft_weight <= 1:
        raise KdsweepError(f"--soft-weight {args.soft_weight} must lie in (0, 1]: at 0 the teacher never runs")
    if not args.temperature > 0 or not args.epsilon > 0:
        raise KdsweepError("--temperature and --epsilon must be positive")
    if any(k < 1 for k in args.pack_sizes):
        raise KdsweepError(f"--pack-sizes {args.pack_sizes} must all be at least 1")
    return args


def run(args) -> dict:
    from . import io
    from .config import load_config

    started = time.perf_counter()
    config = load_config(args.config, args.overrides)
    args = _resolve(args, config)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise KdsweepError(f"--device cuda but no GPU is visible (CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); run it on a GPU node or use --device cpu")
    runtime = Runtime.from_config({**config["runtime"], "device": args.device, "threads": args.threads})
    device = runtime.device
    load_before = list(os.getloadavg())
    machine = _machine(device)
    bench = _Bench(args, config, runtime)
    settings = {"quick": bool(args.quick), "image_size": bench.image_size, "batch_size": args.batch_size,
                "eval_batch_size": args.eval_batch_size, "images": args.images, "warmup_steps": args.warmup,
                "repeats": args.repeats, "workers": args.workers, "temperature": float(args.temperature),
                "soft_weight": float(args.soft_weight), "epsilon": float(args.epsilon),
                "epoch_images": args.epoch_images, "seed": args.seed, "teacher": args.teacher,
                "students": list(args.students), "pack_sizes": list(args.pack_sizes),
                "data": "synthetic CIFAR-shaped: uniform random uint8 pixels, 10 random labels",
                "precision": runtime.precision, "channels_last": runtime.channels_last,
                "compile": runtime.compile, "deterministic": runtime.record()["deterministic"],
                "reference_precision": REFERENCE_PRECISION if device.type == "cuda" else "fp32"}
    _print_header(machine, settings, load_before)

    peak_start, peak_source = _peak(device, args.peak_flops)
    print(f"peak      {peak_start:.3g} FLOP/s ({peak_source})", flush=True)
    names = list(dict.fromkeys([args.teacher, *args.students]))
    counts = _flops_per_image(
        {name: build_model(name, NUM_CLASSES, bench.mean, bench.std) for name in names}, bench.image_size)

    cases = _cases(args.teacher, args.students, args.pack_sizes, args.only)
    measurements, skipped, reference_flops = {}, [], {}
    for case in cases:
        if case.task == "fgsm":
            flops = counts[case.model]["fgsm"]
        elif case.task == "distill":
            # Per point-image: each point trains its student; the teacher's forward pass is shared.
            flops = counts[case.model]["train"] + counts[case.teacher]["forward"] / case.pack
        else:
            flops = counts[case.model]["train"]
        # The reference trains one point at a time: its FLOPs per image are the unpacked step's.
        reference_flops[case.key] = flops if case.task != "distill" else (
            counts[case.model]["train"] + counts[case.teacher]["forward"])
        earlier = measurements.get(f"distill:{case.model}") if case.pack > 1 else None
        reused = ({**earlier["reference"], "seconds_each": list(earlier["reference"]["seconds_each"])}
                  if earlier else None)
        ours, reference = bench.time_case(case, reused)
        ours_cpu_per_image = ours["cpu_seconds"] / (case.pack * ours["images"])
        measurements[case.key] = {
            "label": case.label, "task": case.task, "model": case.model, "teacher": case.teacher, "pack": case.pack,
            "flops_per_image": flops, "ours": ours, "reference": reference,
            "ratio": ours["images_per_s"] / reference["images_per_s"],
            "ratio_without_startup": ours["images_per_s"] / reference["images_per_s_without_startup"],
            "cpu_ratio": reference["cpu_seconds"] / reference["images"] / max(ours_cpu_per_image, 1e-12)}
        print(f"measured  {case.label}: ours {ours['images_per_s']:.1f} img/s, reference "
              f"{reference['images_per_s']:.1f} img/s (load {os.getloadavg()[0]:.2f})", flush=True)

    peak = peak_start
    if args.peak_flops is None and device.type == "cpu":
        # Other processes slow a measured peak down: measure again at the end and keep the higher.
        peak_end, _ = _peak(device, None)
        peak = max(peak_start, peak_end)
        peak_source += f"; the higher of {peak_start:.3g} (start) and {peak_end:.3g} (end)"
    for key, entry in measurements.items():
        entry["floor_seconds_per_epoch"] = entry["flops_per_image"] * args.epoch_images / peak
        entry["ours"]["peak_fraction"] = entry["flops_per_image"] * entry["ours"]["images_per_s"] / peak
        entry["reference"]["peak_fraction"] = reference_flops[key] * entry["reference"]["images_per_s"] / peak

    result = {"version": 1, "seconds": time.perf_counter() - started, "machine": machine, "settings": settings,
              "peak": {"flops_per_s": peak, "source": peak_source}, "load_before": load_before,
              "load_after": list(os.getloadavg()), "measurements": measurements, "skipped": skipped}
    print(f"\npeak      {peak:.3g} FLOP/s ({peak_source})")
    print(_ROW.format("measurement", "ours img/s", "ref img/s", "ours/ref", "excl.start", "CPU r/o", "GFLOP/img",
                      "floor s/ep", "ours %pk", "ref %pk", "others%"))
    for entry in measurements.values():
        _print_entry(entry)
    for item in skipped:
        print(f"{item['label'][:46]:<46s} skipped (see above)")
    print(f"load avg  after: {_loads(result['load_after'])}   total {result['seconds']:.0f} s")
    print("ours/ref: whole epochs of the same images, the reference's DataLoader start-up included; excl.start: "
          "without it; best of the repeats.\nCPU r/o: reference / ours CPU seconds (workers included). floor s/ep: "
          f"one epoch of {args.epoch_images} images at the peak. others%: CPU share other processes used "
          "during the best epochs.")
    if args.json:
        io.write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


_ROW = "{:<46s} {:>10s} {:>10s} {:>8s} {:>10s} {:>8s} {:>9s} {:>10s} {:>8s} {:>8s} {:>7s}"


def _loads(values):
    return " ".join(f"{x:.2f}" for x in values)


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f}"


def _print_entry(e):
    o, r = e["ours"], e["reference"]
    others = [v for v in (o["others_cpu"], r["others_cpu"]) if v is not None]
    print(_ROW.format(e["label"][:46], f"{o['images_per_s']:.1f}", f"{r['images_per_s']:.1f}", f"{e['ratio']:.2f}",
                      f"{e['ratio_without_startup']:.2f}", f"{e['cpu_ratio']:.2f}", f"{e['flops_per_image'] / 1e9:.3f}",
                      f"{e['floor_seconds_per_epoch']:.3g}", f"{100 * o['peak_fraction']:.2f}",
                      f"{100 * r['peak_fraction']:.2f}", _pct(max(others) if others else None)), flush=True)


def _print_header(machine, s, load):
    where = (f"{machine['name']} ({machine['cpu_count']} logical CPUs, torch threads {machine['torch_threads']})"
             if machine["device"] == "cpu" else machine["name"])
    print(f"kdsweep bench on {machine['device']}: {where}")
    print(f"software  torch {machine['torch']}, torchvision {machine['torchvision']}, python {machine['python']}, "
          f"kdsweep {machine['kdsweep']}")
    c, h, w = s["image_size"]
    print(f"data      {s['data']}, {c}x{h}x{w}")
    print(f"sizes     batch {s['batch_size']} (FGSM {s['eval_batch_size']}), {s['images']} images timed per "
          f"measurement and side, after {s['warmup_steps']} untimed warm-up steps; best of {s['repeats']}; "
          f"reference DataLoader workers {s['workers']}")
    print(f"distill   T={s['temperature']:g}, soft weight {s['soft_weight']:g}; FGSM eps={s['epsilon']:g}")
    print(f"ours      {s['precision']}, channels_last {s['channels_last']}, compile {s['compile']}, "
          f"deterministic {s['deterministic']}; reference {s['reference_precision']}, NCHW")
    print(f"load avg  before: {_loads(load)}", flush=True)


if __name__ == "__main__":
    main()
