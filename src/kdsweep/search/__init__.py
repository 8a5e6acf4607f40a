"""The search strategies a study can use: a mapping of names (config `sweep`) to strategies
(kdsweep.search.base.Strategy).

Every module of this package that defines `STRATEGY` is one strategy (Optuna's samplers and pruners: one
interface, several strategies, a registry): grid (every point trained to the end; the reference study's),
staged (kd's temperature sweep, then the soft-weight sweep at the best temperature) and halving (successive
halving: every point to a rung, the best of each method go on). Adding a strategy is adding its module (and
its tests): the schema's `sweep` values, the plan's runs and packs, the workflow's outputs and the tables
derive from this registry (docs/search.md).

Confirmation (config `confirm.seeds`) is no strategy: it is a stage after the search that every strategy
shares (each student's best point of each method, trained again on fresh seeds: kdsweep.plan). A strategy
only says which runs a student's point is chosen from (`Strategy.sweep`, `Strategy.among`).
"""

from ..errors import KdsweepError
from ..registry import defined_in
from .base import Strategy, Undecided, nothing_decided, write_decision

__all__ = ["STRATEGIES", "Strategy", "Undecided", "deciding", "guarded", "nothing_decided", "strategy",
           "write_decision"]


def guarded(strategy: Strategy) -> Strategy:
    """The strategy, where it keeps the interface's guarantees (kdsweep.search.base): it judges its rungs through
    the interface's `decide_rung`, never its own, and one that prunes has a `judge`. TypeError otherwise: a
    strategy's bug, never a study's."""
    kind = type(strategy)
    if kind.decide_rung is not Strategy.decide_rung:
        raise TypeError(f"search strategy {strategy.name!r} overrides decide_rung, which hands every strategy the "
                        "points' state at the rung and nothing else; implement judge instead")
    if strategy.prunes and kind.judge is Strategy.judge:
        raise TypeError(f"search strategy {strategy.name!r} prunes but has no judge of its rungs")
    return strategy


def _discover() -> dict:
    found = {strategy.name: guarded(strategy)
             for strategy in defined_in(__name__, __path__, "STRATEGY", Strategy)}
    # the default (the grid) first: it leads every listing
    return dict(sorted(found.items(), key=lambda item: (not item[1].default, item[0])))


STRATEGIES = _discover()


def strategy(name: str) -> Strategy:
    """The strategy of this name; KdsweepError naming the registered ones otherwise."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KdsweepError(f"sweep {name!r} is no search strategy; use one of {', '.join(STRATEGIES)} "
                           "(kdsweep.search)") from None


def deciding(checkpoint: str) -> Strategy:
    """The strategy whose decisions the workflow checkpoint of this name makes (its `decides`)."""
    return next(strategy for strategy in STRATEGIES.values() if checkpoint in strategy.decides)
