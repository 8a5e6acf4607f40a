"""Study configuration: config.yaml's defaults, YAML files merged in order, `key=value` overrides, schema validation.

The defaults are the package's copy of the top-level config.yaml (src/kdsweep/config.yaml links
to it), so every command starts from the reference study's values and a study file only says
what it changes, as `snakemake --configfile` does. A bad value is reported with where it came
from (an override, a study file, config.yaml); the command line's numbers are held to the same
schema bounds as the config's (`check_value`).
"""

import copy
import hashlib
import json
import math
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from . import io
from .errors import KdsweepError

SCHEMA_PATH = Path(str(resources.files("kdsweep") / "config.schema.yaml"))
DEFAULTS_PATH = Path(str(resources.files("kdsweep") / "config.yaml"))
# A `dotted.key=value` override on a command line (what apply_override takes).
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
_ANYWHERE = "config.yaml or your study file"


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return SCHEMA_PATH.read_text()


def schema() -> dict:
    """config.schema.yaml, with the `methods` section's schema derived from the KD methods' modules
    (kdsweep.methods: each declares its hyperparameters and their bounds), and the names the registries
    hold as enums: dataset.name (kdsweep.datasets.DATASETS), the losses an attack climbs
    (kdsweep.attacks.LOSSES) and the search strategies, `sweep` (kdsweep.search.STRATEGIES)."""
    from .attacks import LOSSES
    from .datasets import DATASETS
    from .methods import METHODS
    from .search import STRATEGIES

    loaded = yaml.safe_load(_schema_text())
    loaded["properties"]["dataset"]["properties"]["name"]["enum"] = list(DATASETS)
    loaded["properties"]["attacks"]["properties"]["pgd"]["properties"]["loss"]["enum"] = list(LOSSES)
    loaded["properties"]["sweep"]["enum"] = list(STRATEGIES)
    section = loaded["properties"]["methods"]
    section["additionalProperties"] = False
    # null leaves a method out; its keywords but `type` only apply to a mapping
    section["properties"] = {name: {**method.section_schema(), "type": ["object", "null"]}
                             for name, method in METHODS.items()}
    return loaded


def deep_merge(base: dict, update: dict) -> dict:
    """Return base updated by update, nested mappings merged key by key (as snakemake's --configfile)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# ---------------------------------------------------------------- overrides


def _yaml_value(raw: str, assignment: str | None = None):
    """A command-line value read as YAML; YAML 1.1 reads 1e-3 (no dot) as a string, which here means a number."""
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or err.__class__.__name__
        raise KdsweepError(f"override '{assignment or raw}' is not valid YAML ({problem}); quote it for the shell "
                           "and close its brackets, e.g. 'temperatures=[1, 4]'") from None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return value


def parse_override(assignment: str) -> dict:
    """`dotted.key=value` as the nested mapping it sets (the value read as YAML)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise KdsweepError(f"override '{assignment}' is not of the form key=value, e.g. training.lr=0.01")
    value = _yaml_value(raw, assignment)
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def apply_override(config: dict, assignment: str) -> dict:
    """Apply one `dotted.key=value` override."""
    return deep_merge(config, parse_override(assignment))


# ---------------------------------------------------------------- validation


def _non_finite(value, path=()):
    """(dotted path, value) of the first NaN or infinity in value, or None. YAML reads .nan and .inf
    as floats, and infinity satisfies `exclusiveMinimum: 0`, so the schema alone lets them through."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".".join(map(str, path)), value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if found := _non_finite(item, (*path, key)):
            return found
    return None


def validate(config: dict, source=lambda where: _ANYWHERE) -> dict:
    """The config, checked against the schema and for finite numbers. source(dotted key) names where
    a value came from, for the sentence."""
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(config),
                    key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        # a value that fits no branch of a oneOf (teacher: one entry or a list): the branch's error deeper in
        # the value, where there is one, names the key to fix (teacher.seed, not teacher)
        while error.context and len((deepest := max(error.context, key=lambda e: len(e.absolute_path)))
                                    .absolute_path) > len(error.absolute_path):
            error = deepest
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        if error.validator == "required" and not error.absolute_path:
            missing = error.message.split(" is a required property")[0]
            raise KdsweepError(f"the config lacks {missing}: config.yaml holds every key and a study file only "
                               "overrides some of them; pass config.yaml first (--config config.yaml --config <study>)")
        raise KdsweepError(f"config key '{where}' is invalid: {error.message}; fix it in {source(where)}")
    if found := _non_finite(config):
        where, value = found
        raise KdsweepError(f"config key '{where}' is {value}, not a finite number; fix it in {source(where)}")
    return config


def check_finite(config: dict):
    """KdsweepError naming the first NaN or infinite value of config (the schema lets them through), or
    the first value the methods' sections (their schema derived from kdsweep.methods) refuse."""
    if found := _non_finite(config):
        where, value = found
        raise KdsweepError(f"config key '{where}' is {value}, not a finite number; fix it in {_ANYWHERE}")
    validate(config)


def check_value(schema_key: str, value, flag: str):
    """`value` of a command-line flag, held to the schema's bounds for `schema_key` (dotted; `items` for
    a list's items, e.g. "epsilons.items"): KdsweepError naming the flag and the bound otherwise."""
    root = schema()
    sub = root
    for part in schema_key.split("."):
        sub = sub["items"] if part == "items" else sub["properties"][part]
    errors = list(jsonschema.Draft202012Validator({**sub, "$defs": root["$defs"]}).iter_errors(value))
    if errors or (isinstance(value, float) and not math.isfinite(value)):
        reason = errors[0].message if errors else f"{value} is not a finite number"
        described = (_resolve(sub, root).get("description")
                     or root["properties"][schema_key.split(".")[0]].get("description", ""))
        key = ".".join(part for part in schema_key.split(".") if part != "items")
        raise KdsweepError(f"{flag} {value} is out of bounds: {reason}, as for config key '{key}'"
                           + (f" ({described})" if described else ""))
    return value


# ---------------------------------------------------------------- loading


def load_config(paths=(), overrides=()) -> dict:
    """config.yaml's defaults, then the YAML files in order (none given: ./config.yaml if there is
    one), then the overrides; validated. The result is the full study config."""
    if not paths and Path("config.yaml").is_file():
        paths = [Path("config.yaml")]
    sources = [("config.yaml", io.read_yaml(DEFAULTS_PATH))]
    sources += [(str(path), io.read_yaml(path)) for path in paths]
    sources += [(f"the override '{assignment}'", parse_override(assignment)) for assignment in overrides]
    config: dict = {}
    for _, update in sources:
        config = deep_merge(config, update)
    # YAML 1.1 reads 1e-3 in a list ([1e-3]) as a string, and 64.0 is no count: read them as the schema wants
    config = coerce_strings(config)

    def source(where: str) -> str:
        """The last source that set the key `where` (or a parent of it to something else than a mapping)."""
        for name, update in reversed(sources):
            value = update
            for part in where.split("."):
                if not isinstance(value, dict):
                    return name  # a parent of the key set to a non-mapping
                if part not in value:
                    break
                value = value[part]
            else:
                return name
        return _ANYWHERE

    return validate(config, source)


def coerce_strings(config: dict) -> dict:
    """`snakemake --config` values read as YAML, where the schema wants something other than a string.

    Snakemake reads the items of lists and mappings given with --config as strings
    (`seeds=[0,1]` gives ['0', '1'], `attacks={pgd: null}` gives {'pgd': 'null'}); the kdsweep
    command line reads them as YAML. A string the schema accepts as it is stays a string, and a
    whole float becomes an int (as load_config makes it; `_whole`).
    """
    root = schema()

    def walk(value, sub):
        sub = _branch(value, _resolve(sub, root), root)
        if isinstance(value, str):
            if jsonschema.Draft202012Validator({**sub, "$defs": root["$defs"]}).is_valid(value):
                return value
            try:
                parsed = _yaml_value(value)
            except KdsweepError:
                return value  # left for the schema to refuse, naming the key
            return value if isinstance(parsed, str) else walk(parsed, sub)
        if isinstance(value, dict):
            properties = sub.get("properties", {})
            return {key: walk(item, properties.get(key, {})) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item, sub.get("items", {})) for item in value]
        return _whole(value)

    return walk(config, root)


def _branch(value, sub: dict, root: dict) -> dict:
    """The branch of a oneOf/anyOf that a mapping or list `value` takes (teacher: an entry or a list of entries),
    its allOf parts merged, so that the strings inside it are read as that branch's schema wants."""
    kind = "object" if isinstance(value, dict) else "array" if isinstance(value, list) else None
    for branch in sub.get("oneOf", sub.get("anyOf", [])) if kind else []:
        branch = _resolve(branch, root)
        parts = [_resolve(part, root) for part in branch.get("allOf", [])] or [branch]
        if any(part.get("type") == kind for part in parts):
            merged = {}
            for part in parts:
                properties = {**merged.get("properties", {}), **part.get("properties", {})}
                merged = {**merged, **part, "properties": properties}
            return merged
    return sub


def _resolve(sub: dict, root: dict) -> dict:
    while "$ref" in sub:
        sub = root["$defs"][sub["$ref"].rsplit("/", 1)[1]]
    return sub


def _whole(value):
    """A float with no fractional part (YAML's 1e3, an override's 64.0, a study file's 1.0) as an int: JSON
    Schema counts 64.0 as an integer, but Python's range() and slices, and numpy's seeds, do not; and a whole
    number has one spelling wherever the schema takes a number, so that `1.0` and `1` in a study file are one
    config, one run identity and one job command line (kdsweep.commands.canonical)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def config_hash(obj) -> str:
    """Short stable hash of a JSON-able object (a run's config slice)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
