"""``rm:MODEL``: a sequence-classification reward model as judge; ``p = sigmoid(r_1 - r_2)``.

It scores single answers, so it cannot rate harmfulness.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from ...errors import SealError
from .base import Judge, JudgeSpec, PairItem, Verdict
from .config import JudgeConfig
from .prompts import JudgePrompts
from .registry import register_judge


@register_judge
class RewardModelJudge(Judge):
    """Bradley-Terry preference from a scalar reward model: ``p = sigmoid(r_1 - r_2)``.

    Each answer is scored once (``logits[0, 0]`` of the user/assistant
    conversation rendered with the model's chat template, or
    ``instruction + "\\n\\n" + answer`` without one) and cached, so asking in
    both orders costs nothing extra. An input longer than the tokenizer's
    ``model_max_length`` is not truncated (the reward would be read mid-answer):
    that prompt's verdict is a tie with the reason recorded, as with the ``hf:`` judge.
    """

    kind = "rm"
    spec_form = "rm:MODEL"
    harm_note = "rm: judges score preference only; the harmfulness rate is not rated (refusal rate still is)"

    def __init__(
        self, model_name: str = "", *, device: str = "auto", dtype: str = "auto", model: Any = None, tokenizer: Any = None
    ) -> None:
        if model is None or tokenizer is None:
            model, tokenizer = _load_reward_model(model_name, device, dtype)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = f"rm:{model_name or getattr(model.config, 'name_or_path', 'model')}"
        self._rewards: dict[tuple[str, str], float | None] = {}
        n_labels = getattr(model.config, "num_labels", None)
        if n_labels != 1:
            # logits[0, 0] of a multi-class head is one class's score, not a reward.
            raise SealError(f"'{self.spec}' has {n_labels} output labels; an rm: judge needs a reward model "
                            "with a single scalar output (num_labels=1)")
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        limit = getattr(tokenizer, "model_max_length", None)
        self.max_length = int(limit) if isinstance(limit, int) and 0 < limit < 1_000_000 else None

    @classmethod
    def from_config(cls, spec: JudgeSpec, config: JudgeConfig, prompts: JudgePrompts) -> RewardModelJudge:
        return cls(spec.model, device=config.device, dtype=config.dtype)

    def cache_key(self) -> str:
        return json.dumps([self.spec, str(next(self.model.parameters()).dtype), "rm"])

    def _text(self, instruction: str, answer: str) -> str:
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}, {"role": "assistant", "content": answer}], tokenize=False
            )
        return f"{instruction}\n\n{answer}"

    def reward(self, instruction: str, answer: str) -> float | None:
        """The answer's reward; None when the conversation is longer than the model's limit."""
        import torch

        key = (instruction, answer)
        if key not in self._rewards:
            device = next(self.model.parameters()).device
            enc = self.tokenizer(
                self._text(instruction, answer), add_special_tokens=not self.has_chat_template, return_tensors="pt"
            )
            if self.max_length is not None and enc["input_ids"].shape[1] > self.max_length:
                self._rewards[key] = None
                return None
            # One sequence at a time: no padding, so no dependence on pad_token_id handling.
            with torch.inference_mode():
                logits = self.model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)).logits
            self._rewards[key] = float(logits[0, 0].float().item())
        return self._rewards[key]

    def compare(self, items: Sequence[PairItem]) -> list[Verdict]:
        from tqdm.auto import tqdm

        out = []
        for it in tqdm(items, desc="reward model", unit="pair", disable=None, leave=False):
            r1 = self.reward(it.instruction, it.output_1)
            r2 = self.reward(it.instruction, it.output_2)
            if r1 is None or r2 is None:
                out.append(Verdict(0.5, f"an answer is longer than the reward model's {self.max_length} tokens "
                                        "(not truncated: scored as a tie)"))
                continue
            out.append(Verdict(1.0 / (1.0 + math.exp(-(r1 - r2))) if abs(r1 - r2) < 700 else float(r1 > r2), None, f"rewards {r1:.4f} {r2:.4f}"))
        return out


def _load_reward_model(name: str, device: str, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ...models import resolve_device, resolve_dtype

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForSequenceClassification.from_pretrained(name, dtype=torch_dtype).to(dev)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        msg = " ".join(str(e).split())[:300]
        raise SealError(f"cannot load reward model '{name}': {msg}") from None
    if not isinstance(model.config.num_labels, int) or model.config.num_labels < 1:
        raise SealError(f"reward model '{name}' has no output label")
    return model, tok
