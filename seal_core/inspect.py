"""``seal inspect``: what a scores file says, in a terminal.

Prints the file's schema and provenance, the score distribution (a unicode
histogram and quantiles; a PNG with ``plot``), the best and worst samples with
their text (given the pool) and, given labels, how the score ranks each label
(AUROC) and the label mix of the kept set at several keep fractions.

Labels are a JSONL file of objects with a ``label`` field, keyed by
``sample_id`` or, with ``id_field``, by a field of the pool's ``metadata``
(the input record's own id survives ingestion there, e.g. ``id``); see
:func:`seal_core.labels.read_labels`.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import InputError
from .io import atomic_path
from .labels import read_labels
from .metrics import KEEP_FRACTIONS, auroc, label_aurocs, label_mix  # noqa: F401  (re-exported API)

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_BLOCKS = " ▏▎▍▌▋▊▉█"


@dataclass
class InspectReport:
    text: str
    stats: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs


def _metadata_ids(pool: Any, id_field: str) -> dict[str, str]:
    """``{sample_id: str(metadata[id_field])}`` for the pool's samples that have that metadata field."""
    out: dict[str, str] = {}
    for batch in pool.batches(["sample_id", "metadata"], 65536):
        for sid, md in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            try:
                meta = json.loads(md) if md else {}
            except json.JSONDecodeError:
                continue
            if isinstance(meta, dict) and id_field in meta and meta[id_field] is not None:
                out[sid] = str(meta[id_field])
    return out


def _conversation_lines(messages: list[dict], width: int) -> list[str]:
    def short(s: str) -> str:
        return textwrap.shorten(" ".join(s.split()), width=width, placeholder=" …") or "(empty)"

    lines = []
    last_user = next((m for m in reversed(messages[:-1]) if m["role"] == "user"), None)
    earlier = sum(1 for m in messages if m["role"] == "user") - 1
    if last_user is not None:
        more = f" (+{earlier} earlier turns)" if earlier > 0 else ""
        lines.append(f"user{more}: {short(last_user['content'])}")
    if messages and messages[-1]["role"] == "assistant":
        lines.append(f"assistant: {short(messages[-1]['content'])}")
    return lines


def _fetch_messages(pool: Any, wanted: Sequence[str]) -> dict[str, list[dict]]:
    value_set = pa.array(list(wanted), pa.string())
    out: dict[str, list[dict]] = {}
    for batch in pool.batches(["sample_id", "messages"], 65536):
        mask = pc.is_in(batch.column(0), value_set=value_set)
        if pc.any(mask).as_py():
            t = pa.Table.from_batches([batch]).filter(mask)
            for sid, m in zip(t.column(0).to_pylist(), t.column(1).to_pylist()):
                out.setdefault(sid, m)
    return out


# --------------------------------------------------------------------------- rendering


def histogram_range(values: np.ndarray) -> tuple[float, float]:
    """Range to draw: the full range, or the central 99% when a few outliers would squash the rest."""
    v = values[np.isfinite(values)]
    lo, hi = float(v.min()), float(v.max())
    if v.size >= 50:
        qlo, qhi = (float(x) for x in np.quantile(v, (0.005, 0.995)))
        if qhi > qlo and (hi - lo) > 3 * (qhi - qlo):
            return qlo, qhi
    return lo, hi


def histogram_lines(values: np.ndarray, bins: int = 20, width: int = 40) -> tuple[list[str], dict[str, Any]]:
    """Terminal histogram of finite ``values``: lines and {edges, counts, below, above}."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return ["  (no finite scores)"], {"edges": [], "counts": [], "below": 0, "above": 0}
    lo, hi = histogram_range(v)
    below, above = int((v < lo).sum()), int((v > hi).sum())
    inside = v[(v >= lo) & (v <= hi)]
    if lo == hi:
        counts, edges = np.array([inside.size]), np.array([lo, hi])
    else:
        counts, edges = np.histogram(inside, bins=bins, range=(lo, hi))
    peak = counts.max()
    lines = []
    if below:
        lines.append(f"  {'':>11}   {'< ' + format(lo, '.4g'):<11} │{'':<{width}} {below:,} (outliers)")
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        eighths = int(round(8 * width * c / peak)) if peak else 0
        bar = "█" * (eighths // 8) + (_BLOCKS[eighths % 8] if eighths % 8 else "")
        lines.append(f"  {a:>11.4g} … {b:<11.4g} │{bar:<{width}} {c:,}")
    if above:
        lines.append(f"  {'':>11}   {'> ' + format(hi, '.4g'):<11} │{'':<{width}} {above:,} (outliers)")
    return lines, {"edges": edges.tolist(), "counts": counts.astype(int).tolist(), "below": below, "above": above}


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(cells[0]), "  " + "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _plot(path: str | os.PathLike, scores: np.ndarray, labels: Optional[np.ndarray], bins: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = np.isfinite(scores)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if not finite.any():
        ax.text(0.5, 0.5, "no finite scores", ha="center", transform=ax.transAxes)
        lo = hi = 0.0
    else:
        lo, hi = histogram_range(scores[finite])
    rng = (lo, hi) if hi > lo else None
    if labels is not None and finite.any():
        names = sorted(set(labels[finite].tolist()))
        ax.hist([scores[finite & (labels == L)] for L in names], bins=bins, range=rng, stacked=True, label=names)
        ax.legend(title="label")
    elif finite.any():
        ax.hist(scores[finite], bins=bins, range=rng, color="#4c72b0")
    n_out = int(((scores[finite] < lo) | (scores[finite] > hi)).sum())
    ax.set_xlabel("score (higher = keep)" + (f"; {n_out} outliers outside the range not drawn" if n_out else ""))
    ax.set_ylabel("samples")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the report


@dataclass
class _Scores:
    """A scores file read whole: ``raw`` as stored (NaN where null), ``ranking`` with NaN as -inf."""

    path: Path
    schema: pa.Schema
    ids: pa.Array
    raw: np.ndarray
    ranking: np.ndarray

    def __len__(self) -> int:
        return len(self.raw)


def _read_scores(path: Path) -> _Scores:
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read scores file {path}: {e}") from None
    schema = pf.schema_arrow
    for col in ("sample_id", "score"):
        if col not in schema.names:
            raise InputError(f"{path}: not a scores file (missing column {col!r}; has {', '.join(schema.names)})")
    try:
        t = pf.read(columns=["sample_id", "score"])
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read scores file {path}: {e}") from None
    if t.num_rows == 0:
        raise InputError(f"{path}: the scores file has no rows")
    try:
        raw = pc.fill_null(t.column("score").cast(pa.float64()), math.nan).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InputError(f"{path}: column score must be numeric, got {schema.field('score').type}") from None
    return _Scores(path, schema, t.column("sample_id").combine_chunks(), raw, np.where(np.isnan(raw), -np.inf, raw))


def _distribution(raw: np.ndarray, bins: int) -> tuple[list[str], dict[str, Any]]:
    finite = raw[np.isfinite(raw)]
    q = dict(zip(QUANTILES, np.quantile(finite, QUANTILES).tolist())) if finite.size else {}
    dist = {
        "n_finite": int(finite.size),
        "n_nan": int(np.isnan(raw).sum()),
        "n_inf": int(np.isinf(raw).sum()),
        "n_distinct": int(np.unique(finite).size),
        "min": float(finite.min()) if finite.size else None,
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "quantiles": {f"p{int(round(k * 100))}": v for k, v in q.items()},
    }
    out = ["", "score distribution (higher = keep):"]
    out.append(f"  min {_fmt(dist['min'])}  mean {_fmt(dist['mean'])}  std {_fmt(dist['std'])}  "
               f"max {_fmt(dist['max'])}  distinct {dist['n_distinct']:,}"
               + (f"  NaN {dist['n_nan']:,}" if dist["n_nan"] else "")
               + (f"  ±inf {dist['n_inf']:,}" if dist["n_inf"] else ""))
    if q:
        out.append("  " + "  ".join(f"p{int(round(k * 100))} {_fmt(v)}" for k, v in q.items()))
    lines, hist = histogram_lines(raw, bins=bins)
    dist["histogram"] = hist
    return out + lines, dist


def _join_labels(ids_list: list[str], labels: str | os.PathLike, id_field: str,
                 src: Any) -> tuple[np.ndarray, dict, list]:
    """Each scored sample's label (None if unlabelled), the labels file, and each sample's join value."""
    hints = {"sample_id": " (use --id-field to join on a field of the pool's metadata)"}
    by_id = read_labels(labels, id_field=id_field, hints=hints)
    if not by_id:
        raise InputError(f"labels file {Path(labels)} has no labels")
    if id_field == "sample_id":
        keys = ids_list
    else:
        if src is None:
            raise InputError(f"--id-field {id_field} joins labels through the pool's metadata: give --pool")
        by_sample = _metadata_ids(src, id_field)
        keys = [by_sample.get(s) for s in ids_list]
    sample_labels = np.asarray([by_id.get(k) if k is not None else None for k in keys], dtype=object)
    return sample_labels, by_id, keys


def _label_section(sc: _Scores, labels: str | os.PathLike, id_field: str, src: Any,
                   fractions: Sequence[float]) -> tuple[list[str], dict[str, Any], np.ndarray]:
    """AUROC per label and the label mix of the kept sets: lines, statistics and each sample's label."""
    n = len(sc)
    ids_list = sc.ids.to_pylist()
    sample_labels, by_id, keys = _join_labels(ids_list, labels, id_field, src)
    matched = sample_labels != None  # noqa: E711  (elementwise)
    n_matched = int(matched.sum())
    used_keys = {k for k, m in zip(keys, matched) if m}
    lab_stats: dict[str, Any] = {
        "key": id_field, "matched": n_matched, "unlabelled_scores": n - n_matched,
        "labels_not_in_scores": len(set(by_id) - used_keys),
    }
    out = ["", f"labels ({labels}, keyed by {id_field}): {n_matched:,} of {n:,} scored samples labelled"
           + (f", {lab_stats['labels_not_in_scores']:,} labels match no scored sample"
              if lab_stats["labels_not_in_scores"] else "")]
    if n_matched == 0:
        out.append("  no scored sample has a label: check --id-field")
        return out, lab_stats, sample_labels
    lab_scores, lab_names = sc.raw[matched], sample_labels[matched].astype(str)
    lab_ids = np.asarray(ids_list, dtype=object)[matched]
    aurocs = label_aurocs(lab_scores, lab_names)
    names = list(aurocs)
    counts = {L: int((lab_names == L).sum()) for L in names}
    m = len(lab_scores)
    ranks = np.empty(m)
    ranks[np.lexsort((lab_ids, -np.where(np.isnan(lab_scores), -np.inf, lab_scores)))] = np.arange(1, m + 1)
    rows = [[L, f"{counts[L]:,}", f"{100 * counts[L] / n_matched:.1f}%",
             f"{100 * float(np.mean(ranks[lab_names == L])) / m:.1f}%", _fmt(aurocs[L])] for L in names]
    out.append("  AUROC = P(a random other sample scores above a random sample of the label);")
    out.append("  1.0: the score pushes that label to the bottom, 0.5: chance, 0.0: to the top.")
    out += _table(["label", "n", "share", "mean rank %", "AUROC"], rows)
    lab_stats.update(counts=counts, auroc_pushdown=aurocs)
    if "good" in counts and len(counts) > 1:
        g = auroc(lab_scores, lab_names == "good")
        lab_stats["auroc_good_vs_rest"] = g
        out.append(f"  good vs rest AUROC (good ranked above the rest): {_fmt(g)}")
    mix = label_mix(lab_scores, lab_names, list(fractions) + [1.0], sample_ids=lab_ids)
    lab_stats["label_mix"] = mix
    out += ["", "label mix of the kept set (top fraction of the labelled samples):"]
    out += _table(["keep", "k"] + names,
                  [[f"{100 * m['fraction']:.0f}%", f"{m['k']:,}"]
                   + [f"{100 * m['shares'][L]:.1f}%" for L in names] for m in mix])
    return out, lab_stats, sample_labels


def _signal_ranks(sc: _Scores) -> dict[str, np.ndarray]:
    """``{name: normalised rank in (0, 1]}`` of each ``signal_<name>`` column (``method=combined``).

    The rank is what the combined score averages, so it says which signal put a sample where it is.
    """
    from .ranker.combined import normalised_ranks

    names = [c for c in sc.schema.names if c.startswith("signal_")]
    if not names:
        return {}
    try:
        t = pq.read_table(sc.path, columns=["sample_id", *names])
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read scores file {sc.path}: {e}") from None
    if not t.column("sample_id").combine_chunks().equals(sc.ids):
        raise InputError(f"{sc.path}: the signal columns' rows changed while reading")
    return {c[len("signal_"):]: normalised_ranks(pc.fill_null(t.column(c).cast(pa.float64()), math.nan).to_numpy())
            for c in names}


def _extremes(sc: _Scores, top: int, src: Any, sample_labels: Optional[np.ndarray],
              text_width: int, signals: Optional[dict[str, np.ndarray]] = None) -> tuple[list[str], dict[str, list]]:
    """The ``top`` best and worst samples: exact rank order (score desc, sample_id asc) among the candidates only.

    ``signals`` (a combined ranking's per-signal ranks) are printed under each sample.
    """
    n, ranking, ids = len(sc), sc.ranking, sc.ids

    def ranked(cand: np.ndarray) -> np.ndarray:
        cid = np.asarray(ids.take(pa.array(cand)).to_pylist(), dtype=object)
        return cand[np.lexsort((cid, -ranking[cand]))]

    t_hi = np.partition(ranking, n - top)[n - top]
    best = ranked(np.flatnonzero(ranking >= t_hi))[:top]
    t_lo = np.partition(ranking, top - 1)[top - 1]
    worst = ranked(np.flatnonzero(ranking <= t_lo))[-top:]
    msgs = _fetch_messages(src, ids.take(pa.array(np.r_[best, worst])).to_pylist()) if src else {}
    out: list[str] = []
    stats: dict[str, list] = {}
    for title, idx, first_rank in (("top", best, 1), ("bottom", worst, n - len(worst) + 1)):
        out += ["", f"{title} {len(idx)} by score" + ("" if src else " (give --pool to see their text)") + ":"]
        rows = []
        for j, i in enumerate(idx):
            sid = ids[int(i)].as_py()
            lab = sample_labels[i] if sample_labels is not None else None
            score = float(sc.raw[i])
            row = {"rank": first_rank + j, "sample_id": sid, "score": score, "label": lab}
            out.append(f"  #{first_rank + j:<{len(str(n))}}  {_fmt(score):>10}  {sid}" + (f"  [{lab}]" if lab else ""))
            if signals:
                row["signal_ranks"] = {k: float(v[i]) for k, v in signals.items()}
                out.append("      signal ranks (0 = lowest, 1 = highest): "
                           + "  ".join(f"{k} {v:.2f}" for k, v in row["signal_ranks"].items()))
            rows.append(row)
            if src is not None:
                m = msgs.get(sid)
                out += [f"      {line}" for line in (_conversation_lines(m, text_width) if m else ["(not in the pool)"])]
        stats[title] = rows
    return out, stats


def inspect_scores(
    scores: str | os.PathLike,
    pool: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    id_field: str = "sample_id",
    top: int = 5,
    bins: int = 20,
    plot: str | os.PathLike | None = None,
    fractions: Sequence[float] = KEEP_FRACTIONS,
    text_width: int = 100,
) -> InspectReport:
    """The report on a scores file.

    ``id_field`` joins ``labels`` to the samples: ``sample_id``, or a field of the
    pool's metadata (which needs ``pool``).
    """
    from .ranker.scores import read_scores_metadata
    from .selection import open_pool, resolve_scores_path

    sc = _read_scores(resolve_scores_path(scores))
    n = len(sc)
    meta = read_scores_metadata(sc.path)
    stats: dict[str, Any] = {"path": str(sc.path), "rows": n, "schema": {f.name: str(f.type) for f in sc.schema}}
    out: list[str] = [f"{sc.path}: {n:,} rows"]
    out.append("schema: " + ", ".join(f"{f.name} {f.type}" for f in sc.schema))
    prov = {k: meta[k] for k in ("method", "model_id", "model", "steps", "completed") if k in meta}
    if prov:
        stats["provenance"] = prov
        out.append("ranker: " + ", ".join(f"{k}={v}" for k, v in prov.items()))
    lines, stats["score"] = _distribution(sc.raw, bins)
    out += lines

    src = open_pool(pool) if pool is not None else None
    sample_labels: Optional[np.ndarray] = None
    if labels is not None:
        lines, stats["labels"], sample_labels = _label_section(sc, labels, id_field, src, fractions)
        out += lines

    top = max(0, min(top, n))
    if top:
        lines, extremes = _extremes(sc, top, src, sample_labels, text_width, _signal_ranks(sc))
        out += lines
        stats.update(extremes)

    if plot is not None:
        plot_labels = None
        if sample_labels is not None:
            plot_labels = np.asarray(["(unlabelled)" if x is None else x for x in sample_labels], dtype=object)
        _plot(plot, sc.ranking, plot_labels, bins,
              f"{sc.path.name}" + (f" ({prov['method']})" if "method" in prov else ""))
        out += ["", f"histogram written to {plot}"]
        stats["plot"] = str(plot)
    return InspectReport("\n".join(out), stats)
