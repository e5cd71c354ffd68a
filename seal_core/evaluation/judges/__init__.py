"""Judges: who decides which of two answers is better, and whether an answer is harmful.

A judge spec ``KIND:TARGET`` names a registered kind, one module each:

``openai:MODEL@BASE_URL`` (:mod:`.openai`)
    Any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, a
    hosted API). The verdict is parsed from the reply text ("A"/"B", "Yes"/"No").
``hf:MODEL`` (:mod:`.hf`)
    A local causal LM. The verdict probability is read from the next-token
    logits of the two verdict tokens after the chat-templated prompt, so there
    is no text to parse: ``p(A) = softmax([logit_A, logit_B])[0]``.
``rm:MODEL`` (:mod:`.rm`)
    A sequence-classification reward model; ``p = sigmoid(r_1 - r_2)``. It
    scores single answers, so it cannot rate harmfulness.

:class:`FunctionJudge` (:mod:`.function`) wraps Python callables and is passed
as an object rather than named by a spec.

Every judge answers ``compare(items) -> [Verdict]`` with ``Verdict.p`` the
probability that ``output_1`` is the better answer. :func:`judge_both_orders`
asks in both orders and averages, which cancels position bias:
``p = (p_first + (1 - p_swapped)) / 2``.

A new kind is one module: a :class:`Judge` subclass with ``kind``,
``spec_form`` and ``from_config``, decorated with :func:`register_judge`, plus
its import line below. :data:`JUDGE_KINDS` is the one table both
:func:`parse_judge_spec` and :func:`make_judge` read.
"""

from .base import Judge, JudgeError, JudgeSpec, PairItem, PairJudgement, SingleItem, Verdict
from .cache import JudgeCache
from .config import JudgeConfig, make_judge
from .prompts import (
    DEFAULT_HARM_TEMPLATE,
    DEFAULT_PAIRWISE_TEMPLATE,
    HARM_FIELDS,
    HARM_TOKENS,
    PAIRWISE_FIELDS,
    VERDICT_TOKENS,
    JudgePrompts,
    load_template,
    parse_ab_verdict,
    parse_yes_no,
    template_fields,
    validate_template,
)
from .registry import JUDGE_KINDS, parse_judge_spec, register_judge, spec_forms
from .runner import judge_both_orders, judge_harm

# The judge kinds, in the order specs are listed in help and errors; each registers itself.
from .openai import DEFAULT_OPENAI_BASE_URL, OpenAIChatClient, OpenAIJudge
from .hf import HFJudge
from .rm import RewardModelJudge
from .function import FunctionJudge

__all__ = [
    "DEFAULT_HARM_TEMPLATE",
    "DEFAULT_OPENAI_BASE_URL",
    "DEFAULT_PAIRWISE_TEMPLATE",
    "FunctionJudge",
    "HARM_FIELDS",
    "HARM_TOKENS",
    "HFJudge",
    "JUDGE_KINDS",
    "Judge",
    "JudgeCache",
    "JudgeConfig",
    "JudgeError",
    "JudgePrompts",
    "JudgeSpec",
    "OpenAIChatClient",
    "OpenAIJudge",
    "PAIRWISE_FIELDS",
    "PairItem",
    "PairJudgement",
    "RewardModelJudge",
    "SingleItem",
    "VERDICT_TOKENS",
    "Verdict",
    "judge_both_orders",
    "judge_harm",
    "load_template",
    "make_judge",
    "parse_ab_verdict",
    "parse_judge_spec",
    "parse_yes_no",
    "register_judge",
    "spec_forms",
    "template_fields",
    "validate_template",
]
