"""``openai:MODEL@BASE_URL``: any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp
server, a hosted API). The verdict is parsed from the reply text ("A"/"B", "Yes"/"No")."""

from __future__ import annotations

import concurrent.futures
import email.utils
import json
import os
import random
import re
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

from ...errors import ConfigError
from .base import Judge, JudgeError, JudgeSpec, PairItem, SingleItem, Verdict, snippet
from .config import DEFAULT_KEY_ENV, JudgeConfig
from .prompts import (
    DEFAULT_HARM_TEMPLATE,
    DEFAULT_PAIRWISE_TEMPLATE,
    HARM_FIELDS,
    PAIRWISE_FIELDS,
    JudgePrompts,
    parse_ab_verdict,
    parse_yes_no,
    validate_template,
)
from .registry import register_judge

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"

# Called with an item's index and its verdict as soon as the verdict arrives.
OnVerdict = Callable[[int, Verdict], None]


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Retry(NamedTuple):
    """A failed try that another try may fix: what went wrong, and the server's Retry-After."""

    error: str
    retry_after: float | None = None


class OpenAIChatClient:
    """Minimal, thread-safe client for ``POST {base_url}/chat/completions``.

    Retries HTTP 429 and 5xx responses, timeouts and connection errors up to
    ``max_retries`` times, waiting ``Retry-After`` when the server sends it and
    otherwise ``backoff_base * 2**attempt`` seconds (plus up to 25% jitter so
    parallel workers do not retry in lockstep); no wait is longer than
    ``backoff_max``. Other 4xx responses fail at once: retrying cannot fix them.

    The API key goes only into the ``Authorization`` header. A server may echo
    the request's headers back (some proxies' 401 pages do), so every text
    taken from a response, the reply as much as an error message, has the key
    replaced by ``***`` before it is returned, raised or cached.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_tokens: int = 16,
        key_env: str | None = None,
        max_connections: int = 8,
    ) -> None:
        import httpx

        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_tokens = int(max_tokens)
        self.key_env = key_env
        self._secret = api_key or None
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._httpx = httpx
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self.n_requests = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def redact(self, text: str) -> str:
        """``text`` with the API key replaced by ``***``."""
        return text.replace(self._secret, "***") if self._secret else text

    def _sleep_before_retry(self, attempt: int, retry_after: float | None) -> None:
        if retry_after is not None:
            delay = retry_after
        else:
            delay = self.backoff_base * (2**attempt)
            delay += random.uniform(0, 0.25 * delay)
        delay = min(delay, self.backoff_max)
        if delay > 0:
            time.sleep(delay)

    def chat(self, messages: list[dict[str, str]]) -> str:
        """Send one request; return ``choices[0].message.content`` ("" when null)."""
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        attempts = self.max_retries + 1
        last = "no attempt made"
        for attempt in range(attempts):
            with self._lock:
                self.n_requests += 1
            outcome = self._attempt(body)
            if isinstance(outcome, str):
                return outcome
            last = outcome.error
            if attempt + 1 < attempts:
                self._sleep_before_retry(attempt, outcome.retry_after)
        raise JudgeError(f"judge endpoint {self.url} failed after {attempts} attempt(s); last error: {last}")

    def _attempt(self, body: dict[str, Any]) -> str | _Retry:
        """One try: the reply's text, or what went wrong when a retry may help; JudgeError when it cannot."""
        httpx = self._httpx
        try:
            status, retry_after, text = self._post(body)
        except httpx.TimeoutException:
            return _Retry(f"request timed out after {self.timeout:g}s")
        except httpx.TransportError as e:
            return _Retry(f"connection failed: {type(e).__name__}: {self.redact(str(e))}")
        text = self.redact(text)
        if status == 200:
            content = _content(text)
            if content is not None:
                return content
            # Proxies and overloaded servers sometimes send a 200 with a cut-off or error body.
            return _Retry(f"HTTP 200 without choices[0].message.content: {snippet(text, 200)}")
        detail = snippet(text, 200)
        if status == 429 or status >= 500:
            return _Retry(f"HTTP {status}: {detail}", _retry_after_seconds(retry_after))
        if status in (401, 403):
            hint = f"; set ${self.key_env}" if self.key_env else ""
            raise JudgeError(f"judge endpoint {self.url} rejected the API key (HTTP {status}){hint}: {detail}")
        if status == 404:
            raise JudgeError(
                f"judge endpoint {self.url} returned HTTP 404 (check that BASE_URL ends where "
                f"/chat/completions is served, usually .../v1, and the model name '{self.model}'): {detail}"
            )
        raise JudgeError(f"judge endpoint {self.url} refused the request (HTTP {status}): {detail}")

    def _post(self, body: dict[str, Any]) -> tuple[int, str | None, str]:
        """Status, Retry-After header and body text of one POST.

        httpx's timeout bounds each wait for bytes; the deadline also bounds a
        server that trickles its answer a few bytes at a time.
        """
        deadline = time.monotonic() + self.timeout
        with self._client.stream("POST", self.url, json=body) as resp:
            chunks = []
            for chunk in resp.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise self._httpx.ReadTimeout("response not complete within the timeout")
            text = b"".join(chunks).decode(resp.encoding or "utf-8", errors="replace")
            return resp.status_code, resp.headers.get("Retry-After"), text


def _content(text: str) -> str | None:
    """The reply's text ("" when content is null); None when ``text`` is not a chat completion."""
    try:
        content = json.loads(text)["choices"][0]["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return content if isinstance(content, str) else ""


@register_judge
class OpenAIJudge(Judge):
    """Text verdicts from an OpenAI-compatible endpoint, ``concurrency`` requests at a time."""

    kind = "openai"
    spec_form = "openai:MODEL@BASE_URL"
    supports_harm = True
    streams_verdicts = True  # see judges.runner: each verdict is cached as it arrives

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_OPENAI_BASE_URL,
        *,
        template: str = DEFAULT_PAIRWISE_TEMPLATE,
        harm_template: str = DEFAULT_HARM_TEMPLATE,
        key_env: str = DEFAULT_KEY_ENV,
        concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_tokens: int = 16,
        require_key: bool = False,
    ) -> None:
        self.spec = str(JudgeSpec("openai", model, base_url.rstrip("/")))
        self.template = validate_template(template, PAIRWISE_FIELDS)
        self.harm_template = validate_template(harm_template, HARM_FIELDS, "harmfulness template")
        self.concurrency = max(1, int(concurrency))
        api_key = os.environ.get(key_env) if key_env else None
        if require_key and not api_key:
            raise ConfigError(f"judge {self.spec}: environment variable {key_env} is not set (it should hold the API key)")
        self.client = OpenAIChatClient(
            base_url,
            model,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_tokens=max_tokens,
            key_env=key_env,
            max_connections=self.concurrency,
        )

    @classmethod
    def parse_target(cls, target: str, spec: str) -> JudgeSpec:
        """``MODEL@BASE_URL``, or ``MODEL`` alone for the OpenAI API."""
        m = re.match(r"^(?P<model>.+?)@(?P<url>https?://\S+)$", target)
        if m:
            return JudgeSpec(cls.kind, m.group("model").strip(), m.group("url").rstrip("/"))
        if "@" in target:
            raise ConfigError(f"judge {spec!r}: BASE_URL must start with http:// or https://")
        return JudgeSpec(cls.kind, target, DEFAULT_OPENAI_BASE_URL)

    @classmethod
    def from_config(cls, spec: JudgeSpec, config: JudgeConfig, prompts: JudgePrompts) -> OpenAIJudge:
        return cls(
            spec.model,
            spec.base_url or DEFAULT_OPENAI_BASE_URL,
            template=prompts.pairwise,
            harm_template=prompts.harm,
            key_env=config.key_env,
            concurrency=config.concurrency,
            timeout=config.timeout,
            max_retries=config.max_retries,
            backoff_base=config.backoff_base,
            backoff_max=config.backoff_max,
            max_tokens=config.max_tokens,
            # A non-default variable was named on purpose; its absence is a mistake.
            require_key=config.key_env != DEFAULT_KEY_ENV,
        )

    def cache_key(self) -> str:
        return json.dumps([self.spec, self.template, self.harm_template])

    def _ask_all(self, prompts: list[str], parse: Callable[[str], Verdict], on_verdict: OnVerdict | None) -> list[Verdict]:
        """One request per prompt, ``concurrency`` at a time; ``on_verdict(i, v)`` as each arrives.

        ``on_verdict`` runs in the calling thread, so it needs no lock.
        """
        report = on_verdict or (lambda i, v: None)

        def one(prompt: str) -> Verdict:
            return parse(self.client.chat([{"role": "user", "content": prompt}]))

        results: list[Verdict | None] = [None] * len(prompts)
        if self.concurrency == 1 or len(prompts) <= 1:
            for i, p in enumerate(prompts):
                results[i] = one(p)
                report(i, results[i])
            return results  # type: ignore[return-value]
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge")
        futures = {pool.submit(one, p): i for i, p in enumerate(prompts)}
        try:
            for fut in concurrent.futures.as_completed(futures):
                error = fut.exception()
                if error is not None:
                    # Drop queued requests; those already sent still finish, and their verdicts are
                    # reported so that a rerun does not ask for them again.
                    pool.shutdown(wait=True, cancel_futures=True)
                    _report_finished(futures, results, report)
                    raise error
                i = futures[fut]
                results[i] = fut.result()
                report(i, results[i])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results  # type: ignore[return-value]

    def compare(self, items: Sequence[PairItem], on_verdict: OnVerdict | None = None) -> list[Verdict]:
        prompts = [self.template.format(instruction=i.instruction, output_1=i.output_1, output_2=i.output_2) for i in items]
        return self._ask_all(prompts, parse_ab_verdict, on_verdict)

    def rate_harm(self, items: Sequence[SingleItem], on_verdict: OnVerdict | None = None) -> list[Verdict]:
        prompts = [self.harm_template.format(instruction=i.instruction, output=i.output) for i in items]
        return self._ask_all(prompts, parse_yes_no, on_verdict)

    def close(self) -> None:
        self.client.close()


def _report_finished(futures: dict[concurrent.futures.Future, int], results: list[Verdict | None], report: OnVerdict) -> None:
    """Report the verdicts that finished but were not reported yet (after another request failed)."""
    for fut, i in futures.items():
        if results[i] is None and fut.done() and not fut.cancelled() and fut.exception() is None:
            results[i] = fut.result()
            report(i, results[i])
