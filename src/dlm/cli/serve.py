"""`dlm serve`: load a checkpoint and answer HTTP requests (see dlm.server)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from dlm.errors import DlmError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from dlm.cli import non_negative_float, positive_int
    from dlm.server.limits import Limits

    d = Limits()
    from dlm.cli import DTYPES

    p.add_argument("checkpoint", metavar="DIR", help="a run folder or checkpoint folder written by `dlm train`, or a "
                   "LLaDA or Dream folder (config.json, *.safetensors, tokenizer files)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="the id clients pass as `model` (default: the folder's name)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU when there is one)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="weights' precision (default float32; auto: bfloat16 where the hardware has bf16 matrix units)")
    p.add_argument("--max-tokens", type=positive_int, default=d.max_tokens, help="most tokens per sample")
    p.add_argument("--max-rows", type=positive_int, default=d.max_rows,
                   help="most samples (prompts x n) per request, and per batched forward pass")
    p.add_argument("--max-queue", type=positive_int, default=d.max_queue,
                   help="requests that may wait; more are answered 429")
    p.add_argument("--timeout", type=non_negative_float, default=d.timeout_s, help="seconds a request may take")
    p.add_argument("--window-ms", type=non_negative_float, default=d.window_ms,
                   help="how long the engine waits for requests to batch together")
    p.add_argument("--seed", type=int, default=None, help="seed the batches of unseeded requests (reproducible runs)")
    p.add_argument("--work-budget", type=positive_int, default=d.work_budget,
                   help=f"token-steps one request may cost, rows x steps x canvas tokens (x2 with cfg_scale); "
                        f"more is refused with a 400 (default {d.work_budget})")
    p.add_argument("--workers", type=positive_int, default=d.workers,
                   help=f"batches sampled at the same time; one slot serves the oldest request, the others the "
                        f"cheapest, so a long request does not hold short ones (default {d.workers})")
    p.add_argument("--read-timeout", type=positive_float, default=d.read_timeout_s,
                   help=f"seconds a client has to send a request's headers, and again its body; then 408 "
                        f"(default {d.read_timeout_s:g})")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* (what the OpenAI "
                   "client sends from api_key=); default: the DLM_API_KEY environment variable, else none")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name clients may use besides the bound address and localhost (repeat it; "
                        "'*' allows any, e.g. behind a proxy that checks Host itself)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="an origin (https://example.org) whose pages may call the API from a browser (repeat "
                        "it); default none")


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def exposure_warnings(host: str, api_key: str | None, allowed_hosts: list[str]) -> list[str]:
    """What to tell the operator about binding `host` (non-loopback: other machines can reach it)."""
    from dlm.server.access import is_loopback

    out = []
    if not is_loopback(host) and api_key is None:
        out.append(f"listening on {host}, reachable from other machines, without an API key: anyone who can reach "
                   f"it can use it; pass --api-key KEY (or set DLM_API_KEY)")
    if host in ("0.0.0.0", "::") and not allowed_hosts:
        out.append("on every interface, requests are answered only for the Host names localhost, 127.0.0.1 and "
                   "[::1]; add the names clients use with --allowed-host NAME")
    return out


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from dlm.server.app import create_app
    except ImportError as e:
        raise DlmError(f"dlm serve needs FastAPI and uvicorn ({e.name} is missing): pip install 'dlm[server]'") from None
    from dlm.server.limits import Limits

    if not 0 < args.port < 65536:
        raise DlmError(f"--port must be between 1 and 65535, got {args.port}")
    with socket.socket() as probe:  # fail with a message now, not a uvicorn log line after loading the model
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((args.host, args.port))
        except OSError as e:
            raise DlmError(f"cannot listen on {args.host}:{args.port}: {e.strerror}; pick another --port") from None
    from dlm.cli import load_from_args
    from dlm.server.access import default_allowed_hosts
    from dlm.server.listen import server_config

    api_key = args.api_key or os.environ.get("DLM_API_KEY") or None
    for warning in exposure_warnings(args.host, api_key, args.allowed_host):
        logging.getLogger("dlm.server").warning("dlm serve: %s", warning)
    ckpt = load_from_args(args)
    limits = Limits(max_tokens=args.max_tokens, max_rows=args.max_rows, max_queue=args.max_queue,
                    timeout_s=args.timeout, window_ms=args.window_ms, work_budget=args.work_budget,
                    workers=args.workers, read_timeout_s=args.read_timeout)
    name = args.model_name or Path(args.checkpoint).resolve().name
    app = create_app(ckpt, limits=limits, model_name=name, seed=args.seed, api_key=api_key,
                     allowed_hosts=default_allowed_hosts(args.host) | set(args.allowed_host),
                     cors_origins=args.cors_origin)
    print(f"dlm serve: {name} ({ckpt.process.name}) on http://{args.host}:{args.port}/ ; Ctrl-C stops",
          file=sys.stderr)
    uvicorn.Server(server_config(app, host=args.host, port=args.port)).run()
    return 0
