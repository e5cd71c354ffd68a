"""``seal inspect``: summarise a scores file (distribution, best/worst samples, label AUROC)."""

from __future__ import annotations

from ..options import DefaultsHelpFormatter

DESCRIPTION = """\
Summarise a scores file: schema, row count, score distribution (terminal histogram and
quantiles; --plot writes a PNG), the --top best and worst samples (with their text given
--pool) and, given --labels, per-label AUROC and the label mix of the kept set at keep
fractions 10/30/50/70/90%.

--labels is a JSONL file of objects with a `label` field, keyed by `sample_id`, or by a
field of the pool's metadata with --id-field (e.g. `--id-field id` for records whose
input `id` was kept in metadata by `seal ingest`; needs --pool). --label-key is the
deprecated name of --id-field.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="summarise a scores file",
        description=DESCRIPTION,
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("scores", metavar="SCORES", help="scores.parquet (or the `seal rank` output directory)")
    p.add_argument("--pool", metavar="POOL", help="the pool the scores are for (ingest dir, .parquet or raw file)")
    p.add_argument("--labels", metavar="JSONL", help="labels file (objects with a `label` field)")
    p.add_argument("--id-field", "--label-key", dest="id_field", default="sample_id", metavar="FIELD",
                   help="field joining labels to samples: sample_id or a pool metadata field "
                   "(--label-key: deprecated name)")
    p.add_argument("--top", type=int, default=5, metavar="N", help="best and worst samples to show")
    p.add_argument("--bins", type=int, default=20, help="histogram bins")
    p.add_argument("--plot", metavar="PNG", help="also write a histogram PNG")
    p.add_argument("--json", metavar="PATH", help="also write the statistics as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from seal_core.errors import InputError
    from seal_core.inspect import inspect_scores
    from seal_core.io import write_json

    if args.top < 0:
        raise InputError(f"--top must be >= 0, got {args.top}")
    if args.bins < 1:
        raise InputError(f"--bins must be >= 1, got {args.bins}")
    rep = inspect_scores(args.scores, pool=args.pool, labels=args.labels, id_field=args.id_field,
                         top=args.top, bins=args.bins, plot=args.plot)
    print(rep.text)
    if args.json:
        write_json(args.json, rep.stats)
    return 0
