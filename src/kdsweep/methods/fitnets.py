"""FitNets (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets"), as mdistiller's FitNet
(megvii-research/mdistiller, mdistiller/distillers/FitNet.py and _common.py's ConvReg).

A regressor maps the student's guided layer onto the teacher's hint layer, and the student learns to
match it beside the labels:

    L = CE(student, labels) + hint_weight * MSE(regressor(F_s), F_t)

the MSE a mean over images, channels and positions. mdistiller's CIFAR settings (mdistiller/engine/cfg.py:
FITNET.LOSS.CE_WEIGHT 1, FEAT_WEIGHT 100, HINT_LAYER 2; HobbitLong/RepDistiller's
scripts/run_cifar_distill.sh: `--distill hint -a 0 -b 100`, train_student.py's --hint_layer 2).

Taps: one stage output of each network, the `hint_stage`-th from the deepest. mdistiller's HINT_LAYER 2
indexes feats = [stem, stage 1, stage 2, stage 3] of its CIFAR ResNets and WRNs: the second stage output
from the deepest, hence the default 2.

The regressor, the point's trainable state (trained by its optimiser, saved in its checkpoint and resumed
with it), is mdistiller's ConvReg chosen by the two maps' heights: the student's twice the teacher's, a
3 x 3 convolution of stride 2; half of it, a 4 x 4 transposed convolution of stride 2; otherwise, where the
student's is at least the teacher's, a convolution of kernel (1 + H_s - H_t, 1 + W_s - W_t) (1 x 1 at equal
sizes); each followed by BatchNorm and ReLU. Where ConvReg has no case (the teacher's map larger than the
student's but not twice it), the teacher's map is average-pooled (adaptively) to the student's size and
the 1 x 1 case applies. The ReLU is mdistiller's (ConvReg's use_relu default): it matches teachers whose
stage outputs are rectified (ResNets); a teacher whose stage outputs go negative (MobileNet's linear
bottlenecks) is matched on their positive part only.

Two stages or one: Romero et al. first train the student up to its guided layer on the hint alone, then
the whole student with KD. mdistiller and RepDistiller (whose --init_epochs pre-training is for AB, FT and
FSP, not for the hint) train the hint and the cross-entropy jointly from the first step, and so does this
module: a point is one training run under the study's schedule and early stopping, like every other
method's, so the methods are compared under one protocol; a first stage would need an epoch budget, an
optimiser and a stopping rule of its own outside the sweep's.
"""

import functools

from .base import FeatureMethod, Param


@functools.cache
def regressor_module():
    """The class of a point's regressor (built on first use: torch is imported then)."""
    import torch
    import torch.nn.functional as F

    class Regressor(torch.nn.Module):
        """mdistiller's ConvReg from a student map of shape (C, H, W) onto a teacher map's (module docstring)."""

        def __init__(self, student_shape, teacher_shape):
            super().__init__()
            (s_c, s_h, s_w), (t_c, t_h, t_w) = student_shape, teacher_shape
            # where ConvReg has no case, the teacher's map is pooled to the student's size: the target's size
            self.target_size = (t_h, t_w) if s_h == 2 * t_h or 2 * s_h == t_h or s_h >= t_h else (s_h, s_w)
            if s_h == 2 * t_h:
                self.conv = torch.nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
            elif 2 * s_h == t_h:
                self.conv = torch.nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
            elif s_h >= t_h:
                self.conv = torch.nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
            else:
                self.conv = torch.nn.Conv2d(s_c, t_c, kernel_size=1)
            self.bn = torch.nn.BatchNorm2d(t_c)

        def forward(self, student):
            return F.relu(self.bn(self.conv(student)))

        def target(self, teacher):
            """The teacher's map the regressor's output is matched to."""
            if tuple(teacher.shape[-2:]) == self.target_size:
                return teacher
            return F.adaptive_avg_pool2d(teacher, self.target_size)

    return Regressor


class FitNets(FeatureMethod):
    def taps(self, hparams, count):
        stage = int(hparams["hint_stage"])
        if stage > count:
            return f"hint_stage={stage} needs {stage}; set methods.{self.name}.hint_stage to at most {count}"
        return [count - stage]

    def make_state(self, hparams, shapes=None):
        if shapes is None:
            return None  # hint_weight 0: no hint, no regressor
        return regressor_module()(shapes.student[0], shapes.teacher[0])

    def maps_loss(self, maps, hparams, state):
        import torch.nn.functional as F

        (student_map,), (teacher_map,) = maps
        return F.mse_loss(state(student_map), state.target(teacher_map.detach()))


METHOD = FitNets(
    name="fitnets", title="FitNets (Romero et al., ICLR 2015)",
    params=(
        Param("hint_weight", "hint", 100.0, minimum=0, maximum=1e6,
              description="weight of the hint: the MSE between the regressed student map and the teacher's"),
        Param("hint_stage", "stage", 2, minimum=1, maximum=16, integer=True,
              description="the stage output hinted, counted from each network's deepest (1)"),
    ),
    axes=("hint_weight", "hint_stage"),
    terms=("hard", "hint"),
    weight="hint_weight",
)
