"""Evaluation results, their JSON form, the Markdown report and the plots.

The result classes are plain data so the pipeline's final report can rebuild
them from any number of ``summary.json`` files (:func:`load_results`) and call
:func:`build_report` / :func:`plot_winrates` / :func:`plot_refusals` on the
union, e.g. to show SEAL vs random and SEAL vs full side by side.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import InputError
from ..io import atomic_path, json_safe
from .winrate import WinRateSummary

SUMMARY_VERSION = 1


@dataclass
class RateStat:
    """A percentage over ``n`` items with its standard error (both in percent)."""

    n: int
    rate: float | None
    se: float | None
    n_positive: float = 0  # refusals counted, or the sum of P(harmful)

    @classmethod
    def from_flags(cls, flags: Sequence[bool]) -> "RateStat | None":
        n = len(flags)
        if n == 0:
            return None
        k = int(sum(bool(f) for f in flags))
        q = k / n
        return cls(n=n, rate=100.0 * q, se=100.0 * math.sqrt(q * (1 - q) / n), n_positive=k)

    @classmethod
    def from_probs(cls, probs: Sequence[float]) -> "RateStat | None":
        n = len(probs)
        if n == 0:
            return None
        mean = sum(probs) / n
        if n > 1:
            var = sum((p - mean) ** 2 for p in probs) / (n - 1)
            se = 100.0 * math.sqrt(var / n)
        else:
            se = None
        return cls(n=n, rate=100.0 * mean, se=se, n_positive=float(sum(probs)))

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "rate": self.rate, "se": self.se, "n_positive": self.n_positive}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "RateStat | None":
        return None if d is None else cls(n=d["n"], rate=d.get("rate"), se=d.get("se"), n_positive=d.get("n_positive", 0))


@dataclass
class PairResult:
    """Candidate vs baseline on the same prompts, judged in both orders."""

    candidate: str
    baseline: str
    judge: str
    summary: WinRateSummary | None
    by_source: dict[str, WinRateSummary] = field(default_factory=dict)
    position_consistency: float | None = None  # fraction of prompts where both orders agree
    first_position_preference: float | None = None  # mean P(the answer shown first wins); 0.5 = no bias
    n_prompts: int = 0  # prompts present in both files
    n_empty: int = 0  # of those, decided without the judge: an empty answer loses, two empty answers tie
    n_unparsed: int = 0  # judged prompts where a verdict had to be taken as a tie

    @property
    def label(self) -> str:
        return f"{self.candidate} vs {self.baseline}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "baseline": self.baseline,
            "judge": self.judge,
            "summary": self.summary.to_dict() if self.summary else None,
            "by_source": {k: v.to_dict() for k, v in self.by_source.items()},
            "position_consistency": self.position_consistency,
            "first_position_preference": self.first_position_preference,
            "n_prompts": self.n_prompts,
            "n_empty": self.n_empty,
            "n_unparsed": self.n_unparsed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PairResult":
        return cls(
            candidate=d["candidate"],
            baseline=d["baseline"],
            judge=d.get("judge", "none"),
            summary=WinRateSummary.from_dict(d["summary"]) if d.get("summary") else None,
            by_source={k: WinRateSummary.from_dict(v) for k, v in (d.get("by_source") or {}).items()},
            position_consistency=d.get("position_consistency"),
            first_position_preference=d.get("first_position_preference"),
            n_prompts=d.get("n_prompts", 0),
            n_empty=d.get("n_empty", 0),
            n_unparsed=d.get("n_unparsed", 0),
        )


@dataclass
class SafetyResult:
    """One model's refusal and (judge-rated) harmfulness rates."""

    model: str
    harmful_refusal: RateStat | None = None  # refusal rate on harmful prompts
    harmful_rate: RateStat | None = None  # mean judge P(harmful) on harmful prompts
    benign_refusal: RateStat | None = None  # refusal rate on the comparison prompts (over-refusal)
    by_source: dict[str, dict[str, RateStat | None]] = field(default_factory=dict)  # source -> {"refusal", "harmful"}
    n_empty: int = 0  # empty answers to harmful prompts: not a refusal, not harmful (P=0), not judged
    n_harm_unrated: int = 0  # harmful-prompt answers the judge gave no readable verdict for
    harm_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        def rs(x: RateStat | None) -> dict[str, Any] | None:
            return x.to_dict() if x else None

        return {
            "model": self.model,
            "harmful_refusal": rs(self.harmful_refusal),
            "harmful_rate": rs(self.harmful_rate),
            "benign_refusal": rs(self.benign_refusal),
            "by_source": {s: {k: rs(v) for k, v in d.items()} for s, d in self.by_source.items()},
            "n_empty": self.n_empty,
            "n_harm_unrated": self.n_harm_unrated,
            "harm_note": self.harm_note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SafetyResult":
        return cls(
            model=d["model"],
            harmful_refusal=RateStat.from_dict(d.get("harmful_refusal")),
            harmful_rate=RateStat.from_dict(d.get("harmful_rate")),
            benign_refusal=RateStat.from_dict(d.get("benign_refusal")),
            by_source={s: {k: RateStat.from_dict(v) for k, v in dd.items()} for s, dd in (d.get("by_source") or {}).items()},
            n_empty=d.get("n_empty", 0),
            n_harm_unrated=d.get("n_harm_unrated", 0),
            harm_note=d.get("harm_note"),
        )


# ----------------------------------------------------------------------------- JSON


def results_to_dict(pairs: Sequence[PairResult], safety: Sequence[SafetyResult], **meta: Any) -> dict[str, Any]:
    """The ``summary.json`` document (NaN written as null)."""
    return json_safe(
        {
            "version": SUMMARY_VERSION,
            **meta,
            "comparisons": [p.to_dict() for p in pairs],
            "safety": [s.to_dict() for s in safety],
        }
    )


def load_results(path: str | os.PathLike) -> tuple[list[PairResult], list[SafetyResult], dict[str, Any]]:
    """Read a ``summary.json`` (or the evaluate output directory holding one)."""
    import json

    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"cannot read evaluation summary {p}: {e.strerror or e}") from None
    except ValueError as e:
        raise InputError(f"evaluation summary {p} is not valid JSON: {e}") from None
    try:
        pairs = [PairResult.from_dict(d) for d in data.get("comparisons", [])]
        safety = [SafetyResult.from_dict(d) for d in data.get("safety", [])]
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"evaluation summary {p} has an unexpected layout ({type(e).__name__}: {e})") from None
    meta = {k: v for k, v in data.items() if k not in ("comparisons", "safety")}
    return pairs, safety, meta


# ----------------------------------------------------------------------------- Markdown


def _f(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pm(rate: float | None, se: float | None) -> str:
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "–"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{rate:.1f}"
    return f"{rate:.1f} ± {se:.1f}"


def _rate_cell(r: RateStat | None) -> str:
    return "–" if r is None else f"{_pm(r.rate, r.se)} (n={r.n})"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return lines


def _win_rate_section(pairs: Sequence[PairResult], judged: Sequence[PairResult]) -> list[str]:
    out: list[str] = []
    out += ["## Win rates", ""]
    out.append(
        "Win rate = 100 · mean P(candidate preferred), AlpacaEval's definition; ± is the standard error, "
        "the interval a seeded 95% percentile bootstrap. Discrete win rate counts a tie as half a win. "
        "50 means the judge cannot tell the two models apart."
    )
    out.append("")
    rows = []
    for p in pairs:
        s = p.summary
        if s is None:
            rows.append([p.candidate, p.baseline, "0", "not judged", "–", "–", "–", "–"])
            continue
        rows.append(
            [
                p.candidate,
                p.baseline,
                str(s.n_total),
                _pm(s.win_rate, s.standard_error),
                f"[{s.ci_low:.1f}, {s.ci_high:.1f}]",
                f"{s.n_wins} / {s.n_losses} / {s.n_ties}",
                _f(s.discrete_win_rate),
                "–" if p.position_consistency is None else f"{100 * p.position_consistency:.0f}%",
            ]
        )
    out += _table(
        ["Candidate", "Baseline", "n", "Win rate ± SE", "95% CI", "W / L / T", "Discrete win rate", "Order agreement"],
        rows,
    )
    out.append("")
    for p in judged:
        if len(p.by_source) > 1:
            out += [f"### {p.label}, by prompt source", ""]
            out += _table(
                ["Source", "n", "Win rate ± SE", "95% CI", "W / L / T"],
                [
                    [src, str(s.n_total), _pm(s.win_rate, s.standard_error), f"[{s.ci_low:.1f}, {s.ci_high:.1f}]", f"{s.n_wins} / {s.n_losses} / {s.n_ties}"]
                    for src, s in sorted(p.by_source.items())
                ],
            )
            out.append("")
    with_empty = [p for p in pairs if p.n_empty]
    if with_empty:
        out.append(
            "Decided without the judge (an empty answer loses, two empty answers tie; listed in rejects.jsonl): "
            + ", ".join(f"{p.label}: {p.n_empty} of {p.n_prompts}" for p in with_empty)
            + "."
        )
        out.append("")

    return out


def _harmful_section(with_harm: Sequence[SafetyResult], refusal_method: str) -> list[str]:
    out: list[str] = []
    out += ["## Safety on harmful prompts", ""]
    out.append(
        f"Refusal rate: share of answers the keyword detector (method `{refusal_method}`) marks as refusals; "
        "higher is safer. Harmful rate: 100 · mean judge P(harmful); lower is safer. ± is the standard error."
    )
    out.append("")
    out += _table(
        ["Model", "n", "Refusal rate ± SE", "Harmful rate ± SE (judge)"],
        [[s.model, str(s.harmful_refusal.n), _pm(s.harmful_refusal.rate, s.harmful_refusal.se), _rate_cell(s.harmful_rate) if s.harmful_rate else "–"] for s in with_harm],
    )
    out.append("")
    sources = sorted({src for s in with_harm for src in s.by_source})
    if sources:
        out += ["### By prompt source", ""]
        header = ["Source"] + [f"{s.model}: refusal" for s in with_harm]
        show_harm = any(s.harmful_rate is not None for s in with_harm)
        if show_harm:
            header += [f"{s.model}: harmful" for s in with_harm]
        rows = []
        for src in sources:
            row = [src] + [_rate_cell(s.by_source.get(src, {}).get("refusal")) for s in with_harm]
            if show_harm:
                row += [_rate_cell(s.by_source.get(src, {}).get("harmful")) for s in with_harm]
            rows.append(row)
        out += _table(header, rows)
        out.append("")
    for s in with_harm:
        if s.n_empty:
            out.append(f"- {s.model}: {s.n_empty} empty answer(s), counted as neither a refusal nor harmful "
                       "(not judged; listed in rejects.jsonl).")
        if s.n_harm_unrated:
            out.append(f"- {s.model}: {s.n_harm_unrated} answer(s) got no readable harmfulness verdict and are left out of its harmful rate.")
    notes_h = sorted({s.harm_note for s in with_harm if s.harm_note})
    out += [f"- {n}" for n in notes_h]
    if any(s.n_harm_unrated or s.n_empty for s in with_harm) or notes_h:
        out.append("")

    return out


def _over_refusal_section(with_benign: Sequence[SafetyResult]) -> list[str]:
    out: list[str] = []
    out += ["## Refusals on the comparison prompts", ""]
    out.append("The same detector on the ordinary prompts: refusals here are over-refusals (lower is better).")
    out.append("")
    out += _table(["Model", "n", "Refusal rate ± SE"], [[s.model, str(s.benign_refusal.n), _pm(s.benign_refusal.rate, s.benign_refusal.se)] for s in with_benign])
    out.append("")

    return out


def _reliability_section(judged: Sequence[PairResult]) -> list[str]:
    out: list[str] = []
    out += ["## Judge reliability", ""]
    out.append(
        "Order agreement: share of prompts where the judge prefers the same answer whichever is shown first "
        "(a position-consistent judge scores 100%; a judge that always picks the first or the second answer scores 0%). "
        "First-position preference: mean probability that the answer shown first wins; 50% means no position bias. "
        "Averaging both orders cancels that bias in the win rate, but low agreement means the verdicts are noisy."
    )
    out.append("")
    out += _table(
        ["Pair", "Order agreement", "First-position preference", "Unreadable verdicts (scored as ties)"],
        [
            [
                p.label,
                "–" if p.position_consistency is None else f"{100 * p.position_consistency:.1f}%",
                "–" if p.first_position_preference is None else f"{100 * p.first_position_preference:.1f}%",
                str(p.n_unparsed),
            ]
            for p in judged
        ],
    )
    out.append("")

    return out


# (summary key, column title, shown in percent) of the likelihood measures, in table order.
LIKELIHOOD_COLUMNS = (
    ("pair_accuracy", "Pair accuracy", True),
    ("mean_margin", "Mean margin", False),
    ("relative_pair_accuracy", "Relative pair accuracy", True),
    ("mean_relative_margin", "Mean relative margin", False),
    ("reference_nll", "Reference NLL", False),
    ("unsafe_nll", "Unsafe NLL", False),
)


def estimate_text(e: dict[str, Any] | None, percent: bool = False, signed: bool = False) -> str:
    """``value [ci_low, ci_high]`` of a likelihood estimate (``{value, ci_low, ci_high, n}``)."""
    if not e or e.get("value") is None:
        return "–"
    scale, fmt = (100.0, ".1f") if percent else (1.0, ".3f")
    fmt = ("+" if signed else "") + fmt
    v, lo, hi = (scale * e[k] for k in ("value", "ci_low", "ci_high"))
    return f"{v:{fmt}}{'%' if percent else ''} [{lo:{fmt}}, {hi:{fmt}}]"


def _likelihood_section(lk: dict[str, Any]) -> list[str]:
    models = lk.get("models") or []
    cols = [c for c in LIKELIHOOD_COLUMNS if any(m.get(c[0]) for m in models)]
    out = ["## Likelihood measures (no judge)", ""]
    out.append(
        "Per pair, margin m = mean log p(safe answer) − mean log p(unsafe answer), per answer token; pair accuracy "
        "is the share of pairs with m > 0 (higher is safer). The relative forms subtract the base model's "
        "log-likelihoods (the model without its adapter) from each answer's first, DPO's implicit-reward margin: "
        "what fine-tuning taught about safe against unsafe answers. Reference NLL: mean per-token NLL of reference "
        "answers (lower is better); unsafe NLL: of held-out unsafe answers (higher is safer). [..] is a seeded 95% "
        "bootstrap interval over pairs (answers)."
    )
    out.append("")
    out += _table(["Model", "Pairs", *(title for _, title, _ in cols)],
                  [[m["name"], str(m.get("n", 0)), *(estimate_text(m.get(k), pct) for k, _, pct in cols)] for m in models])
    out.append("")
    diffs = [d for d in lk.get("differences") or [] if any(d.get(k) for k, _, _ in cols)]
    if diffs:
        out += ["### Paired differences (candidate − baseline)", "",
                "Means of per-pair (per-answer) differences on the items both models scored; the bootstrap "
                "resamples pairs jointly, so an interval excluding 0 separates the two models.", ""]
        dcols = [c for c in cols if any(d.get(c[0]) for d in diffs)]
        out += _table(["Candidate", "Baseline", "n", *(f"Δ {title}" for _, title, _ in dcols)],
                      [[d["candidate"], d["baseline"], str(next((d[k]["n"] for k, _, _ in dcols if d.get(k)), 0)),
                        *(estimate_text(d.get(k), pct, signed=True) for k, _, pct in dcols)] for d in diffs])
        out.append("")
    return out


def likelihood_lines(lk: dict[str, Any] | None) -> list[str]:
    """One terminal line per model and per difference of the likelihood measures."""
    if not lk:
        return []
    lines = []
    for m in lk.get("models") or []:
        parts = [f"{title.lower()} {estimate_text(m.get(k), pct)}" for k, title, pct in LIKELIHOOD_COLUMNS if m.get(k)]
        lines.append(f"{m['name']} likelihood: " + ", ".join(parts))
    for d in lk.get("differences") or []:
        parts = [f"Δ {title.lower()} {estimate_text(d.get(k), pct, signed=True)}"
                 for k, title, pct in LIKELIHOOD_COLUMNS if d.get(k)]
        if parts:
            lines.append(f"{d['candidate']} − {d['baseline']}: " + ", ".join(parts))
    return lines


def build_report(
    pairs: Sequence[PairResult],
    safety: Sequence[SafetyResult],
    *,
    judge: str = "none",
    refusal_method: str = "seal",
    title: str = "Evaluation report",
    notes: Sequence[str] = (),
    images: Sequence[tuple[str, str]] = (),
    files: Sequence[tuple[str, str]] = (),
    likelihood: dict[str, Any] | None = None,
) -> str:
    """Render results as Markdown. ``images``/``files``: (caption, relative path) to link;
    ``likelihood``: the likelihood measures (:func:`~seal_core.evaluation.likelihood.evaluate_models`)."""
    out: list[str] = [f"# {title}", ""]
    out.append(f"Judge: `{judge}`" + (" (asked in both orders; the two verdicts are averaged)." if judge != "none" else " (no judge: refusal metrics only)."))
    out.append("")

    judged = [p for p in pairs if p.summary is not None]
    if pairs:
        out += _win_rate_section(pairs, judged)
    with_harm = [s for s in safety if s.harmful_refusal is not None]
    if with_harm:
        out += _harmful_section(with_harm, refusal_method)
    with_benign = [s for s in safety if s.benign_refusal is not None]
    if with_benign:
        out += _over_refusal_section(with_benign)
    if likelihood and likelihood.get("models"):
        out += _likelihood_section(likelihood)
    if judged:
        out += _reliability_section(judged)
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if images:
        out += ["## Plots", ""] + [f"![{cap}]({path})" for cap, path in images] + [""]
    if files:
        out += ["## Files", ""] + [f"- `{path}`: {cap}" for cap, path in files] + [""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(path)


def plot_winrates(pairs: Sequence[PairResult], path: str | os.PathLike) -> Path | None:
    """Win rate per pair with its 95% bootstrap interval; None when nothing was judged."""
    judged = [p for p in pairs if p.summary is not None]
    if not judged:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.6 * len(judged)))
    try:
        ys = list(range(len(judged)))[::-1]
        rates = [p.summary.win_rate for p in judged]
        lo = [p.summary.win_rate - p.summary.ci_low for p in judged]
        hi = [p.summary.ci_high - p.summary.win_rate for p in judged]
        ax.errorbar(rates, ys, xerr=[lo, hi], fmt="o", color="tab:blue", ecolor="tab:blue", capsize=4, label="win rate, 95% CI")
        ax.axvline(50, color="grey", linestyle="--", linewidth=1)
        ax.set_yticks(ys)
        ax.set_yticklabels([p.label for p in judged])
        ax.set_xlim(0, 100)
        ax.set_ylim(-0.7, len(judged) - 0.3)
        ax.set_xlabel("win rate of candidate (%)")
        ax.set_title(f"Win rate (judge: {judged[0].judge})", fontsize=10)
        for y, r in zip(ys, rates):
            ax.annotate(f"{r:.1f}", (r, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_refusals(safety: Sequence[SafetyResult], path: str | os.PathLike) -> Path | None:
    """Refusal rate per model on harmful (and comparison) prompts, plus the judge's harmful rate."""
    series: list[tuple[str, str, list[RateStat | None]]] = [
        ("harmful prompts: refusal", "tab:green", [s.harmful_refusal for s in safety]),
        ("harmful prompts: harmful (judge)", "tab:red", [s.harmful_rate for s in safety]),
        ("comparison prompts: refusal", "tab:grey", [s.benign_refusal for s in safety]),
    ]
    series = [x for x in series if any(r is not None for r in x[2])]
    if not safety or not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(safety) + 2), 3.6))
    try:
        width = 0.8 / len(series)
        for k, (name, color, stats) in enumerate(series):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(safety))]
            vals = [r.rate if r is not None and r.rate is not None else 0.0 for r in stats]
            errs = [r.se if r is not None and r.se is not None else 0.0 for r in stats]
            ax.bar(xs, vals, width=width, yerr=errs, capsize=3, color=color, label=name)
        ax.set_xticks(range(len(safety)))
        ax.set_xticklabels([s.model for s in safety], rotation=15 if len(safety) > 3 else 0)
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
        ax.set_title("Refusal rate per model", fontsize=10)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(series), frameon=False)
        return _save(fig, path)
    finally:
        plt.close(fig)
