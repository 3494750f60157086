"""Options validated where they are declared: one mechanism for every method, head and settings section.

An option is a keyword parameter of a constructor (or of a small declaring function) whose type hint
says what it accepts; ranges and other constraints ride along as ``typing.Annotated`` metadata::

    def __init__(self, feat_dim: int, k: Annotated[int, Range(1)] = 10,
                 backend: Literal["faiss", "torch"] = "faiss", temperature: Positive = 1.0): ...

:func:`check_options` checks a dict of options against such a signature before anything is built:
an unknown name, a value of the wrong type or outside its range is one line naming the owner, the
option, the value and what is valid. Supported hints: ``bool``, ``int``, ``float`` (an int is fine;
NaN and infinity are not), ``str``, ``Literal[...]``, ``X | None``, ``list[X]`` / ``tuple[X, ...]`` /
``Sequence[X]`` (a list or tuple, every element checked), ``dict`` (free-form) and ``Annotated[X,
Range(...) | NonEmpty]``; a parameter without a hint is an error of the declaration, caught by the tests.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from anomseg.config import ConfigError


class OptionError(ConfigError):
    """An option of a method, head or settings section is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class Range:
    """A numeric range: ``lo`` / ``hi`` bounds (None: unbounded), open or closed."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, v) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class NonEmpty:
    """A list or string that must not be empty."""


Positive = Annotated[float, Range(0, None, lo_open=True)]
NonNegative = Annotated[float, Range(0)]
PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
Fraction = Annotated[float, Range(0, 1)]  # [0, 1]


class _Bad(Exception):
    def __init__(self, expected: str):
        self.expected = expected


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        base, *meta = args
        text = _describe(base)
        for m in meta:
            if isinstance(m, Range):
                text += f" {m}"
            elif isinstance(m, NonEmpty):
                text = f"a non-empty {text.removeprefix('a ')}"
        return text
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple, collections.abc.Sequence):
        inner = args[0] if args else Any
        return f"a list of {_describe(inner).removeprefix('a ').removeprefix('an ')}"
    if hasattr(hint, "describe"):
        return hint.describe()
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
             type(None): "null", Any: "anything"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_value(value, hint):
    """``value`` converted as ``hint`` accepts it (an int for a float becomes a float); raises _Bad."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    if origin is Annotated:
        base, *meta = args
        value = check_value(value, base)
        for m in meta:
            if isinstance(m, Range) and not m.contains(value):
                raise _Bad(_describe(hint))
            if isinstance(m, NonEmpty) and len(value) == 0:
                raise _Bad(_describe(hint))
        return value
    if origin is Literal:
        for a in args:
            if value == a and type(value) is type(a):
                return value
        raise _Bad(_describe(hint))
    if origin in (typing.Union, types.UnionType):
        failures = []
        for a in args:
            try:
                return check_value(value, a)
            except _Bad as bad:
                failures.append((a, bad))
        specific = [bad for a, bad in failures if a is not type(None)]
        if len(specific) == 1 and value is not None:  # X | None given a wrong X: say what is wrong with it
            raise _Bad(specific[0].expected + (" or null" if len(args) == 2 else ""))
        raise _Bad(_describe(hint))
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise _Bad(_describe(hint))
        inner = args[0] if args else Any
        try:
            return type(value)(check_value(v, inner) for v in value)
        except _Bad:
            raise _Bad(_describe(hint)) from None
    if hint is type(None):
        if value is None:
            return None
        raise _Bad("null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Bad(_describe(hint))
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Bad(_describe(hint))
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            raise _Bad("a finite number")
        raise _Bad(_describe(hint))
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Bad(_describe(hint))
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise _Bad(_describe(hint))
    if hasattr(hint, "check_option"):  # a declared section type (e.g. anomseg.data.DatasetSection)
        problem = hint.check_option(value)
        if problem:
            raise _Bad(problem)
        return value
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Bad(_describe(hint))
    return value


def declared(fn, skip=()) -> dict[str, inspect.Parameter]:
    """The keyword options ``fn`` declares (``self``, ``*args``, ``**kwargs`` and ``skip`` left out)."""
    params = inspect.signature(fn).parameters
    return {n: p for n, p in params.items() if n != "self" and n not in skip
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def hints(fn) -> dict:
    target = fn.__init__ if isinstance(fn, type) else fn
    return typing.get_type_hints(target, include_extras=True)


def check_options(owner: str, fn, options: dict, skip=()) -> dict:
    """Check ``options`` against the keyword parameters of ``fn`` (a function or a class); returns them
    converted (ints given for floats become floats). Raises :class:`OptionError` (one line)."""
    if not isinstance(options, dict):
        raise OptionError(f"{owner}: options must be a mapping (name: value), got {options!r}")
    params = declared(fn, skip)
    types_ = hints(fn)
    out = {}
    for name, value in options.items():
        if name not in params:
            near = difflib.get_close_matches(str(name), list(params), n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            valid = ", ".join(params) or "none"
            raise OptionError(f"{owner}: unknown option {name!r}; {hint}valid options: {valid}")
        try:
            out[name] = check_value(value, types_.get(name, Any))
        except _Bad as bad:
            raise OptionError(f"{owner}: option {name} = {value!r} must be {bad.expected}") from None
    return out


def undeclared(fn, skip=()) -> list[str]:
    """Parameters of ``fn`` without a type hint (a declaration error; the tests require none)."""
    types_ = hints(fn)
    return [n for n in declared(fn, skip) if n not in types_]
