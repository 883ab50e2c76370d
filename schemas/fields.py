"""Documented dataclass fields, and typed dataclasses to and from plain JSON data.

Every option of every command is a dataclass field declared with :func:`doc`: its text is the
field's documentation and the command's ``--help`` (``cli.py`` generates the click options from
the fields). :func:`to_data` and :func:`from_data` turn such dataclasses (nested, with tuples
and optional parts) into JSON-serializable dicts and back, refusing unknown and missing fields:
the one reader and writer of every typed record (index manifest, option records).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, field
from typing import Any, Literal

from tda.errors import ConfigError


def doc(text: str, *, default: Any = MISSING, default_factory: Any = MISSING,
        flag: str | None = None, short: str | None = None, envvar: str | None = None,
        cli: bool = True) -> Any:
    """A dataclass field documented by ``text`` (its ``--help``).

    ``flag``: the command-line name when it is not ``--field-name`` (e.g. ``--model`` for
    ``model_dir``); ``short``: a one-letter alias (``-k``); ``envvar``: an environment variable
    read when the option is not given; ``cli=False``: a field of the Python API only. A field
    without a default is a required option."""
    meta = {"help": text, "flag": flag, "short": short, "envvar": envvar, "cli": cli}
    kw: dict[str, Any] = {"metadata": meta}
    if default is not MISSING:
        kw["default"] = default
    if default_factory is not MISSING:
        kw["default_factory"] = default_factory
    return field(**kw)


def added(default: Any = None, *, default_factory: Any = MISSING) -> Any:
    """A record field added after its record was first written: it has a default, so data
    without it still reads, and it is left out of :func:`to_data` while it holds that default,
    so such data is also written back unchanged."""
    kw: dict[str, Any] = {"metadata": {"added": True}}
    if default_factory is not MISSING:
        kw["default_factory"] = default_factory
    else:
        kw["default"] = default
    return field(**kw)


def _at_default(f: dataclasses.Field, value: Any) -> bool:
    if f.default_factory is not MISSING:
        return value == f.default_factory()
    return value == f.default


def help_of(cls, name: str) -> str:
    """The documentation of field ``name`` of dataclass ``cls``."""
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def to_data(obj: Any) -> Any:
    """A dataclass (nested dataclasses, tuples, lists, dicts, scalars) as JSON-ready data;
    fields declared with :func:`added` are left out while they hold their default."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("added") and _at_default(f, getattr(obj, f.name)))}
    if isinstance(obj, (list, tuple)):
        return [to_data(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    return obj


def from_data(cls, data: Any, where: str = "", error: type[Exception] = ConfigError) -> Any:
    """Build dataclass ``cls`` from :func:`to_data` output. Fields missing from ``data`` take
    their defaults (so records may gain optional fields without breaking old data); a missing
    required field, an unknown field or a value of the wrong kind raises ``error`` naming
    ``where`` and the field."""
    return _convert(cls, data, where or cls.__name__, error)


def _convert(hint: Any, value: Any, where: str, error) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise error(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(hint)
        fields = {f.name: f for f in dataclasses.fields(hint) if f.init}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise error(f"{where}: unknown fields {unknown}")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _convert(hints[name], value[name], f"{where}.{name}", error)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise error(f"{where}: missing field {name!r}")
        return hint(**kwargs)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where, error)
            except error:
                continue
        raise error(f"{where}: {value!r} is not a {hint}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise error(f"{where}: {value!r} is not one of {typing.get_args(hint)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise error(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(hint)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]", error) for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise error(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]", error)
                         for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return [_convert(item, v, f"{where}[{i}]", error) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise error(f"{where}: expected an object, got {type(value).__name__}")
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise error(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    return value
