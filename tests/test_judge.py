"""LLM-judge faithfulness reward against a real local HTTP server."""

from __future__ import annotations

import asyncio
import inspect
import json
import pickle
import re
import socket
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rewards.faithfulness import is_consistent
from rewards.judge import JUDGE_PROMPT_TEMPLATE, make_judge_reward, parse_verdict

OPTS = ["red", "blue", "green", "yellow"]
SECRET = "sk-test-SECRET-value-1234567890"
KEY_ENV = "RLVLM_TEST_JUDGE_KEY"


def resp(think, answer):
    return f"<think>{think}</think><answer>{answer}</answer>"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        srv = self.server
        mode = self.path.strip("/").split("/")[0]
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        with srv.lock:
            srv.requests.append((mode, body, dict(self.headers)))
            srv.times.setdefault(mode, []).append(time.monotonic())
            n_mode = sum(1 for m, _, _ in srv.requests if m == mode)
        if mode == "slow":
            time.sleep(0.5)
        half_down = mode == "half" and zlib.crc32(body["messages"][0]["content"].encode()) % 2 == 1
        if mode == "error" or (mode == "flaky" and n_mode % 2 == 1) or half_down:
            self._send(500, b'{"error": "boom"}')
            return
        if mode in ("busy", "overloaded") and n_mode == 1:  # 429 on the first request, with the delay to wait
            self._send(429, b'{"error": "busy"}', {"Retry-After": "0.3" if mode == "busy" else "120"})
            return
        if mode == "malformed":
            self._send(200, b'{"choices": [ not json')
            return
        if mode == "unauthorized":
            self._send(401, b'{"error": "no"}')
            return
        prompt = body["messages"][0]["content"]
        verdict = "yes" if _server_judges_consistent(prompt) else "no"
        if mode == "chatty":
            verdict = f"<think>Let me think: yes or no?</think>\nVerdict: {verdict.capitalize()}."
        payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": verdict}}]}
        self._send(200, json.dumps(payload).encode())

    def _send(self, code, data, headers=None):
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout mode)
            pass


def _server_judges_consistent(prompt: str) -> bool:
    think = re.search(r"<think>\n(.*)\n</think>", prompt, re.S).group(1)
    answer = re.search(r"<answer>(.*)</answer>", prompt, re.S).group(1)
    options = re.findall(r"^[A-Z]\. (.*)$", prompt, re.M)
    return is_consistent(resp(think, answer), options or None)


@pytest.fixture(scope="module")
def server():
    # the server's free-form check imports and warms math_verify on first use, which can take longer
    # than the tests' 0.2 s client timeout on a loaded machine: do it before serving
    is_consistent(resp("so the answer is 1/2.", "0.5"))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()
    srv.requests = []
    srv.times = {}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv, mode):
    return f"http://127.0.0.1:{srv.server_address[1]}/{mode}/v1"


def count(srv, mode):
    with srv.lock:
        return sum(1 for m, _, _ in srv.requests if m == mode)


def judge(srv, mode, **kw):
    kw = {"timeout": 0.2, "max_retries": 2, "backoff": 0.01, "concurrency": 4, **kw}
    return make_judge_reward(base_url=url(srv, mode), model="judge-test", **kw)


BATCH = [
    resp("The answer is B.", "B"),  # consistent
    resp("The answer is A.", "B"),  # inconsistent
    [{"role": "assistant", "content": resp("So the answer is green.", "C")}],  # conversational, consistent
    "<think>no answer block</think>",  # missing answer: 0.0 without asking
    "<answer>B</answer>",  # missing think: 0.0 without asking
]


def test_verdicts_and_cache(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    fn = judge(server, "ok", api_key_env=KEY_ENV)
    assert fn.__name__ == "judge_consistency"
    before = count(server, "ok")
    out = fn(BATCH, options=[OPTS] * len(BATCH))
    assert out == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert count(server, "ok") - before == 3  # the malformed responses were never sent
    assert fn.stats["calls"] == 3 and fn.stats["failures"] == 0 and fn.stats["cache_hits"] == 0
    # the key travelled as a bearer token
    with server.lock:
        headers = server.requests[-1][2]
    assert headers.get("Authorization") == f"Bearer {SECRET}"
    # same texts again: all from the cache, no new request
    out2 = fn(BATCH, options=[OPTS] * len(BATCH))
    assert out2 == out
    assert count(server, "ok") - before == 3
    assert fn.stats["cache_hits"] == 3 and fn.stats["calls"] == 3
    # duplicates inside one batch are asked once
    dup = [resp("The answer is D.", "D")] * 4
    assert fn(dup, options=[OPTS] * 4) == [1.0] * 4
    assert count(server, "ok") - before == 4


def test_think_prefix_and_free_form(server):
    fn = judge(server, "ok")
    prefix = "<think>The answer is A."
    out = fn([" Wait, actually the answer is B.</think><answer>B</answer>", " Hmm.</think><answer>B</answer>"],
             options=[OPTS, OPTS], think_prefix=[prefix, prefix])
    assert out == [1.0, 0.0]
    assert fn([resp("so the answer is 1/2.", "0.5")]) == [1.0]


def test_verdict_inside_chatty_reply(server):
    fn = judge(server, "chatty")
    assert fn(BATCH[:2], options=[OPTS, OPTS]) == [1.0, 0.0]


def test_slow_server_times_out(server):
    """The server answers after 0.5 s, the client waits 0.1 s: each judged response is tried twice
    (one retry), times out both times and scores None; the unparsable ones never reach the server."""
    fn = judge(server, "slow", timeout=0.1, max_retries=1)
    out = fn(BATCH, options=[OPTS] * len(BATCH))
    assert out == [None, None, None, 0.0, 0.0]
    assert fn.stats["failures"] == 3 and fn.stats["requests"] == 6


def test_server_errors_are_retried_then_none(server):
    fn = judge(server, "error", max_retries=2)
    before = count(server, "error")
    out = fn(BATCH[:2], options=[OPTS, OPTS])
    assert out == [None, None]
    assert count(server, "error") - before == 6  # 1 try + 2 retries each
    assert fn.stats == {"calls": 2, "requests": 6, "failures": 2, "cache_hits": 0}
    # failures are not cached: asking again goes back to the server
    fn(BATCH[:1], options=[OPTS])
    assert count(server, "error") - before == 9


def test_retry_recovers_from_transient_500(server):
    fn = judge(server, "flaky", max_retries=1, concurrency=1)
    before = count(server, "flaky")
    assert fn([BATCH[0]], options=[OPTS]) == [1.0]
    assert count(server, "flaky") - before == 2
    assert fn.stats["failures"] == 0 and fn.stats["requests"] == 2


def test_retry_after_is_honoured(server):
    """A 429 with Retry-After: the client waits what the server asks (not its own 0.01 s backoff); a
    Retry-After beyond a minute is not waited for."""
    fn = judge(server, "busy", timeout=2)
    assert fn([resp("The answer is B.", "B")], options=[OPTS]) == [1.0]
    first, second = server.times["busy"]
    assert second - first >= 0.3
    fn = judge(server, "overloaded", timeout=2)
    assert fn([resp("The answer is B.", "B")], options=[OPTS]) == [None]
    assert count(server, "overloaded") == 1


def test_malformed_json(server):
    fn = judge(server, "malformed", max_retries=1)
    before = count(server, "malformed")
    assert fn(BATCH[:1], options=[OPTS]) == [None]
    assert count(server, "malformed") - before == 2
    assert fn.stats["failures"] == 1


def test_client_error_is_not_retried(server):
    fn = judge(server, "unauthorized", max_retries=3)
    before = count(server, "unauthorized")
    assert fn(BATCH[:1], options=[OPTS]) == [None]
    assert count(server, "unauthorized") - before == 1


def test_down_server():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    fn = make_judge_reward(base_url=f"http://127.0.0.1:{port}/v1", timeout=0.2, max_retries=1, backoff=0.01)
    out = fn(BATCH, options=[OPTS] * len(BATCH))
    assert out == [None, None, None, 0.0, 0.0]
    assert fn.stats["failures"] == 3 and fn.stats["requests"] == 6


def test_key_never_exposed(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    fn = judge(server, "ok", api_key_env=KEY_ENV)
    fn(BATCH[:1], options=[OPTS])
    for text in (repr(fn), str(fn), repr(vars(fn)), str(fn.stats)):
        assert SECRET not in text
    assert KEY_ENV in repr(fn)
    blob = pickle.dumps(fn)
    assert SECRET.encode() not in blob
    clone = pickle.loads(blob)
    assert clone.__name__ == "judge_consistency"
    assert clone(BATCH[:1], options=[OPTS]) == [1.0]  # from the pickled cache


def test_async_wrapper_and_trl_detection(server):
    # the same checks as trl.trainer.utils.get_callable_name / is_async_callable
    # (not imported here: importing TRL costs seconds)
    fn = judge(server, "ok")
    assert getattr(fn, "__name__", type(fn).__name__) == "judge_consistency"
    assert not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(fn.__call__))  # called synchronously
    assert asyncio.run(fn.acall(BATCH[:2], options=[OPTS, OPTS])) == [1.0, 0.0]


def test_custom_prompt_template(server):
    template = JUDGE_PROMPT_TEMPLATE.replace("Reply with one word", "{not a field} Reply with one word")
    fn = judge(server, "ok", prompt_template=template)
    assert fn(BATCH[:2], options=[OPTS, OPTS]) == [1.0, 0.0]
    with server.lock:
        assert "{not a field}" in server.requests[-1][1]["messages"][0]["content"]


@pytest.mark.parametrize(
    "reply,expected",
    [("yes", 1.0), ("No.", 0.0), (" YES ", 1.0), ("<think>no wait</think>yes", 1.0), ("maybe", None), (None, None),
     ("yesterday", None)],
)
def test_parse_verdict(reply, expected):
    assert parse_verdict(reply) == expected


def test_fields_inside_the_think_are_not_substituted():
    fn = make_judge_reward()
    prompt = fn.build_prompt("I will write {answer} and {options} here", "B", OPTS)
    assert "I will write {answer} and {options} here" in prompt
    assert "B. blue" in prompt and "<answer>B</answer>" in prompt


def test_evaluation_against_a_judge_down_on_half_its_prompts(server, caplog):
    """The verdicts the judge gave make consistency; the others are `unscored`, not inconsistent, in the
    trace row, the console table and the logged scalars."""
    import logging

    from rlvlm.evaluation.results import aggregate, format_rows
    from rlvlm.evaluation.scoring import score

    thinks = [f"There are {k} red shapes and {k + 1} blue ones. So the answer is ({'ABCD'[k % 4]})." for k in range(24)]
    completions = [resp(t, "ABCD"[(k + k // 3) % 4]) for k, t in enumerate(thinks)]  # some agree, some do not
    items = [{"dataset": "shapes", "condition": "base", "id": str(k), "answer": "B", "options": OPTS,
              "prompt": [], "think_prefix": None} for k in range(24)]
    scorer = judge(server, "half", max_retries=1)
    with caplog.at_level(logging.WARNING, logger="rlvlm.evaluation"):
        result = aggregate(3, score(items, completions, [[0.1, 0.6, 0.2, 0.1]] * 24, scorer))
    answered = [zlib.crc32(scorer.build_prompt(*_think_answer(c), OPTS).encode()) % 2 == 0 for c in completions]
    assert 0 < sum(answered) < 24
    truth = [is_consistent(c, OPTS) for c in completions]
    row = result.trace[0]
    assert row["categories"]["unscored"] == 24 - sum(answered)
    assert sum(row["categories"].values()) == row["n"] == 24
    assert row["consistency"] == pytest.approx(sum(t for t, a in zip(truth, answered) if a) / sum(answered))
    assert row["accuracy"] == pytest.approx(sum(c.endswith("<answer>B</answer>") for c in completions) / 24)
    assert f"{24 - sum(answered):>5}" in format_rows(result.trace).splitlines()[1][-5:]
    assert "no verdict on" in caplog.text and "unscored" in caplog.text
    assert result.log_dict()["shapes/base/unscored"] == pytest.approx((24 - sum(answered)) / 24)
    scorer.close()


def _think_answer(completion: str) -> tuple[str, str]:
    from rewards.parsing import split_response

    return split_response(completion)
