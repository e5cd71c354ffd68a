"""``seal inspect``: what a scores file says, in a terminal.

Prints the file's schema and provenance, the score distribution (a unicode
histogram and quantiles; a PNG with ``plot``), the best and worst samples with
their text (given the pool) and, given labels, how the score ranks each label
(AUROC) and the label mix of the kept set at several keep fractions.

Labels are a JSONL file of objects with a ``label`` field, keyed by
``sample_id`` or, with ``label_key``, by a field of the pool's ``metadata``
(the input record's own id survives ingestion there, e.g. ``id``).
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
from .metrics import KEEP_FRACTIONS, auroc, label_aurocs, label_mix  # noqa: F401  (re-exported API)

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_BLOCKS = " ▏▎▍▌▋▊▉█"


@dataclass
class InspectReport:
    text: str
    stats: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs


def load_labels(path: str | os.PathLike, key: str = "sample_id") -> dict[str, str]:
    """``{key value: label}`` from a JSONL file; errors name the line and field."""
    p = Path(path)
    try:
        fh = open(p, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read labels file {p}: {e.strerror or e}") from None
    out: dict[str, str] = {}
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{p} line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise InputError(f"{p} line {lineno}: expected a JSON object, got {type(rec).__name__}")
            if "label" not in rec:
                raise InputError(f"{p} line {lineno}: no field 'label'")
            if key not in rec:
                hint = (" (use --label-key to join on a field of the pool's metadata)"
                        if key == "sample_id" else "")
                raise InputError(f"{p} line {lineno}: no field {key!r} (fields: {', '.join(rec)}){hint}")
            k, lab = str(rec[key]), str(rec["label"])
            if out.get(k, lab) != lab:
                raise InputError(f"{p} line {lineno}: {key} {k!r} labelled both {out[k]!r} and {lab!r}")
            out[k] = lab
    if not out:
        raise InputError(f"labels file {p} has no labels")
    return out


def _pool_key_map(pool: Any, key: str) -> dict[str, str]:
    """``{sample_id: str(metadata[key])}`` for the pool's samples that have that metadata field."""
    out: dict[str, str] = {}
    for batch in pool.batches(["sample_id", "metadata"], 65536):
        for sid, md in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            try:
                meta = json.loads(md) if md else {}
            except json.JSONDecodeError:
                continue
            if isinstance(meta, dict) and key in meta and meta[key] is not None:
                out[sid] = str(meta[key])
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


def _plot(path: str | os.PathLike, key: np.ndarray, labels: Optional[np.ndarray], bins: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = np.isfinite(key)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if not finite.any():
        ax.text(0.5, 0.5, "no finite scores", ha="center", transform=ax.transAxes)
        lo = hi = 0.0
    else:
        lo, hi = histogram_range(key[finite])
    rng = (lo, hi) if hi > lo else None
    if labels is not None and finite.any():
        names = sorted(set(labels[finite].tolist()))
        ax.hist([key[finite & (labels == L)] for L in names], bins=bins, range=rng, stacked=True, label=names)
        ax.legend(title="label")
    elif finite.any():
        ax.hist(key[finite], bins=bins, range=rng, color="#4c72b0")
    n_out = int(((key[finite] < lo) | (key[finite] > hi)).sum())
    ax.set_xlabel("score (higher = keep)" + (f"; {n_out} outliers outside the range not drawn" if n_out else ""))
    ax.set_ylabel("samples")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the report


def inspect_scores(
    scores: str | os.PathLike,
    pool: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    label_key: str = "sample_id",
    top: int = 5,
    bins: int = 20,
    plot: str | os.PathLike | None = None,
    fractions: Sequence[float] = KEEP_FRACTIONS,
    text_width: int = 100,
) -> InspectReport:
    from .ranker.scores import read_scores_metadata
    from .selection import _open_pool, resolve_scores_path

    path = resolve_scores_path(scores)
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
    n = t.num_rows
    if n == 0:
        raise InputError(f"{path}: the scores file has no rows")
    ids_col = t.column("sample_id").combine_chunks()
    try:
        raw = pc.fill_null(t.column("score").cast(pa.float64()), math.nan).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InputError(f"{path}: column score must be numeric, got {schema.field('score').type}") from None
    key = np.where(np.isnan(raw), -np.inf, raw)
    meta = read_scores_metadata(path)
    stats: dict[str, Any] = {"path": str(path), "rows": n, "schema": {f.name: str(f.type) for f in schema}}
    out: list[str] = [f"{path}: {n:,} rows"]
    out.append("schema: " + ", ".join(f"{f.name} {f.type}" for f in schema))
    prov = {k: meta[k] for k in ("method", "model_id", "model", "steps", "completed") if k in meta}
    if prov:
        stats["provenance"] = prov
        out.append("ranker: " + ", ".join(f"{k}={v}" for k, v in prov.items()))

    # Distribution.
    finite = np.isfinite(raw)
    fv = raw[finite]
    q = dict(zip(QUANTILES, np.quantile(fv, QUANTILES).tolist())) if fv.size else {}
    dist = {
        "n_finite": int(fv.size),
        "n_nan": int(np.isnan(raw).sum()),
        "n_inf": int(np.isinf(raw).sum()),
        "n_distinct": int(np.unique(fv).size),
        "min": float(fv.min()) if fv.size else None,
        "mean": float(fv.mean()) if fv.size else None,
        "std": float(fv.std()) if fv.size else None,
        "max": float(fv.max()) if fv.size else None,
        "quantiles": {f"p{int(round(k * 100))}": v for k, v in q.items()},
    }
    out += ["", "score distribution (higher = keep):"]
    out.append(f"  min {_fmt(dist['min'])}  mean {_fmt(dist['mean'])}  std {_fmt(dist['std'])}  "
               f"max {_fmt(dist['max'])}  distinct {dist['n_distinct']:,}"
               + (f"  NaN {dist['n_nan']:,}" if dist["n_nan"] else "")
               + (f"  ±inf {dist['n_inf']:,}" if dist["n_inf"] else ""))
    if q:
        out.append("  " + "  ".join(f"p{int(round(k * 100))} {_fmt(v)}" for k, v in q.items()))
    lines, hist = histogram_lines(raw, bins=bins)
    out += lines
    dist["histogram"] = hist
    stats["score"] = dist

    src = _open_pool(pool) if pool is not None else None

    # Labels, joined to the scores.
    lab_arr: Optional[np.ndarray] = None
    if labels is not None:
        lab_map = load_labels(labels, label_key)
        ids_list = ids_col.to_pylist()
        if label_key == "sample_id":
            keys = ids_list
        else:
            if src is None:
                raise InputError(f"--label-key {label_key} joins labels through the pool's metadata: give --pool")
            kmap = _pool_key_map(src, label_key)
            keys = [kmap.get(s) for s in ids_list]
        lab_arr = np.asarray([lab_map.get(k) if k is not None else None for k in keys], dtype=object)
        matched = lab_arr != None  # noqa: E711  (elementwise)
        n_matched = int(matched.sum())
        used_keys = {k for k, m in zip(keys, matched) if m}
        lstats: dict[str, Any] = {
            "key": label_key, "matched": n_matched, "unlabelled_scores": n - n_matched,
            "labels_not_in_scores": len(set(lab_map) - used_keys),
        }
        out += ["", f"labels ({labels}, keyed by {label_key}): {n_matched:,} of {n:,} scored samples labelled"
                + (f", {lstats['labels_not_in_scores']:,} labels match no scored sample"
                   if lstats["labels_not_in_scores"] else "")]
        if n_matched == 0:
            out.append("  no scored sample has a label: check --label-key")
        else:
            ls, ll = raw[matched], lab_arr[matched].astype(str)
            lids = np.asarray(ids_list, dtype=object)[matched]
            au = label_aurocs(ls, ll)
            names = list(au)
            cnt = {L: int((ll == L).sum()) for L in names}
            ranks = np.empty(len(ls))
            ranks[np.lexsort((lids, -np.where(np.isnan(ls), -np.inf, ls)))] = np.arange(1, len(ls) + 1)
            rows = [[L, f"{cnt[L]:,}", f"{100 * cnt[L] / n_matched:.1f}%",
                     f"{100 * float(np.mean(ranks[ll == L])) / len(ls):.1f}%", _fmt(au[L])] for L in names]
            out.append("  AUROC = P(a random other sample scores above a random sample of the label);")
            out.append("  1.0: the score pushes that label to the bottom, 0.5: chance, 0.0: to the top.")
            out += _table(["label", "n", "share", "mean rank %", "AUROC"], rows)
            lstats.update(counts=cnt, auroc_pushdown=au)
            if "good" in cnt and len(cnt) > 1:
                g = auroc(ls, ll == "good")
                lstats["auroc_good_vs_rest"] = g
                out.append(f"  good vs rest AUROC (good ranked above the rest): {_fmt(g)}")
            mix = label_mix(ls, ll, list(fractions) + [1.0], sample_ids=lids)
            lstats["label_mix"] = mix
            out += ["", "label mix of the kept set (top fraction of the labelled samples):"]
            out += _table(["keep", "k"] + names,
                          [[f"{100 * m['fraction']:.0f}%", f"{m['k']:,}"]
                           + [f"{100 * m['shares'][L]:.1f}%" for L in names] for m in mix])
        stats["labels"] = lstats

    # Best and worst samples: exact rank order (score desc, sample_id asc) among the candidates only.
    top = max(0, min(top, n))
    if top:
        def ranked(cand: np.ndarray) -> np.ndarray:
            cid = np.asarray(ids_col.take(pa.array(cand)).to_pylist(), dtype=object)
            return cand[np.lexsort((cid, -key[cand]))]

        t_hi = np.partition(key, n - top)[n - top]
        best = ranked(np.flatnonzero(key >= t_hi))[:top]
        t_lo = np.partition(key, top - 1)[top - 1]
        worst = ranked(np.flatnonzero(key <= t_lo))[-top:]
        msgs = _fetch_messages(src, ids_col.take(pa.array(np.r_[best, worst])).to_pylist()) if src else {}
        for title, idx, first_rank in (("top", best, 1), ("bottom", worst, n - len(worst) + 1)):
            out += ["", f"{title} {len(idx)} by score" + ("" if src else " (give --pool to see their text)") + ":"]
            rows = []
            for j, i in enumerate(idx):
                sid = ids_col[int(i)].as_py()
                lab = lab_arr[i] if lab_arr is not None else None
                rows.append({"rank": first_rank + j, "sample_id": sid, "score": float(raw[i]), "label": lab})
                out.append(f"  #{first_rank + j:<{len(str(n))}}  {_fmt(float(raw[i])):>10}  {sid}" + (f"  [{lab}]" if lab else ""))
                if src is not None:
                    m = msgs.get(sid)
                    out += [f"      {line}" for line in (_conversation_lines(m, text_width) if m else ["(not in the pool)"])]
            stats[title] = rows

    if plot is not None:
        plot_labels = None
        if lab_arr is not None:
            plot_labels = np.asarray(["(unlabelled)" if x is None else x for x in lab_arr], dtype=object)
        _plot(plot, key, plot_labels, bins,
              f"{path.name}" + (f" ({prov['method']})" if "method" in prov else ""))
        out += ["", f"histogram written to {plot}"]
        stats["plot"] = str(plot)
    return InspectReport("\n".join(out), stats)
