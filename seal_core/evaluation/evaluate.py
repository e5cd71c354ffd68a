"""The evaluate stage: win rates of a candidate against one or more baselines, and safety metrics.

Inputs are generation files written by ``seal generate``: JSONL, one object
per prompt with at least ``id``, ``prompt`` and ``response`` (``origin`` or
``category`` name the prompt's source). A candidate and a baseline are aligned
by ``id``; their id sets and prompts must match. An empty response is not an
error, and it is not left out either (that would let a model that often says
nothing be judged only on its good answers): against a non-empty answer it
loses without asking the judge, two empty answers tie, and on a harmful prompt
it counts as neither a refusal nor harmful. Each is listed in ``rejects.jsonl``
with how it was scored.

Outputs in ``out_dir``: report.md, summary.json, judgments.jsonl (one row per
judged prompt and pair), safety.jsonl (one row per answer the refusal detector
saw), rejects.jsonl, winrate.png, refusal.png, config.json, and
``cache/judge_cache.jsonl``, which lets an interrupted run resume without
asking the judge again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Sequence

from ..errors import ConfigError, InputError
from ..io import atomic_path, fingerprint_file, save_resolved_config, write_json, write_text
from . import judges as J
from .judges import JudgeConfig
from .likelihood import LikelihoodSettings
from .refusal import DEFAULT_WINDOW, detect_refusal
from .report import PairResult, RateStat, SafetyResult, build_report, plot_refusals, plot_winrates, results_to_dict
from .winrate import summarize

SOURCE_FIELDS = ("origin", "category", "source")
UNKNOWN_SOURCE = "unknown"
OUTPUT_FILES = ("report.md", "summary.json", "judgments.jsonl", "safety.jsonl", "rejects.jsonl", "winrate.png", "refusal.png")


@dataclass
class ModelOutputs:
    """One model's generations: on the comparison prompts and/or on harmful prompts."""

    outputs: str | None = field(default=None, metadata={"help": "generation JSONL on the comparison prompts"})
    harmful: str | None = field(default=None, metadata={"help": "generation JSONL on the harmful prompts"})
    name: str = field(default="", metadata={"help": "display name (default: the file's stem, or its folder's name)"})
    model: str = field(default="", metadata={"help": "the model itself, for the likelihood measures (with `pairs`, `references` or `unsafe`)"})
    adapter: str = field(default="", metadata={"help": "its LoRA adapter, for the likelihood measures (empty: none)"})

    def __post_init__(self) -> None:
        if not self.outputs and not self.harmful and not self.scorable:
            raise ConfigError("a model needs 'outputs' (comparison prompts), 'harmful' (harmful prompts) or, for the "
                              "likelihood measures, 'model' or 'adapter'")

    @property
    def scorable(self) -> bool:
        """Whether the likelihood measures can load this model."""
        return bool(self.model or self.adapter)


@dataclass
class EvaluateConfig:
    """Configuration of ``seal evaluate``: the candidate is compared with each baseline."""

    candidate: ModelOutputs = field(metadata={"help": "the model being evaluated"})
    out_dir: str = field(metadata={"help": "output directory"})
    baselines: list[ModelOutputs] = field(default_factory=list, metadata={"help": "models the candidate is compared with"})
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata={"help": "the judge: spec and settings (`judge: SPEC` alone sets just the spec)"})
    refusal_method: Literal["seal", "gcg"] = field(default="seal", metadata={"help": "refusal detector: 'seal' (adapted) or 'gcg' (verbatim GCG list)"})
    refusal_window: int = field(default=DEFAULT_WINDOW, metadata={"help": "characters from the start searched for refusal phrases ('seal' method)"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    n_bootstrap: int = field(default=2000, metadata={"help": "bootstrap resamples for the 95% interval"})
    resume: bool = field(default=True, metadata={"help": "reuse verdicts cached in OUT/cache from an earlier run"})
    pairs: str = field(default="", metadata={"help": "preference pairs JSONL (prompt, chosen = safe, rejected = unsafe; or hh-rlhf): "
                                                     "pair accuracy and margins of each model given a model/adapter"})
    references: str = field(default="", metadata={"help": "reference answers JSONL: their NLL under each model (quality)"})
    unsafe: str = field(default="", metadata={"help": "held-out unsafe answers JSONL: their NLL under each model (safety)"})
    likelihood: LikelihoodSettings = field(default_factory=LikelihoodSettings, metadata={"help": "how the likelihood measures score answers"})

    def __post_init__(self) -> None:
        if not isinstance(self.likelihood, LikelihoodSettings):
            raise ConfigError(f"config key 'likelihood' must be a mapping of LikelihoodSettings keys, got {self.likelihood!r}")
        if not isinstance(self.judge, JudgeConfig):
            raise ConfigError(f"config key 'judge' must be a JudgeConfig, got {type(self.judge).__name__} {self.judge!r}")
        for key, ok in (("refusal_window", self.refusal_window >= 1), ("n_bootstrap", self.n_bootstrap >= 1)):
            if not ok:
                raise ConfigError(f"config key '{key}' must be positive (got {getattr(self, key)!r})")
        if not self.out_dir:
            raise ConfigError("config key 'out_dir' is empty")
        if self.refusal_method not in ("seal", "gcg"):
            raise ConfigError(f"config key 'refusal_method' must be 'seal' or 'gcg', got {self.refusal_method!r}")
        _assign_names([self.candidate, *self.baselines])

    @property
    def models(self) -> list[ModelOutputs]:
        return [self.candidate, *self.baselines]

    @property
    def likelihood_inputs(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("pairs", "references", "unsafe") if getattr(self, k)}


def _assign_names(models: Sequence[ModelOutputs]) -> None:
    """Fill empty names with the file stem, or its folder's name where stems collide."""
    def path_of(m: ModelOutputs) -> Path:
        return Path(m.outputs or m.harmful or m.adapter or "model")

    stems = [m.name or path_of(m).stem for m in models]
    dup = {s for s in stems if stems.count(s) > 1}
    for m, s in zip(models, stems):
        if not m.name:
            m.name = (path_of(m).parent.name or s) if s in dup else s
    names = [m.name for m in models]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"two models are both named '{n}'; give each a distinct name (--candidate-name/--baseline-name)")


# ----------------------------------------------------------------------------- reading


@dataclass
class GenerationRow:
    id: str
    prompt: str
    response: str
    source: str
    line: int
    fields: dict[str, Any]


def _source_of(row: dict[str, Any]) -> str:
    for f in SOURCE_FIELDS:
        v = row.get(f)
        if v not in (None, ""):
            return str(v)
    return UNKNOWN_SOURCE


def read_generations(path: str | os.PathLike) -> list[GenerationRow]:
    """Read a generation JSONL file; malformed lines raise InputError naming file and line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"generation file {p} does not exist" if not p.exists() else f"{p} is not a file")
    rows: list[GenerationRow] = []
    seen: dict[str, int] = {}
    with open(p, encoding="utf-8", errors="strict") as fh:
        try:
            lines = list(fh)
        except UnicodeDecodeError as e:
            raise InputError(f"{p} is not UTF-8 text: {e}") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        for key in ("id", "prompt", "response"):
            if key not in obj:
                raise InputError(f"{p}:{lineno}: missing field '{key}' (generation rows need id, prompt, response)")
        rid = obj["id"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or str(rid) == "":
            raise InputError(f"{p}:{lineno}: field 'id' must be a non-empty string, got {rid!r}")
        rid = str(rid)
        if not isinstance(obj["prompt"], str):
            raise InputError(f"{p}:{lineno}: field 'prompt' must be a string, got {type(obj['prompt']).__name__}")
        resp = obj["response"]
        if resp is not None and not isinstance(resp, str):
            raise InputError(f"{p}:{lineno}: field 'response' must be a string or null, got {type(resp).__name__}")
        if rid in seen:
            raise InputError(f"{p}:{lineno}: duplicate id {rid!r} (first on line {seen[rid]})")
        seen[rid] = lineno
        rows.append(GenerationRow(rid, obj["prompt"], resp or "", _source_of(obj), lineno, obj))
    if not rows:
        raise InputError(f"generation file {p} has no rows")
    return rows


def align(
    cand_rows: list[GenerationRow], base_rows: list[GenerationRow], cand_path: str, base_path: str
) -> list[tuple[GenerationRow, GenerationRow]]:
    """Pair rows by id (in the candidate's order); id sets and prompts must match."""
    base = {r.id: r for r in base_rows}
    cand_ids = [r.id for r in cand_rows]
    only_c = [i for i in cand_ids if i not in base]
    cset = set(cand_ids)
    only_b = [r.id for r in base_rows if r.id not in cset]
    if only_c or only_b:
        parts = []
        if only_b:
            parts.append(f"{len(only_b)} id(s) only in {base_path} (e.g. {only_b[0]!r})")
        if only_c:
            parts.append(f"{len(only_c)} id(s) missing from {base_path} that {cand_path} has (e.g. {only_c[0]!r})")
        raise InputError(f"ids of {base_path} do not match {cand_path}: " + "; ".join(parts) + " (generate both on the same prompts)")
    pairs = []
    for c in cand_rows:
        b = base[c.id]
        if c.prompt != b.prompt:
            raise InputError(
                f"{base_path}:{b.line}: prompt of id {c.id!r} differs from {cand_path}:{c.line} (generate both on the same prompts)"
            )
        pairs.append((c, b))
    return pairs


# ----------------------------------------------------------------------------- evaluate


def _jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _safety_for_model(
    name: str,
    rows: list[GenerationRow] | None,
    benign: list[GenerationRow] | None,
    cfg: EvaluateConfig,
    judge: J.Judge | None,
    cache: J.JudgeCache | None,
    safety_rows: list[dict[str, Any]],
    rejects: list[dict[str, Any]],
    path: str | None,
) -> SafetyResult:
    res = SafetyResult(model=name)
    if benign is not None:
        flags = []
        for r in benign:
            d = detect_refusal(r.response, method=cfg.refusal_method, window=cfg.refusal_window)
            flags.append(d.refused)
            safety_rows.append(
                {"model": name, "prompt_set": "comparison", "id": r.id, "source": r.source, "prompt": r.prompt,
                 "response": r.response, "refused": d.refused, "matched": d.matched, "harmful_p": None, "harm_reason": None}
            )
        res.benign_refusal = RateStat.from_flags(flags)
    if rows is None:
        return res
    # Every answer stays in the denominators, so each model's rates are over the same prompts.
    empty = [i for i, r in enumerate(rows) if not r.response.strip()]
    res.n_empty = len(empty)
    for i in empty:
        rejects.append({"stage": "safety", "model": name, "id": rows[i].id, "file": path, "line": rows[i].line,
                        "reason": "empty response: counted as not a refusal and not harmful, without asking the judge"})
    detections = [detect_refusal(r.response, method=cfg.refusal_method, window=cfg.refusal_window) for r in rows]
    harm: list[J.Verdict | None] = [None] * len(rows)
    if judge is not None and rows:
        if judge.supports_harm:
            ask = sorted(set(range(len(rows))) - set(empty))
            _log(f"judging harmfulness of {len(ask)} answers of {name} with {judge.spec}")
            asked = J.judge_harm(judge, [rows[i].prompt for i in ask], [rows[i].response for i in ask],
                                 cache=cache) if ask else []
            for i, v in zip(ask, asked):
                harm[i] = v
            for i in empty:
                # An empty answer gives no help with the request.
                harm[i] = J.Verdict(p=0.0, reason="empty response (not judged)")
        else:
            res.harm_note = judge.harm_note
    res.harmful_refusal = RateStat.from_flags([d.refused for d in detections])
    rated = [v.p for v in harm if v is not None and v.p is not None]
    res.n_harm_unrated = sum(1 for v in harm if v is not None and v.p is None)
    if judge is not None and judge.supports_harm:
        res.harmful_rate = RateStat.from_probs(rated)
    by_src: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_src[r.source].append(i)
    for src, idx in sorted(by_src.items()):
        entry: dict[str, RateStat | None] = {"refusal": RateStat.from_flags([detections[i].refused for i in idx])}
        if judge is not None and judge.supports_harm:
            entry["harmful"] = RateStat.from_probs([harm[i].p for i in idx if harm[i] is not None and harm[i].p is not None])
        res.by_source[src] = entry
    for r, d, v in zip(rows, detections, harm):
        safety_rows.append(
            {"model": name, "prompt_set": "harmful", "id": r.id, "source": r.source, "prompt": r.prompt, "response": r.response,
             "refused": d.refused, "matched": d.matched, "harmful_p": None if v is None else v.p,
             "harm_reason": None if v is None else v.reason}
        )
    return res


def _compare(
    cand: ModelOutputs,
    base: ModelOutputs,
    pairs: list[tuple[GenerationRow, GenerationRow]],
    cfg: EvaluateConfig,
    judge: J.Judge,
    cache: J.JudgeCache | None,
    judgment_rows: list[dict[str, Any]],
    rejects: list[dict[str, Any]],
) -> PairResult:
    # An empty answer loses to any answer without asking the judge (two empty answers tie):
    # leaving such prompts out would judge a model that often says nothing only on its good answers.
    ask, decided = [], {}
    for i, (c, b) in enumerate(pairs):
        empty = [m.name for m, r in ((cand, c), (base, b)) if not r.response.strip()]
        if not empty:
            ask.append(i)
            continue
        p = 0.5 if len(empty) == 2 else (0.0 if empty[0] == cand.name else 1.0)
        reason = f"empty response from {' and '.join(empty)}: scored {p:g} without asking the judge"
        decided[i] = J.PairJudgement(p=p, p_first=p, p_swapped=1.0 - p, consistent=True, reason=reason)
        rejects.append({"stage": "compare", "candidate": cand.name, "baseline": base.name, "id": c.id, "reason": reason})
    result = PairResult(candidate=cand.name, baseline=base.name, judge=judge.spec, summary=None,
                        n_prompts=len(pairs), n_empty=len(decided))
    if not pairs:
        return result
    asked: list[J.PairJudgement] = []
    if ask:
        _log(f"judging {cand.name} vs {base.name}: {len(ask)} prompts x 2 orders with {judge.spec}")
        asked = J.judge_both_orders(judge, [pairs[i][0].prompt for i in ask], [pairs[i][0].response for i in ask],
                                    [pairs[i][1].response for i in ask], cache=cache)
        # These describe the judge, so only prompts it was asked about count.
        result.position_consistency = sum(j.consistent for j in asked) / len(asked)
        result.first_position_preference = sum((j.p_first + j.p_swapped) / 2 for j in asked) / len(asked)
        result.n_unparsed = sum(1 for j in asked if j.reason)
    by_index = {**dict(zip(ask, asked)), **decided}
    js = [by_index[i] for i in range(len(pairs))]
    result.summary = summarize([j.p for j in js], seed=cfg.seed, n_bootstrap=cfg.n_bootstrap)
    by_src: dict[str, list[float]] = defaultdict(list)
    for (c, _), j in zip(pairs, js):
        by_src[c.source].append(j.p)
    result.by_source = {s: summarize(v, seed=cfg.seed, n_bootstrap=cfg.n_bootstrap) for s, v in sorted(by_src.items())}
    for (c, b), j in zip(pairs, js):
        judgment_rows.append(
            {"candidate": cand.name, "baseline": base.name, "id": c.id, "source": c.source, "prompt": c.prompt,
             "candidate_response": c.response, "baseline_response": b.response,
             "p_first": j.p_first, "p_swapped": j.p_swapped, "p": j.p, "consistent": j.consistent,
             "reason": j.reason, "raw_first": j.raw_first, "raw_swapped": j.raw_swapped}
        )
    return result


def _read_inputs(cfg: EvaluateConfig) -> tuple[dict[str, list[GenerationRow]], dict[str, list[GenerationRow]], dict[str, list]]:
    """Every model's rows on the comparison and harmful prompts, and each baseline aligned with the candidate."""
    benign = {m.name: read_generations(m.outputs) for m in cfg.models if m.outputs}
    harmful = {m.name: read_generations(m.harmful) for m in cfg.models if m.harmful}
    aligned = {}
    for b in cfg.baselines:
        if cfg.candidate.outputs and b.outputs:
            aligned[b.name] = align(benign[cfg.candidate.name], benign[b.name], cfg.candidate.outputs, b.outputs)
    return benign, harmful, aligned


def _open_cache(judge: J.Judge | None, cfg: EvaluateConfig, out: Path) -> J.JudgeCache | None:
    path = out / "cache" / "judge_cache.jsonl"
    if judge is not None and cfg.resume and judge.cache_key():
        return J.JudgeCache(path, judge.cache_key())
    if judge is not None and not cfg.resume:
        path.unlink(missing_ok=True)
    return None


def _read_likelihood_inputs(cfg: EvaluateConfig, out: Path):
    """The pairs and answer sets of the likelihood measures, checked before any model is loaded."""
    if not cfg.likelihood_inputs:
        return None
    from .likelihood import read_inputs

    return read_inputs(cfg.pairs, cfg.references, cfg.unsafe, skip_bad_rows=cfg.likelihood.skip_bad_rows,
                       rejects_path=out / "likelihood" / "rejects.jsonl")


def _likelihood(cfg: EvaluateConfig, inputs, out: Path) -> dict[str, Any] | None:
    """Each model's likelihood measures (those with a model or adapter), written under ``out/likelihood``."""
    models = [(m.name, m.model, m.adapter) for m in cfg.models if m.scorable]
    if inputs is None or not models:
        return None
    from .likelihood import evaluate_models

    _log(f"likelihood measures of {', '.join(n for n, _, _ in models)} on {', '.join(cfg.likelihood_inputs.values())}")
    return evaluate_models(models, inputs, cfg.likelihood, out / "likelihood", seed=cfg.seed,
                           n_bootstrap=cfg.n_bootstrap, compare_first=cfg.candidate.scorable)


def _notes(cfg: EvaluateConfig, judge: J.Judge | None, aligned: dict, harmful: dict, pair_results: list[PairResult]) -> list[str]:
    notes = []
    unscored = [m.name for m in cfg.models if not m.scorable]
    if cfg.likelihood_inputs and unscored:
        notes.append(f"No model or adapter given for {', '.join(unscored)}: no likelihood measures for "
                     f"{'it' if len(unscored) == 1 else 'them'}.")
    if judge is None and aligned:
        notes.append("No judge was given (--judge none): win rates were not computed.")
    for b in cfg.baselines:
        if b.name not in aligned and cfg.candidate.outputs and not b.outputs:
            notes.append(f"{b.name} has no comparison-prompt outputs: only its safety metrics are reported.")
    if judge is not None and not harmful:
        notes.append("No harmful-prompt outputs were given: no safety metrics on harmful prompts.")
    unparsed = sum(p.n_unparsed for p in pair_results)
    if unparsed:
        notes.append(f"{unparsed} judged prompt(s) had an unreadable verdict in at least one order, scored as a tie for that order (see 'reason' in judgments.jsonl).")
    notes.append(
        "Refusals are found by keyword matching: it misses polite compliance without refusal words and "
        "can flag a refusal-like opening followed by compliance; see docs/evaluation.md."
    )
    return notes


@dataclass
class _Rows:
    """The per-row outputs: judgments.jsonl, safety.jsonl, rejects.jsonl."""

    judgments: list[dict[str, Any]] = field(default_factory=list)
    safety: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)


def _summary_meta(cfg: EvaluateConfig, judge_spec: str, notes: list[str]) -> dict[str, Any]:
    inputs = {}
    for m in cfg.models:
        for kind, path in (("outputs", m.outputs), ("harmful", m.harmful)):
            if path:
                inputs[f"{m.name}.{kind}"] = {"path": str(path), "fingerprint": fingerprint_file(path)}
    for kind, path in cfg.likelihood_inputs.items():
        inputs[f"likelihood.{kind}"] = {"path": str(path), "fingerprint": fingerprint_file(path)}
    return {
        "judge": judge_spec,
        "judge_template": cfg.judge.template or "default",
        "harm_template": cfg.judge.harm_template or "default",
        "refusal_method": cfg.refusal_method,
        "seed": cfg.seed,
        "n_bootstrap": cfg.n_bootstrap,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        "notes": notes,
    }


def _write_outputs(out: Path, cfg: EvaluateConfig, judge_spec: str, pair_results: list[PairResult],
                   safety: list[SafetyResult], rows: _Rows, notes: list[str], likelihood: dict[str, Any] | None) -> None:
    # Remove outputs of an earlier run that this run does not rewrite, so none is mistaken for current.
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    if likelihood is None:
        shutil.rmtree(out / "likelihood", ignore_errors=True)
    winrate_png = plot_winrates(pair_results, out / "winrate.png")
    refusal_png = plot_refusals(safety, out / "refusal.png")
    if pair_results:
        _jsonl(out / "judgments.jsonl", rows.judgments)
    _jsonl(out / "safety.jsonl", rows.safety)
    _jsonl(out / "rejects.jsonl", rows.rejects)
    write_json(out / "summary.json", results_to_dict(pair_results, safety, **_summary_meta(cfg, judge_spec, notes),
                                                     likelihood=likelihood))
    images = [(cap, p.name) for cap, p in (("win rate", winrate_png), ("refusal rate", refusal_png)) if p]
    files = [
        ("per-prompt verdicts in both orders", "judgments.jsonl") if pair_results else None,
        ("per-answer refusal detection and harmfulness", "safety.jsonl"),
        ("empty answers, scored without the judge, and how", "rejects.jsonl"),
        ("per-model likelihood measures (summary.json, pairs.parquet, answers.parquet)", "likelihood/") if likelihood else None,
        ("all numbers above, machine-readable", "summary.json"),
        ("the resolved configuration", "config.json"),
    ]
    report = build_report(
        pair_results, safety, judge=judge_spec, refusal_method=cfg.refusal_method, notes=notes,
        images=images, files=[f for f in files if f], likelihood=likelihood,
    )
    write_text(out / "report.md", report)
    save_resolved_config(out, cfg)


def evaluate(config: EvaluateConfig, *, judge: J.Judge | None = None) -> Path:
    """Run the evaluation described by ``config``; returns the output directory.

    ``judge`` overrides ``config.judge`` with a ready judge object (e.g. a
    :class:`~seal_core.evaluation.judges.FunctionJudge`, or an HFJudge whose
    model is already loaded).
    """
    cfg = config
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} exists and is not a directory")
    prompts = cfg.judge.prompts()
    # Read and check every input before loading a judge model or calling an API.
    benign, harmful, aligned = _read_inputs(cfg)
    lk_inputs = _read_likelihood_inputs(cfg, out)
    own_judge = judge is None
    if judge is None:
        judge = J.make_judge(cfg.judge, prompts)
    judge_spec = judge.spec if judge is not None else "none"
    out.mkdir(parents=True, exist_ok=True)
    cache = _open_cache(judge, cfg, out)
    rows = _Rows()
    pair_results: list[PairResult] = []
    try:
        if judge is not None:
            for b in cfg.baselines:
                if b.name in aligned:
                    pair_results.append(_compare(cfg.candidate, b, aligned[b.name], cfg, judge, cache, rows.judgments, rows.rejects))
        safety = [
            _safety_for_model(m.name, harmful.get(m.name), benign.get(m.name), cfg, judge, cache, rows.safety, rows.rejects, m.harmful)
            for m in cfg.models
        ]
    finally:
        if own_judge and judge is not None:
            judge.close()
    likelihood = _likelihood(cfg, lk_inputs, out)
    _write_outputs(out, cfg, judge_spec, pair_results, safety, rows, _notes(cfg, judge, aligned, harmful, pair_results),
                   likelihood)
    return out


def summary_lines(out_dir: str | os.PathLike) -> list[str]:
    """A few lines for the terminal, read back from summary.json."""
    from .report import likelihood_lines, load_results

    pairs, safety, meta = load_results(out_dir)
    lines = []
    for p in pairs:
        s = p.summary
        if s is None:
            lines.append(f"{p.label}: not judged (no prompt in common)")
        else:
            se = "" if math.isnan(s.standard_error) else f" ± {s.standard_error:.1f}"
            lines.append(
                f"{p.label}: win rate {s.win_rate:.1f}{se} (95% CI {s.ci_low:.1f}-{s.ci_high:.1f}; "
                f"W/L/T {s.n_wins}/{s.n_losses}/{s.n_ties}; n={s.n_total})"
            )
    for s in safety:
        parts = []
        if s.harmful_refusal:
            parts.append(f"refusal on harmful prompts {s.harmful_refusal.rate:.1f}% (n={s.harmful_refusal.n})")
        if s.harmful_rate and s.harmful_rate.rate is not None:
            parts.append(f"judge-rated harmful {s.harmful_rate.rate:.1f}%")
        if s.benign_refusal:
            parts.append(f"refusal on comparison prompts {s.benign_refusal.rate:.1f}%")
        if parts:
            lines.append(f"{s.model}: " + ", ".join(parts))
    return lines + likelihood_lines(meta.get("likelihood"))
