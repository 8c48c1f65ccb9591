"""Judge client throughput: rlvlm's JudgeReward (httpx, its own retry loop) against the openai SDK
(retries, backoff and Retry-After built in), on the same local chat-completions server that answers at
once, so that only the client's own cost is timed. Alternates the two round by round; prints and writes
JSON (default benchmarks/results/judge_client.json).

    pip install openai && python benchmarks/judge_client.py [--requests 1500] [--concurrency 8] [--rounds 3] [--out FILE]

A real judge (a 32B model behind vLLM) answers in tens to hundreds of milliseconds, so the client's cost
matters only as CPU taken from the trainer's process; this measures that cost.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPLY = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "judge",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "yes"}}]}).encode()


class Instant(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(REPLY)))
        self.end_headers()
        self.wfile.write(REPLY)


def rlvlm_client(base_url: str, n: int, concurrency: int) -> float:
    from rewards.judge import make_judge_reward

    judge = make_judge_reward(base_url=base_url, model="judge", concurrency=concurrency)
    completions = [f"<think>So the answer is {i}.</think><answer>A</answer>" for i in range(n)]  # n distinct prompts
    t0 = time.perf_counter()
    scores = judge(completions)
    seconds = time.perf_counter() - t0
    judge.close()
    if scores != [1.0] * n:
        raise RuntimeError("the rlvlm client lost verdicts")
    return n / seconds


def openai_client(base_url: str, n: int, concurrency: int) -> float:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=lambda: "unused", max_retries=2, timeout=10)

    def ask(i: int) -> str:
        reply = client.chat.completions.create(model="judge", messages=[{"role": "user", "content": f"prompt {i}"}],
                                               temperature=0.0, max_tokens=16)
        return reply.choices[0].message.content

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(ask, range(n)))
    seconds = time.perf_counter() - t0
    client.close()
    if replies != ["yes"] * n:
        raise RuntimeError("the openai client lost replies")
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "judge_client.json"))
    args = parser.parse_args()
    import openai

    server = ThreadingHTTPServer(("127.0.0.1", 0), Instant)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    runs = {"rlvlm_httpx": [], "openai_sdk": []}
    try:
        for r in range(args.rounds):
            runs["rlvlm_httpx"].append(rlvlm_client(base_url, args.requests, args.concurrency))
            runs["openai_sdk"].append(openai_client(base_url, args.requests, args.concurrency))
            print(f"round {r + 1}: rlvlm {runs['rlvlm_httpx'][-1]:.0f} req/s, openai {runs['openai_sdk'][-1]:.0f} req/s", flush=True)
    finally:
        server.shutdown()
        server.server_close()
    medians = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "openai": openai.__version__,
        "requests": args.requests, "concurrency": args.concurrency,
        "requests_per_second": runs, "median": medians,
        "openai_over_rlvlm": medians["openai_sdk"] / medians["rlvlm_httpx"],
    }
    print(json.dumps({"median": medians, "openai_over_rlvlm": result["openai_over_rlvlm"]}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
