"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network": the reference study's method.

    L = (1 - w) * CE(student, labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))

w (soft_weight) is the weight of the SOFT (teacher) term; 1 - w is on the hard labels. The reference
study's eq. 3 puts its alpha on the hard term: alpha = 1 - w. Its grid is the config's top-level
`temperatures` x `soft_weights` (the reference study's sweep; its section under `methods` takes no
values), and its runs keep the folder names runs/kd/<model>_T<T>_soft<w>_seed<s>. At w = 0 the loss is the
cross-entropy alone, the hard-target baseline's at any T (kdsweep.plan trains no w = 0 point).

Defaults (Hinton et al. released no code; the reference implementation is megvii-research/mdistiller's, by
DKD's authors):
- temperature 4: mdistiller/engine/cfg.py, CFG.KD.TEMPERATURE = 4 (configs/cifar100/kd.yaml keeps it);
- soft_weight 0.9: the same file's CFG.KD.LOSS.KD_WEIGHT = 0.9 on the soft term and CFG.KD.LOSS.CE_WEIGHT =
  0.1 = 1 - w on the labels; mdistiller/distillers/KD.py's loss is CE_WEIGHT * CE + KD_WEIGHT * T^2 * KL, the
  KL summed over classes and averaged over the batch, as here.
"""

from .base import Method, Param, soft_loss, temperature_param


def losses(student_logits, teacher_logits, targets, hparams, progress=None) -> dict:
    """{"hard": (1 - w, CE), "soft": (w, soft_loss)}. soft_weight = 0 never touches the teacher
    (teacher_logits may be None; "soft" is then None); soft_weight = 1 needs no labels (targets may be
    None; "hard" is then None). "hard" is computed whenever targets are given, also at w = 1, so the log
    can show it."""
    import torch.nn.functional as F

    temperature, soft_weight = float(hparams["temperature"]), float(hparams["soft_weight"])
    if soft_weight > 0 and teacher_logits is None:
        raise ValueError("teacher_logits are needed when soft_weight > 0")
    if soft_weight < 1 and targets is None:
        raise ValueError("targets are needed when soft_weight < 1")
    hard = F.cross_entropy(student_logits, targets) if targets is not None else None
    soft = soft_loss(student_logits, teacher_logits, temperature) if soft_weight > 0 else None
    return {"hard": (1 - soft_weight, hard), "soft": (soft_weight, soft)}


class KD(Method):
    def grid(self, config):
        return [{"temperature": t, "soft_weight": w} for t in config["temperatures"] for w in config["soft_weights"]]

    def section_schema(self):
        return {"type": "object", "additionalProperties": False, "maxProperties": 0,
                "description": f"{self.title}: its grid is temperatures x soft_weights (top level)"}


METHOD = KD(
    name="kd", title="KD (Hinton et al. 2015)",
    params=(
        temperature_param(4.0, "softmax temperature T of both logit vectors"),
        Param("soft_weight", "soft", 0.9, minimum=0, maximum=1,
              description="w: weight of the soft (teacher) term; 1 - w is on the labels"),
    ),
    axes=("temperature", "soft_weight"),
    terms=("hard", "soft"),
    loss_fn=losses,
    uses_teacher=lambda hparams: hparams["soft_weight"] > 0,
    hard_weight=lambda hparams: 1 - hparams["soft_weight"],
)


def kd_loss(student_logits, teacher_logits, targets, temperature, soft_weight):
    """(1 - w) * CE + w * T^2 * KL with w = soft_weight (alpha = 1 - w in the reference study's eq. 3)."""
    from .base import total

    return total(losses(student_logits, teacher_logits, targets,
                        {"temperature": temperature, "soft_weight": soft_weight}))
