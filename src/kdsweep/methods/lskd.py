"""KD with logit standardization (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation").

Each logit vector, the teacher's and the student's, is z-scored per image before the temperature softmax:

    Z(z) = (z - mean(z)) / (1e-7 + std(z))      (std with Bessel's correction, as the authors' code)
    L = hard_weight * CE(student, labels) + soft_weight * T^2 * KL(softmax(Z(t) / T) || softmax(Z(s) / T))

so the student matches the teacher's logit relations, not their range. The distillation term is
unchanged when a constant is added to an image's logits or they are scaled by a positive factor. T is
the base temperature. Here a method of its own beside kd. At soft_weight 0 the loss is hard_weight x CE
alone: the hard-target baseline's where hard_weight is 1 (kdsweep.plan then trains no such point).

Defaults, as the authors' released code for KD + logit standardization on CIFAR-100
(sunshangquan/logit-standardization-KD):
- temperature 2 and soft_weight 9: tools/train.py, `--base-temp` (default 2) and `--kd-weight` (default 9),
  which set CFG.KD.TEMPERATURE and CFG.KD.LOSS.KD_WEIGHT under `--logit-stand`, as the README's CIFAR-100
  command gives them (`--logit-stand --base-temp 2 --kd-weight 9`);
- hard_weight 0.1: mdistiller/engine/cfg.py, CFG.KD.LOSS.CE_WEIGHT = 0.1, which neither tools/train.py nor
  any configs/cifar100/kd/*.yaml changes (their ImageNet configs set 1.0 or 0.5);
- the standardization and the loss: mdistiller/distillers/KD.py (`normalize`, `kd_loss`).
"""

from .base import Method, Param, soft_loss, temperature_param


def standardize(logits):
    """(z - mean) / (1e-7 + std) over each row."""
    return (logits - logits.mean(dim=1, keepdim=True)) / (1e-7 + logits.std(dim=1, keepdim=True))


def losses(student_logits, teacher_logits, targets, hparams, progress=None) -> dict:
    """{"hard": (hard_weight, CE), "soft": (soft_weight, T^2 KL of the standardized logits)}."""
    import torch.nn.functional as F

    hard = F.cross_entropy(student_logits, targets)
    soft = None
    if hparams["soft_weight"] > 0:
        soft = soft_loss(standardize(student_logits), standardize(teacher_logits.detach()),
                         float(hparams["temperature"]))
    return {"hard": (float(hparams["hard_weight"]), hard), "soft": (float(hparams["soft_weight"]), soft)}


class LSKD(Method):
    def problem(self, hparams):
        if hparams["hard_weight"] == 0 and hparams["soft_weight"] == 0:
            return "hard_weight and soft_weight are both 0: the loss would be 0; give one of them a weight"
        return None


METHOD = LSKD(
    name="lskd", title="KD with logit standardization (Sun et al., CVPR 2024)",
    params=(
        temperature_param(2.0, "base temperature T"),
        Param("hard_weight", "hard", 0.1, minimum=0, maximum=1000, description="weight of the cross-entropy term"),
        Param("soft_weight", "soft", 9.0, minimum=0, maximum=1000, description="weight of the distillation term"),
    ),
    axes=("temperature", "soft_weight"),
    terms=("hard", "soft"),
    loss_fn=losses,
    uses_teacher=lambda hparams: hparams["soft_weight"] > 0,
    hard_weight=lambda hparams: hparams["hard_weight"],
)
