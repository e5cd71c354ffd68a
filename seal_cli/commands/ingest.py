"""``seal ingest``: read raw conversation data into the canonical samples Parquet."""

from __future__ import annotations

import logging
import sys

from seal_core.ingest import IngestConfig
from seal_core.ingest.formats import RECORD_FORMATS

from .. import options
from ..dataclass_args import ConfigArgs

ARGS = ConfigArgs(IngestConfig)


def register(sub) -> None:
    p = sub.add_parser(
        "ingest",
        help="read JSONL/JSON/CSV/Parquet/HF datasets into canonical samples.parquet",
        description=(
            f"Read conversations (record formats: {', '.join(RECORD_FORMATS)}) from "
            "JSONL, JSON, CSV/TSV or Parquet files (optionally .gz), saved Hugging Face datasets or Hub ids, "
            "and write OUT/samples.parquet, OUT/rejects.parquet, OUT/summary.json and OUT/config.json."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, saved datasets or Hub ids")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-file log lines on stderr")
    options.add_config_arguments(p, ARGS, set_example="--set max_chars=50000")
    p.set_defaults(func=run)


def build_config(args):
    return options.build_config(args, ARGS)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("seal_core.ingest")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("ingest: %(message)s"))
        logger.addHandler(h)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def run(args) -> int:
    from seal_core.ingest import format_summary, ingest

    cfg = build_config(args)
    _setup_logging(args.quiet)
    result = ingest(args.inputs, args.out, cfg)
    print(format_summary(result))
    return 0
