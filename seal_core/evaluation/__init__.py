"""Evaluation: pairwise win rates (AlpacaEval definitions), refusal and harmfulness rates, reports.

Submodules: :mod:`.winrate` (statistics), :mod:`.refusal` (keyword refusal
detector), :mod:`.judges` (openai:/hf:/rm: judges), :mod:`.report` (Markdown,
JSON, plots) and :mod:`.evaluate` (the ``seal evaluate`` stage). Nothing here
imports torch until a local judge is built.
"""

from .evaluate import EvaluateConfig, ModelOutputs, evaluate, read_generations
from .judges import (
    FunctionJudge,
    Judge,
    JudgeConfig,
    JudgeError,
    PairItem,
    SingleItem,
    Verdict,
    judge_both_orders,
    make_judge,
    parse_judge_spec,
)
from .refusal import GCG_TEST_PREFIXES, RefusalResult, detect_refusal, is_refusal, refusal_rate
from .report import PairResult, RateStat, SafetyResult, build_report, load_results, plot_refusals, plot_winrates
from .winrate import WinRateSummary, summarize

__all__ = [
    "EvaluateConfig",
    "FunctionJudge",
    "GCG_TEST_PREFIXES",
    "Judge",
    "JudgeConfig",
    "JudgeError",
    "ModelOutputs",
    "PairItem",
    "PairResult",
    "RateStat",
    "RefusalResult",
    "SafetyResult",
    "SingleItem",
    "Verdict",
    "WinRateSummary",
    "build_report",
    "detect_refusal",
    "evaluate",
    "is_refusal",
    "judge_both_orders",
    "load_results",
    "make_judge",
    "parse_judge_spec",
    "plot_refusals",
    "plot_winrates",
    "read_generations",
    "refusal_rate",
    "summarize",
]
