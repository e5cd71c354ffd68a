"""``seal run``: the whole pipeline (the Prefect ``curate`` flow) on one run config."""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
Run the whole SEAL pipeline as the Prefect flow `curate`: ingest -> rank (train the ranker,
score every sample) -> select -> fine-tune on the selection and on a random subset of the
same size -> generate -> evaluate -> report.

The run config is one YAML file (see configs/demo.yaml, configs/smoke.yaml,
configs/llama3-8b.yaml); --set overrides a key, e.g. --set rank.epochs=2 --set select.top_p=0.7.
An unknown key or a wrong type stops the run before any work, naming the key.

Without PREFECT_API_URL the flow runs against a local, temporary Prefect server whose
history is kept in SQLite under PREFECT_HOME (~/.prefect): `prefect server start` shows it
afterwards. With PREFECT_API_URL set, the run is recorded on that server. A rerun with the
same run_dir skips the stages whose inputs and settings did not change.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="run the whole pipeline (Prefect flow `curate`) on a run config",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, metavar="YAML",
                   help="run config file (relative to the current directory or the project root)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted), e.g. --set run_dir=runs/x --set rank.epochs=2")
    p.set_defaults(func=run)


def prefect_defaults() -> None:
    """Environment defaults for running flows locally (set before prefect is imported)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary server needs more than Prefect's default 20 s on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def ui_hint(flow_run_name: str | None) -> str:
    api = os.environ.get("PREFECT_API_URL", "")
    if api:
        ui = api[: -len("/api")] if api.rstrip("/").endswith("/api") else api
        return f"see the run in the Prefect UI at {ui.rstrip('/')}/runs (flow run '{flow_run_name}')"
    return (f"to see the run (flow run '{flow_run_name}') in the Prefect UI: run `prefect server start`, "
            "then open http://127.0.0.1:4200/runs")


def run_curate(config, overrides: list[str]) -> dict:
    """Validate the config (a clear error before any Prefect start-up), then run ``curate``."""
    from seal_core.pipeline import load_config, resolve_config_path

    import warnings

    if isinstance(config, str):
        config = str(resolve_config_path(config))
    cfg = load_config(config, overrides)
    prefect_defaults()
    # Deprecation notices from inside transformers/peft say nothing the user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)(\.|$)")
    from flows.curate import curate

    print(f"seal: running curate on {config} -> {cfg.run_dir}", file=sys.stderr, flush=True)
    return curate(config=config, overrides=overrides or None)


def print_result(result: dict) -> None:
    print()
    print(f"report:     {result['report']}")
    if result.get("evaluation"):
        print(f"evaluation: {result['evaluation']}")
    print(f"scores:     {result['scores']}")
    print(f"run dir:    {result['run_dir']}")
    print(ui_hint(result.get("flow_run_name")))


def run(args) -> int:
    result = run_curate(args.config, args.overrides)
    print_result(result)
    return 0
