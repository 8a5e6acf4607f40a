"""The KD methods a sweep can run: a mapping of names to methods (kdsweep.methods.base.Method).

Every module of this package that defines `METHOD` is one method (mdistiller's distillers, one file
each): kd (Hinton et al.; the reference study's), dkd (Decoupled KD), lskd (KD with logit
standardization), ctkd (Curriculum Temperature KD) on the logits; at (attention transfer), fitnets and
reviewkd also on feature maps (kdsweep.features: which maps, of any network). Adding a method is adding its module (and its
tests): the plan, runs and folder names, the command line, records, tables, figures and the report
all derive from this registry.
"""

from ..registry import defined_in
from .base import Method, Param, Progress, soft_loss, total

__all__ = ["METHODS", "Method", "Param", "Progress", "soft_loss", "total", "method"]


def _discover() -> dict:
    found = {method.name: method for method in defined_in(__name__, __path__, "METHOD", Method)}
    # kd first: the reference study's method leads every listing and packs first
    return dict(sorted(found.items(), key=lambda item: (item[0] != "kd", item[0])))


METHODS = _discover()


def method(name: str) -> Method:
    """The method of this name; KeyError (with the known names) otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown KD method {name!r}; known: {', '.join(METHODS)}") from None
