"""What a pipeline run reports: ``report.md`` and ``summary.json`` from the stage outputs, and the
scores overview (the best and worst samples with their text, the ranker's AUROC against labels).

Pure Python; the Prefect artifacts showing these are made in ``tasks.report``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .io import write_json, write_text

Lines = list[str]


def _finite(x: Any) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


# ----------------------------------------------------------------------------- the scores overview


@dataclass
class ScoresOverview:
    rows: list[dict[str, Any]]  # best, then worst samples: position, rank, score, sample_id, [label], prompt, response
    stats: dict[str, Any] = field(default_factory=dict)  # n_scored, n_nan; with labels, the AUROCs


def conversation_text(messages: list[dict], max_chars: int) -> tuple[str, str]:
    """(prompt, response) of a conversation, each cut to ``max_chars``."""
    def cut(s: str) -> str:
        s = " ".join(s.split())
        return s if len(s) <= max_chars else s[: max_chars - 1] + "…"

    response = messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
    users = [m["content"] for m in messages[:-1] if m["role"] == "user"]
    prompt = users[-1] if users else (messages[0]["content"] if messages else "")
    return cut(prompt), cut(response)


def _conversations(pool: str, ids: Sequence[str]) -> dict[str, list[dict]]:
    """The messages of ``ids`` in ``pool`` (ingested Parquet streamed, a raw pool ingested in memory)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from .selection import open_pool

    wanted = pa.array(list(ids), pa.string())
    found: dict[str, list[dict]] = {}
    for batch in open_pool(pool).batches(["sample_id", "messages"], 65536):
        hit = pc.is_in(batch.column("sample_id"), value_set=wanted)
        if pc.any(hit).as_py():
            for row in batch.filter(hit).to_pylist():
                found[row["sample_id"]] = row["messages"]
    return found


def label_auroc_stats(scores: str, labels: Mapping[str, str], positive_labels: Sequence[str]) -> dict[str, Any]:
    """How well the scores find the labels: AUROC of ``positive_labels`` against the rest, and per label."""
    import numpy as np
    import pyarrow.parquet as pq

    from .metrics import auroc, label_aurocs

    table = pq.read_table(scores, columns=["sample_id", "score"])
    ids = table.column("sample_id").to_pylist()
    score = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    labelled = [i for i, sid in enumerate(ids) if sid in labels]
    s = score[labelled]
    lab = [labels[ids[i]] for i in labelled]
    positive = set(positive_labels)
    return {
        "n_labelled": len(labelled),
        "auroc": _finite(auroc(s, [x in positive for x in lab])),
        "auroc_positive_labels": sorted(positive),
        # Per label: how far below the rest the score pushes that label (1.0: all below).
        "label_auroc": {k: _finite(v) for k, v in label_aurocs(s, lab).items()},
    }


def scores_overview(scores: str, pool: str, labels: Mapping[str, str], positive_labels: Sequence[str],
                    top_n: int = 10, max_chars: int = 300) -> ScoresOverview:
    """The ``top_n`` highest- and lowest-scored samples with their text, and the numbers for the summary.

    The ranking is :func:`seal_core.inspect.inspect_scores`'s (the scores file's order); with
    ``labels`` (``{sample_id: label}``) each row shows its label and the stats hold the AUROCs.
    """
    from .inspect import inspect_scores

    stats = inspect_scores(scores, top=top_n).stats
    best = stats.get("top", [])
    shown = best + [r for r in stats.get("bottom", []) if r["rank"] > len(best)]
    text = _conversations(pool, [r["sample_id"] for r in shown])
    rows = []
    for r in shown:
        sid = r["sample_id"]
        prompt, response = conversation_text(text.get(sid, []), max_chars)
        score = _finite(r["score"])
        row = {"position": "top" if r["rank"] <= top_n else "bottom", "rank": r["rank"],
               "score": None if score is None else round(score, 6), "sample_id": sid}
        if labels:
            row["label"] = labels.get(sid, "")
        row.update({"prompt": prompt, "response": response})
        rows.append(row)
    out: dict[str, Any] = {"n_scored": stats["rows"], "n_nan": stats["score"]["n_nan"]}
    if labels:
        out.update(label_auroc_stats(scores, labels, positive_labels))
    return ScoresOverview(rows, out)


# ----------------------------------------------------------------------------- report.md and summary.json


def _read_json(path: Optional[str]) -> dict[str, Any]:
    if not path or not Path(path).exists():
        return {}
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _pct(x: Optional[float]) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}%"


def _data_section(run: Mapping[str, Any], facts: dict[str, Any]) -> Lines:
    lines = ["## Data", "", "| set | rows read | kept | rejected | duplicates |", "|---|---|---|---|---|"]
    facts["ingest"] = {}
    for name in ("pool", "safe"):
        s = _read_json(run.get(f"{name}_summary"))
        if not s:
            continue
        facts["ingest"][name] = {k: s.get(k) for k in ("rows_read", "kept", "rejected", "duplicates", "limited_to")}
        kept = s.get("kept")
        if s.get("limited_to"):
            kept = f"{min(kept, s['limited_to'])} (first {s['limited_to']} of {kept})"
        lines.append(f"| {name} | {s.get('rows_read')} | {kept} | {s.get('rejected')} | {s.get('duplicates')} |")
    return lines + [""]


def _ranking_section(run: Mapping[str, Any], facts: dict[str, Any]) -> Lines:
    sa = run.get("scores_stats") or {}
    lines = ["## Ranking", ""]
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
    return lines + [f"- Scores: `{run.get('scores')}`", ""]


def _selection_section(run: Mapping[str, Any], facts: dict[str, Any]) -> Lines:
    sel = _read_json(run.get("selection_summary"))
    rnd = _read_json(run.get("random_summary"))
    lines = ["## Selection", ""]
    if sel:
        lines.append(f"- Selected **{sel.get('k')} of {sel.get('n_candidates')}** samples "
                     f"({100 * sel.get('fraction', 0):.1f}%, {sel.get('mode')} = {list(sel.get('requested', {}).values())[0]}).")
        facts["selection"] = {k: sel.get(k) for k in ("k", "n_candidates", "fraction", "mode", "threshold_score")}
    if rnd:
        lines.append(f"- Random baseline subset of the same size: {rnd.get('k')} samples.")
        facts["random_subset"] = {"k": rnd.get("k")}
    return lines + [""]


def _finetune_section(run: Mapping[str, Any], facts: dict[str, Any]) -> Lines:
    ft = {arm: _read_json(p) for arm, p in (run.get("finetune_summaries") or {}).items()}
    if not ft:
        return []
    lines = ["## Fine-tuning", "", "| model | samples | steps | first loss | final loss |", "|---|---|---|---|---|"]
    for arm, s in ft.items():
        fl, ll = s.get("first_loss"), s.get("final_loss")
        lines.append(f"| {arm} | {s.get('n_trained')} | {s.get('steps')} | "
                     f"{'–' if fl is None else f'{fl:.3f}'} | {'–' if ll is None else f'{ll:.3f}'} |")
    facts["finetune"] = {arm: {k: s.get(k) for k in ("n_trained", "steps", "first_loss", "final_loss")}
                         for arm, s in ft.items()}
    return lines + [""]


def _win_rate_lines(pairs: list, facts: dict[str, Any]) -> Lines:
    facts["win_rates"] = {}
    if not pairs:
        return []
    lines = ["| comparison | win rate | 95% CI | W/L/T | n |", "|---|---|---|---|---|"]
    for p in pairs:
        s = p.summary
        if s is None:
            lines.append(f"| {p.label} | not judged | | | {p.n_prompts} |")
            continue
        lines.append(f"| {p.label} | **{s.win_rate:.1f}%** | {s.ci_low:.1f}-{s.ci_high:.1f} | "
                     f"{s.n_wins}/{s.n_losses}/{s.n_ties} | {s.n_total} |")
        facts["win_rates"][p.label] = _finite(s.win_rate)
    return lines + [""]


def _refusal_lines(safety: list, facts: dict[str, Any]) -> Lines:
    facts["refusal_rates"] = {}
    if not safety:
        return []

    def rate(r):
        return None if r is None else r.rate

    lines = ["| model | refusal on harmful prompts | judge-rated harmful | refusal on helpful prompts |",
             "|---|---|---|---|"]
    for s in safety:
        lines.append(f"| {s.model} | {_pct(rate(s.harmful_refusal))} | {_pct(rate(s.harmful_rate))} | "
                     f"{_pct(rate(s.benign_refusal))} |")
        facts["refusal_rates"][s.model] = {"harmful": rate(s.harmful_refusal), "harmful_judge": rate(s.harmful_rate),
                                           "helpful": rate(s.benign_refusal)}
    return lines + [""]


def _likelihood_lines(lk: Optional[Mapping[str, Any]], facts: dict[str, Any]) -> Lines:
    """Per arm: pair accuracy, margins and answer NLLs with their intervals, then the paired differences."""
    from .evaluation.report import LIKELIHOOD_COLUMNS, estimate_text

    models = (lk or {}).get("models") or []
    if not models:
        return []
    cols = [c for c in LIKELIHOOD_COLUMNS if any(m.get(c[0]) for m in models)]
    lines = ["Likelihood measures (no judge; 95% bootstrap intervals):", "",
             "| model | pairs | " + " | ".join(t.lower() for _, t, _ in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for m in models:
        lines.append(f"| {m['name']} | {m.get('n', 0)} | " + " | ".join(estimate_text(m.get(k), p) for k, _, p in cols) + " |")
    facts["likelihood"] = {m["name"]: {k: (m.get(k) or {}).get("value") for k, _, _ in cols} for m in models}
    diffs = [d for d in lk.get("differences") or [] if any(d.get(k) for k, _, _ in cols)]
    if diffs:
        lines += ["", "| difference | " + " | ".join(f"Δ {t.lower()}" for _, t, _ in cols) + " |", "|---|" + "---|" * len(cols)]
        for d in diffs:
            lines.append(f"| {d['candidate']} − {d['baseline']} | "
                         + " | ".join(estimate_text(d.get(k), p, signed=True) for k, _, p in cols) + " |")
        facts["likelihood_differences"] = {f"{d['candidate']} - {d['baseline']}": {k: (d.get(k) or {}).get("value") for k, _, _ in cols}
                                           for d in diffs}
    return lines + [""]


def _evaluation_section(run: Mapping[str, Any], facts: dict[str, Any]) -> Lines:
    from .evaluation.report import load_results

    ev = run.get("evaluate_dir")
    if not ev or not Path(ev, "summary.json").exists():
        return []
    pairs, safety, meta = load_results(ev)
    lines = ["## Evaluation", "", f"Judge: `{meta.get('judge', 'none')}`.", ""]
    lines += _win_rate_lines(pairs, facts)
    lines += _refusal_lines(safety, facts)
    lines += _likelihood_lines(meta.get("likelihood"), facts)
    return lines + [f"Full evaluation report: `{Path(ev) / 'report.md'}`", ""]


SECTIONS = (_data_section, _ranking_section, _selection_section, _finetune_section, _evaluation_section)


def build_summary(run: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Markdown summary and its numbers from the stage outputs named in ``run``.

    ``run`` names: ``flow_run_name``, ``run_dir``, ``model``, ``rank_method``, ``pool_summary``,
    ``safe_summary``, ``scores``, ``scores_stats`` (:attr:`ScoresOverview.stats`),
    ``selection_summary``, ``random_summary``, ``finetune_summaries`` ({arm: summary.json}) and
    ``evaluate_dir``; a stage that did not run is left out of the report.
    """
    lines = [f"# SEAL curation run {run.get('flow_run_name') or ''}".rstrip(), ""]
    facts: dict[str, Any] = {"run_dir": run.get("run_dir"), "model": run.get("model"),
                             "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    lines += [f"Model `{run.get('model')}`, run directory `{run.get('run_dir')}`.", ""]
    for section in SECTIONS:
        lines += section(run, facts)
    return "\n".join(lines), facts


@dataclass
class RunReport:
    markdown: str
    report: Path  # run_dir/report.md
    summary: Path  # run_dir/summary.json


def write_run_report(run: Mapping[str, Any]) -> RunReport:
    """Write ``report.md`` and ``summary.json`` in ``run['run_dir']`` (see :func:`build_summary`)."""
    markdown, facts = build_summary(run)
    root = Path(run["run_dir"])
    return RunReport(markdown, write_text(root / "report.md", markdown + "\n"), write_json(root / "summary.json", facts))
