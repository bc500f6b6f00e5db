"""Plain mappings (YAML, ``--set`` overrides, typed CLI values) -> typed, nested dataclasses.

What ``transformers.HfArgumentParser.parse_dict`` does for one flat dataclass, plus what a recipe needs:
nested sections, values checked against each field's annotation (an error names the key, the type and the
field's help), a "did you mean" for an unknown key, and sections that collect the keys they do not declare
(a trainer section's TRL fields). It knows no field of thinkless_lite's: ``config`` holds the schema.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import fields
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe or override that cannot be used as written; the message says how to fix it."""


class RecipeLoader(yaml.SafeLoader):
    """YAML as recipes are written: ``1e-4`` is a number, as in YAML 1.2 (YAML 1.1 wants ``1.0e-4``)."""


RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
                                    list("-+0123456789"))


def read_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def type_ok(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits a dataclass field's annotation (ours or TRL's); types this does not know pass."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in typing.get_args(annotation))
    if origin in (list, dict):
        return isinstance(value, origin)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool, list, dict):
        return isinstance(value, annotation)
    return True


def typed(value: Any, annotation: Any, key: str, help_text: str) -> Any:
    """``value`` checked against ``annotation``; an int given for a float setting becomes that float."""
    if not type_ok(value, annotation):
        name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        raise ConfigError(f"{key}: expected {name}, got {value!r} ({type(value).__name__}); {help_text}")
    return float(value) if annotation is float else value


def unknown_keys_error(keys: list[str], allowed: list[str], where: str, *, also: str | None = None,
                       also_keys: list[str] = ()) -> ConfigError:
    """An error naming each unknown key, the closest allowed one, and the keys a section takes; ``also`` names
    what else the section takes (e.g. "TRL's GRPOConfig"), whose ``also_keys`` count for the closest match."""
    hints = [f"{where}{key}" + (f" (did you mean {close[0]}?)" if (close := difflib.get_close_matches(
        key, [*allowed, *also_keys], 1)) else "") for key in keys]
    section = where.rstrip(".")
    also_text = f", or any field of {also}" if also else ""
    return ConfigError(f"unknown key{'s' if len(keys) > 1 else ''} {', '.join(hints)}; allowed keys"
                       f"{' in ' + section if section else ''}: {', '.join(sorted(allowed))}{also_text}")


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError.

    A class that names one of its fields in ``EXTRA_KEYS`` collects the keys it does not declare into that
    mapping instead (``config.TrainerSection``: TRL's fields, checked against TRL when the stage starts).
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    by_name = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(by_name))
    extra_field = getattr(cls, "EXTRA_KEYS", None)
    passthrough = {}
    if unknown and extra_field:
        passthrough, unknown = {k: data[k] for k in unknown}, []
    if unknown:
        raise unknown_keys_error(unknown, list(by_name), where)
    kwargs: dict = {}
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if name not in by_name:
            continue
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = from_dict(annotation, value, f"{where}{name}.")
            continue
        kwargs[name] = typed(value, annotation, f"{where}{name}", f"help: {by_name[name].metadata.get('help', '')}")
    if passthrough:
        kwargs[extra_field] = {**kwargs.get(extra_field, {}), **passthrough}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # a section's own checks (MiniWorldConfig)
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {err}") from err


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["rl.alpha=0.01", "model.backend=hf"]`` -> nested dict; values are parsed as YAML scalars."""
    data: dict = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. rl.alpha=0.01")
        *sections, last = key.strip().split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {section!r} is not a section")
        node[last] = read_yaml(raw)
    return data


def merge(base: dict, extra: dict, cls=None) -> dict:
    """Overrides win; sections merge key by key, but a dict-valued setting is replaced whole."""
    hints = typing.get_type_hints(cls) if cls is not None else {}
    out = dict(base)
    for key, value in extra.items():
        section = hints.get(key)
        if isinstance(value, dict) and isinstance(out.get(key), dict) and dataclasses.is_dataclass(section):
            out[key] = merge(out[key], value, section)
        else:
            out[key] = value
    return out
