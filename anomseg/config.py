"""YAML configs: load, merge ``key.sub=value`` overrides, and save the resolved config."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from anomseg.errors import AnomsegError


class ConfigError(AnomsegError, ValueError):
    """A config file or override is malformed."""


def load_config(path: str | Path, overrides: list[str] | None = None, defaults: dict | None = None) -> dict:
    """Read a YAML config over ``defaults`` and apply ``a.b=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config not found; see configs/ for examples")
    try:
        user = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    cfg = merge(copy.deepcopy(defaults or {}), user)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: write key.sub=value")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return cfg


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
