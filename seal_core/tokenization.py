"""Chat-template tokenisation with assistant-only loss masks, length-grouped batching, per-sample loss.

Masking renders the conversation with the tokenizer's own chat template at every assistant turn
(``messages[:k]`` with the generation prompt vs ``messages[:k+1]``) and tokenises the text between
those boundaries piece by piece, so the target span is exact in tokens: the assistant's content plus
the end-of-turn token (e.g. ``<|im_end|>``, so the model learns to stop), never the role header.
Labels follow the Hugging Face convention: aligned with ``input_ids``, ``-100`` where no loss is taken;
the shift (token t predicted from positions < t) happens in :func:`per_sample_loss`.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import ConfigError, SealError

IGNORE_INDEX = -100
TRAIN_ON = ("final", "all")
TRUNCATION = ("keep_prompt", "left", "right", "drop")
# 2**24 logits = 64 MiB in float32, 341 rows of SmolLM2's 49152-entry vocabulary: an 8 x 512
# micro-batch's head then needs a few hundred MB instead of ~2.4 GB, at no measurable cost in speed
# (bench/ranker_speed.py --budgets).
DEFAULT_LOGITS_BUDGET = 2**24


@dataclass
class Encoded:
    sample_id: str
    input_ids: list[int]
    labels: list[int]  # same length as input_ids; IGNORE_INDEX on non-target tokens
    n_tokens: int
    n_target_tokens: int
    truncated: bool


def check_encode_options(max_length: int, train_on: str, truncation: str) -> None:
    if train_on not in TRAIN_ON:
        raise ConfigError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    if truncation not in TRUNCATION:
        raise ConfigError(f"truncation must be one of {', '.join(TRUNCATION)}, got {truncation!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"max_length must be an integer >= 2, got {max_length!r}")


def _plain_messages(messages: Iterable[Any]) -> list[dict[str, str]]:
    # Rows read from parquet may be numpy arrays of dicts; templates want plain lists of str.
    return [{"role": str(m["role"]), "content": "" if m["content"] is None else str(m["content"])} for m in messages]


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _segments(tokenizer, messages: list[dict], train_on: str) -> list[tuple[str, str]]:
    """Split the rendered conversation into (text, kind) pieces; kind is "context", "target" or "suffix".

    "suffix" is what the template appends after an assistant's content (end-of-turn token, newline);
    its leading special token(s) become target later.
    """
    assistant_idx = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "final":
        assistant_idx = assistant_idx[-1:]
    full = _render(tokenizer, messages, add_generation_prompt=False)
    pieces: list[tuple[str, str]] = []
    cursor = 0
    for k in assistant_idx:
        before = _render(tokenizer, messages[:k], add_generation_prompt=True) if k > 0 else None
        upto = _render(tokenizer, messages[: k + 1], add_generation_prompt=False)
        if before is None:
            # First message is the assistant: the template may prepend a system prompt, so locate the
            # content inside its own rendering instead of relying on an empty-prefix render.
            start = upto.rfind(messages[k]["content"]) if messages[k]["content"] else -1
            before = upto[:start] if start >= 0 else ""
        if not (upto.startswith(before) and full.startswith(upto) and len(before) >= cursor):
            raise SealError(
                "the tokenizer's chat template does not render conversations prefix by prefix, "
                "so assistant tokens cannot be located exactly"
            )
        pieces.append((full[cursor: len(before)], "context"))
        turn = upto[len(before):]
        content = messages[k]["content"]
        at = turn.find(content) if content else 0
        if at < 0 and content.strip():
            content = content.strip()  # some templates trim message content
            at = turn.find(content)
        if at < 0:
            pieces.append((turn, "target"))  # template rewrites content: train on its whole rendering
        else:
            pieces.append((turn[:at], "context"))
            pieces.append((turn[at: at + len(content)], "target"))
            pieces.append((turn[at + len(content):], "suffix"))
        cursor = len(upto)
    pieces.append((full[cursor:], "context"))
    return [(t, kind) for t, kind in pieces if t]


def special_token_ids(tokenizer) -> set[int]:
    """The special-token map's ids plus every added token flagged special.

    Some Llama-3 tokenizer configs keep ``<|eot_id|>`` out of the special-token map (eos is
    ``<|end_of_text|>``) and only flag it special among the added tokens; missing it would leave
    the end of turn untrained, and the fine-tuned model would not learn to stop.
    """
    ids = set(tokenizer.all_special_ids)
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def _tokenize(tokenizer, messages: list[dict], train_on: str) -> tuple[list[int], list[int]]:
    pieces = _segments(tokenizer, messages, train_on)
    if not pieces:
        return [], []
    enc = tokenizer([t for t, _ in pieces], add_special_tokens=False)["input_ids"]
    special = special_token_ids(tokenizer)
    ids: list[int] = []
    mask: list[int] = []
    for (_, kind), toks in zip(pieces, enc):
        if kind == "suffix":
            # Target up to and including the first special token (end of turn); the rest
            # (newline before the next turn) is context.
            stop = next((j + 1 for j, t in enumerate(toks) if t in special), 0)
            flags = [1] * stop + [0] * (len(toks) - stop)
        else:
            flags = [1 if kind == "target" else 0] * len(toks)
        ids.extend(toks)
        mask.extend(flags)
    return ids, mask


def _encode(tokenizer, messages, max_length, train_on, truncation, sample_id) -> tuple[Encoded | None, str]:
    msgs = _plain_messages(messages)
    if not any(m["role"] == "assistant" for m in msgs):
        return None, "no assistant turn"
    ids, mask = _tokenize(tokenizer, msgs, train_on)
    n = len(ids)
    truncated = n > max_length
    if truncated:
        if truncation == "drop":
            return None, f"too long: {n} tokens > max_length {max_length}"
        if truncation == "left":
            ids, mask = ids[-max_length:], mask[-max_length:]
        elif truncation == "keep_prompt":
            # A loss only says how the model answers *this* request if the request is in view:
            # keep the context right before the final answer (up to half the budget when the
            # answer needs the rest) and the start of the answer; drop the oldest turns and
            # the answer's end.
            last = max(i for i, m in enumerate(mask) if m)
            t0 = last
            while t0 > 0 and mask[t0 - 1]:
                t0 -= 1
            keep_ctx = min(t0, max(max_length - (n - t0), max_length // 2))
            start = t0 - keep_ctx
            ids, mask = ids[start : start + max_length], mask[start : start + max_length]
        else:
            ids, mask = ids[:max_length], mask[:max_length]
    # Position 0 has nothing before it to predict it from, so it can never carry loss.
    mask = [0] + mask[1:]
    n_target = sum(mask)
    if n_target == 0:
        return None, ("no target tokens left after truncation" if truncated else "no target tokens")
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    return Encoded(sample_id, ids, labels, len(ids), n_target, truncated), ""


def encode_messages(tokenizer, messages, max_length: int, train_on: str = "final", truncation: str = "left",
                    sample_id: str = "") -> Encoded | None:
    """Tokenise one conversation with its loss mask.

    train_on: "final" (last assistant turn only) or "all" (every assistant turn).
    truncation when longer than ``max_length``: "keep_prompt" keeps the prompt right before the
    final answer and the answer's start (drops the oldest turns and the answer's end), "left" drops
    the oldest tokens (keeps the answer's end), "right" cuts the end, "drop" rejects. Returns None when rejected, or when no target token is left.
    """
    check_encode_options(max_length, train_on, truncation)
    return _encode(tokenizer, messages, max_length, train_on, truncation, sample_id)[0]


def encode_samples(tokenizer, samples: list[dict], max_length: int, train_on: str = "final",
                   truncation: str = "left", *, progress: bool = False) -> tuple[list[Encoded], list[dict]]:
    """Encode canonical samples -> (encoded, rejects); each reject is ``{"sample_id", "reason"}``."""
    check_encode_options(max_length, train_on, truncation)
    it = samples
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(samples, desc="tokenise", unit="sample", leave=False)
    out: list[Encoded] = []
    rejects: list[dict] = []
    for s in it:
        sid = str(s.get("sample_id", ""))
        enc, reason = _encode(tokenizer, s["messages"], max_length, train_on, truncation, sid)
        if enc is None:
            rejects.append({"sample_id": sid, "reason": reason})
        else:
            out.append(enc)
    return out, rejects


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, shuffle: bool = True) -> list[list[int]]:
    """Batches of indices with similar lengths, so little compute goes to padding.

    shuffle=True: seeded shuffle, sort by length (longest first) inside mega-batches of 50*batch_size,
    chunk, then shuffle the batch order with the same seed. shuffle=False: global sort by length
    (longest first, ties by index), batches in that order. Deterministic for a given seed.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: (-lengths[i], i))
        return [order[i: i + batch_size] for i in range(0, n, batch_size)]
    rng = random.Random(seed)
    perm = list(range(n))
    rng.shuffle(perm)
    mega = 50 * batch_size
    batches: list[list[int]] = []
    for start in range(0, n, mega):
        group = sorted(perm[start: start + mega], key=lambda i: -lengths[i])
        batches.extend(group[i: i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def scoring_passes(encoded: list, batch_size: int, pad_id: int, device, dist, progress: bool, desc: str):
    """``(indices, collated batch on device)`` of a no-gradient pass: batches of ``batch_size`` times the
    longest length in tokens (sorted by length), this rank's share of them, with a progress bar on the
    main rank."""
    from tqdm.auto import tqdm

    lengths = [e.n_tokens for e in encoded]
    batches = token_budget_batches(lengths, batch_size * max(lengths, default=0))
    if dist is not None and dist.enabled:
        batches, progress = batches[dist.rank::dist.world_size], progress and dist.is_main
    for idx in tqdm(batches, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True):
        yield idx, {k: v.to(device) for k, v in collate([encoded[i] for i in idx], pad_id).items()}


@contextlib.contextmanager
def inference(model, what: str):
    """Eval mode and no gradients for a scoring pass, the model's mode restored after; running out of
    memory becomes a one-line :class:`SealError` ("out of memory ``what``")."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    except torch.OutOfMemoryError:
        raise SealError(f"out of memory {what}") from None
    finally:
        model.train(was_training)


def token_budget_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices sorted by length (longest first, ties by index), cut into batches whose padded size
    (samples x longest length) stays within ``max_tokens``; a longer sample gets a batch of its own."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        # Sorted longest first, so a batch's first sample sets its padded width.
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def pad_token_id(tokenizer) -> int:
    """The id padding uses: the tokenizer's pad token, else its end-of-sequence token.

    Padding never carries loss (labels are IGNORE_INDEX there), so borrowing EOS is safe.
    """
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(items: list[Encoded], pad_id: int) -> dict:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (IGNORE_INDEX on padding)."""
    import torch

    if not items:
        raise ValueError("collate needs at least one item")
    width = max(len(e.input_ids) for e in items)
    b = len(items)
    input_ids = torch.full((b, width), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((b, width), dtype=torch.long)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _backbone_and_head(model):
    """(decoder backbone returning hidden states, lm_head) of a causal LM, peft-wrapped or not.

    LoRA layers are injected in place, so the base model's own submodules already include them.
    """
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a hard dependency
        PeftModel = ()
    m = model.get_base_model() if isinstance(model, PeftModel) else model
    head = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
    if head is None:
        head = getattr(m, "lm_head", None)
    backbone = getattr(m, "model", None)
    if backbone is None:
        prefix = getattr(m, "base_model_prefix", "")
        backbone = getattr(m, prefix, None) if prefix else None
    if backbone is None or head is None or backbone is m:
        raise SealError(f"cannot find the decoder backbone and lm_head of {type(m).__name__}")
    return m, backbone, head


def per_sample_loss(model, batch: dict, logits_budget: int = DEFAULT_LOGITS_BUDGET):
    """Mean next-token NLL over each sample's target tokens -> float32 tensor of shape [B].

    Runs the backbone once, then applies ``lm_head`` only at positions whose next label is a target
    (full-vocab logits are never built for every position), in chunks of at most ``logits_budget``
    logits, forward and backward (:func:`~seal_core.head_loss.head_nll`). Differentiable. A sample
    with no target token gets NaN (0/0).
    """
    m, backbone, head = _backbone_and_head(model)
    device = next(head.parameters()).device
    input_ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    attention_mask = batch.get("attention_mask")
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)

    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return loss_from_hidden(m, head, hidden, labels, logits_budget)


def token_nll_from_hidden(m, head, hidden, labels, logits_budget: int = DEFAULT_LOGITS_BUDGET):
    """``(nll [K], rows [K])``: each target token's next-token NLL from the backbone's final hidden
    states ``[B, T, d]``, row-major (a row's tokens together, in position order), and its batch row."""
    from .head_loss import head_nll

    device = hidden.device
    labels = labels.to(device)
    next_labels = labels[:, 1:]
    keep = next_labels != IGNORE_INDEX
    rows = keep.nonzero(as_tuple=True)[0]
    softcap = getattr(m.config, "final_logit_softcapping", None)
    return head_nll(head, hidden[:, :-1][keep], next_labels[keep], softcap, logits_budget), rows


def loss_from_hidden(m, head, hidden, labels, logits_budget: int = DEFAULT_LOGITS_BUDGET):
    """:func:`per_sample_loss` from the backbone's final (normed) hidden states ``[B, T, d]``, so a pass
    that needs the hidden states for something else gets the losses without a second forward."""
    import torch

    nll, rows = token_nll_from_hidden(m, head, hidden, labels, logits_budget)
    b = labels.shape[0]
    total = torch.zeros(b, dtype=torch.float32, device=hidden.device).index_add(0, rows, nll.float())
    count = torch.zeros(b, dtype=torch.float32, device=hidden.device).index_add(
        0, rows, torch.ones_like(nll, dtype=torch.float32)
    )
    return total / count


class TokenNLL:
    """Per-token NLLs of a pool's predicted target tokens in one flat float32 buffer.

    Row ``i``'s tokens are ``values[offsets[i]:offsets[i + 1]]`` in position order. A pool of 1M
    answers of ~300 tokens holds ~1.2 GB here; statistics that need token-level alignment between
    two passes (:mod:`seal_core.ranker.relevance`'s standard error) cannot be had from per-row sums.
    """

    def __init__(self, offsets, values):
        import numpy as np

        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.values = np.asarray(values, dtype=np.float32)
        if len(self.offsets) < 1 or self.offsets[0] != 0 or self.offsets[-1] != len(self.values):
            raise ValueError("TokenNLL offsets disagree with its values")

    @classmethod
    def empty_for(cls, encoded) -> "TokenNLL":
        """Zeros shaped for ``encoded`` (an :class:`~seal_core.encoded.EncodedPool`): one slot per target
        token after a row's first position (position 0 is never predicted)."""
        import numpy as np

        target = encoded.target.astype(np.int64)
        cs = np.concatenate([[0], np.cumsum(target)])
        starts, ends = encoded.offsets[:-1], encoded.offsets[1:]
        nonempty = ends > starts
        first = np.zeros(len(starts), dtype=np.int64)
        first[nonempty] = target[starts[nonempty]]
        counts = cs[ends] - cs[starts] - first
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(offsets, np.zeros(int(offsets[-1]), dtype=np.float32))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int):
        return self.values[self.offsets[i]: self.offsets[i + 1]]

    def fill(self, idx, nll, rows) -> None:
        """Place one batch's ``token_nll_from_hidden`` output (batch rows ``idx`` of the pool)."""
        import numpy as np

        nll, rows = nll.float().cpu().numpy(), rows.cpu().numpy()
        counts = np.bincount(rows, minlength=len(idx))
        for r, (i, chunk) in enumerate(zip(idx, np.split(nll, np.cumsum(counts)[:-1]))):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            if hi - lo != len(chunk):
                raise SealError(f"row {i}: {len(chunk)} scored target tokens where its encoding has {hi - lo}")
            self.values[lo:hi] = chunk

    def all_reduce(self, device) -> None:
        """Every row was filled by exactly one rank, zeros elsewhere: the sum is the whole buffer."""
        import torch
        import torch.distributed as tdist

        t = torch.from_numpy(self.values).to(device)
        tdist.all_reduce(t)
        self.values = t.cpu().numpy()


def score_losses(model, tokenizer, encoded: list, batch_size: int, progress: bool = True, desc: str = "score",
                 dist=None, logits_budget: int = DEFAULT_LOGITS_BUDGET, token_nll: bool = False):
    """Per-sample loss of each encoded sample, in input order, as a float64 NumPy array.

    No gradient. Samples are sorted by length and batched by tokens: every batch pads to at most
    ``batch_size`` times the longest sample's length, so the longest samples go ``batch_size`` at a
    time and shorter ones more at once, for the same peak memory.
    Under torch.distributed (``dist``: a :class:`~seal_core.training.Dist`) each rank scores
    every ``world_size``-th batch and every rank returns the whole array.
    ``token_nll=True`` (``encoded`` an :class:`~seal_core.encoded.EncodedPool`) returns
    ``(losses, TokenNLL)``: every target token's NLL as well, from the same pass.
    """
    import numpy as np
    import torch

    device = next(model.parameters()).device
    out = np.full(len(encoded), np.nan)
    tokens = TokenNLL.empty_for(encoded) if token_nll else None
    m, backbone, head = _backbone_and_head(model)
    with inference(model, f"scoring with batch size {batch_size}; lower score_batch_size"):
        for idx, batch in scoring_passes(encoded, batch_size, pad_token_id(tokenizer), device, dist, progress, desc):
            if tokens is None:
                out[idx] = per_sample_loss(model, batch, logits_budget).float().cpu().numpy()
                continue
            hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              use_cache=False).last_hidden_state
            nll, rows = token_nll_from_hidden(m, head, hidden, batch["labels"], logits_budget)
            tokens.fill(idx, nll, rows)
            out[idx] = [float(tokens.row(i).astype(np.float64).mean()) if len(tokens.row(i)) else np.nan
                        for i in idx]
    if dist is not None and dist.enabled:
        # Every sample was scored by exactly one rank: sum the owners' values, zeros elsewhere.
        mine = ~np.isnan(out)
        owned = torch.from_numpy(np.where(mine, out, 0.0)).to(device)
        import torch.distributed as tdist

        tdist.all_reduce(owned)
        scored = torch.from_numpy(mine.astype(np.float64)).to(device)
        tdist.all_reduce(scored)
        out = np.where(scored.cpu().numpy() > 0, owned.cpu().numpy(), np.nan)
        if tokens is not None:
            tokens.all_reduce(device)
    return (out, tokens) if token_nll else out


__all__ = [
    "IGNORE_INDEX", "Encoded", "encode_messages", "encode_samples", "check_encode_options",
    "length_grouped_batches", "token_budget_batches", "scoring_passes", "inference", "pad_token_id", "collate", "DEFAULT_LOGITS_BUDGET",
    "per_sample_loss", "score_losses", "loss_from_hidden", "token_nll_from_hidden", "TokenNLL",
]
