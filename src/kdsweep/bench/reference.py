"""The reference: the training and FGSM loops written the usual way, the benchmark's one second implementation.

A Dataset of uint8 H x W x C images turned into PIL images one by one (as torchvision's CIFAR10
does), torchvision per-image transforms Pad -> RandomHorizontalFlip -> RandomRotation -> RandomCrop
-> ToTensor -> Normalize, a DataLoader with worker processes (shuffle, pin_memory on CUDA), the bare
torchvision network (fp32 weights, NCHW, PyTorch's default kernel settings), the teacher under
`torch.no_grad()`, Adam, `loss.item()` every step; FGSM with `loss.backward()` (parameter gradients
included) over a DataLoader of ToTensor'd test images. The loss itself is the package's
(`methods.kd.kd_loss`): the reference differs in how the data and the steps are run, not in what is
computed.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..methods.kd import kd_loss


class ReferenceDataset(torch.utils.data.Dataset):
    """As torchvision's CIFAR10: uint8 H x W x C array in memory, one PIL image per item, then the transform."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform):
        self.data, self.targets, self.transform = images_hwc, labels, transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), int(self.targets[index])


def transforms(augmentation, image_size, mean, std, train):
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


def loader(dataset, batch_size, workers, device, shuffle):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       pin_memory=device.type == "cuda")


def train_epoch(net, optimizer, loader, device, teacher=None, temperature=1.0, soft_weight=0.0,
                           startup=None):
    net.train()
    running_loss = 0.0
    for inputs, targets in (startup.wrap(loader) if startup else loader):
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        outputs = net(inputs)
        teacher_outputs = None
        if teacher is not None:
            with torch.no_grad():
                teacher_outputs = teacher(inputs)
        loss = kd_loss(outputs, teacher_outputs, targets, temperature, soft_weight if teacher is not None else 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * inputs.size(0)
    return running_loss


def fgsm(model, loader, device, epsilon, startup=None):
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


class Startup:
    """Time from the start of an epoch until its first batch is in the loop."""

    def __init__(self):
        self.seconds = None

    def wrap(self, loader):
        started = time.perf_counter()
        for i, batch in enumerate(loader):
            if i == 0:
                self.seconds = time.perf_counter() - started
            yield batch


