"""Timing both sides of a measurement: ours (the package's own training and attack steps) and the reference."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import dataclass

import torch

from .. import sources, split, train
from ..attacks.evaluate import evaluate_attack
from ..augment import Augment
from ..models import build_model, build_network
from ..plan import Run
from ..runtime import pytorch_defaults
from . import reference
from .floor import sync

NUM_CLASSES = 10  # CIFAR-10 shaped synthetic data


class CpuShare:
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
        return busy / os.sysconf("SC_CLK_TCK"), CpuShare._own(), time.monotonic()

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



@dataclass
class Case:
    key: str
    label: str
    task: str  # train | distill | fgsm
    model: str
    teacher: str | None = None
    pack: int = 1


def cases(teacher, students, pack_sizes, only) -> list[Case]:
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


class Bench:
    """Both sides of every measurement on one set of synthetic CIFAR-shaped images."""

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
        self.mean, self.std = split.channel_stats(images)
        # ours: device-resident uint8 N x C x H x W; reference: H x W x C numpy, as CIFAR10 keeps it.
        self.images, self.labels = images.to(self.device), labels.to(self.device)
        self.images_hwc, self.labels_np = images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy()

    # models ------------------------------------------------------------
    def ours_model(self, name):
        torch.manual_seed(self.args.seed)
        model = build_model(name, NUM_CLASSES, self.mean, self.std, bn_momentum=self.training["bn_momentum"],
                            image_size=self.image_size[1])
        return model.to(self.device)

    def ours_teacher(self, name):
        return self.ours_model(name).eval().requires_grad_(False)  # as train._load_teacher

    def reference_net(self, name):
        torch.manual_seed(self.args.seed)
        # the bare torchvision network
        return build_network(name, NUM_CLASSES, self.image_size[0], self.image_size[1]).to(self.device)

    def reference_classifier(self, name):
        torch.manual_seed(self.args.seed)
        # normalisation inside
        return build_model(name, NUM_CLASSES, self.mean, self.std, image_size=self.image_size[1]).to(self.device)

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
        augment = Augment.from_config(self.augmentation)
        generator = torch.Generator().manual_seed(a.seed)
        teacher = None
        if case.task == "distill":
            temperatures = self.config["temperatures"]
            # Packed points differ in temperature (and so in their soft targets), as a sweep's do.
            runs = [Run.distilled_run("kd", case.model, a.seed, "kd", {
                        "temperature": temperatures[i % len(temperatures)] if case.pack > 1 else a.temperature,
                        "soft_weight": a.soft_weight}) for i in range(case.pack)]
            teacher = runtime.compiled(runtime.place(self.ours_teacher(case.teacher)))  # as a distill job does
        else:
            runs = [Run("teacher" if case.model == a.teacher else "baseline", case.model, a.seed)]
        points = [train.Point(run, self.training, NUM_CLASSES, self.mean, self.std, runtime) for run in runs]

        def epoch(count):
            return train.train_epoch(points, teacher, sources.InMemory(augment, self.images[:count],
                                                                       self.labels[:count], a.batch_size),
                                     generator, runtime)

        return (lambda: epoch(a.warmup * a.batch_size)), (lambda: epoch(n)), None

    def reference_side(self, case):
        a, n = self.args, self.args.images
        startup = reference.Startup()
        if case.task == "fgsm":
            model = self.reference_classifier(case.model)
            transform = reference.transforms(self.augmentation, a.image_size, self.mean, self.std, train=False)
            bs = a.eval_batch_size

            def epoch(count):
                dataset = reference.ReferenceDataset(self.images_hwc[:count], self.labels_np[:count], transform)
                return reference.fgsm(model, reference.loader(dataset, bs, a.workers, self.device, False),
                                       self.device, a.epsilon, startup)

            return (lambda: epoch(a.warmup * bs)), (lambda: epoch(n)), startup
        net = self.reference_net(case.model)
        optimizer = torch.optim.Adam(net.parameters(), lr=self.training["lr"],
                                     weight_decay=self.training["weight_decay"])
        transform = reference.transforms(self.augmentation, a.image_size, self.mean, self.std, train=True)
        teacher = self.reference_net(case.teacher).eval() if case.task == "distill" else None

        def epoch(count):
            dataset = reference.ReferenceDataset(self.images_hwc[:count], self.labels_np[:count], transform)
            loader = reference.loader(dataset, a.batch_size, a.workers, self.device, True)
            return reference.train_epoch(net, optimizer, loader, self.device, teacher, a.temperature,
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
            sides["reference"] = self.reference_side(case)
        for name, (warm, _, _) in sides.items():
            with contextlib.nullcontext() if name == "ours" else pytorch_defaults():
                warm()
        results = {name: {"images": self.args.images, "seconds": None, "seconds_each": []} for name in sides}
        for _ in range(self.args.repeats):
            for name, (_, timed, startup) in sides.items():
                share = CpuShare()
                sync(self.device)
                share.start()
                started = time.perf_counter()
                with contextlib.nullcontext() if name == "ours" else pytorch_defaults():
                    timed()
                    sync(self.device)
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
