"""The ``seal`` command.

Each subcommand lives in ``seal_cli/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
``func(args) -> int``. A stage command's flags are generated from its config
dataclass (:mod:`seal_cli.dataclass_args`); the flags it shares with the others
are declared once in :mod:`seal_cli.options`. Command modules import heavy
libraries (torch, transformers, prefect) inside ``func`` so that ``seal --help``
stays fast.

User errors (:class:`seal_core.errors.SealError`) print one line and exit 2 (3 for a checkpoint
that belongs to another run, so a launcher can start afresh).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order is the order shown in --help: the pipeline's order.
COMMANDS = ["ingest", "rank", "score", "combine", "select", "inspect", "finetune", "generate", "evaluate", "likelihood", "run", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seal",
        description="seal-curate: safety-aware data selection for LLM fine-tuning (SEAL).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"seal_cli.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from seal_core.errors import SealError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SealError as e:
        print(f"error: {e}", file=sys.stderr)
        # 3: the checkpoint belongs to another run (a launcher may start afresh); 2: any other user error.
        return 3 if type(e).__name__ == "CheckpointMismatch" else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `seal inspect ... | head` closes stdout early; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
