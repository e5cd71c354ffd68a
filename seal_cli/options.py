"""The flags the stage commands share, declared once, and the config they build.

A stage's settings come from, lowest precedence first: its config dataclass's defaults,
the ``--config`` YAML file, the flags generated from the dataclass, ``--set key=value``.
"""

from __future__ import annotations

import argparse
from typing import Any

from seal_core.config import deep_merge, from_dict, load_yaml, parse_overrides

from .dataclass_args import ConfigArgs


def add_config_arguments(parser: argparse.ArgumentParser, spec: ConfigArgs, *, set_example: str,
                         resume_help: str | None = None, section: str | None = None) -> None:
    """``spec``'s generated flags, then --config, --set and, given ``resume_help``, --resume."""
    spec.add_to(parser)
    where = f" (its `{section}:` section, or the whole file)" if section else ""
    parser.add_argument("--config", metavar="YAML",
                        help=f"YAML file of {spec.cls.__name__} keys{where}; flags override it")
    add_set_argument(parser, set_example)
    if resume_help:
        parser.add_argument("--resume", action="store_true", help=resume_help)


def add_set_argument(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key (dotted for nested keys), e.g. {example}")


def read_config_file(path: str | None, section: str | None = None) -> dict[str, Any]:
    """The ``--config`` mapping: the file's ``section:`` mapping if it has one, else the whole file."""
    if not path:
        return {}
    data = load_yaml(path)
    if section and isinstance(data.get(section), dict):
        return dict(data[section])
    return data


def build_config(args: argparse.Namespace, spec: ConfigArgs, section: str | None = None) -> Any:
    data = read_config_file(args.config, section)
    merged = deep_merge(deep_merge(data, spec.values(args)), parse_overrides(args.overrides))
    return from_dict(spec.cls, merged)


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows a hand-declared flag's default after its help, unless the default means 'unset'."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if d is None or d is False or d is argparse.SUPPRESS or d == [] or "%(default)" in text:
            return text
        return text + " (default: %(default)s)"
