"""Study configuration: config.yaml's defaults, YAML files merged in order, `key=value` overrides, schema validation.

The defaults are the package's copy of the top-level config.yaml (src/kdsweep/config.yaml links
to it), so every command starts from the reference study's values and a study file only says
what it changes, as `snakemake --configfile` does.
"""

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
DEFAULTS_PATH = Path(str(resources.files("kdsweep") / "config.yaml"))


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


def _yaml_value(raw: str):
    """A command-line value read as YAML; YAML 1.1 reads 1e-3 (no dot) as a string, which here means a number."""
    value = yaml.safe_load(raw) if raw != "" else ""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return value


def apply_override(config: dict, assignment: str) -> dict:
    """Apply one `dotted.key=value` override; the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise KdsweepError(f"override '{assignment}' is not of the form key=value, e.g. training.lr=0.01")
    update = _yaml_value(raw)
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


def _read_yaml(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise KdsweepError(f"config file {path} does not exist; check the --config path")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise KdsweepError(f"config file {path} is not valid YAML ({err.__class__.__name__}); fix its syntax") from err
    if not isinstance(loaded, dict):
        raise KdsweepError(f"config file {path} must hold a mapping of keys to values")
    return loaded


def load_config(paths=(), overrides=()) -> dict:
    """config.yaml's defaults, then the YAML files in order (none given: ./config.yaml if there is
    one), then the overrides; validated. The result is the full study config."""
    if not paths and Path("config.yaml").is_file():
        paths = [Path("config.yaml")]
    config = _read_yaml(DEFAULTS_PATH)
    for path in paths:
        config = deep_merge(config, _read_yaml(path))
    for assignment in overrides:
        config = apply_override(config, assignment)
    return validate(config)


def coerce_strings(config: dict) -> dict:
    """`snakemake --config` values read as YAML, where the schema wants something other than a string.

    Snakemake reads the items of lists and mappings given with --config as strings
    (`seeds=[0,1]` gives ['0', '1'], `attacks={pgd: null}` gives {'pgd': 'null'}); the kdsweep
    command line reads them as YAML. A string the schema accepts as it is stays a string.
    """
    root = schema()

    def walk(value, sub):
        while "$ref" in sub:
            sub = root["$defs"][sub["$ref"].rsplit("/", 1)[1]]
        if isinstance(value, str):
            if jsonschema.Draft202012Validator({**sub, "$defs": root["$defs"]}).is_valid(value):
                return value
            parsed = _yaml_value(value)
            return value if isinstance(parsed, str) else walk(parsed, sub)
        if isinstance(value, dict):
            properties = sub.get("properties", {})
            return {key: walk(item, properties.get(key, {})) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item, sub.get("items", {})) for item in value]
        return value

    return walk(config, root)


def config_hash(obj) -> str:
    """Short stable hash of a JSON-able object (a run's config slice)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
