"""The openai: judge against a misbehaving endpoint: retries, the resume cache, and the API key.

A local OpenAI-compatible server (loopback only, bounded in requests and time) is scripted per
request to drop the connection, cut its body short, answer a 200 that is not JSON, send bursts of
500s, 429s with Retry-After, or answer slower than the client's timeout.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from seal_cli.main import main
from seal_core.evaluation import judges as J
from seal_core.evaluation.evaluate import EvaluateConfig, ModelOutputs, evaluate

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "SEAL_FAULT_TEST_KEY"
KEY = "sk-test-SECRET-1234"
SLOW_S = 1.0  # how late a "slow" answer comes; clients here time out after TIMEOUT_S
LATE_S = 0.5  # how late a "late" answer comes: in time for a client with a 2 s timeout
TIMEOUT_S = 0.3
RETRYABLE = ("drop", "truncated_body", "cut_json", "not_json", "500", "429", "slow", "trickle")


# ----------------------------------------------------------------------------- the server


@dataclass
class Hit:
    """One request as the server saw it."""

    n: int  # 1-based, over the server's life
    prompt: str
    attempt: int  # 1-based, per prompt
    t: float
    auth: str | None
    fault: str = "ok"


def verdict_for(prompt):
    """The server's judgement: the longer response is better; answers starting "Step" are harmful."""
    if "# Assistant response\n" in prompt:
        answer = prompt.split("# Assistant response\n")[1].split("\n\nIs the response harmful?")[0]
        return "Yes" if answer.startswith("Step") else "No"
    a = prompt.split("# Response A\n")[1].split("\n\n# Response B\n")[0]
    b = prompt.split("# Response B\n")[1].split("\n\nWhich response is better?")[0]
    return "A" if len(a) > len(b) else "B"


class FaultServer:
    """An OpenAI-compatible ``/chat/completions`` on 127.0.0.1 that misbehaves as ``script`` says.

    ``script(hit)`` names each request's fault: "ok", "late", one of RETRYABLE, "400" or "401". With
    ``echo_auth`` every body it sends repeats the request's Authorization header, as some proxies'
    error pages do. It answers at most ``max_requests`` requests (503 after that) and shuts itself
    down after ``max_seconds``.
    """

    def __init__(self, script=lambda hit: "ok", *, echo_auth=False, retry_after="0", max_requests=300, max_seconds=60.0):
        self.script, self.echo_auth, self.retry_after, self.max_requests = script, echo_auth, retry_after, max_requests
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(max_seconds, self.stop)
        self._timer.daemon = True

    def __enter__(self):
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        self._timer.cancel()

    def stop(self):
        if not self._stopped.is_set():
            self._stopped.set()
            self.httpd.shutdown()
            self.httpd.server_close()

    def prompts(self, fault=None):
        return [h.prompt for h in self.hits if fault is None or h.fault == fault]

    def _record(self, prompt, auth):
        with self._lock:
            hit = Hit(len(self.hits) + 1, prompt, 1 + sum(h.prompt == prompt for h in self.hits), time.monotonic(), auth)
            self.hits.append(hit)
            hit.fault = self.script(hit) if hit.n <= self.max_requests else "over_limit"
        return hit

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                hit = server._record(body["messages"][0]["content"], self.headers.get("Authorization"))
                try:
                    server._answer(self, hit)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to answer

            def log_message(self, *args):
                pass

        return Handler

    def _with_echo(self, hit, text):
        if not self.echo_auth:
            return text
        return text + f"\n(seen: {hit.auth})"

    def _answer(self, h, hit):
        fault = hit.fault
        reply = {"id": f"chatcmpl-{hit.n}", "object": "chat.completion",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": self._with_echo(hit, verdict_for(hit.prompt))},
                              "finish_reason": "stop"}]}
        if self.echo_auth:
            reply["system_fingerprint"] = hit.auth
        full = json.dumps(reply).encode()
        error = json.dumps({"error": {"message": self._with_echo(hit, f"fault {fault}")}}).encode()
        if fault == "drop":
            return  # the socket closes with no response at all
        if fault == "truncated_body":
            # Content-Length promises the whole body; the connection closes halfway through it.
            _send_head(h, 200, len(full))
            h.wfile.write(full[: len(full) // 2])
            return
        if fault == "trickle":
            # Each byte comes well within the client's timeout; the whole answer takes far longer.
            _send_head(h, 200, len(full))
            for i in range(len(full)):
                if self._stopped.wait(0.05):
                    return
                h.wfile.write(full[i : i + 1])
                h.wfile.flush()
            return
        if self._stopped.wait({"slow": SLOW_S, "late": LATE_S}.get(fault, 0)):
            return
        statuses = {"cut_json": (200, full[: len(full) // 2]), "not_json": (200, self._with_echo(hit, "<html>502 Bad Gateway</html>").encode()),
                    "500": (500, error), "429": (429, error), "400": (400, error), "401": (401, error), "over_limit": (503, error)}
        status, data = statuses.get(fault, (200, full))
        _send_head(h, status, len(data), [("Retry-After", self.retry_after)] if fault == "429" else [])
        h.wfile.write(data)


def _send_head(h, status, length, headers=()):
    h.send_response(status)
    for k, v in headers:
        h.send_header(k, v)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(length))
    h.end_headers()


def first_attempts(fault, n=1):
    """A script: the first ``n`` tries of every prompt meet ``fault``, the next one is answered."""
    return lambda hit: fault if hit.attempt <= n else "ok"


def judge_config(url, **kw):
    settings = {"key_env": KEY_ENV, "concurrency": 2, "timeout": TIMEOUT_S, "max_retries": 3,
                "backoff_base": 0.01, "backoff_max": 0.05, **kw}
    return J.JudgeConfig(f"openai:judge@{url}", **settings)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


# ----------------------------------------------------------------------------- each fault alone

INSTRUCTIONS = ["q0", "q1", "q2"]
CANDIDATE = ["short", "a longer answer", "mid answer"]
BASELINE = ["a long answer", "tiny", "mid answers"]


@pytest.mark.parametrize("fault,n", [(f, 1) for f in RETRYABLE] + [("500", 3)])
def test_each_fault_is_retried_and_the_verdicts_are_right(fault, n):
    with FaultServer(first_attempts(fault, n)) as srv:
        judge = J.make_judge(judge_config(srv.url))
        try:
            got = J.judge_both_orders(judge, INSTRUCTIONS, CANDIDATE, BASELINE)
        finally:
            judge.close()
    expected = [1.0 if len(c) > len(b) else 0.0 for c, b in zip(CANDIDATE, BASELINE)]
    assert [j.p for j in got] == expected and all(j.consistent and j.reason is None for j in got)
    prompts = srv.prompts()
    assert len(prompts) == 2 * len(INSTRUCTIONS) * (n + 1)  # n faults, then one answer, for every prompt
    assert all(prompts.count(p) == n + 1 for p in prompts)
    assert len(srv.prompts(fault)) == 2 * len(INSTRUCTIONS) * n


@pytest.mark.parametrize("fault,error", [
    ("drop", r"connection failed: RemoteProtocolError: Server disconnected"),
    ("truncated_body", r"connection failed: RemoteProtocolError: peer closed connection"),
    ("cut_json", r"HTTP 200 without choices\[0\]\.message\.content: \{\"id\""),
    ("not_json", r"HTTP 200 without choices\[0\]\.message\.content: <html>502 Bad Gateway</html>"),
    ("500", r"HTTP 500: \{\"error\": \{\"message\": \"fault 500\"\}\}"),
    ("429", r"HTTP 429: \{\"error\""),
    ("slow", rf"request timed out after {TIMEOUT_S:g}s"),
    ("trickle", rf"request timed out after {TIMEOUT_S:g}s"),
])
def test_an_endpoint_that_always_fails_ends_in_one_error_after_max_retries_plus_one_tries(fault, error):
    with FaultServer(lambda hit: fault) as srv:
        judge = J.make_judge(judge_config(srv.url, max_retries=2))
        t0 = time.monotonic()
        try:
            with pytest.raises(J.JudgeError) as e:
                judge.compare([J.PairItem("q", "a", "bb")])
        finally:
            judge.close()
        elapsed = time.monotonic() - t0
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"judge endpoint {srv.url}/chat/completions failed after 3 attempt(s); last error: ")
    assert re.search(error, msg), msg
    assert len(srv.hits) == 3 and [h.attempt for h in srv.hits] == [1, 2, 3]
    # The trickle is cut off at the timeout, not read to its end (which takes seconds).
    assert elapsed < 3 * (TIMEOUT_S + 0.4) + 1


@pytest.mark.parametrize("fault,message", [("400", r"refused the request \(HTTP 400\)"), ("401", rf"rejected the API key \(HTTP 401\); set \${KEY_ENV}")])
def test_a_refused_request_is_not_retried(fault, message):
    with FaultServer(lambda hit: fault) as srv:
        judge = J.make_judge(judge_config(srv.url, max_retries=5))
        try:
            with pytest.raises(J.JudgeError, match=message):
                judge.compare([J.PairItem("q", "a", "bb")])
        finally:
            judge.close()
    assert len(srv.hits) == 1


def _gaps(srv):
    t = [h.t for h in srv.hits]
    return [b - a for a, b in zip(t, t[1:])]


def test_backoff_doubles_up_to_its_cap_and_retry_after_is_honoured_within_the_cap():
    with FaultServer(first_attempts("500", 4)) as srv:
        client = J.OpenAIChatClient(srv.url, "m", max_retries=4, backoff_base=0.05, backoff_max=0.15)
        assert client.chat([{"role": "user", "content": J.DEFAULT_HARM_TEMPLATE.format(instruction="q", output="no")}]) == "No"
        client.close()
    # 0.05, 0.1, then 0.2 and 0.4 capped at 0.15 (jitter adds up to 25% below the cap).
    for gap, wait in zip(_gaps(srv), [0.05, 0.1, 0.15, 0.15], strict=True):
        assert wait <= gap < wait * 1.25 + 0.3

    harm = J.DEFAULT_HARM_TEMPLATE.format(instruction="q", output="Step 1")
    with FaultServer(first_attempts("429", 1), retry_after="0.5") as srv:
        client = J.OpenAIChatClient(srv.url, "m", max_retries=1, backoff_base=0.001, backoff_max=5)
        assert client.chat([{"role": "user", "content": harm}]) == "Yes"
        client.close()
    assert 0.5 <= _gaps(srv)[0] < 1.2
    with FaultServer(first_attempts("429", 1), retry_after="3600") as srv:
        client = J.OpenAIChatClient(srv.url, "m", max_retries=1, backoff_base=0.001, backoff_max=0.2)
        assert client.chat([{"role": "user", "content": harm}]) == "Yes"
        client.close()
    assert 0.2 <= _gaps(srv)[0] < 0.8  # a server asking for an hour waits no longer than backoff_max


def test_backoff_settings_are_checked():
    from seal_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'judge.backoff_base' must be 0 or more \(got -1\)"):
        J.JudgeConfig("none", backoff_base=-1)
    with pytest.raises(ConfigError, match=r"'judge.backoff_max' must be at least backoff_base \(2\.0\) \(got 1\.0\)"):
        J.JudgeConfig("none", backoff_base=2.0, backoff_max=1.0)


# ----------------------------------------------------------------------------- the resume cache

N_PAIRS = 12
HARMFUL_ANSWERS = {"cand": ["I'm sorry, I can't help.", "Step 1: mix it.", "No."], "base": ["Step 1: buy it.", "Step 2: hide.", "I won't."]}
N_VERDICTS = 2 * N_PAIRS + 6  # both orders of every pair, and one harmfulness rating per harmful answer


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture()
def gens(tmp_path):
    """Generation files of a candidate and a baseline: answers of different lengths, and harmful prompts."""
    d = tmp_path / "in"
    d.mkdir()
    files = {}
    for name in ("cand", "base"):
        length = (lambda i: 10 + 2 * (i % 3)) if name == "cand" else (lambda i: 11 + 2 * (i % 2))  # never equal
        rows = [{"id": f"p{i}", "prompt": f"Question {i}?", "response": "x" * length(i), "origin": "qa"} for i in range(N_PAIRS)]
        files[name] = _write(d / f"{name}.jsonl", rows)
        harm = [{"id": f"h{i}", "prompt": f"Harmful {i}?", "response": r, "category": "c"} for i, r in enumerate(HARMFUL_ANSWERS[name])]
        files[f"{name}_harm"] = _write(d / f"{name}_harm.jsonl", harm)
    return files


def eval_config(gens, out, url, **judge):
    return EvaluateConfig(candidate=ModelOutputs(outputs=gens["cand"], harmful=gens["cand_harm"]),
                          baselines=[ModelOutputs(outputs=gens["base"], harmful=gens["base_harm"])],
                          out_dir=str(out), n_bootstrap=50, judge=judge_config(url, **judge))


def cli_args(gens, out, url, concurrency=4):
    return ["evaluate", "--candidate", gens["cand"], "--baseline", gens["base"], "--harmful-candidate", gens["cand_harm"],
            "--harmful-baseline", gens["base_harm"], "--judge", f"openai:judge@{url}", "--judge-key-env", KEY_ENV,
            "--concurrency", str(concurrency), "--timeout", str(TIMEOUT_S), "--max-retries", "2", "--n-bootstrap", "50",
            "--set", "judge.backoff_base=0.01", "--set", "judge.backoff_max=0.05", "--out", str(out)]


def cache_lines(out):
    path = Path(out) / "cache" / "judge_cache.jsonl"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def outputs(out):
    """Every file of an evaluation but the cache; the creation time and out_dir left out."""
    out = Path(out)
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and "cache" not in p.parts}
    summary, config = json.loads(files.pop("summary.json")), json.loads(files.pop("config.json"))
    summary.pop("created")
    config.pop("out_dir")
    return files, summary, config


def test_verdicts_reach_the_cache_as_they_arrive(tmp_path, gens):
    out = tmp_path / "out"
    seen = []  # cache lines on disk when each request arrives

    def script(hit):
        seen.append(len(cache_lines(out)))
        return "ok"

    with FaultServer(script) as srv:
        evaluate(eval_config(gens, out, srv.url, concurrency=1))
    assert len(srv.hits) == N_VERDICTS
    # With one request at a time, every verdict is on disk before the next request is sent.
    assert seen == list(range(N_VERDICTS))
    assert len(cache_lines(out)) == N_VERDICTS


def test_a_rerun_after_the_endpoint_fails_asks_only_for_the_missing_verdicts(tmp_path, gens):
    k = 7
    with FaultServer() as srv:
        # The k-th answer is still on its way when the first 400 stops the run.
        srv.script = lambda hit: "ok" if hit.n < k else ("late" if hit.n == k else "400")
        with pytest.raises(J.JudgeError, match=r"refused the request \(HTTP 400\)"):
            evaluate(eval_config(gens, tmp_path / "out", srv.url, concurrency=4, timeout=2.0))
        assert srv.hits[k - 1].fault == "late" and max(h.n for h in srv.hits if h.fault == "400") > k
        answered = srv.prompts("ok") + srv.prompts("late")
        assert len(answered) == k and len(cache_lines(tmp_path / "out")) == k  # every answer was kept, in flight or not

        mark = len(srv.hits)
        srv.script = lambda hit: "500" if hit.attempt == 1 and hit.n % 4 == 0 else "ok"  # some retries on the way
        evaluate(eval_config(gens, tmp_path / "out", srv.url, concurrency=4))
        rerun = srv.hits[mark:]
        retried = [h for h in rerun if h.fault == "500"]
        assert retried and len(rerun) == N_VERDICTS - k + len(retried)
        assert len({h.prompt for h in rerun}) == N_VERDICTS - k and not {h.prompt for h in rerun} & set(answered)

        mark = len(srv.hits)
        srv.script = lambda hit: "ok"
        evaluate(eval_config(gens, tmp_path / "ref", srv.url, concurrency=4))
        assert len(srv.hits) - mark == N_VERDICTS
    assert outputs(tmp_path / "out") == outputs(tmp_path / "ref")


def test_seal_evaluate_killed_mid_run_resumes_to_the_same_outputs(tmp_path, gens):
    k = N_PAIRS + 3  # into the second order
    proc = {}

    def kill_at_k_plus_1(hit):
        if hit.n == k + 1:
            os.kill(proc["p"].pid, signal.SIGKILL)
            return "drop"
        return "ok"

    def seal(args):
        return subprocess.Popen([sys.executable, "-m", "seal_cli.main", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    out = tmp_path / "out"
    with FaultServer(kill_at_k_plus_1) as srv:
        proc["p"] = seal(cli_args(gens, out, srv.url, concurrency=1))
        killed = proc["p"].communicate(timeout=60)
        assert proc["p"].returncode == -signal.SIGKILL
        assert len(srv.hits) == k + 1 and len(cache_lines(out)) == k
        answered = srv.prompts("ok")

        mark = len(srv.hits)
        srv.script = lambda hit: "ok"
        resumed = seal(cli_args(gens, out, srv.url, concurrency=1)).communicate(timeout=60)
        rerun = srv.prompts()[mark:]
        assert len(rerun) == len(set(rerun)) == N_VERDICTS - k and not set(rerun) & set(answered)

        mark = len(srv.hits)
        assert main(cli_args(gens, tmp_path / "ref", srv.url, concurrency=1)) == 0
        assert len(srv.hits) - mark == N_VERDICTS
    assert "report:" in resumed[0]
    assert outputs(out) == outputs(tmp_path / "ref")
    for text in (*killed, *resumed):
        assert KEY not in text


# ----------------------------------------------------------------------------- the API key


def files_holding(root, secret):
    """Every file under ``root`` whose bytes hold ``secret``."""
    return [p for p in Path(root).rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_the_api_key_never_leaves_the_authorization_header(tmp_path, gens, capsys, caplog):
    import logging

    caplog.set_level(logging.DEBUG)  # httpx and httpcore log every request at this level
    echo_faults = ["500", "not_json", "429", "ok"]
    with FaultServer(lambda hit: echo_faults[hit.n % 4] if hit.attempt == 1 else "ok", echo_auth=True) as srv:
        assert main(cli_args(gens, tmp_path / "ok", srv.url)) == 0
        srv.script = lambda hit: "401"
        assert main(cli_args(gens, tmp_path / "401", srv.url)) == 2
        srv.script = lambda hit: "500"
        assert main(cli_args(gens, tmp_path / "500", srv.url)) == 2
    # The key was sent, and the server echoed it back in replies and error pages alike.
    assert {h.auth for h in srv.hits} == {f"Bearer {KEY}"}
    assert {"500", "not_json", "429", "401"} <= {h.fault for h in srv.hits}
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert f"rejected the API key (HTTP 401); set ${KEY_ENV}" in errors[0] and "(seen: Bearer ***)" in errors[0]
    assert "failed after 3 attempt(s); last error: HTTP 500" in errors[1] and "(seen: Bearer ***)" in errors[1]
    assert "HTTP Request: POST" in caplog.text
    judgments = (tmp_path / "ok" / "judgments.jsonl").read_text()
    assert "(seen: Bearer ***)" in judgments  # replies are kept, with the key masked
    for secret in (KEY, KEY[-8:]):  # the whole key, or the part a cut-off message would keep
        assert secret not in captured.out + captured.err
        assert secret not in caplog.text
        assert files_holding(tmp_path / "ok", secret) == [] and files_holding(tmp_path / "401", secret) == []
        assert files_holding(tmp_path / "500", secret) == []
    written = {p.relative_to(tmp_path / "ok").as_posix() for p in (tmp_path / "ok").rglob("*") if p.is_file()}
    assert {"config.json", "report.md", "summary.json", "rejects.jsonl", "judgments.jsonl", "safety.jsonl",
            "cache/judge_cache.jsonl"} <= written
