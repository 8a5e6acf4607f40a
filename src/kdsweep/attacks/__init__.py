"""L-inf attacks in pixel space and the robust accuracy a study reports (docs/robustness.md).

Models normalise their own input, so images here are in [0, 1] and epsilon is in [0, 1] pixel units,
as torchattacks, Foolbox and RobustBench count it. Every attack runs with the model in eval mode
(BatchNorm on its running statistics, which it leaves untouched; every module's mode restored), takes
gradients w.r.t. the input only, and computes in the model's own float32 with autocast off, whatever
runtime.precision says: a bf16 softmax underflows sooner, and robustness must not depend on the job's
arithmetic.

The attacks (`ATTACKS`: the config's names, each a module of this package with its paper):

- fgsm      Goodfellow et al. 2014: one signed-gradient step of cross-entropy (fgsm_attack)
- pgd       Madry et al. 2018: projected signed-gradient steps with restarts, of cross-entropy, of the
            Carlini-Wagner margin or of the DLR loss (pgd_attack)
- apgd_ce   Croce & Hein 2020 (AutoAttack): APGD on cross-entropy (apgd_attack)
- apgd_dlr  the same on the DLR loss, which a rescaling of the logits leaves unchanged (apgd_attack)
- apgd_t    AutoAttack's APGD-T: the same on the targeted DLR loss, towards each of the classes the model
            ranks next after the first, also scale-free (apgd_attack)
- square    Andriushchenko et al. 2020: random search on the margin loss, no gradient (square_attack)

An image counts as broken when the model got it wrong before the attack or at any point the attack
tried (any iterate of any restart, any query): each attack reports which test images stayed correct,
and the study's headline is the worst case per image over the attacks of `robustness.headline`
(kdsweep.attacks.examples.worst_case). A run's attack job (kdsweep.attacks.job) runs every attack at
every epsilon, the transfer attacks and the gradient-masking checks (kdsweep.attacks.diagnostics).

This module is torch-free (the workflow's Snakemake processes read the registry and kdsweep.attacks.suite);
the attacks are imported from their own modules (kdsweep.attacks.evaluate.evaluate_attack, ...), which import
torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Attack:
    """An attack of the registry: its config name, how tables name it, its config parameters (attacks.<name>;
    config.schema.yaml gives their meaning and bounds), what kind of attack it is and where it lives."""

    name: str
    label: str
    params: tuple[str, ...]
    kind: str  # single-step | iterative (gradient steps) | gradient-free
    module: str  # the module of this package: its BATCHES[name](epsilon, params) and, crafts, CRAFT[name]
    paper: str
    crafts: bool = True  # makes one image per image that a transfer attack can carry to another model

    @property
    def gradient(self) -> bool:
        return self.kind != "gradient-free"


ATTACKS = {attack.name: attack for attack in (
    Attack("fgsm", "FGSM", (), "single-step", "fgsm_attack", "Goodfellow et al. 2014"),
    Attack("pgd", "PGD", ("loss", "steps", "relative_step_size", "random_start", "restarts", "seed"), "iterative",
           "pgd_attack", "Madry et al. 2018"),
    Attack("apgd_ce", "APGD-CE", ("steps", "restarts", "seed"), "iterative", "apgd_attack", "Croce & Hein 2020"),
    Attack("apgd_dlr", "APGD-DLR", ("steps", "restarts", "seed"), "iterative", "apgd_attack", "Croce & Hein 2020"),
    Attack("apgd_t", "APGD-T", ("steps", "targets", "seed"), "iterative", "apgd_attack", "Croce & Hein 2020",
           crafts=False),
    Attack("square", "Square", ("queries", "p_init", "seed"), "gradient-free", "square_attack",
           "Andriushchenko et al. 2020", crafts=False),
)}
# The parameters each attack takes in the config (attacks.<name>) and in evaluate_attack's **params.
PARAMS = {name: attack.params for name, attack in ATTACKS.items()}
# The losses an attack can climb (attacks.pgd.loss; kdsweep.attacks.base): name -> what it is. Here, torch-free,
# the schema's enum (config.schema) and `python -m kdsweep attacks` read them; base.LOSSES holds their functions
# under the same names.
LOSSES = {
    "ce": "cross-entropy of the true class; its gradient underflows on confident images (logits x 100)",
    "margin": "Carlini & Wagner 2017: max_{j != y} z_j - z_y; the same steps whatever the logits' scale",
    "dlr": "Croce & Hein 2020: the margin over the spread of the top three logits, scale-free; 3+ classes",
}
# The worst case per test image over the headline's attacks: its name in result files and tables.
WORST = "worst"


def label(name: str) -> str:
    """How tables name an attack: its registry label, `worst case` for the headline, the name itself else."""
    if name == WORST:
        return "worst case"
    return ATTACKS[name].label if name in ATTACKS else name
