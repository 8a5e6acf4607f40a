"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention"), as the
authors' code (szagoruyko/attention-transfer, utils.py and cifar.py).

The attention map of a feature map A (N, C, H, W) is q = mean over the channels of |A|^p, flattened over
the H x W positions and divided by its L2 norm, image by image. Over the tapped stage pairs j:

    L = CE(student, labels) + beta * sum_j mean over images and positions of (q_s^j - q_t^j)^2

That is the authors' code: `at(x) = F.normalize(x.pow(2).mean(1).view(x.size(0), -1))`, `at_loss(x, y) =
(at(x) - at(y)).pow(2).mean()` per group, and `+ opt.beta * sum(loss_groups)` on the cross-entropy (their
`distillation` at its default alpha 0), with `--beta 1e+3` in their README's CIFAR commands; mdistiller's AT
(megvii-research/mdistiller, mdistiller/distillers/AT.py; mdistiller/engine/cfg.py: AT.P 2,
AT.LOSS.CE_WEIGHT 1, AT.LOSS.FEAT_WEIGHT 1000) computes the same. The paper's eq. 2 writes beta/2 times the
p-norm of the difference, with beta = 1000 divided by the map's number of elements and the batch size;
its code has no /2 and the mean of squares, which is what this module computes. beta 1000 is the
reference study's citation. |A|^p is the paper's: the authors' x.pow(2) is the same at p = 2.

Taps: the last `stages` stage outputs of each network (kdsweep.features), paired from the deepest: the
authors' CIFAR WRNs have three groups (g0, g1, g2), mdistiller's CIFAR ResNets three stage outputs
(feats[1:]). Where a pair's sizes differ, the larger map is average-pooled to the smaller's size (adaptive
pooling, as mdistiller's single_stage_at_loss). No trainable state. A 1 x 1 map's attention is 1 after
the normalisation, so its term is 0 (the 8 x 8 digits reach 1 x 1 at their last stage).
"""

from .base import FeatureMethod, Param, stages_param


def attention(feature, p):
    """q / ||q||_2 with q = mean over channels of |A|^p, per image, flattened over the positions."""
    import torch.nn.functional as F

    return F.normalize(feature.abs().pow(p).mean(1).flatten(1), dim=1)


def pooled_to(feature, size):
    """The map average-pooled (adaptively) to size (H, W); the map itself at its own size."""
    import torch.nn.functional as F

    return feature if tuple(feature.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(feature, size)


def transfer(student_maps, teacher_maps, p):
    """sum over the pairs of mean((q_s - q_t)^2), the larger map of a pair pooled to the smaller's size."""
    loss = 0.0
    for student, teacher in zip(student_maps, teacher_maps, strict=True):
        size = tuple(min(a, b) for a, b in zip(student.shape[-2:], teacher.shape[-2:]))
        difference = attention(pooled_to(student, size), p) - attention(pooled_to(teacher.detach(), size), p)
        loss = loss + difference.pow(2).mean()
    return loss


class AT(FeatureMethod):
    def maps_loss(self, maps, hparams, state):
        return transfer(*maps, float(hparams["p"]))


METHOD = AT(
    name="at", title="Attention transfer (Zagoruyko & Komodakis, ICLR 2017)",
    params=(
        Param("beta", "b", 1000.0, minimum=0, maximum=1e6,
              description="weight of the attention term (summed over the tapped stages); CE weighs 1"),
        Param("p", "p", 2.0, minimum=0, exclusive_minimum=True, maximum=16,
              description="the attention map's exponent: q = mean over channels of |A|^p"),
        stages_param("how many of each network's stage outputs, the deepest, are paired"),
    ),
    axes=("beta", "stages"),
    terms=("hard", "at"),
    weight="beta",
)
