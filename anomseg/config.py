"""YAML configs: load, merge ``key.sub=value`` overrides, check against the tool's schema, save.

A tool's schema is its ``DEFAULTS`` dict read as a type map (:func:`schema_from_defaults`): every
key it has is valid, every other key is an error naming the nearest valid one; a value must have
the type of its default (an int where a float is expected is fine; ``None`` defaults accept the
types given in ``extra``). ``ANY`` marks free-form values (``options`` dicts), ``[item_schema]`` a
list whose every element is checked (the ``methods`` of an evaluation).
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

from anomseg.errors import AnomsegError


class ConfigError(AnomsegError, ValueError):
    """A config file or override is malformed."""


class _Any:
    def __repr__(self):
        return "ANY"


ANY = _Any()


def load_config(path: str | Path, overrides: list[str] | None = None, defaults: dict | None = None,
                schema: dict | None = None) -> dict:
    """Read a YAML config over ``defaults``, apply ``a.b=value`` / ``list.0.key=value`` overrides (values
    parsed as YAML) and, if ``schema`` is given, check the result against it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config not found; see configs/ for examples")
    try:
        user = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}); give a YAML text file") from None
    if user is None:
        user = {}
    if not isinstance(user, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys (key: value), not a {type(user).__name__}")
    cfg = merge(copy.deepcopy(defaults or {}), user)
    for item in overrides or []:
        apply_override(cfg, item)
    if schema is not None:
        check_config(cfg, schema, source=str(path))
    return cfg


def apply_override(cfg: dict, item: str) -> None:
    """``a.b=value``: set a nested key (created if missing); a numeric part indexes a list."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: write key.sub=value")
    key, value = item.split("=", 1)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: the value is not valid YAML; quote strings with special characters") from None
    node = cfg
    parts = key.split(".")
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i]) or 'the config'} is a list of {len(node)}; "
                                  f"index it with 0..{len(node) - 1}")
            if last:
                node[int(p)] = parsed
            else:
                node = node[int(p)]
        elif isinstance(node, dict):
            if last:
                node[p] = parsed
            else:
                if node.get(p) is None:
                    node[p] = {}
                node = node[p]
        else:
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:i])} is a {type(node).__name__}, not a section")


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge (``update`` wins)."""
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def save_config(cfg: dict, path: str | Path) -> Path:
    """Write the resolved config (atomically: a full disk keeps the previous one)."""
    from anomseg.files import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump(cfg, sort_keys=False))


# -- schemas -------------------------------------------------------------------------------------

def schema_from_defaults(defaults: dict, extra: dict | None = None) -> dict:
    """The type map of ``defaults``; ``extra`` (dotted keys) overrides entries: ``ANY``, a type or a
    tuple of types (``type(None)`` allowed), or ``[item_schema]`` for a list of sections."""
    def convert(v):
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        if v is None:
            return ANY
        if isinstance(v, bool):
            return bool
        if isinstance(v, int):
            return int
        if isinstance(v, float):
            return (int, float)
        if isinstance(v, str):
            return str
        if isinstance(v, (list, tuple)):
            return list
        return ANY

    schema = convert(defaults)
    for dotted, spec in (extra or {}).items():
        node = schema
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = spec
    return schema


NONE = type(None)
OPTIONAL_STR = (str, NONE)
OPTIONAL_INT = (int, NONE)
# the backbone section shared by the evaluation and head tools
BACKBONE_SCHEMA = {"name": OPTIONAL_STR, "options": ANY, "checkpoint": (str, list, NONE), "bn": str}


def _type_name(spec) -> str:
    types = spec if isinstance(spec, tuple) else (spec,)
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string", list: "a list", dict: "a mapping",
             type(None): "null"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _type_ok(value, spec) -> bool:
    types = spec if isinstance(spec, tuple) else (spec,)
    if isinstance(value, bool) and bool not in types:
        return False  # true is not an integer here
    if isinstance(value, int) and not isinstance(value, bool) and float in types:
        return True
    return isinstance(value, types)


def check_config(cfg, schema, source: str = "config", where: str = "") -> None:
    """Raise :class:`ConfigError` (one line) on an unknown key or a value of the wrong type."""
    if schema is ANY:
        return
    if isinstance(schema, dict):
        if not isinstance(cfg, dict):
            raise ConfigError(f"{source}: {where or 'the config'} must be a mapping (key: value), got {cfg!r}")
        for k, v in cfg.items():
            key = f"{where}.{k}" if where else str(k)
            if k not in schema:
                near = difflib.get_close_matches(str(k), [str(s) for s in schema], n=1, cutoff=0.5)
                hint = f"did you mean {(where + '.' if where else '') + near[0]!r}?" if near else \
                    f"valid keys here: {', '.join(map(str, schema))}"
                raise ConfigError(f"{source}: unknown key {key!r}; {hint}")
            check_config(v, schema[k], source, key)
        return
    if isinstance(schema, list):  # a list of sections
        if not isinstance(cfg, list):
            raise ConfigError(f"{source}: {where} must be a list of sections (- {{name: ...}}), got {cfg!r}")
        for i, item in enumerate(cfg):
            check_config(item, schema[0], source, f"{where}.{i}")
        return
    if not _type_ok(cfg, schema):
        raise ConfigError(f"{source}: {where} = {cfg!r} must be {_type_name(schema)}")
