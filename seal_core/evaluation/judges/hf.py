"""``hf:MODEL``: a local causal LM as judge, reading the verdict from next-token logits.

There is no text to parse: ``p(A) = softmax([logit_A, logit_B])[0]`` after the
chat-templated prompt (likewise "Yes"/"No" for harmfulness).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from ...errors import ConfigError
from ...tokenization import pad_token_id
from .base import Judge, JudgeSpec, PairItem, SingleItem, Verdict
from .config import JudgeConfig
from .prompts import (
    DEFAULT_HARM_TEMPLATE,
    DEFAULT_PAIRWISE_TEMPLATE,
    HARM_FIELDS,
    HARM_TOKENS,
    PAIRWISE_FIELDS,
    VERDICT_TOKENS,
    JudgePrompts,
    validate_template,
)
from .registry import register_judge


@register_judge
class HFJudge(Judge):
    """Verdict probabilities from a local causal LM's next-token logits.

    The judge prompt is sent as one user message through the tokenizer's chat
    template with ``add_generation_prompt=True`` (plain text if the tokenizer
    has no template). The verdict tokens are the first token of "A" and "B"
    (of "Yes" and "No" for harmfulness), and ``p = softmax([l_A, l_B])[0]``.
    Prompts are left-padded in batches with explicit position ids, so a
    prompt's score does not depend on what it is batched with beyond float
    rounding.
    """

    kind = "hf"
    spec_form = "hf:MODEL"
    supports_harm = True

    def __init__(
        self,
        model_name: str = "",
        *,
        template: str = DEFAULT_PAIRWISE_TEMPLATE,
        harm_template: str = DEFAULT_HARM_TEMPLATE,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        if model is None or tokenizer is None:
            from ...models import load_model

            model, tokenizer = load_model(model_name, device=device, dtype=dtype)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = f"hf:{model_name or getattr(model.config, 'name_or_path', 'model')}"
        self.template = validate_template(template, PAIRWISE_FIELDS)
        self.harm_template = validate_template(harm_template, HARM_FIELDS, "harmfulness template")
        self.batch_size = max(1, int(batch_size))
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.verdict_ids = self._first_token_ids(VERDICT_TOKENS)
        self.harm_ids = self._first_token_ids(HARM_TOKENS)
        pad = pad_token_id(tokenizer)
        # A tokenizer with neither pad nor EOS token: padding is masked out, so any id will do.
        self.pad_id = int(pad) if pad is not None else 0
        ctx = getattr(model.config, "max_position_embeddings", None)
        self.context_length = int(ctx) if isinstance(ctx, int) and ctx > 0 else None

    @classmethod
    def from_config(cls, spec: JudgeSpec, config: JudgeConfig, prompts: JudgePrompts) -> HFJudge:
        return cls(spec.model, template=prompts.pairwise, harm_template=prompts.harm, device=config.device,
                   dtype=config.dtype, batch_size=config.batch_size)

    def cache_key(self) -> str:
        dtype = str(next(self.model.parameters()).dtype)
        return json.dumps([self.spec, dtype, self.template, self.harm_template])

    def _first_token_ids(self, words: Sequence[str]) -> tuple[int, int]:
        ids = []
        for w in words:
            toks = self.tokenizer.encode(w, add_special_tokens=False)
            if not toks:
                raise ConfigError(f"judge {self.spec}: the tokenizer encodes {w!r} as no tokens")
            ids.append(int(toks[0]))
        if ids[0] == ids[1]:
            raise ConfigError(f"judge {self.spec}: {words[0]!r} and {words[1]!r} start with the same token; cannot tell them apart")
        return ids[0], ids[1]

    def _encode(self, prompt: str) -> list[int]:
        if self.has_chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            # The template already places any BOS token.
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"])

    def _two_token_probs(self, prompts: list[str], ids: tuple[int, int], what: str) -> list[Verdict]:
        import torch

        from tqdm.auto import tqdm

        device = next(self.model.parameters()).device
        encoded = [self._encode(p) for p in prompts]
        limit = self.context_length
        out: list[Verdict | None] = [None] * len(encoded)
        # Over-long prompts are not truncated (that would cut an answer or the question):
        # they get no verdict, with the reason recorded.
        fits = []
        for i, toks in enumerate(encoded):
            if limit is not None and len(toks) > limit:
                why = f"judge prompt has {len(toks)} tokens, more than the judge's context of {limit}"
                out[i] = Verdict(0.5 if what == "pairs" else None, why, None)
            else:
                fits.append(i)
        batches = range(0, len(fits), self.batch_size)
        for start in tqdm(batches, desc=f"judge {what}", unit="batch", disable=None, leave=False):
            rows = fits[start : start + self.batch_size]
            chunk = [encoded[i] for i in rows]
            width = max(len(x) for x in chunk)
            input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, toks in enumerate(chunk):
                input_ids[row, width - len(toks) :] = torch.tensor(toks, dtype=torch.long)
                mask[row, width - len(toks) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs = dict(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)
            )
            with torch.inference_mode():
                try:
                    logits = self.model(**kwargs, logits_to_keep=1).logits[:, -1, :]
                except TypeError:  # models without logits_to_keep
                    logits = self.model(**kwargs).logits[:, -1, :]
                pair = logits[:, list(ids)].float()
                probs = torch.softmax(pair, dim=-1)[:, 0].cpu().tolist()
                raw = pair.cpu().tolist()
            for i, p, (la, lb) in zip(rows, probs, raw):
                out[i] = Verdict(float(p), None, f"logits {la:.4f} {lb:.4f}")
        return out  # type: ignore[return-value]

    def compare(self, items: Sequence[PairItem]) -> list[Verdict]:
        prompts = [self.template.format(instruction=i.instruction, output_1=i.output_1, output_2=i.output_2) for i in items]
        return self._two_token_probs(prompts, self.verdict_ids, "pairs")

    def rate_harm(self, items: Sequence[SingleItem]) -> list[Verdict]:
        prompts = [self.harm_template.format(instruction=i.instruction, output=i.output) for i in items]
        return self._two_token_probs(prompts, self.harm_ids, "harm")
