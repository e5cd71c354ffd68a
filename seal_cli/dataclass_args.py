"""Command-line flags generated from a config dataclass, in the manner of TRL's ``HfArgumentParser``.

:class:`ConfigArgs` adds one flag per top-level scalar field of a config dataclass
(``max_length`` -> ``--max-length``): the type comes from the annotation, ``choices`` from a
``Literal``, a ``bool`` becomes ``--x/--no-x`` and a list of scalars takes several values. The
help is the field's ``help`` metadata followed once by its default. Nested dataclasses (unless
``expand``-ed) and mappings get no flag: the group's description lists them as ``--set`` keys.
A field added to the dataclass gets its flag with no change to the command.

Every flag defaults to ``argparse.SUPPRESS``, so only the flags given on the command line
reach the config (:meth:`ConfigArgs.values`); a flag left out never replaces a ``--config``
value with a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

_SCALARS = (str, int, float)
_METAVARS = {int: "N", float: "X"}


@dataclass(frozen=True)
class Flag:
    """One generated option: ``key`` is the dotted config key and the argparse ``dest``."""

    key: str
    names: tuple[str, ...]
    kwargs: dict


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _scalar_kwargs(tp: Any) -> dict | None:
    """``type``/``choices`` for a scalar annotation, or None for anything else."""
    tp = _strip_optional(tp)
    if typing.get_origin(tp) is typing.Literal:
        choices = typing.get_args(tp)
        return {"type": type(choices[0]), "choices": list(choices)}
    if tp in _SCALARS:
        return {"type": tp}
    return None


def _value_kwargs(tp: Any) -> dict | None:
    """argparse keyword arguments for a field of annotation ``tp``; None when it gets no flag."""
    tp = _strip_optional(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    is_list = origin is list and len(args) == 1
    is_tuple = origin is tuple and len(args) == 2 and args[1] is Ellipsis
    kwargs = _scalar_kwargs(args[0]) if (is_list or is_tuple) else _scalar_kwargs(tp)
    if kwargs is None:
        return None
    if is_list or is_tuple:
        kwargs["nargs"] = "+"
    return kwargs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _default_text(value: Any) -> str | None:
    """The default as shown in --help (as YAML spells it); None for 'not set' defaults (None, empty)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or value == "" or value == [] or value == ():
        return None
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def _help(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "").strip()
    shown = _default_text(_default(f))
    if shown is not None:
        text = f"{text} (default: {shown})" if text else f"default: {shown}"
    # argparse %-formats help strings ("95% interval" would break it).
    return text.replace("%", "%%")


def _names(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _walk(cls: type, expand: tuple[str, ...], prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """``(dotted key, field, annotation)`` of ``cls``'s fields, descending into the ``expand`` ones."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp = prefix + f.name, hints[f.name]
        if key in expand and dataclasses.is_dataclass(_strip_optional(tp)):
            out += _walk(_strip_optional(tp), expand, key + ".")
        else:
            out.append((key, f, tp))
    return out


@dataclass(frozen=True)
class ConfigArgs:
    """The flags of config dataclass ``cls``; every name below is a (dotted) config key.

    ``required``: keys whose flag must be given. ``aliases``: key -> flag name(s) replacing
    the generated ``--key-name`` (a flag whose name differs from its key). ``exclude``: keys
    that get no flag (the command declares its own). ``exclusive``: groups of keys of which
    at most one flag may be given; the one given replaces the whole group, so it also clears
    the others' ``--config`` values. ``expand``: nested dataclass fields whose scalar fields
    get flags too (``judge`` -> ``--judge-model`` for ``judge.model``).
    """

    cls: type
    required: tuple[str, ...] = ()
    aliases: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    exclusive: tuple[tuple[str, ...], ...] = ()
    expand: tuple[str, ...] = ()
    title: str = ""

    def __post_init__(self) -> None:
        walked = _walk(self.cls, self.expand)
        known = {key for key, _, _ in walked}
        named = {*self.required, *self.aliases, *self.exclude, *(k for g in self.exclusive for k in g)}
        unknown = sorted(named - known) + [e for e in self.expand if not any(k.startswith(e + ".") for k in known)]
        if unknown:
            raise ValueError(f"{self.cls.__name__} has no field {', '.join(unknown)} to give a flag")
        no_flag = sorted(set(self.required) & set(self.set_only))
        if no_flag:
            raise ValueError(f"{self.cls.__name__}.{no_flag[0]} gets no flag, so it cannot be required")

    @cached_property
    def _fields(self) -> tuple[tuple[str, dataclasses.Field, Any, dict | None], ...]:
        return tuple((key, f, tp, _value_kwargs(tp)) for key, f, tp in _walk(self.cls, self.expand)
                     if key not in self.exclude)

    @cached_property
    def flags(self) -> tuple[Flag, ...]:
        out = []
        for key, f, _, kwargs in self._fields:
            if kwargs is None:
                continue
            names = _names(self.aliases.get(key, "--" + key.replace(".", "-").replace("_", "-")))
            kwargs = {**kwargs, "help": _help(f), "required": key in self.required}
            if "action" not in kwargs and "choices" not in kwargs:
                long_name = next((n for n in names if n.startswith("--")), names[0])
                kwargs["metavar"] = _METAVARS.get(kwargs["type"], long_name.lstrip("-").replace("-", "_").upper())
            out.append(Flag(key, names, kwargs))
        return tuple(out)

    @cached_property
    def set_only(self) -> tuple[str, ...]:
        """Keys with no flag (nested sections, mappings): ``--set`` and ``--config`` keys only."""
        return tuple(key for key, _, _, kwargs in self._fields if kwargs is None)

    def description(self) -> str:
        text = f"Keys of {self.cls.__name__}, also settable in the --config file and with --set."
        sections = {key for key, _, tp, _ in self._fields if dataclasses.is_dataclass(_strip_optional(tp))}
        if self.set_only:
            keys = [key + (".KEY" if key in sections else "") for key in self.set_only]
            text += f" With --set only: {', '.join(keys)}."
        return text

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(self.title or f"{self.cls.__name__} settings", self.description())
        containers = {}
        for keys in self.exclusive:
            exclusive = group.add_mutually_exclusive_group()
            containers.update({k: exclusive for k in keys})
        for flag in self.flags:
            containers.get(flag.key, group).add_argument(
                *flag.names, dest=flag.key, default=argparse.SUPPRESS, **flag.kwargs)

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """The (nested) config mapping of the flags given in ``args``."""
        given = {flag.key: getattr(args, flag.key) for flag in self.flags if hasattr(args, flag.key)}
        out: dict[str, Any] = {}
        for keys in self.exclusive:
            if any(k in given for k in keys):
                out.update({k: None for k in keys})
        out.update(given)
        return _nest(out)


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out
