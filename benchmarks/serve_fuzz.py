"""Fuzz `dlm serve` over HTTP: generated request bodies, valid and invalid, to /v1/completions and
/v1/infill of a live server (uvicorn on a free port of 127.0.0.1, in this process), from a few
client threads. It reports the responses by status and checks that

- no response is a 5xx,
- GET /health is fine afterwards and a plain completion still works,
- /metrics counts exactly what was sent: per endpoint and status, the server's dlm_requests_total
  equals the client's own tally (refusals by the middleware and the protocol included).

The bodies are mutations of valid requests (fields dropped, set to values of the wrong type or
out of range, unknown fields), plus raw bodies (broken JSON, bad UTF-8, deep nesting, huge span
numbers, oversized bodies) and bad headers (no or a wrong API key, another Host, another
Content-Type). A seeded generator: the same --seed sends the same bodies.

    OMP_NUM_THREADS=1 python benchmarks/serve_fuzz.py                 # 10,000 bodies, a tiny model trained here
    python benchmarks/serve_fuzz.py --model runs/masked --bodies 2000

Runs torch single-threaded: the machines this runs on are small and shared.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

KEY = "sk-fuzz"
TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
        "And by opposing end them. To die: to sleep;\nNo more; and by a sleep to say we end\n") * 60
PROMPTS = ["To be", "The ", "And by", "Or to take", "", "to sleep", "T" * 300]
NASTY = [None, True, False, 0, -1, 1, 2, 7, 8, 9, 64, 10**6, 2**63, -(2**63), 1e-46, 1e308, -0.0, 0.5, 1.0, 3.7,
         "", "To be", "\u2603", "a" * 5000, "<fill:3>", "<fill:99999999999>", "<fill:" + "9" * 5000 + ">",
         "confidence", "ancestral", "remdm", "autoregressive", [], [1, 2], ["To be", "The "], ["x"] * 20,
         {}, {"include_usage": True}, {"a": {"b": [1]}}]
FIELDS = ["prompt", "text", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "stream", "seed", "steps",
          "sampler", "block_length", "threshold", "cfg_scale", "dlm_steps", "model", "user", "stream_options",
          "logprobs", "echo", "bogus"]


def valid_body(rng: random.Random, endpoint: str, samplers: list[str]) -> dict:
    """A body the server should accept (or refuse only for a knob its sampler lacks)."""
    body = {"max_tokens": rng.randint(1, 8)} if endpoint == "completions" else {}
    if endpoint == "completions":
        body["prompt"] = rng.choice(PROMPTS[:4]) if rng.random() < 0.8 else rng.sample(PROMPTS[:4], 2)
    else:
        body["text"] = f"To be, <fill:{rng.randint(1, 6)}> not to be" + (" <fill:2>." if rng.random() < 0.3 else "")
    options = {"steps": lambda: rng.randint(1, 8), "n": lambda: rng.randint(1, 2), "seed": lambda: rng.randint(0, 99),
               "temperature": lambda: rng.choice([0, 0.7, 1.0]), "top_p": lambda: rng.choice([0.5, 0.9, 1.0]),
               "top_k": lambda: rng.randint(1, 20), "sampler": lambda: rng.choice(samplers),
               "stream": lambda: rng.random() < 0.5, "stop": lambda: rng.choice(["\n", [" ", "e"]]),
               "block_length": lambda: rng.choice([2, 4, 8]), "threshold": lambda: rng.choice([0.5, 0.9]),
               "cfg_scale": lambda: rng.choice([0, 1.5]), "model": lambda: "tiny", "user": lambda: "fuzz"}
    for name in rng.sample(sorted(options), rng.randint(0, 4)):
        if name == "stop" and endpoint != "completions":
            continue
        body[name] = options[name]()
    if body.get("stream") and rng.random() < 0.3:
        body["dlm_steps"] = True
    return body


def mutate(rng: random.Random, body: dict) -> dict:
    body = dict(body)
    for _ in range(rng.randint(1, 3)):
        action = rng.random()
        if action < 0.3 and body:
            body.pop(rng.choice(sorted(body)))
        else:
            body[rng.choice(FIELDS)] = rng.choice(NASTY)
    return body


def raw_body(rng: random.Random, endpoint: str, limit: int) -> bytes:
    """Bodies that are not a JSON object of fields at all."""
    kind = rng.randrange(8)
    if kind == 0:
        return b"{" + b'"prompt": "To be"'[:rng.randint(0, 16)]  # truncated
    if kind == 1:
        return b'{"prompt": "\xff\xfe To be"}'  # not UTF-8
    if kind == 2:
        depth = rng.choice([50, 1000, 100_000])
        return b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == 3:
        return json.dumps(rng.choice([[1, 2], "text", 3, None, True])).encode()
    if kind == 4:
        return b'{"text": "To be <fill:' + b"9" * rng.choice([20, 5000]) + b'>"}'
    if kind == 5:
        return b'{"prompt": "' + b"a" * (limit + rng.randint(1, 100)) + b'"}'  # over the body limit
    if kind == 6:
        return b""
    return b'{"prompt": "To be", "temperature": NaN, "max_tokens": Infinity}'


def request(rng: random.Random, samplers: list[str], limit: int) -> tuple[str, bytes, dict]:
    """One generated request -> (endpoint path, body bytes, headers)."""
    endpoint = rng.choice(["completions", "infill"])
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    roll = rng.random()
    if roll < 0.35:
        body = json.dumps(valid_body(rng, endpoint, samplers)).encode()
    elif roll < 0.85:
        body = json.dumps(mutate(rng, valid_body(rng, endpoint, samplers))).encode()
    else:
        body = raw_body(rng, endpoint, limit)
    roll = rng.random()
    if roll < 0.03:
        headers.pop("Authorization")
    elif roll < 0.05:
        headers["Authorization"] = rng.choice(["Bearer sk-wrong", KEY, "Basic abc", "Bearer"])
    elif roll < 0.08:
        headers["Content-Type"] = rng.choice(["text/plain", "application/x-www-form-urlencoded", ""])
    elif roll < 0.10:
        headers["Host"] = rng.choice(["evil.example", "127.0.0.1.nip.io:80", "localhost.evil"])
    return f"/v1/{endpoint}", body, headers


def requests_by_metrics(text: str) -> Counter:
    """dlm_requests_total from /metrics -> Counter{(endpoint, status): count}."""
    out = Counter()
    for endpoint, status, count in re.findall(r'dlm_requests_total\{endpoint="([^"]*)",status="(\d+)"\} (\d+)', text):
        out[(endpoint, int(status))] += int(count)
    return out


def tiny_model(folder: Path) -> Path:
    """A tiny masked model trained for a few steps here (seconds), as the tests make theirs."""
    from dlm.cli import main

    (folder / "corpus.txt").write_text(TEXT)
    code = main(["train", "--data", str(folder / "corpus.txt"), "--out", str(folder / "run"), "--steps", "4",
                 "--seq-len", "64", "--batch-size", "8", "--eval-every", "4", "--eval-chunks", "2",
                 "--final-eval-chunks", "2", "--warmup-steps", "2", "--no-compile", "--precision", "fp32",
                 "--no-progress"])
    if code != 0:
        raise SystemExit("training the tiny model failed")
    return folder / "run"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint to serve (default: a tiny model trained here)")
    p.add_argument("--bodies", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from dlm.server.app import create_app
    from dlm.server.limits import Limits
    from dlm.server.listen import ServedInThread
    from dlm.training import load_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = load_checkpoint(args.model or tiny_model(Path(tmp)))
    limits = Limits(max_tokens=8, max_steps=8, max_n=2, max_prompts=2, max_rows=4, max_stop=2,
                    max_body_bytes=64 * 1024, timeout_s=60, max_queue=256)
    app = create_app(ckpt, limits=limits, model_name="tiny", api_key=KEY, allowed_hosts=["127.0.0.1"])
    rng = random.Random(args.seed)
    samplers = list(ckpt.process.samplers)
    planned = [request(rng, samplers, limits.max_body_bytes) for _ in range(args.bodies)]
    sent, failures = Counter(), []
    lock = threading.Lock()
    local = threading.local()

    with ServedInThread(app, log_level="critical") as server:
        def send(item) -> None:
            path, body, headers = item
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=server.url, timeout=120)
            try:
                r = local.client.post(path, content=body, headers=headers)
                status = r.status_code
                bad = status >= 500 or (status >= 400 and "error" not in r.json())
            except (httpx.HTTPError, ValueError) as e:
                status, bad = repr(e)[:80], True
            with lock:
                sent[(path, status)] += 1
                if bad and len(failures) < 10:
                    failures.append((path, status, body[:200], headers))

        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(send, planned))
        seconds = time.perf_counter() - start
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            health = c.get("/health").json()
            after = c.post("/v1/completions", json={"prompt": "To be", "max_tokens": 4, "steps": 2}).status_code
            counted = requests_by_metrics(c.get("/metrics").text)
    counted[("/health", 200)] -= 1  # the checks just above, not fuzz traffic
    counted[("/v1/completions", after)] -= 1
    counted = +counted
    server_errors = sum(n for (_, status), n in sent.items() if not isinstance(status, int) or status >= 500)
    by_status = Counter()
    for (_, status), n in sent.items():
        by_status[status] += n
    result = {"bodies": args.bodies, "seconds": round(seconds, 1), "responses_by_status": dict(sorted(
        by_status.items(), key=str)), "server_errors": server_errors, "health_after": health["status"],
        "completion_after": after, "metrics_match": counted == sent, "metrics_total": sum(counted.values()),
        "sent_total": sum(sent.values()), "first_failures": [repr(f) for f in failures]}
    print(f"{args.bodies} bodies in {seconds:.0f} s ({args.bodies / seconds:.0f}/s) from {args.concurrency} clients")
    print("responses by status: " + ", ".join(f"{s}: {n}" for s, n in result["responses_by_status"].items()))
    print(f"5xx or transport errors: {server_errors}; /health after: {health['status']}; a completion after: {after}")
    print(f"/metrics dlm_requests_total: {result['metrics_total']} counted, {result['sent_total']} sent, "
          f"{'equal per endpoint and status' if result['metrics_match'] else 'DIFFERENT'}")
    if not result["metrics_match"]:
        print("  sent - counted:", dict(sent - counted), " counted - sent:", dict(counted - sent))
    for failure in failures:
        print("  failure:", failure)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    ok = server_errors == 0 and not failures and health["status"] == "ok" and after == 200 and result["metrics_match"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
