"""``JudgeConfig``: which judge, and the settings of every kind; :func:`make_judge` builds it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from ...errors import ConfigError
from .base import Judge
from .prompts import JudgePrompts
from .registry import JUDGE_KINDS, parse_judge_spec

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


@dataclass
class JudgeConfig:
    """The ``judge`` section of an evaluation: the spec, its prompts, and the settings its kind reads.

    A string ``judge: SPEC`` stands for ``judge: {spec: SPEC}``.
    """

    spec: str = field(default="none", metadata={"help": "the judge: KIND:TARGET of a registered kind (`seal evaluate --help` lists them) or 'none'; the command line needs it given"})
    template: str | None = field(default=None, metadata={"help": "file with the pairwise judge prompt ({instruction}, {output_1}, {output_2})"})
    harm_template: str | None = field(default=None, metadata={"help": "file with the harmfulness prompt ({instruction}, {output})"})
    key_env: str = field(default=DEFAULT_KEY_ENV, metadata={"help": "environment variable holding the openai: judge's API key"})
    concurrency: int = field(default=4, metadata={"help": "parallel requests to an openai: judge"})
    timeout: float = field(default=60.0, metadata={"help": "seconds per openai: judge request"})
    max_retries: int = field(default=5, metadata={"help": "retries per openai: judge request (429, 5xx, timeouts)"})
    backoff_base: float = field(default=1.0, metadata={"help": "seconds before the first retry of an openai: judge request; doubled at each further retry"})
    backoff_max: float = field(default=60.0, metadata={"help": "longest wait between two tries of an openai: judge request, a server's Retry-After included"})
    max_tokens: int = field(default=16, metadata={"help": "max_tokens of an openai: judge reply"})
    device: str = field(default="auto", metadata={"help": "device of an hf:/rm: judge"})
    dtype: str = field(default="auto", metadata={"help": "dtype of an hf:/rm: judge"})
    batch_size: int = field(default=8, metadata={"help": "prompts per forward pass of an hf: judge"})

    # The keys these settings had when they sat flat in the evaluate section, next to `judge: SPEC`.
    FLAT_KEYS: ClassVar[dict[str, str]] = {
        "judge_template": "template", "harm_template": "harm_template", "judge_key_env": "key_env",
        "concurrency": "concurrency", "timeout": "timeout", "max_retries": "max_retries",
        "judge_max_tokens": "max_tokens", "device": "device", "dtype": "dtype", "batch_size": "batch_size",
    }

    def __post_init__(self) -> None:
        parse_judge_spec(self.spec)  # raises ConfigError naming the problem
        checks = [
            ("concurrency", self.concurrency >= 1, "positive"),
            ("timeout", self.timeout > 0, "positive"),
            ("max_retries", self.max_retries >= 0, "0 or more"),
            ("max_tokens", self.max_tokens >= 1, "positive"),
            ("batch_size", self.batch_size >= 1, "positive"),
            ("backoff_base", self.backoff_base >= 0, "0 or more"),
            ("backoff_max", self.backoff_max >= self.backoff_base, f"at least backoff_base ({self.backoff_base!r})"),
        ]
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"config key 'judge.{key}' must be {what} (got {getattr(self, key)!r})")

    def prompts(self) -> JudgePrompts:
        """The prompt templates, read from their files and validated (the defaults where none is set)."""
        return JudgePrompts.load(self.template, self.harm_template)

    @classmethod
    def absorb_legacy(cls, parent: Mapping[str, Any], name: str, prefix: str = "") -> dict[str, Any]:
        """``parent`` (the mapping holding this section as ``name``) rewritten to the nested layout.

        The older layout, ``judge: SPEC`` with the settings as flat keys beside it
        (``batch_size``, ``judge_template``, ...), becomes ``judge: {spec: SPEC, batch_size: ...}``.
        Called by :func:`seal_core.config.upgrade_layout`.
        """
        out = dict(parent)
        section = out.get(name)
        if isinstance(section, str):
            section = {"spec": section}
        elif section is not None and not isinstance(section, Mapping):
            return out  # a wrong type: from_dict names it
        flat = {own: out.pop(old) for old, own in cls.FLAT_KEYS.items() if old in out}
        where = f"{prefix}." if prefix else ""
        for old, own in cls.FLAT_KEYS.items():
            if own in flat and section and own in section:
                raise ConfigError(f"config keys '{where}{old}' and '{where}{name}.{own}' are one setting; keep '{where}{name}.{own}'")
        if section is not None or flat:
            out[name] = {**(section or {}), **flat}
        return out


def make_judge(config: JudgeConfig, prompts: JudgePrompts | None = None) -> Judge | None:
    """Build the judge ``config.spec`` names; ``None`` for ``"none"``.

    ``prompts`` are the templates already read from ``config`` (read here when not given).
    """
    prompts = prompts if prompts is not None else config.prompts()
    spec = parse_judge_spec(config.spec)
    if spec.kind == "none":
        return None
    return JUDGE_KINDS[spec.kind].from_config(spec, config, prompts)
