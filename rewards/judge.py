"""LLM-judge faithfulness: does the think's conclusion match the answer?

``make_judge_reward(...)`` returns a reward function with TRL's signature
``(completions, options=None, think_prefix=None, **kwargs) -> list[float | None]``
that asks an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, SGLang,
TGI, OpenAI, ...) or a local transformers model for a yes/no verdict.

- 1.0 for "yes", 0.0 for "no"; 0.0 without asking when the response lacks a
  think or an answer block; ``None`` when the judge cannot answer (timeout, 5xx,
  malformed JSON, connection refused, no yes/no in its reply). It never raises.
- Bounded retries with exponential backoff (or the server's Retry-After), a cache keyed by the judged prompt,
  and up to ``concurrency`` requests in flight.
- The API key is read from the environment variable *named* ``api_key_env`` at
  request time and is never stored on the object (so it never reaches a repr,
  a log line or a pickle).
- ``reward_fn.stats``: ``calls`` (judge queries), ``requests`` (HTTP attempts,
  retries included), ``failures``, ``cache_hits``.

The call is synchronous (usable as is by TRL and by the evaluator);
``await reward_fn.acall(...)`` runs it off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from rewards.parsing import LETTERS, column, response_text, split_response

__all__ = ["JUDGE_PROMPT_TEMPLATE", "JudgeReward", "make_judge_reward", "parse_verdict"]

logger = logging.getLogger(__name__)

#: The judge prompt. Fields: ``{options}``, ``{think}``, ``{answer}`` (replaced
#: literally, so other braces in a custom template are left alone).
JUDGE_PROMPT_TEMPLATE = """You check whether a model's reasoning agrees with its final answer.

Answer options:
{options}

Reasoning:
<think>
{think}
</think>

Final answer:
<answer>{answer}</answer>

Does the conclusion reached at the end of the reasoning match the final answer \
(the same option or the same value)? If the reasoning reaches no conclusion, \
say no. Reply with one word: yes or no."""

DEFAULT_JUDGE_MODEL = "Qwen/Qwen3-32B"
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
MAX_THINK_CHARS = 8000  # the conclusion is at the end: keep the tail of long CoTs
MAX_CACHE_ENTRIES = 200_000

_THINK_BLOCK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FIELD_RE = re.compile(r"\{(options|think|answer)\}")
_VERDICT_RE = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_verdict(text) -> float | None:
    """1.0 for a yes, 0.0 for a no (the first one after any think block), else None."""
    if not isinstance(text, str):
        return None
    text = _THINK_BLOCK_RE.sub(" ", text)
    m = _VERDICT_RE.search(text)
    if m is None:
        return None
    return 1.0 if m.group(1).lower() == "yes" else 0.0


def _chat_url(base_url: str) -> str:
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def _one_line(text, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After is not waited for (the attempt fails instead)


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(headers) -> float | None:
    """The server's Retry-After (seconds, or milliseconds in `retry-after-ms`), when it gives one."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return float(headers[name]) * scale
        except (KeyError, TypeError, ValueError):
            continue
    return None


class JudgeReward:
    """Callable reward; build it with :func:`make_judge_reward`."""

    def __init__(
        self,
        base_url=None,
        model=DEFAULT_JUDGE_MODEL,
        api_key_env=None,
        timeout=10.0,
        max_retries=2,
        backoff=0.5,
        concurrency=8,
        prompt_template=None,
        local_model=None,
        max_tokens=16,
        extra_body=None,
    ):
        self.__name__ = "judge_consistency"
        self.base_url = base_url or DEFAULT_BASE_URL
        self.model = model
        self.api_key_env = api_key_env  # the variable's NAME; its value is read per request
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.concurrency = max(1, int(concurrency))
        self.prompt_template = prompt_template or JUDGE_PROMPT_TEMPLATE
        self.local_model = local_model
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self.stats = {"calls": 0, "requests": 0, "failures": 0, "cache_hits": 0}
        self._cache: dict[str, float] = {}
        self._init_runtime()

    # -- runtime state that is never pickled
    def _init_runtime(self):
        self._lock = threading.Lock()
        self._client = None
        self._local = None

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("_lock", "_client", "_local"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self):
        where = f"local_model={self.local_model!r}" if isinstance(self.local_model, str) else (
            "local_model=<object>" if self.local_model is not None else f"base_url={self.base_url!r}")
        return f"JudgeReward(model={self.model!r}, {where}, api_key_env={self.api_key_env!r})"

    __str__ = __repr__

    # -- prompt
    def build_prompt(self, think: str, answer: str, options=None) -> str:
        if len(think) > MAX_THINK_CHARS:
            think = "…" + think[-MAX_THINK_CHARS:]
        if options:
            opts = "\n".join(f"{LETTERS[i % 26]}. {o}" for i, o in enumerate(options))
        else:
            opts = "(free-form answer, no options)"
        values = {"options": opts, "think": think, "answer": answer}
        # one pass, so a "{answer}" written inside the think is not substituted
        return _FIELD_RE.sub(lambda m: values[m.group(1)], self.prompt_template)

    # -- the reward
    def __call__(self, completions, options=None, think_prefix=None, **kwargs) -> list[float | None]:
        try:
            return self._score(completions, options, think_prefix)
        except Exception:  # never take training down
            logger.exception("judge reward failed; returning None for the batch")
            with self._lock:
                self.stats["failures"] += len(completions)
            return [None] * len(completions)

    async def acall(self, completions, options=None, think_prefix=None, **kwargs) -> list[float | None]:
        return await asyncio.to_thread(self.__call__, completions, options, think_prefix, **kwargs)

    def _score(self, completions, options, think_prefix):
        rewards: list[float | None] = [None] * len(completions)
        pending: dict[str, list[int]] = {}
        for i, completion in enumerate(completions):
            think, answer = split_response(response_text(completion, column(think_prefix, i)))
            if not think or not answer:
                rewards[i] = 0.0
                continue
            prompt = self.build_prompt(think, answer, column(options, i))
            with self._lock:
                cached = self._cache.get(prompt)
                if cached is not None or prompt in pending:
                    self.stats["cache_hits"] += 1
            if cached is not None:
                rewards[i] = cached
            else:
                pending.setdefault(prompt, []).append(i)
        if not pending:
            return rewards
        prompts = list(pending)
        with self._lock:
            self.stats["calls"] += len(prompts)
        if len(prompts) == 1 or self.concurrency == 1 or self.local_model is not None:
            verdicts = [self._judge(p) for p in prompts]
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
                verdicts = list(pool.map(self._judge, prompts))
        for prompt, verdict in zip(prompts, verdicts):
            if verdict is None:
                with self._lock:
                    self.stats["failures"] += 1
            else:
                with self._lock:
                    if len(self._cache) >= MAX_CACHE_ENTRIES:
                        self._cache.clear()
                    self._cache[prompt] = verdict
            for i in pending[prompt]:
                rewards[i] = verdict
        return rewards

    def _judge(self, prompt: str) -> float | None:
        try:
            if self.local_model is not None:
                return self._judge_local(prompt)
            return self._judge_http(prompt)
        except Exception as err:
            logger.debug("judge query failed: %s", type(err).__name__)
            return None

    # -- OpenAI-compatible endpoint
    def _http_client(self):
        import httpx

        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout),
                    limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
                )
            return self._client

    def _request(self, prompt: str) -> tuple[str, dict, dict]:
        """(url, JSON body, headers) of one judge query; the key is read from the environment now."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            **({"max_tokens": self.max_tokens} if self.max_tokens else {}),
            **self.extra_body,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        return _chat_url(self.base_url), body, headers

    @property
    def url(self) -> str:
        """Where the judge is asked: the chat-completions URL, or the local model."""
        if self.local_model is not None:
            return f"local_model {self.local_model!r}" if isinstance(self.local_model, str) else "local_model <object>"
        return _chat_url(self.base_url)

    def _judge_http(self, prompt: str) -> float | None:
        import httpx

        # Not the openai SDK, which retries and honours Retry-After itself: measured on the same local
        # server (benchmarks/judge_client.py), it sends 0.80x the requests per second of this client.
        client = self._http_client()
        url, body, headers = self._request(prompt)
        wait = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(wait if wait is not None else self.backoff * (2 ** (attempt - 1)))
            with self._lock:
                self.stats["requests"] += 1
            try:
                resp = client.post(url, json=body, headers=headers)
                if resp.status_code >= 500 or resp.status_code in (408, 429):
                    after = _retry_after(resp.headers)
                    if after is not None and after > MAX_RETRY_AFTER:
                        logger.debug("judge endpoint asks to retry after %.0f s; not waiting", after)
                        return None
                    raise _Retryable(f"HTTP {resp.status_code}", after)
                if resp.status_code >= 400:
                    logger.debug("judge endpoint answered HTTP %s", resp.status_code)
                    return None  # a client error does not go away by retrying
                try:
                    content = resp.json()["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError) as err:
                    raise _Retryable("malformed response") from err
                return parse_verdict(content)
            except (_Retryable, httpx.TransportError) as err:
                wait = getattr(err, "retry_after", None)  # the server's own delay, else exponential backoff
                logger.debug("judge attempt %d failed: %s", attempt + 1, err)
        return None

    # -- local transformers judge
    def _judge_local(self, prompt: str) -> float | None:
        model, tokenizer = self._load_local()
        import torch

        messages = [{"role": "user", "content": prompt}]
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = prompt + "\n"
        inputs = tokenizer(text, return_tensors="pt").to(model.device)
        with self._lock:
            self.stats["requests"] += 1
        with torch.inference_mode():
            out = model.generate(
                **inputs, max_new_tokens=self.max_tokens or 16, do_sample=False,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
        reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return parse_verdict(reply)

    def _load_local(self):
        with self._lock:
            if self._local is None:
                if isinstance(self.local_model, (tuple, list)):
                    self._local = tuple(self.local_model)
                else:
                    from transformers import AutoModelForCausalLM, AutoTokenizer

                    tokenizer = AutoTokenizer.from_pretrained(self.local_model)
                    model = AutoModelForCausalLM.from_pretrained(self.local_model)
                    model.eval()
                    self._local = (model, tokenizer)
            return self._local

    # -- preflight
    def probe(self) -> str | None:
        """Ask the judge once, as a reward call would (same client, URL, body and auth header, no retry):
        None when it answers, else a one-line reason (cannot connect, timeout, HTTP status, unreadable
        reply). A `local_model` path is only checked to hold a loadable config (the weights are loaded
        at the first reward call, not twice). Never raises; `close()` releases the client it opens."""
        try:
            if self.local_model is not None:
                return self._probe_local()
            return self._probe_http()
        except Exception as err:  # a probe reports, it does not take the caller down
            return f"{type(err).__name__}: {_one_line(err)}"

    def _probe_http(self) -> str | None:
        import httpx

        url, body, headers = self._request(
            self.build_prompt("The two blue shapes outnumber the red one, so the answer is A.", "A", ["blue", "red"])
        )
        try:
            resp = self._http_client().post(url, json=body, headers=headers)
        except httpx.TimeoutException:
            return f"no reply within the judge's timeout of {self.timeout:g} s"
        except httpx.ConnectError as err:
            return f"cannot connect ({_one_line(err)})"
        except httpx.TransportError as err:
            return f"{type(err).__name__} ({_one_line(err)})"
        if resp.status_code >= 400:
            detail = _one_line(resp.text)
            return f"HTTP {resp.status_code}" + (f": {detail}" if detail else "")
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return f"unreadable reply (not a chat-completions response): {_one_line(resp.text) or '<empty>'}"
        if not isinstance(content, str):
            return f"unreadable reply (message content is {type(content).__name__}, not text)"
        if parse_verdict(content) is None:
            logger.warning("judge %s answered the probe without a yes or no (%r); such replies score None. "
                           "A thinking model may need max_tokens or extra_body "
                           "{chat_template_kwargs: {enable_thinking: false}}.", url, _one_line(content))
        return None

    def _probe_local(self) -> str | None:
        if not isinstance(self.local_model, str):
            return None  # a (model, tokenizer) pair is already loaded
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(self.local_model)
        except Exception as err:  # not a model directory, or a model id not available (offline)
            return f"cannot load local_model {self.local_model!r} ({_one_line(err)})"
        return None

    def close(self):
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def make_judge_reward(**kwargs) -> JudgeReward:
    """A judge-based consistency reward (``__name__ == "judge_consistency"``).

    ``base_url``: an OpenAI-compatible server (``http://host:8000/v1``); ``model``:
    the model name it serves; ``api_key_env``: the NAME of the environment variable
    holding the key; ``local_model``: a transformers causal-LM path (or a
    ``(model, tokenizer)`` pair) to judge locally instead. Other keyword arguments (see
    :class:`JudgeReward`): ``timeout``, ``max_retries``, ``backoff``, ``concurrency``,
    ``prompt_template``,
    ``max_tokens`` (default 16) and ``extra_body`` (merged into the request, e.g.
    ``{"chat_template_kwargs": {"enable_thinking": False}}`` for Qwen3 on vLLM).
    """
    return JudgeReward(**kwargs)
