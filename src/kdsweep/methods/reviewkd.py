"""ReviewKD (Chen et al., CVPR 2021, "Distilling Knowledge via Knowledge Review"), as the authors' CIFAR-100
code (dvlab-research/ReviewKD, CIFAR-100/model/reviewkd.py and train.py) and mdistiller's ReviewKD
(megvii-research/mdistiller, mdistiller/distillers/ReviewKD.py).

The student's stage outputs are reviewed from the deepest to the shallowest: attention-based fusion (ABF)
turns each into a map of the teacher's stage output at the same depth, fusing it with the fused map from
the stage below, and a hierarchical context loss (HCL) compares each with the teacher's:

    L = CE(student, labels) + review_weight * min(epoch / warmup_epochs, 1) * sum_j HCL(R_j, T_j)

- Taps: the last `stages` stage outputs of each network (kdsweep.features), and after them its pooled
  feature (the deepest map averaged over its positions, as a 1 x 1 map): the authors' CIFAR ResNets give
  three stage outputs and the pooled feature.
- ABF (per level, from the pooled feature up): x = BN(conv1x1(F_s)) to mid channels (min(512, the pooled
  feature's channels)); below the deepest level it is fused with the level below, y, resized (nearest) to
  x's size: [a, b] = sigmoid(conv1x1([x, y])), x = a * x + b * y; x resized (nearest) to the teacher's
  size at this level is passed up as the next level's y, and R = BN(conv3x3(x)) to the teacher's channels.
  Sizes and channels of any pair are matched this way: the authors' `shapes` (the student's sizes) and
  `out_shapes` (the teacher's) are read from the probe pass instead of a table per architecture.
- HCL(R, T) = (MSE(R, T) + sum over l in (4, 2, 1), l < H, of 2^-k MSE(pool_l(R), pool_l(T))) / (1 + sum
  of the 2^-k), k = 1, 2, 3 counting the levels used, pool_l an adaptive average pool to l x l.

Defaults: review_weight 5 (the authors' CIFAR-100/script/reviewKD.sh: --kd-loss-weight 5.0 for the
ResNet32x4 -> ResNet8x4, WRN and ShuffleNetV1 pairs; mdistiller's configs/cifar100/reviewkd.yaml:
REVIEWKD_WEIGHT 5.0), warmup_epochs 20 (--kd-warm-up 20; REVIEWKD.WARMUP_EPOCHS 20), the CE weight 1, three
stages. Epochs count from 1, as mdistiller's (the authors' train.py counts from 0: its first epoch has no
review term). The teacher's maps are its stage outputs, after their activation: the authors take the
teacher's pre-activation features (preact=True), which only their own model definitions expose. The ABF
modules are the point's trainable state, saved in its checkpoint and resumed with it.

Why ReviewKD rather than CRD: CRD's contrastive loss keeps a memory bank of an embedding per training
image for student and teacher (2 x 45,000 x 128 floats on CIFAR-10's training split, in every point's state
and checkpoint, rewritten each epoch), needs each image's dataset index and draws 16,384 negatives per
image from an RNG stream of its own (a 300 x 16,385 x 128 gather per bank per step at batch 300), and on
400 digits it would draw its negatives from 360 images. ReviewKD's loss, like every other method's here,
is a function of the batch alone, and its state is its adapters: a point in a pack shares nothing with
the others but the batch and the teacher's pass, and trains as alone.
"""

import functools

from .base import FeatureMethod, Param, stages_param, warm_up, warmup_param

LEVELS = (4, 2, 1)  # HCL's pooled sizes


@functools.cache
def review_module():
    """The class of a point's ABF modules (built on first use: torch is imported then)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ABF(nn.Module):
        """Attention-based fusion of one level (the authors' ABF, their initialisation)."""

        def __init__(self, in_channels, mid_channels, out_channels, fuse):
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
                                       nn.BatchNorm2d(mid_channels))
            self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
                                       nn.BatchNorm2d(out_channels))
            self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
            nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
            nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

        def forward(self, x, below, out_size):
            x = self.conv1(x)
            if self.att_conv is not None:
                below = F.interpolate(below, size=tuple(x.shape[-2:]), mode="nearest")
                weights = self.att_conv(torch.cat([x, below], dim=1))
                x = x * weights[:, :1] + below * weights[:, 1:]
            if tuple(x.shape[-2:]) != tuple(out_size):
                x = F.interpolate(x, size=tuple(out_size), mode="nearest")
            return self.conv2(x), x

    class Review(nn.Module):
        """The ABF of every level, deepest (the pooled feature) first; the teacher's sizes to map onto."""

        def __init__(self, student_shapes, teacher_shapes):
            super().__init__()
            student_shapes = (*student_shapes, (student_shapes[-1][0], 1, 1))  # the pooled feature
            teacher_shapes = (*teacher_shapes, (teacher_shapes[-1][0], 1, 1))
            mid = min(512, student_shapes[-1][0])
            self.out_sizes = [tuple(shape[1:]) for shape in teacher_shapes][::-1]
            self.abfs = nn.ModuleList(ABF(s[0], mid, t[0], fuse=i < len(student_shapes) - 1)
                                      for i, (s, t) in enumerate(zip(student_shapes, teacher_shapes)))[::-1]

        def forward(self, maps):
            """R_j for the student's maps (shallowest first), shallowest first."""
            maps = [*maps, pooled(maps[-1])][::-1]
            results, below = [], None
            for x, abf, out_size in zip(maps, self.abfs, self.out_sizes):
                out, below = abf(x, below, out_size)
                results.insert(0, out)
            return results

    return Review


def pooled(feature):
    """The pooled feature: the map averaged over its positions, kept as a 1 x 1 map."""
    return feature.mean(dim=(-2, -1), keepdim=True)


def hcl(students, teachers):
    """The hierarchical context loss, summed over the levels (module docstring)."""
    import torch.nn.functional as F

    total = 0.0
    for student, teacher in zip(students, teachers, strict=True):
        loss, weight, weights = F.mse_loss(student, teacher), 1.0, 1.0
        for size in LEVELS:
            if size >= student.shape[-2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, size),
                                              F.adaptive_avg_pool2d(teacher, size))
            weights += weight
        total = total + loss / weights
    return total


class ReviewKD(FeatureMethod):
    def make_state(self, hparams, shapes=None):
        if shapes is None:
            return None  # review_weight 0: no review, no adapters
        return review_module()(shapes.student, shapes.teacher)

    def maps_weight(self, hparams, progress):
        return warm_up(hparams, progress) * super().maps_weight(hparams, progress)

    def maps_loss(self, maps, hparams, state):
        student_maps, teacher_maps = maps
        teachers = [*(t.detach() for t in teacher_maps), pooled(teacher_maps[-1].detach())]
        return hcl(state(list(student_maps)), teachers)


METHOD = ReviewKD(
    name="reviewkd", title="ReviewKD (Chen et al., CVPR 2021)",
    params=(
        Param("review_weight", "rev", 5.0, minimum=0, maximum=1e6,
              description="weight of the hierarchical context loss between the fused student maps and the teacher's"),
        warmup_param("epochs over which the review term grows linearly to its full weight"),
        stages_param("how many of each network's stage outputs, the deepest, are reviewed (and the pooled feature)"),
    ),
    axes=("review_weight", "stages"),
    terms=("hard", "review"),
    weight="review_weight",
)
