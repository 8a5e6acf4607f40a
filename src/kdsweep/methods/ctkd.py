"""Curriculum Temperature KD (Li et al., AAAI 2023, "Curriculum Temperature for Knowledge Distillation"),
with the global temperature of the authors' code (zhengli97/CTKD).

One learnable temperature for the whole student, T = t_start + t_end * sigmoid(theta) (theta starts at 1),
trained through a gradient-reversal layer: theta's gradient is multiplied by lambda, which the authors'
cosine schedule takes from lambda_max to lambda_min over lambda_epochs epochs (epochs counted from 1) and
holds there,

    lambda(e) = lambda_min + (lambda_max - lambda_min) * (1 + cos(pi * min(e, lambda_epochs) / lambda_epochs)) / 2,

so with lambda < 0 the temperature ascends the distillation loss (it makes the task harder) while the
student descends it, the harder the further training goes. The loss is KD's at the learned T:

    L = (1 - w) * CE(student, labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T)).

The temperature's optimiser is the authors' SGD, not the study's: their train_student.py trains the
student and the temperature with one SGD (momentum 0.9, weight decay 5e-4, lr 0.05), and SGD's step is
proportional to the gradient, so lambda sets how fast the temperature moves. Adam, which trains the
student here, divides each step by the gradient's running size, which cancels a constant lambda: the
temperature would move at Adam's pace whatever lambda is (tests/test_methods.py shows that lambda changes
the learned temperature here). So the student keeps the study's optimiser and schedule, and theta has an
SGD of its own (t_lr, t_momentum, t_weight_decay), whose learning rate is t_lr times the student's schedule
factor (the current learning rate over training.lr), as the authors' step decay scales both. At w = 0 the
temperature is unused and the loss is the cross-entropy alone, the hard-target baseline's (kdsweep.plan
trains no such point).

Defaults, as the authors' released code (zhengli97/CTKD):
- soft_weight 0.9 (and 1 - w = 0.1 on the labels): train_student.py, `-a/--alpha` 0.9 and `-r/--gamma` 0.1,
  as scripts/run_cifar_distill.sh passes them (`-r 0.1 -a 0.9`);
- t_start 1, t_end 20: train_student.py, `--t_start` 1 and `--t_end` 20; the temperature module, theta
  from 1 and its gradient reversal: models/temp_global.py (Global_T, GradientReversalFunction);
  T = t_start + t_end * sigmoid(theta): helper/loops.py, train_distill;
- lambda_max 0, lambda_min -1, lambda_epochs 10 and the cosine schedule: scripts/run_cifar_distill.sh
  (`--cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10`) and train_student.py's CosineDecay;
- t_lr 0.05, t_momentum 0.9, t_weight_decay 5e-4: scripts/run_cifar_distill.sh (`--learning_rate 0.05`)
  and train_student.py (`--momentum` 0.9, `--weight_decay` 5e-4, `optim.SGD(trainable_list.parameters()`,
  the temperature among them; it sets 0.01 for MobileNetV2 and ShuffleNet students).
The learned temperature after each epoch goes to history.csv, TensorBoard and metrics.json; it is in the
checkpoint (theta and its SGD's momentum), so a resumed run continues the same trajectory.
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
        """T = t_start + t_end * sigmoid(theta), theta from 1, its gradient reversed by `strength`; `momentum`
        is its SGD's momentum buffer (a buffer of the module, so that the checkpoint holds it)."""

        def __init__(self, t_start: float, t_end: float):
            super().__init__()
            self.theta = torch.nn.Parameter(torch.ones(1))
            self.register_buffer("momentum", torch.zeros(1))
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

    def state_optimizer(self, state, hparams):
        """The authors' SGD for theta. torch's SGD updates a momentum buffer it finds in its state in place (and
        starts one at the first gradient, which a zero buffer gives too: 0.9 * 0 + g), so it is handed the
        module's buffer, which the checkpoint saves and a resumed run loads back in place."""
        import torch

        optimizer = torch.optim.SGD(state.parameters(), lr=float(hparams["t_lr"]), momentum=float(hparams["t_momentum"]),
                                    weight_decay=float(hparams["t_weight_decay"]))
        optimizer.state[state.theta]["momentum_buffer"] = state.momentum
        return optimizer

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


METHOD = CTKD(
    name="ctkd", title="Curriculum Temperature KD (Li et al., AAAI 2023)",
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
        Param("t_lr", "Tlr", 0.05, minimum=0, maximum=100, exclusive_minimum=True,
              description="learning rate of the temperature's SGD (times the student's schedule factor)"),
        Param("t_momentum", "Tmom", 0.9, minimum=0, maximum=0.999, description="momentum of the temperature's SGD"),
        Param("t_weight_decay", "Twd", 0.0005, minimum=0, maximum=1, description="weight decay of the temperature's SGD"),
    ),
    axes=("soft_weight", "t_end"),
    terms=("hard", "soft"),
    uses_teacher=lambda hparams: hparams["soft_weight"] > 0,
    hard_weight=lambda hparams: 1 - hparams["soft_weight"],
)
