"""Curriculum Temperature KD (Li et al., AAAI 2023, "Curriculum Temperature for Knowledge Distillation"),
with the global temperature of the authors' code (zhengli97/CTKD).

One learnable temperature for the whole student, T = t_start + t_end * sigmoid(theta) (theta starts at 1),
trained by the point's optimiser through a gradient-reversal layer: theta's gradient is multiplied by
lambda, which the authors' cosine schedule takes from lambda_max to lambda_min over lambda_epochs epochs
(epochs counted from 1) and holds there,

    lambda(e) = lambda_min + (lambda_max - lambda_min) * (1 + cos(pi * min(e, lambda_epochs) / lambda_epochs)) / 2,

so with lambda < 0 the temperature ascends the distillation loss (it makes the task harder) while the
student descends it, the harder the further training goes. The loss is KD's at the learned T:

    L = (1 - w) * CE(student, labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T)).

The authors' CIFAR-100 settings: w 0.9 (their -r 0.1 -a 0.9), t_start 1, t_end 20, lambda from 0 to -1
over 10 epochs. The learned temperature after each epoch goes to history.csv, TensorBoard and
metrics.json; it is in the checkpoint (theta, and its optimiser state), so a resumed run continues the
same trajectory.
"""

import functools
import math

from .base import Method, Param, soft_loss


@functools.cache
def temperature_module():
    """The class of a point's learnable global temperature (built on first use: torch is imported then)."""
    import torch

    class Reversal(torch.autograd.Function):
        """Identity forward; the gradient times `strength` backward (Ganin & Lempitsky 2015, as CTKD's)."""

        @staticmethod
        def forward(ctx, x, strength):
            ctx.strength = strength
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return ctx.strength * grad, None

    class Temperature(torch.nn.Module):
        """T = t_start + t_end * sigmoid(theta), theta from 1, its gradient reversed by `strength`."""

        def __init__(self, t_start: float, t_end: float):
            super().__init__()
            self.theta = torch.nn.Parameter(torch.ones(1))
            self.t_start, self.t_end = t_start, t_end

        def forward(self, strength: float):
            return self.t_start + self.t_end * torch.sigmoid(Reversal.apply(self.theta, strength))

        def value(self) -> float:
            with torch.no_grad():
                return float(self.t_start + self.t_end * torch.sigmoid(self.theta))

    return Temperature


def reversal_strength(epoch: int, hparams: dict) -> float:
    """lambda at an epoch (from 1): the cosine schedule of the module docstring."""
    loops = hparams["lambda_epochs"]
    high, low = float(hparams["lambda_max"]), float(hparams["lambda_min"])
    return low + (high - low) * (math.cos(math.pi * min(max(epoch, 0), loops) / loops) + 1.0) / 2.0


class CTKD(Method):
    def make_state(self, hparams):
        return temperature_module()(float(hparams["t_start"]), float(hparams["t_end"]))

    def loss(self, student, teacher, labels, hparams, progress, state=None):
        import torch.nn.functional as F

        soft_weight = float(hparams["soft_weight"])
        hard = F.cross_entropy(student, labels)
        soft = None
        if soft_weight > 0:
            temperature = state(reversal_strength(progress.epoch, hparams)).to(student.dtype)
            # the teacher's softened targets depend on the learned T too: its logits (made without autograd)
            # are copied into a tensor autograd can keep for T's gradient
            soft = soft_loss(student, teacher.clone(), temperature).reshape(())
        return {"hard": (1 - soft_weight, hard), "soft": (soft_weight, soft)}

    def epoch_record(self, state):
        return {"temperature": state.value()}

    def term_names(self, hparams):
        return ("hard", "soft")


METHOD = CTKD(
    name="ctkd",
    title="Curriculum Temperature KD (Li et al., AAAI 2023)",
    params=(
        Param("soft_weight", "soft", 0.9, minimum=0, maximum=1,
              description="w: weight of the soft term at the learned temperature; 1 - w is on the labels"),
        Param("t_start", "Tstart", 1.0, minimum=0.001, maximum=1000, description="the lowest temperature"),
        Param("t_end", "Tend", 20.0, minimum=0, maximum=1000,
              description="the span above t_start: T = t_start + t_end * sigmoid(theta)"),
        Param("lambda_max", "lmax", 0.0, minimum=-100, maximum=100,
              description="the gradient reversal's strength at epoch 1"),
        Param("lambda_min", "lmin", -1.0, minimum=-100, maximum=100,
              description="its strength from lambda_epochs on (negative: the temperature ascends the loss)"),
        Param("lambda_epochs", "lep", 10, minimum=1, maximum=10000, integer=True,
              description="epochs of the cosine schedule from lambda_max to lambda_min"),
    ),
    axes=("soft_weight", "t_end"),
    uses_teacher=lambda hparams: hparams["soft_weight"] > 0,
)
