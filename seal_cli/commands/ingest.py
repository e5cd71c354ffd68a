"""``seal ingest``: read raw conversation data into the canonical samples Parquet."""

from __future__ import annotations

import logging
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "ingest",
        help="read JSONL/JSON/CSV/Parquet/HF datasets into canonical samples.parquet",
        description=(
            "Read conversations (OpenAI messages, Alpaca, ShareGPT, Anthropic HH, prompt/response) from "
            "JSONL, JSON, CSV/TSV or Parquet files (optionally .gz), saved Hugging Face datasets or Hub ids, "
            "and write OUT/samples.parquet, OUT/rejects.parquet, OUT/summary.json and OUT/config.json."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, saved datasets or Hub ids")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default=None, choices=["auto", "messages", "alpaca", "sharegpt", "hh", "prompt-response"],
                   help="record format (default: auto, detected per file)")
    p.add_argument("--hh-field", default=None, choices=["chosen", "rejected"],
                   help="which HH transcript to read (default: chosen)")
    p.add_argument("--max-chars", type=int, default=None, help="reject samples longer than this (default: 200000)")
    p.add_argument("--csv-header", default=None, choices=["auto", "yes", "no"],
                   help="whether CSV files start with a header row (default: auto)")
    p.add_argument("--split", default=None, help="split of a Hub dataset or saved DatasetDict (default: train)")
    p.add_argument("--config", help="YAML file with ingest settings (keys of IngestConfig)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set max_chars=50000")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-file log lines on stderr")
    p.set_defaults(func=run)


def build_config(args):
    from seal_core.config import deep_merge, from_dict, load_yaml, parse_overrides
    from seal_core.ingest import IngestConfig

    data = load_yaml(args.config) if args.config else {}
    flags = {}
    for key in ("format", "hh_field", "max_chars", "csv_header", "split"):
        value = getattr(args, key)
        if value is not None:
            flags[key] = value
    if args.no_progress:
        flags["progress"] = False
    data = deep_merge(deep_merge(data, flags), parse_overrides(args.overrides))
    return from_dict(IngestConfig, data)


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
