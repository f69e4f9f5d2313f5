"""Configuration: presets and config files, validated against `config/schema.yaml` with defaults filled.

The schema is the one place where keys, types and defaults are defined. A preset name ('ci', 'default',
'paper') stands for `config/<name>.yaml` in the repository; any other argument is a path to a YAML file.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import yaml

from mofa.errors import MofaError

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# The presets and the schema ship inside the package (a plain `pip install .` has them); the
# repository's `config/` is a link to this folder, for the workflow commands.
CONFIG_DIR = Path(__file__).resolve().parent / "presets"
SCHEMA_PATH = CONFIG_DIR / "schema.yaml"

ConfigSource = str | os.PathLike


def _display(path: Path) -> str:
    """A path as short as it can be said: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently,
    so that a config's second `seed:` would quietly win)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: PyYAML's own error
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | os.PathLike) -> dict:
    """The mapping at the top of a YAML file; an empty file is {}; a key given twice is an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MofaError(f"{_display(path)}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise MofaError(f"{_display(path)}: not a YAML text file (byte {exc.start} is not UTF-8)") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MofaError(f"{_display(path)}:{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MofaError(f"{_display(path)}: expected a mapping of config keys, got {type(data).__name__}")
    return data


@functools.cache
def load_schema() -> dict:
    """The configuration JSON Schema (config/schema.yaml), checked against its meta-schema."""
    if not SCHEMA_PATH.is_file():
        raise MofaError(f"{SCHEMA_PATH}: config schema not found; the mofa package is installed without its "
                        "presets (reinstall it: pip install .)")
    schema = read_yaml(SCHEMA_PATH)
    jsonschema.validators.validator_for(schema).check_schema(schema)
    return schema


def schema_default(*keys: str) -> Any:
    """The schema's default of a config key, e.g. schema_default("training", "lr"): for the library's
    dataclasses, so that a default is defined once, in config/schema.yaml."""
    node = load_schema()
    for key in keys:
        node = node["properties"][key]
    if "default" not in node:
        raise KeyError(f"config/schema.yaml: {'.'.join(keys)} has no default")
    return node["default"]


def schema_section_defaults(*keys: str) -> dict:
    """The schema's defaults of every key of a section, e.g. schema_section_defaults("synthetic",
    "background_mix") -> {"procedural": 0.4, ...} (a section's own default is {}, filled key by key)."""
    node = load_schema()
    for key in keys:
        node = node["properties"][key]
    return {key: copy.deepcopy(sub["default"]) for key, sub in node["properties"].items()}


def presets() -> list[str]:
    """The preset names the schema allows, e.g. ['ci', 'default', 'paper']."""
    return list(load_schema()["properties"]["preset"]["enum"])


def preset_path(name: str) -> Path:
    """config/<name>.yaml for a preset name."""
    if name not in presets():
        raise MofaError(f"unknown preset '{name}' (have {', '.join(presets())}; or give a path to a .yaml file)")
    return CONFIG_DIR / f"{name}.yaml"


def _integral(value: Any, subschema: Mapping) -> Any:
    """`value` as an int where the schema wants an integer and YAML read a whole float (`2.0`, `1e3`),
    which JSON Schema counts as an integer but range() and slicing do not take; else `value` as it is."""
    types = subschema.get("type", [])
    if isinstance(value, float) and value.is_integer() and "integer" in ([types] if isinstance(types, str) else types):
        return int(value)
    if isinstance(value, list) and isinstance(subschema.get("items"), Mapping):
        return [_integral(item, subschema["items"]) for item in value]
    return value


def _with_defaults(validator_class: type) -> type:
    """A validator class that fills each missing property with a copy of its schema `default` before
    checking it (as snakemake.utils.validate(set_default=True) does), so defaults of nested sections fill
    too; turns a whole float into the int an integer key wants (`_integral`); and refuses a number that is
    not finite (.nan passes every minimum, .inf every exclusiveMaximum-free range)."""
    check_properties = validator_class.VALIDATORS["properties"]
    check_type = validator_class.VALIDATORS["type"]

    def set_defaults(validator, properties, instance, schema):
        if validator.is_type(instance, "object"):
            for key, subschema in properties.items():
                if "default" in subschema and key not in instance:
                    instance[key] = copy.deepcopy(subschema["default"])
                elif key in instance:
                    instance[key] = _integral(instance[key], subschema)
        yield from check_properties(validator, properties, instance, schema)

    def finite_type(validator, types, instance, schema):
        errors = list(check_type(validator, types, instance, schema))
        yield from errors
        if not errors and isinstance(instance, float) and not math.isfinite(instance):
            yield jsonschema.ValidationError(f"{instance} is not a finite number")

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults, "type": finite_type})


def _key(path: Sequence[Any]) -> str:
    return ".".join(str(p) for p in path)


def _describe(error: jsonschema.ValidationError) -> list[str]:
    """One message per problem, naming the key path."""
    key = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in known)
        where = f"{key} takes" if key else "known keys:"
        return [f"unknown key '{_key([*error.absolute_path, k])}' ({where} {', '.join(known)})" for k in unknown]
    path = list(error.absolute_path)
    if path[:1] == ["encoders"] and path[2:] == ["module"] and error.instance is None:  # an own encoder without it
        return [f"encoders.{path[1]}: not a built-in encoder ({', '.join(builtin_encoders())}); an encoder of "
                f"your own names the module that registers it (encoders.{path[1]}.module)"]
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [f"missing key '{_key([*error.absolute_path, k])}'" for k in missing]
    message = f"{key or '(top level)'}: {error.message}"
    if error.validator == "type" and isinstance(error.instance, str):
        try:
            number = float(error.instance)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            exponent = "e" in error.instance.lower() and "." not in error.instance
            message += (" (YAML reads 1e-3 as text: write 1.0e-3)" if exponent else
                        " (a number in quotes is text: write it without them)")
    return [message]


def validate_config(cfg: dict, source: str = "config") -> dict:
    """Check `cfg` against the schema and fill missing keys with their defaults, in place.

    Returns `cfg`. Raises MofaError with one line naming `source` and every offending key path.
    """
    if not isinstance(cfg, dict):
        raise MofaError(f"{source}: expected a mapping of config keys, got {type(cfg).__name__}")
    schema = load_schema()
    e3 = cfg.get("e3")
    if isinstance(e3, dict) and isinstance(e3.get("encoders"), list):  # an own encoder's E3 schedule: its defaults
        for name in e3["encoders"]:
            if isinstance(name, str):
                e3.setdefault(name, {})
    validator = _with_defaults(jsonschema.validators.validator_for(schema))(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (_key(e.absolute_path), e.validator))
    # reported as unknown keys, not as schedules of the wrong type
    stray = {section: _stray_experiment_keys(cfg, schema, section) for section in ("e1", "e3")}
    errors = [e for e in errors if not any(list(e.absolute_path)[:2] == [section, key]
                                           for section, keys in stray.items() for key in keys)]
    problems = [m for e in errors for m in _describe(e)] or _unknown_encoders(cfg) + _inverted_ranges(cfg)  # those need valid types
    problems += [f"unknown key '{section}.{key}' ({section} takes "
                 f"{', '.join(sorted(schema['properties'][section]['properties']))}, "
                 f"or the schedule of an encoder listed in {section}.encoders)"
                 for section, keys in stray.items() for key in keys]
    if problems:
        raise MofaError(f"{source}: " + "; ".join(dict.fromkeys(problems)))
    return cfg


def builtin_encoders() -> list[str]:
    """The encoders this project ships (the schema's `encoders` properties); others come from
    `encoders.<name>.module`."""
    return list(load_schema()["properties"]["encoders"]["properties"])


def _stray_experiment_keys(cfg: Mapping, schema: Mapping, section: str) -> list[str]:
    """Keys of `e1` or `e3` that are neither its own nor the schedule of an encoder in its encoders."""
    values, own = cfg.get(section), schema["properties"][section]["properties"]
    if not isinstance(values, dict):
        return []
    encoders = values.get("encoders") if isinstance(values.get("encoders"), list) else []
    return [key for key in values if key not in own and key not in encoders]


def _unknown_encoders(cfg: Mapping) -> list[str]:
    """A cross-key check the schema cannot express: every encoder that an experiment names is built in
    or configured under `encoders`."""
    builtin = builtin_encoders()
    known = [*builtin, *(n for n in cfg.get("encoders", {}) if n not in builtin)]
    named = [("e1.encoders", cfg.get("e1", {}).get("encoders", [])), ("e3.encoders", cfg.get("e3", {}).get("encoders", [])),
             ("e7.encoders", cfg.get("e7", {}).get("encoders", []))]
    return [f"{key}: unknown encoder '{name}' (known: {', '.join(known)}; add your own under "
            f"encoders.{name}.module)" for key, names in named for name in names if name not in known]


def _inverted_ranges(cfg: Mapping) -> list[str]:
    """The [minimum, maximum] pairs whose minimum is above their maximum."""
    low, high = cfg["synthetic"]["distribution"]["blendshapes"]
    return [f"synthetic.distribution.blendshapes: [{low}, {high}] is [minimum, maximum], but {low} > {high}"] if low > high else []


def merge(base: dict, update: Mapping) -> dict:
    """`base` updated in place by `update`, nested mappings merged key by key (later wins)."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
    return base


def nest(dotted: Mapping) -> dict:
    """{'face_model.n_shape': 10} -> {'face_model': {'n_shape': 10}}; plain keys pass through."""
    out: dict = {}
    for key, value in dotted.items():
        *parents, leaf = str(key).split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        merge(node, {leaf: value})
    return out


def load_config(path_or_preset: ConfigSource | Sequence[ConfigSource], overrides: Mapping | None = None) -> dict:
    """The validated config of a preset name or YAML file, defaults filled.

    path_or_preset: 'ci' | 'default' | 'paper' (config/<name>.yaml in the repository) or a path; a list
        of them is merged in order, later files winning (as Snakemake merges several --configfile).
    overrides: nested or dotted keys applied last, e.g. {'face_model.n_shape': 10}.
    """
    items = [path_or_preset] if isinstance(path_or_preset, (str, os.PathLike)) else list(path_or_preset)
    if not items:
        raise MofaError("load_config: no preset or config file given")
    cfg: dict = {}
    sources = []
    for item in items:
        path = Path(item)
        if isinstance(item, str) and path.suffix == "" and len(path.parts) == 1 and not path.exists():
            path = preset_path(item)
        elif not path.exists() and path.resolve().parent == CONFIG_DIR.resolve() and path.stem not in presets():
            raise MofaError(f"{_display(path)}: no such file: '{path.stem}' is not a preset "
                            f"(have {', '.join(presets())}; make reproduce PRESET=<name> reads config/<name>.yaml)")
        merge(cfg, read_yaml(path))
        sources.append(_display(path))
    if overrides:
        merge(cfg, nest(overrides))
        sources.append("overrides")
    return validate_config(cfg, " + ".join(sources))


def results_dir(cfg: Mapping) -> Path:
    """Where this preset's results go: <results_dir>/<preset>."""
    return Path(cfg["results_dir"]) / cfg["preset"]


def writable_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and check that a file can be written there (before any work, so that a
    run that cannot write its outputs stops at once); a MofaError naming it otherwise."""
    import tempfile

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test").close()
    except OSError as exc:
        from mofa.io import reason
        raise MofaError(f"{folder}: cannot write there ({reason(folder, exc)})") from None
    return folder


def config_hash(cfg: Mapping) -> str:
    """12 hex digits identifying a config (or a section of one), independent of key order."""
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def select_device(wanted: str) -> "torch.device":
    """The torch device of a `device` setting: 'auto' is cuda when torch sees a GPU, else cpu."""
    import torch

    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise MofaError(f"device: cuda asked, but this torch ({torch.__version__}) sees no CUDA GPU; "
                        "set device: auto or cpu")
    return torch.device(wanted)


__all__ = ["CONFIG_DIR", "REPO_ROOT", "SCHEMA_PATH", "config_hash", "load_config", "schema_default", "schema_section_defaults",
           "load_schema", "merge", "nest", "preset_path", "presets", "read_yaml", "results_dir", "select_device",
           "validate_config"]
