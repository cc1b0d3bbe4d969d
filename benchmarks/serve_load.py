"""Load test of `dlm serve`: N requests from C concurrent clients, with the engine batching
requests into shared forward passes, and again one request per sampler call (--max-rows 1);
reports errors, p50/p99 latency, throughput and the batching gain.

    python benchmarks/serve_load.py --model runs/masked --requests 400 --concurrency 32
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --requests 400   # a running server

With --model it starts two servers in this process on free ports of 127.0.0.1 (batched, then
one-at-a-time), so both runs see the same model and the same machine.

--mix N measures fairness instead: long requests (n=8, 128 tokens, 128 steps), each
sent with N short ones from other clients while it runs, against one engine worker and then
against --workers; it reports the short requests' p50/p99 latency for each. The servers take a
work budget large enough for the long request (the mix measures scheduling, not the budget).

    python benchmarks/serve_load.py --model runs/masked --mix 30 --longs 2 --workers 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

PROMPTS = ["To be", "The ", "And ", "What ", "O, ", "My lord", "I am", "Thou art", "Come, ", "Good "]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def load(url: str, *, requests: int, concurrency: int, body: dict, prompts: list[str] = PROMPTS,
         timeout: float = 120.0) -> dict:
    """Fire `requests` completions from `concurrency` threads; latencies, errors and throughput."""
    latencies, errors, tokens = [], [], []
    lock = threading.Lock()
    clients = threading.local()

    def one(i: int) -> None:
        if not hasattr(clients, "c"):
            clients.c = httpx.Client(timeout=timeout)
        start = time.perf_counter()
        try:
            r = clients.c.post(url + "/v1/completions", json={**body, "prompt": prompts[i % len(prompts)]})
            ok = r.status_code == 200
            detail = None if ok else f"{r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            ok, detail = False, repr(e)
        seconds = time.perf_counter() - start
        with lock:
            if ok:
                latencies.append(seconds)
                tokens.append(r.json()["usage"]["completion_tokens"])
            else:
                errors.append(detail)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    return {"requests": requests, "concurrency": concurrency, "errors": len(errors), "first_errors": errors[:3],
            "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
            "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
            "requests_per_s": len(latencies) / wall, "tokens_per_s": sum(tokens) / wall, "seconds": wall}


def mix(url: str, *, longs: int, shorts_per_long: int, concurrency: int, short_body: dict, long_body: dict,
        prompts: list[str] = PROMPTS, timeout: float = 600.0) -> dict:
    """`longs` long requests one after another; while each runs, `shorts_per_long` short ones from
    `concurrency` other clients. The latencies of both kinds."""
    short_latencies, long_latencies, errors = [], [], []
    lock = threading.Lock()
    clients = threading.local()

    def post(body: dict, into: list) -> None:
        if not hasattr(clients, "c"):
            clients.c = httpx.Client(timeout=timeout)
        start = time.perf_counter()
        try:
            r = clients.c.post(url + "/v1/completions", json=body)
            detail = None if r.status_code == 200 else f"{r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            detail = repr(e)
        with lock:
            (errors.append(detail) if detail else into.append(time.perf_counter() - start))

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency + 1) as pool:
        for i in range(longs):
            long_done = pool.submit(post, {**long_body, "prompt": prompts[i % len(prompts)]}, long_latencies)
            time.sleep(0.05)  # the long one is running
            shorts = [pool.submit(post, {**short_body, "prompt": prompts[j % len(prompts)]}, short_latencies)
                      for j in range(shorts_per_long)]
            for f in [long_done, *shorts]:
                f.result()
    return {"longs": longs, "shorts": longs * shorts_per_long, "errors": len(errors), "first_errors": errors[:3],
            "short_p50_s": percentile(short_latencies, 0.5), "short_p99_s": percentile(short_latencies, 0.99),
            "long_mean_s": statistics.fmean(long_latencies) if long_latencies else float("nan"),
            "seconds": time.perf_counter() - start}


def mean_batch_rows(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("dlm_batch_rows_"))
    return float(values["dlm_batch_rows_sum"]) / max(float(values["dlm_batch_rows_count"]), 1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="checkpoint to serve here (batched, then one request at a time)")
    where.add_argument("--url", help="a running `dlm serve` (batched run only)")
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--sampler", default=None, help="default: the model's own")
    p.add_argument("--max-rows", type=int, default=32, help="rows per batched forward pass")
    p.add_argument("--window-ms", type=float, default=10.0)
    p.add_argument("--mix", type=int, default=None, metavar="N",
                   help="fairness: N short requests (--max-tokens, --steps) alongside each long one")
    p.add_argument("--longs", type=int, default=4, help="with --mix: how many long requests")
    p.add_argument("--long", default="8,128,128", metavar="N,TOKENS,STEPS",
                   help="with --mix: the long request (default 8,128,128: issue 16's with 128 steps instead of 1024, "
                        "within the default work budget)")
    p.add_argument("--prompt", action="append", default=None, help="prompts to cycle through (repeat it); default: "
                   "ten Shakespeare openings")
    p.add_argument("--workers", type=int, default=2, help="with --mix and --model: the engine slots compared to 1")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    from dlm.training.performance import tune_allocator

    tune_allocator()  # the servers started here run in this process, and `dlm serve` tunes it
    if args.mix is not None:
        return main_mix(args)
    body = {"max_tokens": args.max_tokens, "steps": args.steps}
    if args.sampler:
        body["sampler"] = args.sampler
    runs = {}
    if args.url:
        runs["batched"] = load(args.url, requests=args.requests, concurrency=args.concurrency, body=body,
                              prompts=args.prompt or PROMPTS)
        runs["batched"]["mean_batch_rows"] = mean_batch_rows(args.url)
    else:
        from dlm.server.app import create_app
        from dlm.server.limits import Limits
        from dlm.server.listen import ServedInThread
        from dlm.training import load_checkpoint

        ckpt = load_checkpoint(args.model)
        for name, rows in (("batched", args.max_rows), ("one_at_a_time", 1)):
            limits = Limits(max_rows=rows, max_queue=max(64, args.concurrency * 2), window_ms=args.window_ms,
                            max_tokens=max(args.max_tokens, 1), timeout_s=600, workers=1)  # batching alone
            with ServedInThread(create_app(ckpt, limits=limits, seed=0)) as served:
                load(served.url, requests=min(8, args.requests), concurrency=2, body=body,
                     prompts=args.prompt or PROMPTS)  # warm-up
                runs[name] = load(served.url, requests=args.requests, concurrency=args.concurrency, body=body,
                                  prompts=args.prompt or PROMPTS)
                runs[name]["mean_batch_rows"] = mean_batch_rows(served.url)
        runs["batching_gain"] = runs["batched"]["requests_per_s"] / runs["one_at_a_time"]["requests_per_s"]
    for name, r in runs.items():
        if isinstance(r, dict):
            print(f"{name:>14}: {r['requests']} requests from {r['concurrency']} clients, {r['errors']} errors, "
                  f"p50 {r['p50_s'] * 1000:.0f} ms, p99 {r['p99_s'] * 1000:.0f} ms, {r['requests_per_s']:.1f} req/s, "
                  f"{r['tokens_per_s']:.0f} tokens/s, {r['mean_batch_rows']:.1f} rows per forward pass")
    if "batching_gain" in runs:
        print(f"batching gain: {runs['batching_gain']:.2f}x the throughput of one request per sampler call")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=2)
    failed = sum(r["errors"] for r in runs.values() if isinstance(r, dict))
    return 1 if failed else 0


def main_mix(args) -> int:
    n, tokens, steps = (int(x) for x in args.long.split(","))
    short = {"max_tokens": args.max_tokens, "steps": args.steps, **({"sampler": args.sampler} if args.sampler else {})}
    long = {**short, "n": n, "max_tokens": tokens, "steps": steps}
    kw = dict(longs=args.longs, shorts_per_long=args.mix, concurrency=args.concurrency, short_body=short,
              long_body=long, prompts=args.prompt or PROMPTS)
    runs = {}
    if args.url:
        runs["server"] = mix(args.url, **kw)
    else:
        from dlm.server.app import create_app
        from dlm.server.limits import Limits
        from dlm.server.listen import ServedInThread
        from dlm.training import load_checkpoint

        ckpt = load_checkpoint(args.model)
        for workers in (1, args.workers):
            limits = Limits(max_rows=max(args.max_rows, n), max_n=n, max_queue=max(64, args.concurrency * 2),
                            window_ms=args.window_ms, max_tokens=max(tokens, args.max_tokens), max_steps=steps,
                            timeout_s=600, work_budget=1 << 30, workers=workers)
            with ServedInThread(create_app(ckpt, limits=limits, seed=0)) as served:
                load(served.url, requests=4, concurrency=2, body=short, prompts=kw["prompts"])  # warm-up
                runs[f"workers_{workers}"] = mix(served.url, **kw)
    for name, r in runs.items():
        print(f"{name:>10}: {r['longs']} long (n={n}, {tokens} tokens, {steps} steps, mean {r['long_mean_s']:.2f} s) "
              f"+ {r['shorts']} short from {args.concurrency} clients, {r['errors']} errors: short p50 "
              f"{r['short_p50_s'] * 1000:.0f} ms, p99 {r['short_p99_s'] * 1000:.0f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=2)
    return 1 if any(r["errors"] for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
