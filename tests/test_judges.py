import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from seal_core.errors import ConfigError, SealError
from seal_core.evaluation import judges as J


# ----------------------------------------------------------------------------- spec and templates


def test_parse_judge_spec():
    assert J.parse_judge_spec("none").kind == "none"
    assert J.parse_judge_spec("").kind == "none"
    s = J.parse_judge_spec("openai:Qwen/Qwen2.5-7B@http://127.0.0.1:8000/v1/")
    assert (s.kind, s.model, s.base_url) == ("openai", "Qwen/Qwen2.5-7B", "http://127.0.0.1:8000/v1")
    assert J.parse_judge_spec("openai:gpt-4o-mini").base_url == J.DEFAULT_OPENAI_BASE_URL
    assert (J.parse_judge_spec("hf:tiny-random").kind, J.parse_judge_spec("rm:/models/rm").model) == ("hf", "/models/rm")
    for bad in ("gpt4", "foo:bar", "hf:", "openai:m@ftp://x"):
        with pytest.raises(ConfigError):
            J.parse_judge_spec(bad)


def test_one_registry_parses_and_builds_every_kind():
    assert list(J.JUDGE_KINDS) == ["openai", "hf", "rm"]
    assert J.spec_forms() == ["none", "openai:MODEL@BASE_URL", "hf:MODEL", "rm:MODEL"]
    with pytest.raises(ConfigError, match="expected 'none', 'openai:MODEL@BASE_URL', 'hf:MODEL' or 'rm:MODEL'"):
        J.parse_judge_spec("gpt4")

    @J.register_judge
    class ConstantJudge(J.Judge):
        """A new kind: one class, registered; the parser and the factory both find it."""

        kind = "const"
        spec_form = "const:P"

        def __init__(self, p, batch_size):
            self.p, self.batch_size, self.spec = float(p), batch_size, f"const:{p}"

        @classmethod
        def from_config(cls, spec, config, prompts):
            return cls(spec.model, config.batch_size)

        def compare(self, items):
            return [J.Verdict(self.p) for _ in items]

    try:
        assert J.parse_judge_spec("const:0.7") == J.JudgeSpec("const", "0.7")
        assert "'const:P'" in str(pytest.raises(ConfigError, J.parse_judge_spec, "nope:x").value)
        judge = J.make_judge(J.JudgeConfig("const:0.7", batch_size=3))
        assert isinstance(judge, ConstantJudge) and (judge.p, judge.batch_size) == (0.7, 3)
        assert [j.p for j in J.judge_both_orders(judge, ["q"], ["a"], ["b"])] == [0.5]
        with pytest.raises(ValueError, match="already ConstantJudge"):
            J.register_judge(type("Other", (J.Judge,), {"kind": "const"}))
    finally:
        J.JUDGE_KINDS.pop("const")
    with pytest.raises(ValueError, match="other than 'none'"):
        J.register_judge(type("NoneJudge", (J.Judge,), {"kind": "none"}))


def test_make_judge_passes_each_kind_its_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("SEAL_TEST_JUDGE_KEY_2", "sk-2")
    assert J.make_judge(J.JudgeConfig("none")) is None
    bad = tmp_path / "t.txt"
    bad.write_text("{instruction}")
    with pytest.raises(ConfigError, match="missing the placeholder"):
        J.make_judge(J.JudgeConfig("none", template=str(bad)))  # templates are checked whatever the judge
    good = tmp_path / "harm.txt"
    good.write_text("Harmful? {instruction} {output}")
    judge = J.make_judge(J.JudgeConfig("openai:m@http://127.0.0.1:9/v1", harm_template=str(good), concurrency=3,
                                       timeout=5, max_retries=2, max_tokens=7, key_env="SEAL_TEST_JUDGE_KEY_2"))
    try:
        c = judge.client
        assert (judge.concurrency, c.timeout, c.max_retries, c.max_tokens, c.key_env) == (3, 5.0, 2, 7, "SEAL_TEST_JUDGE_KEY_2")
        assert judge.template == J.DEFAULT_PAIRWISE_TEMPLATE and judge.harm_template == "Harmful? {instruction} {output}"
    finally:
        judge.close()
    with pytest.raises(ConfigError, match=r"config key 'judge.batch_size' must be positive \(got 0\)"):
        J.JudgeConfig("hf:tiny-random", batch_size=0)
    with pytest.raises(ConfigError, match="unknown judge"):
        J.JudgeConfig("gpt4")


def test_template_validation_names_the_missing_placeholder(tmp_path):
    with pytest.raises(ConfigError, match=r"missing the placeholder \{output_2\}"):
        J.validate_template("{instruction} {output_1}", J.PAIRWISE_FIELDS)
    with pytest.raises(ConfigError, match=r"unknown placeholder \{answer\}"):
        J.validate_template("{instruction} {output_1} {output_2} {answer}", J.PAIRWISE_FIELDS)
    with pytest.raises(ConfigError, match="invalid template"):
        J.validate_template("{instruction} {output_1} {output_2} {", J.PAIRWISE_FIELDS)
    ok = "Q: {instruction}\nA: {output_1}\nB: {output_2}\nReply {{A}} or {{B}}."
    assert J.validate_template(ok, J.PAIRWISE_FIELDS) == ok
    f = tmp_path / "t.txt"
    f.write_text("{instruction} {output}", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{f}.*missing the placeholder \{{output_1\}}"):
        J.load_template(f, J.PAIRWISE_FIELDS, J.DEFAULT_PAIRWISE_TEMPLATE, "judge template")
    assert J.load_template(f, J.HARM_FIELDS, J.DEFAULT_HARM_TEMPLATE, "harmfulness template").startswith("{instruction}")
    assert J.load_template(None, J.PAIRWISE_FIELDS, J.DEFAULT_PAIRWISE_TEMPLATE, "x") == J.DEFAULT_PAIRWISE_TEMPLATE
    with pytest.raises(ConfigError, match="cannot read"):
        J.load_template(tmp_path / "missing.txt", J.PAIRWISE_FIELDS, "", "judge template")
    # The bundled templates are valid.
    J.validate_template(J.DEFAULT_PAIRWISE_TEMPLATE, J.PAIRWISE_FIELDS)
    J.validate_template(J.DEFAULT_HARM_TEMPLATE, J.HARM_FIELDS)


@pytest.mark.parametrize(
    "text,p",
    [
        ("A", 1.0), ("B", 0.0), (" b\n", 0.0), ("**A**", 1.0), ("Response B", 0.0), ("(A)", 1.0),
        ("A\n\nResponse A is more accurate.", 1.0), ("Answer: B", 0.0), ("The better response is A.", 1.0),
        ("Output (B) is better because it is concise.", 0.0), ("Final answer: **A**", 1.0),
    ],
)
def test_parse_ab_verdict(text, p):
    v = J.parse_ab_verdict(text)
    assert v.p == p and v.reason is None


@pytest.mark.parametrize("text", ["", "Both are fine.", "A is good, but the better response is B, and the answer is A", "I cannot decide."])
def test_unparseable_ab_verdict_is_a_tie_with_reason(text):
    v = J.parse_ab_verdict(text)
    assert v.p == 0.5 and v.reason


@pytest.mark.parametrize("text,p", [("Yes", 1.0), ("no.", 0.0), ("**No**, it refuses.", 0.0), ("Verdict: yes", 1.0), ("maybe", None), ("", None)])
def test_parse_yes_no(text, p):
    v = J.parse_yes_no(text)
    assert v.p == p and (v.reason is None) == (p is not None)


# ----------------------------------------------------------------------------- both orders


def test_both_orders_average_and_consistency():
    # Prefers the longer answer, plus a strong bias towards whatever is shown first.
    def fn(q, o1, o2):
        return min(1.0, max(0.0, 0.5 + 0.1 * (len(o1) - len(o2)) + 0.3))

    judge = J.FunctionJudge(fn)
    js = J.judge_both_orders(judge, ["q", "q"], ["long answer", "x"], ["short", "xx"])
    a, b = js
    # len diff +6: 1.0 (clipped) first; swapped 0.5 - 0.6 + 0.3 = 0.2: both orders prefer the long answer.
    assert a.p_first == 1.0 and a.p_swapped == pytest.approx(0.2) and a.p == pytest.approx(0.9) and a.consistent
    # len diff -1: first order 0.7 (bias wins), swapped 0.9: the judge picks position 1 both times.
    assert a is not b and b.p_first == pytest.approx(0.7) and b.p_swapped == pytest.approx(0.9)
    assert b.p == pytest.approx((0.7 + 0.1) / 2) and not b.consistent
    with pytest.raises(J.JudgeError):
        J.judge_both_orders(J.FunctionJudge(lambda q, a, b: 1.5), ["q"], ["a"], ["b"])


def test_cache_resumes_without_asking_again(tmp_path):
    calls = []

    class Counting(J.FunctionJudge):
        def cache_key(self):
            return "counting-v1"

        def compare(self, items):
            calls.append(len(items))
            return super().compare(items)

    judge = Counting(lambda q, a, b: 0.8)
    path = tmp_path / "cache.jsonl"
    first = J.judge_both_orders(judge, ["q1", "q2"], ["a", "b"], ["c", "d"], cache=J.JudgeCache(path, judge.cache_key()))
    assert calls == [2, 2]
    with open(path, "a") as fh:
        fh.write('{"key": "trunc')  # a crash mid-write leaves a partial line
    again = J.judge_both_orders(judge, ["q1", "q2", "q3"], ["a", "b", "e"], ["c", "d", "f"], cache=J.JudgeCache(path, judge.cache_key()))
    assert calls == [2, 2, 1, 1]  # only the new prompt was judged
    assert [j.p for j in again[:2]] == [j.p for j in first]
    # Another judge identity does not reuse the verdicts.
    J.judge_both_orders(judge, ["q1"], ["a"], ["c"], cache=J.JudgeCache(path, "other"))
    assert calls[-2:] == [1, 1]


# ----------------------------------------------------------------------------- OpenAI-compatible client


class _Server:
    """A chat-completions endpoint on 127.0.0.1 whose behaviour each test scripts."""

    def __init__(self, script):
        self.requests = []
        self.script = script  # fn(n_request, body) -> (status, headers, body_obj, delay)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with lock:
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    n = len(outer.requests)
                status, headers, reply, delay = outer.script(n, body)
                if delay:
                    time.sleep(delay)
                data = json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _reply(text):
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def test_openai_judge_retries_after_429_and_sends_the_key(monkeypatch):
    monkeypatch.setenv("SEAL_TEST_JUDGE_KEY", "sk-test-123")

    def script(n, body):
        if n == 1:
            return 429, {"Retry-After": "0"}, {"error": {"message": "rate limited"}}, 0
        return 200, {}, _reply("A"), 0

    with _Server(script) as srv:
        judge = J.make_judge(J.JudgeConfig(f"openai:judge-model@{srv.url}", key_env="SEAL_TEST_JUDGE_KEY", max_retries=3))
        try:
            verdicts = judge.compare([J.PairItem("What is 2+2?", "4", "5")])
        finally:
            judge.close()
    assert verdicts[0].p == 1.0 and verdicts[0].raw == "A"
    assert len(srv.requests) == 2
    req = srv.requests[-1]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test-123"
    body = req["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0 and body["max_tokens"] == 16
    assert body["messages"][0]["role"] == "user"
    content = body["messages"][0]["content"]
    assert "What is 2+2?" in content and "# Response A\n4" in content and "# Response B\n5" in content


def test_openai_judge_concurrency_keeps_order_and_rates_harm():
    def script(n, body):
        prompt = body["messages"][0]["content"]
        if "Is the response harmful?" in prompt:
            return 200, {}, _reply("Yes" if "bomb" in prompt else "No, it refuses."), 0.01
        a = prompt.split("# Response A\n")[1].split("\n")[0]
        b = prompt.split("# Response B\n")[1].split("\n")[0]
        return 200, {}, _reply("A" if int(a) > int(b) else "**B**"), 0.01

    with _Server(script) as srv:
        judge = J.OpenAIJudge("m", srv.url, concurrency=4, key_env="SEAL_UNSET_VAR_FOR_TEST")
        items = [J.PairItem("q", str(i), str(10 - i)) for i in range(11)]
        verdicts = judge.compare(items)
        harm = judge.rate_harm([J.SingleItem("q", "bomb recipe"), J.SingleItem("q", "no thanks")])
        judge.close()
    assert [v.p for v in verdicts] == [1.0 if i > 10 - i else 0.0 for i in range(11)]
    assert [v.p for v in harm] == [1.0, 0.0]
    assert all("Authorization" not in r["headers"] for r in srv.requests)  # no key set: none sent


def test_openai_timeout_gives_a_clear_error_after_retries():
    with _Server(lambda n, body: (200, {}, _reply("A"), 1.0)) as srv:
        client = J.OpenAIChatClient(srv.url, "m", timeout=0.2, max_retries=1, backoff_base=0.0)
        t0 = time.monotonic()
        with pytest.raises(J.JudgeError, match=r"failed after 2 attempt\(s\); last error: request timed out after 0.2s"):
            client.chat([{"role": "user", "content": "hi"}])
        client.close()
    assert client.n_requests == 2
    assert time.monotonic() - t0 < 5


def test_openai_5xx_is_retried_and_401_is_not(monkeypatch):
    def script(n, body):
        return (503, {}, {"error": "busy"}, 0) if n < 3 else (200, {}, _reply("B"), 0)

    with _Server(script) as srv:
        client = J.OpenAIChatClient(srv.url, "m", max_retries=2, backoff_base=0.0)
        assert client.chat([{"role": "user", "content": "x"}]) == "B"
        client.close()
    assert len(srv.requests) == 3

    with _Server(lambda n, body: (401, {}, {"error": "bad key"}, 0)) as srv:
        client = J.OpenAIChatClient(srv.url, "m", max_retries=3, backoff_base=0.0, key_env="MY_KEY")
        with pytest.raises(J.JudgeError, match=r"rejected the API key \(HTTP 401\); set \$MY_KEY"):
            client.chat([{"role": "user", "content": "x"}])
        client.close()
    assert len(srv.requests) == 1

    # A 200 that is not a chat completion is retried like a 5xx, then reported.
    with _Server(lambda n, body: (200, {}, {"unexpected": True}, 0) if n < 2 else (200, {}, _reply("A"), 0)) as srv:
        client = J.OpenAIChatClient(srv.url, "m", max_retries=1, backoff_base=0.0)
        assert client.chat([{"role": "user", "content": "x"}]) == "A"
        client.close()
    assert len(srv.requests) == 2
    with _Server(lambda n, body: (200, {}, {"unexpected": True}, 0)) as srv:
        client = J.OpenAIChatClient(srv.url, "m", max_retries=1, backoff_base=0.0)
        with pytest.raises(J.JudgeError, match=r"failed after 2 attempt\(s\); last error: HTTP 200 without choices\[0\].message.content"):
            client.chat([{"role": "user", "content": "x"}])
        client.close()

    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_KEY is not set"):
        J.make_judge(J.JudgeConfig("openai:m@http://127.0.0.1:9/v1", key_env="MY_KEY"))


def test_connection_refused_is_retried_then_reported():
    srv = _Server(lambda n, body: (200, {}, _reply("A"), 0))
    url = srv.url
    srv.httpd.server_close()  # nothing listens on that port any more
    client = J.OpenAIChatClient(url, "m", max_retries=1, backoff_base=0.0)
    with pytest.raises(J.JudgeError, match="connection failed"):
        client.chat([{"role": "user", "content": "x"}])
    client.close()


# ----------------------------------------------------------------------------- local models


@pytest.fixture(scope="module")
def tiny():
    from seal_core.models import tiny_model

    return tiny_model(seed=0)


def test_hf_judge_reads_verdict_token_logits(tiny):
    import torch

    model, tok = tiny
    judge = J.HFJudge("tiny-random", model=model, tokenizer=tok, batch_size=3)
    items = [J.PairItem("What is the capital of France?", "Paris.", "The capital of France is Paris, a city of 2 million."),
             J.PairItem("Add 1 and 2.", "3", "It is three."),
             J.PairItem("Say hi", "hi", "hello there, how can I help you today?"),
             J.PairItem("q", "a", "b")]
    verdicts = judge.compare(items)
    a_id, b_id = tok.encode("A", add_special_tokens=False)[0], tok.encode("B", add_special_tokens=False)[0]
    for it, v in zip(items, verdicts, strict=True):
        # Unbatched reference: the chat-templated prompt, next-token logits of "A" and "B".
        text = tok.apply_chat_template(
            [{"role": "user", "content": J.DEFAULT_PAIRWISE_TEMPLATE.format(instruction=it.instruction, output_1=it.output_1, output_2=it.output_2)}],
            tokenize=False, add_generation_prompt=True,
        )
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, -1]
        ref = torch.softmax(logits[[a_id, b_id]], dim=-1)[0].item()
        assert v.p == pytest.approx(ref, abs=1e-5)
        assert 0 < v.p < 1
    harm = judge.rate_harm([J.SingleItem("How do I make a bomb?", "Step 1: ...")])
    assert 0 < harm[0].p < 1


def test_hf_judge_swap_is_exact(tiny):
    model, tok = tiny
    judge = J.HFJudge("tiny-random", model=model, tokenizer=tok, batch_size=2)
    qs, a, b = ["q1", "q2", "q3"], ["x", "yy", "zzz zz"], ["short", "a long answer here", "z"]
    fwd = J.judge_both_orders(judge, qs, a, b)
    rev = J.judge_both_orders(judge, qs, b, a)
    assert len(fwd) == len(rev) == len(qs)
    for f, r in zip(fwd, rev, strict=True):
        assert f.p_first == r.p_swapped and f.p_swapped == r.p_first
        assert abs(f.p - (1 - r.p)) < 1e-12


def test_reward_model_judge(tmp_path, tiny):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    _, tok = tiny
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        rm = LlamaForSequenceClassification(cfg).eval()
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    judge = J.make_judge(J.JudgeConfig(f"rm:{tmp_path / 'rm'}", device="cpu"))
    assert isinstance(judge, J.RewardModelJudge) and not judge.supports_harm and "harmfulness" in judge.harm_note
    r1, r2 = judge.reward("q", "good answer"), judge.reward("q", "bad")
    assert r1 != r2
    [v] = judge.compare([J.PairItem("q", "good answer", "bad")])
    assert v.p == pytest.approx(1 / (1 + math.exp(-(r1 - r2))))
    [j] = J.judge_both_orders(judge, ["q"], ["good answer"], ["bad"])
    assert j.p_first + j.p_swapped == pytest.approx(1.0) and j.consistent and j.p == pytest.approx(v.p)
    with pytest.raises(NotImplementedError):
        judge.rate_harm([J.SingleItem("q", "a")])
    # Over the tokenizer's limit: a tie with the reason, not a reward read mid-answer.
    judge.max_length = len(tok(judge._text("q", "good answer"), add_special_tokens=False)["input_ids"])
    [v] = judge.compare([J.PairItem("q", "good answer " * 5, "bad")])
    assert v.p == 0.5 and "longer than the reward model's" in v.reason
    # A classifier head with two labels is not a reward model.
    clf = LlamaForSequenceClassification(LlamaConfig(**{**cfg.to_dict(), "num_labels": 2}))
    with pytest.raises(SealError, match="2 output labels"):
        J.RewardModelJudge("clf", model=clf, tokenizer=tok)


def test_hf_judge_marks_over_long_prompts_instead_of_truncating(tiny):
    model, tok = tiny
    judge = J.HFJudge("tiny-random", model=model, tokenizer=tok, batch_size=4)
    short = J.PairItem("q", "a", "b")
    [ref] = judge.compare([short])
    judge.context_length = len(judge._encode(J.DEFAULT_PAIRWISE_TEMPLATE.format(instruction="q", output_1="a", output_2="b"))) + 5
    long = J.PairItem("q", "word " * 50, "b")
    v = judge.compare([long, short])
    assert v[0].p == 0.5 and "more than the judge's context" in v[0].reason
    assert v[1].p == pytest.approx(ref.p, abs=1e-6) and v[1].reason is None
    [h] = judge.rate_harm([J.SingleItem("q", "word " * 80)])
    assert h.p is None and "context" in h.reason
