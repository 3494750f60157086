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

    def __copy__(self):  # one ANY: a deep-copied schema still says "anything" (checked with ``is``)
        return self

    def __deepcopy__(self, memo):
        return self


ANY = _Any()

# -- reading YAML safely -----------------------------------------------------------------------------
# A config is text a user (or someone else) wrote: it must not expand without bound ("billion laughs":
# aliases of aliases), nest without bound (a RecursionError in the parser), or keep the last of a key
# given twice without a word.
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 64          # nested mappings / lists
MAX_NODES = 100_000     # values after every alias is expanded


class _DuplicateKey(Exception):
    def __init__(self, key, line):
        self.key, self.line = key, line


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice (merge keys ``<<`` still merge)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_yaml_map)


class _Recursive(Exception):
    def __init__(self, line: int):
        self.line = line


def _expanded_size(node, memo: dict) -> int:
    """Values under ``node`` with every alias expanded (shared nodes counted once per use), iteratively; an alias
    inside the node it names (a recursive anchor, an endless value) raises :class:`_Recursive`."""
    stack, open_nodes = [(node, False)], set()  # open: on the path from the root to the node being expanded
    while stack:
        n, done = stack.pop()
        children = [c for kv in n.value for c in kv] if isinstance(n, yaml.MappingNode) else \
            (n.value if isinstance(n, yaml.SequenceNode) else [])
        if done:
            open_nodes.discard(id(n))
            memo[id(n)] = min(1 + sum(memo[id(c)] for c in children), MAX_NODES + 1)
            continue
        if id(n) in memo:
            continue
        open_nodes.add(id(n))
        stack.append((n, True))
        for c in children:
            if id(c) in open_nodes:
                raise _Recursive(c.start_mark.line + 1)
            if id(c) not in memo:
                stack.append((c, False))
    return memo[id(node)]


def read_yaml(text: str, source: str = "<text>"):
    """Parse YAML text safely (the limits above, duplicate keys refused); errors are one ConfigError line."""
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):  # an iterator: no recursion, checked before composing
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1
                    raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels (line {line}); a config is a few "
                                      f"levels of sections")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if _expanded_size(node, {}) > MAX_NODES:
                raise ConfigError(f"{source}: expands to more than {MAX_NODES} values through anchors and aliases; "
                                  f"write the values out")
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except _DuplicateKey as dup:
        raise ConfigError(f"{source}: key {dup.key!r} is given twice (line {dup.line}); keep one") from None
    except _Recursive as rec:
        raise ConfigError(f"{source}: an alias refers to the value that contains it (a recursive anchor, line "
                          f"{rec.line}): the value would never end; write it out") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None


def load_config(path: str | Path, overrides: list[str] | None = None, defaults: dict | None = None,
                schema: dict | None = None) -> dict:
    """Read a YAML config over ``defaults``, apply ``a.b=value`` / ``list.0.key=value`` overrides (values
    parsed as YAML) and, if ``schema`` is given, check the result against it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config not found; see configs/ for examples")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes; a config is at most {MAX_CONFIG_BYTES} bytes")
        user = read_yaml(path.read_text(), str(path))
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
        parsed = read_yaml(value, f"override {item!r}")
    except ConfigError as exc:
        raise ConfigError(f"{exc}; quote strings with special characters") from None
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
    """Raise :class:`ConfigError` (one line) on an unknown key or a value of the wrong type. A schema
    mapping with a ``"*"`` key takes any other key, each value checked against ``schema["*"]``."""
    if schema is ANY:
        return
    if isinstance(schema, dict):
        if not isinstance(cfg, dict):
            raise ConfigError(f"{source}: {where or 'the config'} must be a mapping (key: value), got {cfg!r}")
        for k, v in cfg.items():
            key = f"{where}.{k}" if where else str(k)
            if k not in schema and "*" in schema:  # a mapping of named sections, each as schema["*"]
                check_config(v, schema["*"], source, key)
                continue
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
