"""Judge-free safety and quality measures from the model's own likelihoods (``seal likelihood``).

At 135M parameters an LLM judge cannot tell fine-tuned models apart (SmolLM2 judging agrees
with itself across the two answer orders 0% of the time); the model's log-likelihoods can. For
each preference pair (a prompt, a safe ``chosen`` and an unsafe ``rejected`` answer, read by
:mod:`.pairs`), with the model's chat template and the fine-tune's loss mask (answer tokens and
the end-of-turn token, :func:`~seal_core.tokenization.encode_messages`):

- ``log p(y)``: mean log-probability per answer token (length-normalised, so a long unsafe
  answer is not "less likely" merely for being long);
- margin ``m = log p(chosen) - log p(rejected)``; ``pair_accuracy`` = share of pairs with m > 0,
  ``mean_margin`` = mean m;
- relative margin against the base model p0 (the model without its adapter, or ``base_model``):
  ``rel_m = (log p(chosen) - log p0(chosen)) - (log p(rejected) - log p0(rejected))``, DPO's
  implicit-reward margin (Rafailov et al. 2023, eq. 5, per token). Fine-tuning moves the
  likelihood of both answers with style; the difference of the shifts is what the tuning
  taught about safe against unsafe answers;
- ``reference_nll`` / ``unsafe_nll``: mean per-token NLL of reference answers (quality, lower is
  better) and of held-out unsafe answers (safety, higher is safer), with their shifts from p0.

Every number has a seeded 95% percentile bootstrap interval over pairs (answers); a difference
between two models is a mean of per-pair differences, so its bootstrap resamples pairs jointly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ..errors import ConfigError, InputError, SealError
from ..io import json_safe
from ..tokenization import DEFAULT_LOGITS_BUDGET, check_encode_options
from .winrate import bootstrap_ci

ANSWER_SETS = {"reference": "chosen", "unsafe": "rejected"}  # answer set -> the side a pair row gives
OUTPUT_FILES = ("summary.json", "pairs.parquet", "answers.parquet", "rejects.jsonl")


# ----------------------------------------------------------------------------- configs


@dataclass
class LikelihoodSettings:
    """How answers are scored (shared by ``seal likelihood`` and the evaluate stage)."""

    max_length: int = field(default=1024, metadata={"help": "Token limit of prompt plus answer (truncation applies above it)."})
    truncation: Literal["keep_prompt", "left", "right", "drop"] = field(
        default="keep_prompt", metadata={"help": "Over-long rows: keep_prompt keeps the request and the answer's start; "
                                                 "left keeps the end; right cuts the end; drop leaves the row out."})
    batch_size: int = field(default=16, metadata={"help": "Rows per forward pass at the longest length (shorter rows go more at once)."})
    logits_budget: int = field(default=DEFAULT_LOGITS_BUDGET, metadata={"help": "Most LM-head logits held at once."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N."})
    dtype: str = field(default="auto", metadata={"help": "auto (cuda: bfloat16, cpu: float32), float32, bfloat16, float16."})
    skip_bad_rows: bool = field(default=False, metadata={"help": "Leave unusable input rows out (listed in rejects.jsonl) instead of failing."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars on stderr."})
    base_cache: str = field(default="", metadata={
        "help": "Directory caching the base model's log-likelihoods (JSON, keyed by model and token ids), so "
                "several adapters of one base, scored on the same inputs, score the base once."})

    def __post_init__(self) -> None:
        check_encode_options(self.max_length, "final", self.truncation)
        for key in ("batch_size", "logits_budget"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"config key '{key}' must be a positive integer, got {v!r}")


@dataclass
class LikelihoodConfig:
    """Configuration of ``seal likelihood``: one model's likelihood measures."""

    out: str = field(default="", metadata={"help": "Output directory (summary.json, pairs.parquet, answers.parquet, rejects.jsonl)."})
    pairs: str = field(default="", metadata={"help": "Pairs JSONL: prompt or messages, chosen (safe), rejected (unsafe); or hh-rlhf rows."})
    references: str = field(default="", metadata={"help": "Reference answers JSONL (quality): prompt + reference/response/output, or messages."})
    unsafe: str = field(default="", metadata={"help": "Held-out unsafe answers JSONL (safety), same forms as references."})
    model: str = field(default="", metadata={"help": "Model (named default, Hub id, local dir, .gguf). Empty: the adapter's base, else smollm2-135m-instruct."})
    adapter: str = field(default="", metadata={"help": "LoRA adapter (a `seal finetune` output dir or adapter dir); relative measures then use the model without it."})
    base_model: str = field(default="", metadata={"help": "Reference model p0 of the relative measures (default with an adapter: the model without it)."})
    compare: str = field(default="", metadata={"help": "Output dir of another `seal likelihood` run on the same inputs: paired differences (this - that)."})
    name: str = field(default="", metadata={"help": "Display name (default: the output dir's name)."})
    seed: int = field(default=0, metadata={"help": "Bootstrap seed."})
    n_bootstrap: int = field(default=2000, metadata={"help": "Bootstrap resamples for the 95% intervals."})
    settings: LikelihoodSettings = field(default_factory=LikelihoodSettings, metadata={"help": "Scoring settings."})

    def __post_init__(self) -> None:
        if not (self.pairs or self.references or self.unsafe):
            raise ConfigError("give at least one of pairs, references, unsafe")
        if not self.out:
            raise ConfigError("config key 'out' is empty")
        if isinstance(self.n_bootstrap, bool) or self.n_bootstrap < 1:
            raise ConfigError(f"config key 'n_bootstrap' must be positive (got {self.n_bootstrap!r})")
        if not isinstance(self.settings, LikelihoodSettings):
            raise ConfigError(f"config key 'settings' must be a mapping of LikelihoodSettings keys, got {self.settings!r}")


# ----------------------------------------------------------------------------- statistics (pure)


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` items with its 95% percentile bootstrap interval."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Estimate | None":
        return None if not d else cls(d["value"], d["ci_low"], d["ci_high"], d["n"])


def estimate(values: Sequence[float], *, seed: int = 0, n_bootstrap: int = 2000) -> Estimate | None:
    """Mean of ``values`` and its seeded bootstrap interval; None when there are none."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return None
    lo, hi = bootstrap_ci(v, n_bootstrap=n_bootstrap, seed=seed)
    return Estimate(float(v.mean()), lo, hi, int(v.size))


def margins(logp_chosen: Sequence[float], logp_rejected: Sequence[float]) -> np.ndarray:
    return np.asarray(logp_chosen, dtype=np.float64) - np.asarray(logp_rejected, dtype=np.float64)


def relative_margins(logp_chosen, logp_rejected, base_chosen, base_rejected) -> np.ndarray:
    """DPO's implicit-reward margin: the chosen answer's likelihood shift minus the rejected one's."""
    return margins(logp_chosen, base_chosen) - margins(logp_rejected, base_rejected)


def margin_measures(m: Sequence[float], *, prefix: str = "", seed: int = 0, n_bootstrap: int = 2000) -> dict[str, Estimate | None]:
    """``pair_accuracy`` (share of m > 0) and ``mean_margin`` of the margins ``m``."""
    m = np.asarray(m, dtype=np.float64)
    acc = "relative_pair_accuracy" if prefix else "pair_accuracy"
    return {acc: estimate((m > 0).astype(np.float64), seed=seed, n_bootstrap=n_bootstrap),
            f"mean_{prefix}margin": estimate(m, seed=seed, n_bootstrap=n_bootstrap)}


def pair_measures(logp_chosen, logp_rejected, base_chosen=None, base_rejected=None, *, seed: int = 0,
                  n_bootstrap: int = 2000) -> dict[str, Estimate | None]:
    """Pair accuracy and mean margin; with the base model's log-likelihoods, their relative forms too."""
    out = margin_measures(margins(logp_chosen, logp_rejected), seed=seed, n_bootstrap=n_bootstrap)
    if base_chosen is not None and base_rejected is not None:
        rel = relative_margins(logp_chosen, logp_rejected, base_chosen, base_rejected)
        out.update(margin_measures(rel, prefix="relative_", seed=seed, n_bootstrap=n_bootstrap))
    return out


def _by_id(rows: Sequence[dict[str, Any]], key: str) -> dict[str, float]:
    return {r["id"]: float(r[key]) for r in rows if r.get(key) is not None and not math.isnan(float(r[key]))}


def paired_differences(a_pairs: Sequence[dict], b_pairs: Sequence[dict], a_answers: Sequence[dict] = (),
                       b_answers: Sequence[dict] = (), *, seed: int = 0, n_bootstrap: int = 2000) -> dict[str, Any]:
    """Model a minus model b on the pairs (answers) both scored, aligned by id.

    Each estimate is the mean of per-item differences, so resampling them resamples the items of
    both models jointly (the paired bootstrap).
    """
    out: dict[str, Any] = {}
    for key, acc in (("margin", "pair_accuracy"), ("relative_margin", "relative_pair_accuracy")):
        a, b = _by_id(a_pairs, key), _by_id(b_pairs, key)
        ids = [i for i in a if i in b]
        if not ids:
            continue
        ma, mb = np.array([a[i] for i in ids]), np.array([b[i] for i in ids])
        out[acc] = estimate((ma > 0).astype(float) - (mb > 0).astype(float), seed=seed, n_bootstrap=n_bootstrap)
        out[f"mean_{key}"] = estimate(ma - mb, seed=seed, n_bootstrap=n_bootstrap)
    for name in ANSWER_SETS:
        a = _by_id([r for r in a_answers if r["set"] == name], "nll")
        b = _by_id([r for r in b_answers if r["set"] == name], "nll")
        ids = [i for i in a if i in b]
        if ids:
            out[f"{name}_nll"] = estimate([a[i] - b[i] for i in ids], seed=seed, n_bootstrap=n_bootstrap)
    return out


def estimates_to_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.to_dict() if isinstance(v, Estimate) else v) for k, v in d.items()}


# ----------------------------------------------------------------------------- inputs


@dataclass
class LikelihoodInputs:
    pairs: list = field(default_factory=list)  # pairs.Pair
    answers: dict[str, list] = field(default_factory=dict)  # answer set -> pairs.Answer
    rejects: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # input name -> path


def write_rejects(path: Path, rejects: Sequence[dict[str, Any]]) -> Path:
    import json

    from ..io import write_text

    return write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rejects))


def read_inputs(pairs: str, references: str, unsafe: str, *, skip_bad_rows: bool, rejects_path: Path) -> LikelihoodInputs:
    """Every input file read and checked before a model is loaded.

    A bad row fails the run with one line naming file, line and field (all bad rows listed in
    ``rejects_path``), unless ``skip_bad_rows``.
    """
    from .pairs import read_answers, read_pairs

    inputs = LikelihoodInputs()
    if pairs:
        inputs.pairs, rej = read_pairs(pairs)
        inputs.rejects += rej
        inputs.files["pairs"] = pairs
    for name, path in (("reference", references), ("unsafe", unsafe)):
        if path:
            inputs.answers[name], rej = read_answers(path, ANSWER_SETS[name])
            inputs.rejects += rej
            inputs.files[name] = path
    if inputs.rejects:
        write_rejects(rejects_path, inputs.rejects)
        if not skip_bad_rows:
            r = inputs.rejects[0]
            named = not r["field"] or f"'{r['field']}'" in r["detail"] or r["field"] in r["detail"].split()[0]
            detail = r["detail"] if named else f"field '{r['field']}': {r['detail']}"
            raise InputError(f"{r['source']}:{r['line']}: {detail} ({len(inputs.rejects)} bad row(s) listed "
                             f"in {rejects_path}; leave them out with --skip-bad-rows, or skip_bad_rows: true)")
    for name, items in (("pairs", inputs.pairs), *inputs.answers.items()):
        if name in inputs.files and not items:
            raise InputError(f"{inputs.files[name]} has no usable rows" + (f" (see {rejects_path})" if inputs.rejects else ""))
    return inputs


# ----------------------------------------------------------------------------- scoring


class BaseCache:
    """Mean log p per answer token under a base model, by digest of (model, scoring settings, token ids,
    target mask). Plain JSON, written atomically: reading it back runs no code."""

    def __init__(self, folder: Path, model: str, settings: LikelihoodSettings):
        self.path = folder / "base_logp.json"
        self.prefix = json.dumps([model, settings.dtype, settings.logits_budget > 0])
        self.data: dict[str, float] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def key(self, e) -> str:
        h = hashlib.blake2b(self.prefix.encode(), digest_size=16)
        h.update(np.asarray(e.input_ids, dtype=np.int64).tobytes())
        h.update(np.asarray(e.labels, dtype=np.int64).tobytes())
        return h.hexdigest()

    def get(self, key: str) -> float:
        return self.data.get(key, math.nan)

    def put(self, values: dict[str, float]) -> None:
        from ..io import write_json

        self.data.update(values)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.data)


@dataclass
class Scored:
    """Per-answer scores of one list of (prompt, answer): NaN where the answer could not be scored."""

    logp: np.ndarray  # mean log p per answer token under the model
    base_logp: np.ndarray | None  # the same under the base model p0
    n_tokens: np.ndarray
    truncated: np.ndarray
    reasons: dict[int, str]  # index -> why it was not scored


class Scorer:
    """Scores answers with ``model`` and, given ``base`` ("adapter": the model with its adapter
    disabled; a model: that model, same tokenizer), with the base model too."""

    def __init__(self, model, tokenizer, settings: LikelihoodSettings, base: Any = None, base_name: str = ""):
        self.model, self.tokenizer, self.settings, self.base = model, tokenizer, settings, base
        self.base_name = base_name

    def _logp(self, model, encoded, desc: str) -> np.ndarray:
        from ..tokenization import score_losses

        s = self.settings
        return -score_losses(model, self.tokenizer, encoded, s.batch_size, progress=s.progress, desc=desc,
                             logits_budget=s.logits_budget)

    def _base_logp(self, encoded, desc: str) -> np.ndarray | None:
        if self.base is None:
            return None
        if not self.settings.base_cache:
            return self._base_logp_uncached(encoded, desc)
        cache = BaseCache(Path(self.settings.base_cache), self.base_name, self.settings)
        keys = [cache.key(e) for e in encoded]
        out = np.array([cache.get(k) for k in keys], dtype=np.float64)
        todo = [i for i, v in enumerate(out) if np.isnan(v)]
        if todo:
            out[todo] = self._base_logp_uncached([encoded[i] for i in todo], desc)
            cache.put({keys[i]: float(out[i]) for i in todo})
        return out

    def _base_logp_uncached(self, encoded, desc: str) -> np.ndarray:
        if self.base == "adapter":
            # The same weights with LoRA bypassed: p0 without a second copy of the model.
            with self.model.disable_adapter():
                return self._logp(self.model, encoded, desc + " (base)")
        return self._logp(self.base, encoded, desc + " (base)")

    def score(self, prompts: Sequence[list[dict]], answers: Sequence[str], desc: str) -> Scored:
        from ..tokenization import encode_samples

        s = self.settings
        samples = [{"sample_id": str(i), "messages": [*p, {"role": "assistant", "content": a}]}
                   for i, (p, a) in enumerate(zip(prompts, answers))]
        encoded, dropped = encode_samples(self.tokenizer, samples, s.max_length, "final", s.truncation)
        idx = np.array([int(e.sample_id) for e in encoded], dtype=np.int64)
        n = len(samples)
        logp, n_tok, trunc = np.full(n, np.nan), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        base = np.full(n, np.nan) if self.base is not None else None
        if encoded:
            logp[idx] = self._logp(self.model, encoded, desc)
            if base is not None:
                base[idx] = self._base_logp(encoded, desc)
            n_tok[idx] = [e.n_target_tokens for e in encoded]
            trunc[idx] = [e.truncated for e in encoded]
        return Scored(logp, base, n_tok, trunc, {int(d["sample_id"]): d["reason"] for d in dropped})


def _score_rejects(items: Sequence, reasons: dict[int, str], source: str, what: str) -> list[dict[str, Any]]:
    return [{"source": source, "line": items[i].line, "field": what, "reason": "not_scored", "detail": r, "raw": items[i].id}
            for i, r in sorted(reasons.items())]


@dataclass
class ModelScores:
    """One model's per-pair and per-answer rows, and its summary."""

    pair_rows: list[dict[str, Any]]
    answer_rows: list[dict[str, Any]]
    rejects: list[dict[str, Any]]
    summary: dict[str, Any]


def _pair_rows(scorer: Scorer, inputs: LikelihoodInputs) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    pairs = inputs.pairs
    prompts = [p.prompt for p in pairs]
    c = scorer.score(prompts, [p.chosen for p in pairs], "chosen")
    r = scorer.score(prompts, [p.rejected for p in pairs], "rejected")
    src = inputs.files.get("pairs", "")
    rejects = _score_rejects(pairs, c.reasons, src, "chosen") + _score_rejects(pairs, r.reasons, src, "rejected")
    rows = []
    for i, p in enumerate(pairs):
        if i in c.reasons or i in r.reasons:
            continue
        row = {"id": p.id, "line": p.line, "n_tokens_chosen": int(c.n_tokens[i]), "n_tokens_rejected": int(r.n_tokens[i]),
               "truncated": bool(c.truncated[i] or r.truncated[i]), "logp_chosen": float(c.logp[i]),
               "logp_rejected": float(r.logp[i]), "margin": float(c.logp[i] - r.logp[i])}
        if c.base_logp is not None:
            row.update(base_logp_chosen=float(c.base_logp[i]), base_logp_rejected=float(r.base_logp[i]),
                       relative_margin=float(relative_margins(c.logp[i], r.logp[i], c.base_logp[i], r.base_logp[i])))
        rows.append(row)
    return rows, rejects


def _answer_rows(scorer: Scorer, inputs: LikelihoodInputs) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, rejects = [], []
    for name, items in inputs.answers.items():
        s = scorer.score([a.prompt for a in items], [a.answer for a in items], name)
        rejects += _score_rejects(items, s.reasons, inputs.files[name], "answer")
        for i, a in enumerate(items):
            if i in s.reasons:
                continue
            rows.append({"set": name, "id": a.id, "line": a.line, "n_tokens": int(s.n_tokens[i]),
                         "truncated": bool(s.truncated[i]), "nll": float(-s.logp[i]),
                         "base_nll": None if s.base_logp is None else float(-s.base_logp[i])})
    return rows, rejects


def summarize_rows(pair_rows: Sequence[dict], answer_rows: Sequence[dict], *, seed: int, n_bootstrap: int) -> dict[str, Any]:
    """The summary numbers of per-pair and per-answer rows (see the module doc)."""
    kw = {"seed": seed, "n_bootstrap": n_bootstrap}
    out: dict[str, Any] = {"n": len(pair_rows)}
    if pair_rows:
        def col(key: str) -> list[float] | None:
            return [r[key] for r in pair_rows] if key in pair_rows[0] else None

        out.update(pair_measures(col("logp_chosen"), col("logp_rejected"), col("base_logp_chosen"),
                                 col("base_logp_rejected"), **kw))
    for name in ANSWER_SETS:
        rows = [r for r in answer_rows if r["set"] == name]
        if rows:
            out[f"{name}_nll"] = estimate([r["nll"] for r in rows], **kw)
            if rows[0]["base_nll"] is not None:
                out[f"{name}_nll_shift"] = estimate([r["nll"] - r["base_nll"] for r in rows], **kw)
    return estimates_to_dict(out)


def score_model(scorer: Scorer, inputs: LikelihoodInputs, *, seed: int, n_bootstrap: int) -> ModelScores:
    pair_rows, rej_p = _pair_rows(scorer, inputs) if inputs.pairs else ([], [])
    answer_rows, rej_a = _answer_rows(scorer, inputs)
    return ModelScores(pair_rows, answer_rows, rej_p + rej_a,
                       summarize_rows(pair_rows, answer_rows, seed=seed, n_bootstrap=n_bootstrap))


# ----------------------------------------------------------------------------- models and outputs


def load_scorer(model: str, adapter: str, base_model: str, settings: LikelihoodSettings) -> tuple[Scorer, dict[str, Any]]:
    """The model (+ adapter) and its base p0, loaded as ``seal generate`` loads them; -> (scorer, description)."""
    from ..generate import GenerateConfig, load_for_generation
    from ..models import load_model

    # GenerateConfig carries the adapter's recorded base model and the device/dtype rules.
    m, tok, name, adapter_dir = load_for_generation(GenerateConfig(model=model, adapter=adapter, device=settings.device,
                                                                   dtype=settings.dtype, progress=settings.progress))
    base: Any = None
    described = None
    if base_model:
        base, base_tok = load_model(base_model, device=settings.device, dtype=settings.dtype)
        if base_tok.get_vocab() != tok.get_vocab():
            raise SealError(f"base_model '{base_model}' has another vocabulary than '{name}'; the relative "
                            "measures need the same tokens")
        described = base_model
    elif adapter_dir is not None:
        base, described = "adapter", f"{name} without the adapter"
    info = {"model": name, "adapter": str(adapter_dir) if adapter_dir else None, "base": described}
    return Scorer(m, tok, settings, base, base_model or name), info


def write_outputs(out: Path, scores: ModelScores, input_rejects: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    import pyarrow as pa

    from ..io import write_json, write_parquet

    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    if scores.pair_rows:
        write_parquet(out / "pairs.parquet", pa.Table.from_pylist(scores.pair_rows))
    if scores.answer_rows:
        write_parquet(out / "answers.parquet", pa.Table.from_pylist(scores.answer_rows))
    write_rejects(out / "rejects.jsonl", [*input_rejects, *scores.rejects])
    write_json(out / "summary.json", json_safe(summary))


def read_rows(out_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pair rows, answer rows) of a ``seal likelihood`` output directory."""
    import pyarrow.parquet as pq

    d = Path(out_dir)
    if not (d / "summary.json").is_file():
        raise InputError(f"{d} is not a `seal likelihood` output directory (no summary.json)")
    rows = [pq.read_table(d / f).to_pylist() if (d / f).is_file() else [] for f in ("pairs.parquet", "answers.parquet")]
    return rows[0], rows[1]


def likelihood(cfg: LikelihoodConfig) -> Path:
    """Run ``seal likelihood``; returns the output directory."""
    from datetime import datetime, timezone

    from ..io import fingerprint_file, save_resolved_config

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {out} exists and is not a directory")
    inputs = read_inputs(cfg.pairs, cfg.references, cfg.unsafe, skip_bad_rows=cfg.settings.skip_bad_rows,
                         rejects_path=out / "rejects.jsonl")
    other = read_rows(cfg.compare) if cfg.compare else None
    scorer, info = load_scorer(cfg.model, cfg.adapter, cfg.base_model, cfg.settings)
    scores = score_model(scorer, inputs, seed=cfg.seed, n_bootstrap=cfg.n_bootstrap)
    summary: dict[str, Any] = {"name": cfg.name or out.resolve().name, **info, **scores.summary,
                               "n_rejected": len(inputs.rejects) + len(scores.rejects), "seed": cfg.seed,
                               "n_bootstrap": cfg.n_bootstrap,
                               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "inputs": {k: {"path": p, "fingerprint": fingerprint_file(p)} for k, p in inputs.files.items()}}
    if other is not None:
        diff = paired_differences(scores.pair_rows, other[0], scores.answer_rows, other[1], seed=cfg.seed,
                                  n_bootstrap=cfg.n_bootstrap)
        if not diff:
            raise InputError(f"{cfg.compare} scored none of these pairs or answers (compare runs on the same inputs)")
        summary["compare"] = {"other": str(cfg.compare), **estimates_to_dict(diff)}
    write_outputs(out, scores, inputs.rejects, summary)
    save_resolved_config(out, cfg)
    return out


def evaluate_models(models: Sequence[tuple[str, str, str]], inputs: LikelihoodInputs, settings: LikelihoodSettings,
                    out_dir: Path, *, seed: int, n_bootstrap: int, compare_first: bool = True) -> dict[str, Any]:
    """The measures of each ``(name, model, adapter)``, each written to ``out_dir/<name>``, and, with
    ``compare_first``, the paired differences of the first model (the candidate) minus each other one."""
    scored: dict[str, ModelScores] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for name, model, adapter in models:
        scorer, info = load_scorer(model, adapter, "", settings)
        scored[name] = score_model(scorer, inputs, seed=seed, n_bootstrap=n_bootstrap)
        summaries[name] = {"name": name, **info, **scored[name].summary, "n_rejected": len(inputs.rejects) + len(scored[name].rejects)}
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        write_outputs(out_dir / name, scored[name], inputs.rejects, summaries[name])
    diffs = []
    names = list(scored)
    for other in names[1:] if compare_first else ():
        a, b = scored[names[0]], scored[other]
        d = paired_differences(a.pair_rows, b.pair_rows, a.answer_rows, b.answer_rows, seed=seed, n_bootstrap=n_bootstrap)
        diffs.append({"candidate": names[0], "baseline": other, **estimates_to_dict(d)})
    # A list, not a mapping: summary.json sorts keys, and the report keeps the models' order.
    return json_safe({"models": list(summaries.values()), "differences": diffs, "inputs": inputs.files})


__all__ = [
    "LikelihoodConfig", "LikelihoodSettings", "Estimate", "estimate", "margins", "relative_margins",
    "margin_measures", "pair_measures", "paired_differences", "read_inputs", "Scorer", "score_model",
    "summarize_rows", "likelihood", "evaluate_models", "read_rows",
]
