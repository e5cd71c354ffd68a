"""The run's artifacts in the Prefect UI, and ``report.md`` in the run directory.

These tasks are never cached: every run, a rerun that skipped finished stages
included, leaves its own artifacts. What they show is computed in
``seal_core.run_report``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from prefect import task
from prefect.cache_policies import NO_CACHE

from seal_core.labels import read_labels
from seal_core.pipeline import DataConfig, ReportConfig, is_url
from seal_core.run_report import scores_overview, write_run_report

from .common import artifact_key, run_logger

REPORT_TASK = dict(cache_policy=NO_CACHE, persist_result=False, retries=1, retry_delay_seconds=2)


def _file_url(path: str) -> str:
    return path if is_url(path) else Path(path).resolve().as_uri()


@task(name="score-artifacts", **REPORT_TASK)
def scores_artifacts(scores: str, pool: str, report: ReportConfig, data: DataConfig) -> dict[str, Any]:
    """Table of the highest- and lowest-scored samples (with text), a link to the scores file,
    and the ranker's AUROC when the pool has labels. Returns the numbers for the summary."""
    from prefect.artifacts import create_link_artifact, create_table_artifact

    hint = {data.label_field: " (set data.label_field to the field holding the label)"}
    labels = read_labels(data.labels, label_field=data.label_field, hints=hint) if data.labels else {}
    overview = scores_overview(scores, pool, labels, data.positive_labels, report.top_n, report.max_chars)
    n = overview.stats["n_scored"]
    create_table_artifact(overview.rows, key=artifact_key("seal-scores-extremes"),
                          description=f"The {report.top_n} highest- and lowest-scored samples of {n} (rank 1 = keep first).")
    create_link_artifact(_file_url(scores), link_text="scores.parquet", key=artifact_key("seal-scores"),
                         description=f"Per-sample scores ({n} rows): sample_id, score, rank, weight, loss.")
    return overview.stats


@task(name="report", **REPORT_TASK)
def report_task(run: Mapping[str, Any]) -> dict[str, str]:
    """Write ``report.md`` and ``summary.json`` in the run directory and the Markdown summary artifact."""
    from prefect.artifacts import create_markdown_artifact

    written = write_run_report(run)
    create_markdown_artifact(written.markdown, key=artifact_key("seal-summary"),
                             description="SEAL curation: counts, AUROC, selection, win and refusal rates.")
    run_logger().info("report: %s", written.report)
    return {"report": str(written.report), "summary": str(written.summary)}
