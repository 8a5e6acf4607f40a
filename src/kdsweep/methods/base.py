"""What a KD method is to kdsweep: its hyperparameters and its loss (kdsweep.methods has the registry).

A method module defines `METHOD = Method(...)`, or an instance of a subclass where its loss needs more
than one function (trainable state, a schedule). It declares:
- its name (the config's `methods.<name>` section, a sweep run's role and folder: runs/<name>/...);
- its hyperparameters (`Param`): their bounds and defaults, whence the config's schema for its section
  (`section_schema`), and how each is spelled in a run's folder name;
- its two main hyperparameters (`axes`: the heat map of its figure);
- its loss: (student logits, teacher logits, labels, hyperparameters, progress, state) -> named terms
  (the teacher's logits come without a gradient, as ordinary tensors the loss may keep for backward),
  `{name: (weight, value)}`, whose weighted sum is minimised (`total`). Their names (`terms`) are the same
  at every point (a term a point does not use is there, its value None); each term's unweighted value
  goes to history.csv (`train_<name>_loss`) and TensorBoard;
- any trainable state (`make_state`: a module saved in and resumed from the checkpoint, whose parameters the
  point's optimiser trains beside the student's weights, or an optimiser of its own where the method's
  authors train it apart: `state_optimizer`) and what of it each epoch records (`epoch_record`:
  history.csv, TensorBoard, metrics.json);
- what a point that uses no teacher trains on (`teacher_free`): the labels' cross-entropy alone, at a
  weight. At weight 1 that is the hard-target baseline's loss (kdsweep.plan trains no such point: the
  baseline is it).

A feature-based method (at, fitnets, reviewkd: a `FeatureMethod`) adds to the labels' cross-entropy one term
on feature maps, weighted by one hyperparameter (`weight`): a point where it is 0 reads no maps and uses no
teacher. It declares which of a network's stage outputs a point reads (`taps`: kdsweep.features has the rule
that finds them in any architecture) and its term on them (`maps_loss`). Such a point's trainable state is
its adapters, built for the shapes of the tapped maps (`make_state(hparams, shapes)`), and its loss gets the
maps, the student's (with their gradient) and the teacher's, as `maps=(student_maps, teacher_maps)`. A
logit method's loss is called as before, and a point that reads no maps has none computed: no probe, no
hook.

No method module imports torch at module level: the plan (kdsweep.plan, which every snakemake process
loads) reads the registry's hyperparameters, and a loss imports torch when it first runs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field


def fmt(value) -> str:
    """A number as it appears in names (a hyperparameter's value in a run's folder name, an epsilon in a file
    name): 4.0 -> '4', 0.9 -> '0.9', 0.01 -> '0.01'. Here, under the plan and the search, which both spell."""
    return f"{float(value):g}"


@dataclass(frozen=True)
class Param:
    """One hyperparameter of a method."""

    name: str  # in the config, records and tables, e.g. "temperature"
    spelling: str  # in a run's folder name, before its value: T4, soft0.9
    default: float  # the method's paper's CIFAR setting
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False  # minimum itself not allowed
    integer: bool = False
    description: str = ""

    def schema(self) -> dict:
        """JSON schema of one value."""
        schema: dict = {"type": "integer" if self.integer else "number", "description": self.description}
        if self.minimum is not None:
            schema["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema

    def problem(self, value) -> str | None:
        """Why `value` is no value of this hyperparameter, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{self.name} {value!r} is not a finite number"
        if self.integer and value != int(value):
            return f"{self.name} {value!r} is not a whole number"
        if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
            return f"{self.name} {value!r} is below its bound ({'above' if self.exclusive_minimum else 'at least'} {self.minimum})"
        if self.maximum is not None and value > self.maximum:
            return f"{self.name} {value!r} is above its bound (at most {self.maximum})"
        return None


@dataclass(frozen=True)
class Progress:
    """Where training stands when a batch's loss is computed."""

    epoch: int  # the epoch being trained, from 1 (as mdistiller and CTKD count)


@dataclass
class Method:
    """A KD method: name, hyperparameters and loss (module docstring)."""

    name: str
    title: str  # for tables and captions, e.g. "Decoupled KD (Zhao et al., CVPR 2022)"
    terms: tuple[str, ...]  # the names of the loss's terms, in order (history.csv's columns)
    axes: tuple[str, str]
    params: tuple[Param, ...]
    loss_fn: object = None  # (student, teacher, labels, hparams, progress) -> terms, for a method without state
    uses_teacher: object = None  # hparams -> bool; None: always
    # hparams -> the weight of the labels' cross-entropy, the loss's only term at a point that uses no teacher
    # (kd: 1 - w = 1); None: 1
    hard_weight: object = None

    def __post_init__(self):
        names = [param.name for param in self.params]
        assert len(set(names)) == len(names) and set(self.axes) <= set(names), self.name
        assert self.terms and len(set(self.terms)) == len(self.terms), self.name

    # ---- hyperparameters

    def param(self, name) -> Param:
        return next(param for param in self.params if param.name == name)

    def hparams(self, values: dict) -> tuple[tuple[str, float], ...]:
        """The hyperparameters of a point in the method's own order, each the config's number (the distill
        command spells it canonically: kdsweep.commands.number)."""
        return tuple((param.name, values[param.name]) for param in self.params)

    def canonical(self, hparams) -> dict:
        """The hyperparameters as a run's identity holds them: floats, an integer one as an int (the plan's
        `4` and the job's `4.0` are one run)."""
        values = dict(hparams)
        return {param.name: int(values[param.name]) if param.integer else float(values[param.name])
                for param in self.params}

    def problem(self, hparams: dict) -> str | None:
        """Why a point of valid values cannot train (e.g. every term weighted 0), or None."""
        return None

    def needs_teacher(self, hparams: dict) -> bool:
        return True if self.uses_teacher is None else self.uses_teacher(hparams)

    def teacher_free(self, hparams: dict) -> float | None:
        """None at a point that uses the teacher. At one that does not, its loss is the labels' cross-entropy
        alone (every other term weighs 0 and `total` leaves it out): the weight it has. At 1 the loss is the
        hard-target baseline's (train.HARD_TARGETS), so the point, trained from the same seed, is the baseline."""
        if self.needs_teacher(hparams):
            return None
        return 1.0 if self.hard_weight is None else float(self.hard_weight(hparams))

    def needs_features(self, hparams: dict) -> bool:
        """Whether the point's loss reads feature maps (a logit method's never does)."""
        return False

    def taps(self, hparams: dict, count: int):
        """Which of a network's `count` stage outputs (kdsweep.features; 0 the shallowest) a point that
        needs features reads, in the order its loss gets them: the same rule for student and teacher. A
        sentence instead where `count` is too few (it names the hyperparameter to change)."""
        raise NotImplementedError(f"{self.name} reads no feature maps")

    def section_schema(self) -> dict:
        """JSON schema of the config's `methods.<name>` section: each hyperparameter a list of values (the
        sweep's grid over them is their product)."""
        return {"type": "object", "additionalProperties": False, "description": self.title,
                "properties": {param.name: {"type": "array", "minItems": 1, "items": param.schema(),
                                            "description": param.description} for param in self.params}}

    def grid(self, config: dict) -> list[dict]:
        """Every point of the method's grid in the config: the product of its hyperparameters' values (a
        hyperparameter the section leaves out: its default alone)."""
        section = (config.get("methods") or {}).get(self.name) or {}
        values = [section.get(param.name, [param.default]) for param in self.params]
        return [dict(zip((param.name for param in self.params), point)) for point in itertools.product(*values)]

    # ---- training

    def make_state(self, hparams: dict, shapes=None):
        """Trainable state of a point (None: the method has none). shapes (kdsweep.features.Shapes: the
        (C, H, W) of the maps the loss reads) is given to a point that needs features, whose adapters are
        built for them."""
        return None

    def state_optimizer(self, state, hparams: dict):
        """The optimiser of a point's trainable state (placed on its device), where the method's authors train it
        apart from the student (train_epoch steps it after the student's, its learning rate scaled as the
        student's schedule scales theirs; its state is in `state`'s own, so in the checkpoint); None: the point's
        optimiser trains it beside the student's weights."""
        return None

    def loss(self, student, teacher, labels, hparams: dict, progress: Progress, state=None, maps=None) -> dict:
        """{term: (weight, value)}; a term the point does not use has value None. maps: (student maps,
        teacher maps) in `taps` order, given to a point that needs features."""
        return self.loss_fn(student, teacher, labels, hparams, progress)

    def epoch_record(self, state) -> dict:
        """What of its state a point records after each epoch (history.csv, TensorBoard, metrics.json)."""
        return {}


@dataclass
class FeatureMethod(Method):
    """A method on feature maps: the labels' cross-entropy at weight 1 plus one term on the tapped maps
    (`terms`: ("hard", its name)) at the weight of one hyperparameter (module docstring)."""

    weight: str = field(kw_only=True)  # the hyperparameter that weighs the maps' term

    def __post_init__(self):
        super().__post_init__()
        assert self.weight in {param.name for param in self.params} and len(self.terms) == 2, self.name

    def needs_teacher(self, hparams: dict) -> bool:
        return hparams[self.weight] > 0

    def needs_features(self, hparams: dict) -> bool:
        return self.needs_teacher(hparams)

    def taps(self, hparams: dict, count: int):
        """The last `stages` stage outputs (stages_param)."""
        return last_stages(hparams, count, self.name)

    def maps_weight(self, hparams: dict, progress: Progress) -> float:
        """The weight of the maps' term at this point of training."""
        return float(hparams[self.weight])

    def maps_loss(self, maps, hparams: dict, state):
        """The maps' term, unweighted: maps = (student maps, teacher maps) in `taps` order."""
        raise NotImplementedError

    def loss(self, student, teacher, labels, hparams, progress, state=None, maps=None) -> dict:
        import torch.nn.functional as F

        hard = F.cross_entropy(student, labels)
        on_maps = self.maps_loss(maps, hparams, state) if self.needs_features(hparams) else None
        return {"hard": (1.0, hard), self.terms[1]: (self.maps_weight(hparams, progress), on_maps)}


def temperature_param(default: float, description: str) -> Param:
    """`temperature`, the softmax temperature T of a logit method (kd, dkd, lskd): T in a run's folder name."""
    return Param("temperature", "T", default, minimum=0.001, maximum=1000, description=description)


def stages_param(description: str) -> Param:
    """`stages`, the hyperparameter of a method that reads the deepest stage outputs (last_stages): three by
    default, as the authors' CIFAR networks have three stages."""
    return Param("stages", "st", 3, minimum=1, maximum=16, integer=True, description=description)


def last_stages(hparams: dict, count: int, method: str, param: str = "stages"):
    """The last hparams[param] of `count` stage outputs (the deepest), or the sentence that lowers it."""
    wanted = int(hparams[param])
    if wanted > count:
        return f"{param}={wanted} needs {wanted}; set methods.{method}.{param} to at most {count}"
    return list(range(count - wanted, count))


def warmup_param(description: str) -> Param:
    """`warmup_epochs`: over how many epochs a method's distillation term grows linearly to its full weight
    (warm_up); 20 by default, as mdistiller's DKD and ReviewKD (WARMUP, WARMUP_EPOCHS)."""
    return Param("warmup_epochs", "warm", 20, minimum=1, maximum=10000, integer=True, description=description)


def warm_up(hparams: dict, progress: Progress) -> float:
    """The warm-up's factor on the distillation term's weight: min(epoch / warmup_epochs, 1), epochs from 1."""
    return min(progress.epoch / hparams["warmup_epochs"], 1.0)


def total(terms: dict):
    """The weighted sum of a loss's terms. A term of weight 0 is left out, not multiplied by 0 (0 * inf
    would turn a diverged unused term into NaN), and a lone term of weight 1 is itself."""
    used = [(weight, value) for weight, value in terms.values() if weight != 0]
    if len(used) == 1 and used[0][0] == 1:
        return used[0][1]
    out = None
    for weight, value in used:
        out = weight * value if out is None else out + weight * value
    return out


def soft_loss(student_logits, teacher_logits, temperature):
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), summed over classes, mean over the batch.

    The T^2 keeps the gradient's size roughly independent of T (the softened gradients shrink as 1/T^2),
    so changing T does not silently rescale the soft term against the hard one. The KL is clamped at 0:
    when the student matches the teacher the sum is 0 plus rounding, of either sign (down to about -1e-16
    in float64, -1e-7 in float32), and a KL is never negative. The gradient stays right: where the clamp
    bites the student is at the KL's minimum, whose true gradient is 0 up to rounding, and clamp_min
    passes the gradient through wherever kl >= 0. temperature may be a tensor (CTKD's learned one).
    """
    import torch.nn.functional as F

    # The teacher is a fixed target: never let a gradient reach it through the loss.
    teacher_log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    student_log_p = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(student_log_p, teacher_log_p, reduction="batchmean", log_target=True)
    return temperature**2 * kl.clamp_min(0.0)
