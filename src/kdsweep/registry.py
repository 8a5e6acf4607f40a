"""A registry filled by its package's modules (kdsweep.methods, kdsweep.search): adding an entry is adding a
module that defines it, no list to edit. Nothing here imports torch.
"""

import importlib
import pkgutil


def defined_in(package: str, path, attribute: str, kind: type) -> list:
    """The `attribute` of every module of the package (its name and __path__) but `base` that defines one of
    this kind, importing each, in the modules' alphabetical order."""
    found = []
    for info in sorted(pkgutil.iter_modules(path), key=lambda info: info.name):
        if info.name == "base":
            continue
        entry = getattr(importlib.import_module(f"{package}.{info.name}"), attribute, None)
        if isinstance(entry, kind):
            found.append(entry)
    return found
