"""Study configuration: YAML files merged in order, `key=value` overrides, schema validation."""

import copy
import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from .errors import KdsweepError

SCHEMA_PATH = Path(str(resources.files("kdsweep") / "config.schema.yaml"))


def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def deep_merge(base: dict, update: dict) -> dict:
    """Return base updated by update, nested mappings merged key by key (as snakemake's --configfile)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# A `dotted.key=value` override on a command line (what apply_override takes).
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def apply_override(config: dict, assignment: str) -> dict:
    """Apply one `dotted.key=value` override; the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise KdsweepError(f"override '{assignment}' is not of the form key=value, e.g. training.lr=0.01")
    value = yaml.safe_load(raw) if raw != "" else ""
    if isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string; on a command line it means a number.
        try:
            value = float(value)
        except ValueError:
            pass
    update = value
    for part in reversed(key.split(".")):
        update = {part: update}
    return deep_merge(config, update)


def validate(config: dict) -> dict:
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise KdsweepError(
            f"config key '{where}' is invalid: {error.message}; fix it in config.yaml or your study file"
        )
    return config


def load_config(paths=(), overrides=()) -> dict:
    """Merge the YAML files in order, apply overrides, validate; the result is the full study config."""
    if not paths:
        default = Path("config.yaml")
        if not default.exists():
            raise KdsweepError("no config given and no config.yaml here; pass --config PATH/TO/config.yaml")
        paths = [default]
    config: dict = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise KdsweepError(f"config file {path} does not exist; check the --config path")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise KdsweepError(f"config file {path} is not valid YAML ({err.__class__.__name__}); fix its syntax") from err
        if not isinstance(loaded, dict):
            raise KdsweepError(f"config file {path} must hold a mapping of keys to values")
        config = deep_merge(config, loaded)
    for assignment in overrides:
        config = apply_override(config, assignment)
    return validate(config)


def config_hash(obj) -> str:
    """Short stable hash of a JSON-able object (a run's config slice)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
