"""The pass registry: kebab-case names to pass classes, plus option parsing and docs.

Options are frozen dataclasses; this module turns pipeline text values into typed fields and
refuses unknown keys, wrong types and conflicting fields with the pass's name in the message.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import types
import typing
from typing import Any, Literal

from graphopt.core.pass_base import GraphoptPass

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_REGISTRY: dict[str, type[GraphoptPass]] = {}


class RegistryError(ValueError):
    """A pass was declared wrongly (a bug in the pass, not a user error)."""


def option(default: Any, doc: str, *, minimum: float | None = None) -> Any:
    """A documented option field, e.g. ``ratio: float = option(0.5, "fraction zeroed")``;
    ``minimum`` is checked by :class:`CheckedOptions` when the options are made."""
    meta: dict[str, Any] = {"doc": doc}
    if minimum is not None:
        meta["minimum"] = minimum
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class CheckedOptions:
    """Options whose fields' ``minimum`` is enforced when they are made (a pipeline text
    or a Python call): one check instead of a ``__post_init__`` per pass."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            low = f.metadata.get("minimum")
            value = getattr(self, f.name)
            if low is not None and value < low:
                raise ValueError(f"{f.name} must be >= {low:g}, got {value}")


def register_pass(cls: type[GraphoptPass]) -> type[GraphoptPass]:
    """Class decorator that registers a pass under its ``name``; duplicates are refused."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegistryError(f"{cls.__name__}: pass name {name!r} is not kebab-case")
    if not cls.__name__.endswith("Pass"):
        raise RegistryError(f"{cls.__name__}: pass class names end in 'Pass'")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise RegistryError(
            f"pass name '{name}' is already registered by {_REGISTRY[name].__qualname__}"
        )
    opts = cls.Options
    if not dataclasses.is_dataclass(opts) or not opts.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise RegistryError(f"{cls.__name__}.Options must be a frozen dataclass")
    for f in dataclasses.fields(opts):
        if not f.metadata.get("doc"):
            raise RegistryError(f"{cls.__name__}.Options.{f.name} has no doc (use option())")
    _REGISTRY[name] = cls
    return cls


def _ensure_loaded() -> None:
    # The built-in passes register themselves when their package is imported. The framework
    # loads them by name, like a plugin: core never imports a pass module statically
    # (tests/test_layers.py checks the import layers).
    importlib.import_module("graphopt.passes")


def catalog() -> list[dict[str, Any]]:
    """Every registered pass: name, class, summary, tolerance, needs, documented options."""
    listing = []
    for name, cls in all_passes().items():
        opts = [
            {
                "name": f.name,
                "type": type_name(tp),
                "default": format_value(default_of(f)),
                "doc": f.metadata["doc"],
            }
            for f, tp in option_fields(cls.Options)
        ]
        listing.append(
            {
                "name": name,
                "class": cls.__name__,
                "summary": cls.summary or (cls.__doc__ or "").strip().splitlines()[0],
                "tolerance": cls.tolerance.to_dict(),
                "needs": sorted(cls.needs),
                "options": opts,
            }
        )
    return listing


def get_pass(name: str) -> type[GraphoptPass]:
    _ensure_loaded()
    return _REGISTRY[name]


def has_pass(name: str) -> bool:
    _ensure_loaded()
    return name in _REGISTRY


def all_passes() -> dict[str, type[GraphoptPass]]:
    _ensure_loaded()
    return dict(sorted(_REGISTRY.items()))


def close_names(name: str, candidates: list[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)


# ---------------------------------------------------------------- option values


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(
            str(a).lower() if isinstance(a, bool) else str(a) for a in typing.get_args(tp)
        )
    if origin in (list, tuple):
        return f"[{type_name(typing.get_args(tp)[0])}]"
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " | ".join(type_name(a) for a in args) + " | none"
    return getattr(tp, "__name__", str(tp))


def convert_value(tp: Any, raw: str | list[str]) -> Any:
    """Convert pipeline text to the field type; raises ValueError with a short reason."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if (
            isinstance(raw, str)
            and raw.lower() in ("none", "null")
            and len(args) < len(typing.get_args(tp))
        ):
            return None
        errors = []
        for a in args:
            try:
                return convert_value(a, raw)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(f"expected {type_name(tp)}")
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1]
        items = raw if isinstance(raw, list) else [raw]
        values = [convert_value(item, x) for x in items]
        return tuple(values) if origin is tuple else values
    if isinstance(raw, list):
        raise ValueError(f"expected {type_name(tp)}, got a list")
    if origin is Literal:
        for choice in typing.get_args(tp):
            if str(choice).lower() == raw.lower():
                return choice
        raise ValueError(f"expected one of {type_name(tp)}")
    if tp is bool:
        low = raw.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if tp is int:
        try:
            return int(raw, 0)
        except ValueError:
            raise ValueError("expected an integer") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
    if tp is str:
        return raw
    raise ValueError(f"unsupported option type {tp!r}")


def quote(s: str) -> str:
    """Double-quote a scalar that holds pipeline delimiters, so printing round-trips."""
    if not any(c in s for c in ',{}[]()"=') and s == s.strip():
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_value(value: Any) -> str:
    """Pipeline text for an option value (scalars quoted where needed)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, str):
        return quote(value)
    if value is None:
        return "none"
    return str(value)


def option_fields(opts_cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(opts_cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(opts_cls)]


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING
