"""What `train.train_epoch` iterates: an epoch's training batches, from memory or streamed from disk.

A source turns the job's data generator (its state is in every checkpoint, kdsweep.checkpoint) into
one epoch of batches: every draw of the epoch comes from it, in a fixed order, so that a resumed run
continues the very stream an uninterrupted one would have seen.

- `InMemory` (CIFAR, digits: the whole split on the device): the epoch's permutation, then every
  image's augmentation parameters (kdsweep.augment), drawn up front from the generator (the same draws
  on any device) and moved to the device in one asynchronous copy; each batch is then indexed and
  augmented on the device without waiting for the host. This is the loop the package always had,
  batch for batch and bit for bit.
- `Streamed` (an imagefolder dataset: kdsweep.streaming): the epoch's permutation, then one epoch seed,
  drawn from the generator; DataLoader workers decode each batch's files and draw each image's crop and
  flip from (epoch seed, image index) alone. Memory holds the prefetched batches, not the dataset.

Batches: `epoch_batches` cuts an epoch into batches of training.batch_size, the last the rest; with
several processes (kdsweep.distributed) each process takes a contiguous share of every batch
(`Processes.share`), so that the processes together see exactly the one-process run's batches.
A `Batch` says what share of its global batch it is: its loss is weighted so that the processes'
averaged gradients are the gradient of the whole batch's mean loss, whatever their shares' sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .runtime import to_device


def epoch_batches(n: int, batch_size: int, processes: int = 1) -> list[tuple[int, int]]:
    """(start, end) of an epoch's batches of n images: batch_size each, the last the rest. A last batch of
    fewer images than there are processes (one image, for one process: BatchNorm cannot train on a batch
    of one) joins the one before it, so that every process has an image of every batch."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < max(2, processes):
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


@dataclass
class Batch:
    """One process's share of one training batch, on the device."""

    images: torch.Tensor  # float [0, 1], in the job's memory layout
    labels: torch.Tensor
    offset: int  # where the share starts in the whole batch
    total: int  # images in the whole batch (all processes)
    processes: int = 1

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def weight(self) -> float:
        """The factor of this share's mean loss whose average over the processes (DDP's gradient average) is
        the whole batch's mean loss: processes x share / whole batch (1 for one process)."""
        return self.processes * len(self.labels) / self.total


class InMemory:
    """An in-memory split's epochs (module docstring): uint8 images N x C x H x W and labels on the device."""

    def __init__(self, augment, images: torch.Tensor, labels: torch.Tensor, batch_size: int):
        self.augment, self.images, self.labels, self.batch_size = augment, images, labels, batch_size

    def __len__(self) -> int:
        return len(self.labels)

    def epoch(self, generator: torch.Generator, runtime, processes=None):
        n = len(self.labels)
        device = self.images.device
        order = to_device(torch.randperm(n, generator=generator), device)
        draws = self.augment.sample(n, generator).to(device)
        world = processes.world if processes is not None else 1
        for start, end in epoch_batches(n, self.batch_size, world):
            low, high = processes.share(start, end) if processes is not None else (start, end)
            index = order[low:high]
            images = runtime.layout(self.augment.apply(self.images[index], draws[low:high]))
            yield Batch(images, self.labels[index], low - start, end - start, world)


class Streamed:
    """A split on disk's epochs (module docstring): kdsweep.split.Files, decoded by DataLoader workers
    through the imagefolder pipeline's training transform."""

    def __init__(self, files, pipeline, batch_size: int, workers: int, device):
        from .streaming import TrainImages, collate_training, loader

        self.files, self.batch_size, self.device = files, batch_size, torch.device(device)
        self.keys = _EpochKeys()
        # workers kept from epoch to epoch (persistent): their start-up (fork, imports) is paid once per job
        self.loader = loader(TrainImages(files.listing, pipeline), self.keys, workers=workers,
                             collate=collate_training, pin=self.device.type == "cuda", persistent=True)

    def __len__(self) -> int:
        return len(self.files)

    def epoch(self, generator: torch.Generator, runtime, processes=None):
        n = len(self.files)
        order = torch.randperm(n, generator=generator)
        # one draw more than the permutation: every image's crop and flip follow from it (streaming.image_seed)
        epoch_seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))
        world = processes.world if processes is not None else 1
        shares = []
        for start, end in epoch_batches(n, self.batch_size, world):
            low, high = processes.share(start, end) if processes is not None else (start, end)
            shares.append((low, high, low - start, end - start))
        self.keys.set(order, epoch_seed, [(low, high) for low, high, _, _ in shares])
        for (_, _, offset, total), (images, labels) in zip(shares, self.loader):
            images = runtime.pixels(images.to(self.device, non_blocking=True))
            yield Batch(images, labels.to(self.device, non_blocking=True), offset, total, world)


class _EpochKeys:
    """The DataLoader's batch sampler: the current epoch's keys (index, epoch seed), batch by batch, made as
    the loader asks for them (an epoch of ImageNet's is 1.28 million). Set per epoch, so that the loader and
    its persistent workers live through the whole job."""

    def __init__(self):
        self.order, self.seed, self.bounds = torch.empty(0, dtype=torch.int64), 0, []

    def set(self, order: torch.Tensor, seed: int, bounds: list):
        self.order, self.seed, self.bounds = order, seed, bounds

    def __iter__(self):
        order, seed = self.order, self.seed
        for low, high in list(self.bounds):
            yield [(index, seed) for index in order[low:high].tolist()]

    def __len__(self) -> int:
        return len(self.bounds)


def for_split(split, config: dict, runtime, processes=None):
    """The batch source of a job's training split: InMemory for a split in memory, Streamed for one of
    files (an imagefolder dataset's, with its pipeline and runtime.loader_workers)."""
    from .split import Files

    if isinstance(split, Files):
        from .streaming import Pipeline, workers

        world = processes.local_world if processes is not None else 1
        return Streamed(split, Pipeline.from_config(config["imagefolder"]), config["training"]["batch_size"],
                        workers(config["runtime"]["loader_workers"], world), runtime.device)
    from .augment import Augment

    return InMemory(Augment.from_config(config["augmentation"]), split.images, split.labels,
                    config["training"]["batch_size"])
