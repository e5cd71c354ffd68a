"""The run's artifacts in the Prefect UI, and ``report.md`` in the run directory.

These tasks are never cached: every run, a rerun that skipped finished stages
included, leaves its own artifacts.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional

import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from seal_core.io import write_json, write_text
from seal_core.pipeline import is_url

from .common import _run_logger, artifact_key

REPORT_TASK = dict(cache_policy=NO_CACHE, persist_result=False, retries=1, retry_delay_seconds=2)


def _file_url(path: str) -> str:
    return path if is_url(path) else Path(path).resolve().as_uri()


def _conversation_text(messages: list[dict], max_chars: int) -> tuple[str, str]:
    """(prompt, response) of a conversation, each cut to ``max_chars``."""
    def cut(s: str) -> str:
        s = " ".join(s.split())
        return s if len(s) <= max_chars else s[: max_chars - 1] + "…"

    response = messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
    users = [m["content"] for m in messages[:-1] if m["role"] == "user"]
    prompt = users[-1] if users else (messages[0]["content"] if messages else "")
    return cut(prompt), cut(response)


def read_labels(path: str, key: str) -> dict[str, str]:
    """``{sample_id: label}`` from a JSONL labels file."""
    from seal_core.errors import InputError

    labels: dict[str, str] = {}
    try:
        fh = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read labels file {path}: {e.strerror or e}") from None
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or "sample_id" not in row or key not in row:
                raise InputError(f"{path}, line {n}: needs fields 'sample_id' and '{key}' (data.label_key)")
            labels[str(row["sample_id"])] = str(row[key])
    return labels


def _finite(x: Any) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


@task(name="score-artifacts", **REPORT_TASK)
def scores_artifacts(scores: str, pool: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Table of the highest- and lowest-scored samples (with text), a link to the scores file,
    and the ranker's AUROC when the pool has labels. Returns the numbers for the summary.

    Works in Arrow throughout (the pool is streamed, labels are joined), so a large pool is fine.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from prefect.artifacts import create_link_artifact, create_table_artifact

    from seal_core.ingest import canonical_paths, iter_canonical_batches, load_samples
    from seal_core.metrics import auroc, label_aurocs

    top_n = int(config.get("top_n", 10))
    max_chars = int(config.get("max_chars", 300))
    table = pq.read_table(scores, columns=["sample_id", "score", "rank"]).sort_by("rank")
    n = table.num_rows
    score_np = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    labels = read_labels(config["labels"], config.get("label_key", "label")) if config.get("labels") else {}

    show = list(range(min(top_n, n)))
    show += [i for i in range(max(n - top_n, 0), n) if i not in show]
    show_ids = table.column("sample_id").take(pa.array(show, pa.int64())).to_pylist()
    wanted = pa.array(show_ids, pa.string())
    text: dict[str, list] = {}
    # A raw pool (the rank stage run alone, before ingest) is ingested in memory for its text.
    batches = (iter_canonical_batches(pool) if canonical_paths(pool) is not None
               else [pa.Table.from_pylist(load_samples(pool)).to_batches()[0]])
    for batch in batches:
        hit = pc.is_in(batch.column("sample_id"), value_set=wanted)
        if pc.any(hit).as_py():
            for row in batch.filter(hit).to_pylist():
                text[row["sample_id"]] = row["messages"]
    rows = []
    for i, sid in zip(show, show_ids):
        prompt, response = _conversation_text(text.get(sid, []), max_chars)
        row = {"position": "top" if i < top_n else "bottom", "rank": i + 1,
               "score": round(float(score_np[i]), 6) if math.isfinite(score_np[i]) else None, "sample_id": sid}
        if labels:
            row["label"] = labels.get(sid, "")
        row.update({"prompt": prompt, "response": response})
        rows.append(row)
    create_table_artifact(rows, key=artifact_key("seal-scores-extremes"),
                          description=f"The {top_n} highest- and lowest-scored samples of {n} (rank 1 = keep first).")
    create_link_artifact(_file_url(scores), link_text="scores.parquet", key=artifact_key("seal-scores"),
                         description=f"Per-sample scores ({n} rows): sample_id, score, rank, weight, loss.")

    out: dict[str, Any] = {"n_scored": n, "n_nan": int(np.isnan(score_np).sum())}
    if labels:
        positive = set(config.get("positive_labels") or [])
        lab_table = pa.table({"sample_id": list(labels), "label": list(labels.values())})
        joined = table.join(lab_table, "sample_id", join_type="inner")
        s = joined.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        lab = joined.column("label").to_pylist()
        out["n_labelled"] = joined.num_rows
        out["auroc"] = _finite(auroc(s, [x in positive for x in lab]))
        out["auroc_positive_labels"] = sorted(positive)
        # Per label: how far below the rest the score pushes that label (1.0: all below).
        out["label_auroc"] = {k: _finite(v) for k, v in label_aurocs(s, lab).items()}
    return out


def _read_json(path: Optional[str]) -> dict[str, Any]:
    if not path or not Path(path).exists():
        return {}
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _pct(x: Optional[float]) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}%"


def build_summary(run: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Markdown summary and its numbers from the stage outputs named in ``run``."""
    from seal_core.evaluation.report import load_results

    lines = [f"# SEAL curation run {run.get('flow_run_name') or ''}".rstrip(), ""]
    facts: dict[str, Any] = {"run_dir": run.get("run_dir"), "model": run.get("model"),
                             "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    lines += [f"Model `{run.get('model')}`, run directory `{run.get('run_dir')}`.", ""]

    lines += ["## Data", "", "| set | rows read | kept | rejected | duplicates |", "|---|---|---|---|---|"]
    facts["ingest"] = {}
    for name in ("pool", "safe"):
        s = _read_json(run.get(f"{name}_summary"))
        if s:
            facts["ingest"][name] = {k: s.get(k) for k in ("rows_read", "kept", "rejected", "duplicates", "limited_to")}
            kept = s.get("kept")
            if s.get("limited_to"):
                kept = f"{min(kept, s['limited_to'])} (first {s['limited_to']} of {kept})"
            lines.append(f"| {name} | {s.get('rows_read')} | {kept} | {s.get('rejected')} | {s.get('duplicates')} |")
    lines.append("")

    sa = run.get("scores_stats") or {}
    lines += ["## Ranking", ""]
    lines.append(f"- {sa.get('n_scored', '?')} samples scored by `{run.get('rank_method')}`"
                 + (f" ({sa['n_nan']} unscored: too long or no answer tokens)" if sa.get("n_nan") else "") + ".")
    if sa.get("auroc") is not None:
        lines.append(f"- **AUROC {sa['auroc']:.3f}**: probability that a sample labelled "
                     f"{'/'.join(sa.get('auroc_positive_labels') or [])} scores above one that is not "
                     f"({sa.get('n_labelled')} labelled samples; 0.5 = chance).")
        per = ", ".join(f"{k} {v:.2f}" for k, v in (sa.get("label_auroc") or {}).items() if v is not None)
        if per:
            lines.append(f"- Per label, AUROC of ranking it below the rest: {per}.")
    facts["ranking"] = {"method": run.get("rank_method"), **sa}
    lines.append(f"- Scores: `{run.get('scores')}`")
    lines.append("")

    sel = _read_json(run.get("selection_summary"))
    rnd = _read_json(run.get("random_summary"))
    lines += ["## Selection", ""]
    if sel:
        lines.append(f"- Selected **{sel.get('k')} of {sel.get('n_candidates')}** samples "
                     f"({100 * sel.get('fraction', 0):.1f}%, {sel.get('mode')} = {list(sel.get('requested', {}).values())[0]}).")
        facts["selection"] = {k: sel.get(k) for k in ("k", "n_candidates", "fraction", "mode", "threshold_score")}
    if rnd:
        lines.append(f"- Random baseline subset of the same size: {rnd.get('k')} samples.")
        facts["random_subset"] = {"k": rnd.get("k")}
    lines.append("")

    ft = {arm: _read_json(p) for arm, p in (run.get("finetune_summaries") or {}).items()}
    if ft:
        lines += ["## Fine-tuning", "", "| model | samples | steps | first loss | final loss |", "|---|---|---|---|---|"]
        for arm, s in ft.items():
            fl = s.get("first_loss")
            ll = s.get("final_loss")
            lines.append(f"| {arm} | {s.get('n_trained')} | {s.get('steps')} | "
                         f"{'–' if fl is None else f'{fl:.3f}'} | {'–' if ll is None else f'{ll:.3f}'} |")
        facts["finetune"] = {arm: {k: s.get(k) for k in ("n_trained", "steps", "first_loss", "final_loss")}
                             for arm, s in ft.items()}
        lines.append("")

    ev = run.get("evaluate_dir")
    if ev and Path(ev, "summary.json").exists():
        pairs, safety, meta = load_results(ev)
        lines += ["## Evaluation", "", f"Judge: `{meta.get('judge', 'none')}`.", ""]
        facts["win_rates"] = {}
        if pairs:
            lines += ["| comparison | win rate | 95% CI | W/L/T | n |", "|---|---|---|---|---|"]
            for p in pairs:
                s = p.summary
                if s is None:
                    lines.append(f"| {p.label} | not judged | | | {p.n_prompts} |")
                    continue
                lines.append(f"| {p.label} | **{s.win_rate:.1f}%** | {s.ci_low:.1f}-{s.ci_high:.1f} | "
                             f"{s.n_wins}/{s.n_losses}/{s.n_ties} | {s.n_total} |")
                facts["win_rates"][p.label] = _finite(s.win_rate)
            lines.append("")
        facts["refusal_rates"] = {}
        if safety:
            lines += ["| model | refusal on harmful prompts | judge-rated harmful | refusal on helpful prompts |",
                      "|---|---|---|---|"]
            for s in safety:
                def rate(r):
                    return None if r is None else r.rate
                lines.append(f"| {s.model} | {_pct(rate(s.harmful_refusal))} | {_pct(rate(s.harmful_rate))} | "
                             f"{_pct(rate(s.benign_refusal))} |")
                facts["refusal_rates"][s.model] = {"harmful": rate(s.harmful_refusal),
                                                   "harmful_judge": rate(s.harmful_rate),
                                                   "helpful": rate(s.benign_refusal)}
            lines.append("")
        lines.append(f"Full evaluation report: `{Path(ev) / 'report.md'}`")
        lines.append("")
    return "\n".join(lines), facts


@task(name="report", **REPORT_TASK)
def report_task(run: Mapping[str, Any]) -> dict[str, str]:
    """Write ``report.md`` and ``summary.json`` in the run directory and the Markdown summary artifact."""
    from prefect.artifacts import create_markdown_artifact

    markdown, facts = build_summary(run)
    root = Path(run["run_dir"])
    report = write_text(root / "report.md", markdown + "\n")
    summary = write_json(root / "summary.json", facts)
    create_markdown_artifact(markdown, key=artifact_key("seal-summary"),
                             description="SEAL curation: counts, AUROC, selection, win and refusal rates.")
    _run_logger().info("report: %s", report)
    return {"report": str(report), "summary": str(summary)}
