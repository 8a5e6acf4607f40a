"""A study's attack suite, read from its config (`attacks`, `epsilons`, `robustness`) and checked against the
registry: which attacks run, on which test images, what the headline is, which attack crafts the transfer
attacks and which the large-epsilon check runs. Torch-free: the plan (every Snakemake process) builds one.

An attack that `attacks` switches off (null) is left out wherever `robustness` names it; a name that is no
attack at all is refused, and so is a suite whose headline has no attack left.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import KdsweepError
from . import ATTACKS, WORST


def _known(names, key):
    for name in names:
        if name not in ATTACKS:
            raise KdsweepError(f"robustness.{key} names {name!r}, which is no attack; use names of "
                               f"attacks ({', '.join(ATTACKS)})")
    return names


@dataclass(frozen=True)
class Suite:
    attacks: dict  # name -> parameters, of every attack switched on, in the config's order
    epsilons: tuple
    headline: tuple  # the attacks of the worst case, switched on
    full_test_set: frozenset
    subset_size: int | None
    subset_seed: int
    transfer: str | None  # the attack that crafts the transfer attacks' images
    tolerance: float
    large_epsilon: float
    large_epsilon_attacks: tuple
    large_epsilon_accuracy: float

    @classmethod
    def from_config(cls, config: dict) -> "Suite":
        attacks = {name: params for name, params in config["attacks"].items() if params is not None}
        if not attacks:
            raise KdsweepError("attacks switches every attack off; give at least one its parameters (e.g. "
                               "attacks.fgsm: {})")
        section = config["robustness"]
        headline = [name for name in _known(section["headline"], "headline") if name in attacks]
        if not headline:
            raise KdsweepError(f"robustness.headline's attacks ({', '.join(section['headline'])}) are all switched "
                               "off in attacks; switch one on, or name one that is on")
        full = {name for name in _known(section["full_test_set"], "full_test_set") if name in attacks}
        transfer = section["transfer"]
        if transfer is not None:
            _known([transfer], "transfer")
            if not ATTACKS[transfer].crafts:
                crafting = ", ".join(name for name, attack in ATTACKS.items() if attack.crafts)
                raise KdsweepError(f"robustness.transfer is {transfer!r}, which makes no one image per test image to "
                                   f"carry to another model; name one of {crafting}, or null")
            transfer = transfer if transfer in attacks else None
        masking = section["masking"]
        large = [name for name in _known(masking["large_epsilon_attacks"], "masking.large_epsilon_attacks")
                 if name in attacks]
        return cls(attacks=attacks, epsilons=tuple(config["epsilons"]), headline=tuple(headline),
                   full_test_set=frozenset(full), subset_size=section["subset"]["size"],
                   subset_seed=section["subset"]["seed"], transfer=transfer, tolerance=masking["tolerance"],
                   large_epsilon=masking["large_epsilon"], large_epsilon_attacks=tuple(large),
                   large_epsilon_accuracy=masking["large_epsilon_accuracy"])

    def on_subset(self, attack: str) -> bool:
        """Whether an attack runs on the evaluation subset (else on every test image)."""
        return attack not in self.full_test_set

    def results(self) -> list[str]:
        """The names of a run's result files per epsilon: each attack's, then the worst case's."""
        return [*self.attacks, WORST]
