"""`dlm serve`: load a checkpoint and answer HTTP requests (see dlm.server)."""

from __future__ import annotations

import argparse
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
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights' precision (default float32)")
    p.add_argument("--max-tokens", type=positive_int, default=d.max_tokens, help="most tokens per sample")
    p.add_argument("--max-rows", type=positive_int, default=d.max_rows,
                   help="most samples (prompts x n) per request, and per batched forward pass")
    p.add_argument("--max-queue", type=positive_int, default=d.max_queue,
                   help="requests that may wait; more are answered 429")
    p.add_argument("--timeout", type=non_negative_float, default=d.timeout_s, help="seconds a request may take")
    p.add_argument("--window-ms", type=non_negative_float, default=d.window_ms,
                   help="how long the engine waits for requests to batch together")
    p.add_argument("--seed", type=int, default=None, help="seed the batches of unseeded requests (reproducible runs)")


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

    ckpt = load_from_args(args)
    limits = Limits(max_tokens=args.max_tokens, max_rows=args.max_rows, max_queue=args.max_queue,
                    timeout_s=args.timeout, window_ms=args.window_ms)
    name = args.model_name or Path(args.checkpoint).resolve().name
    app = create_app(ckpt, limits=limits, model_name=name, seed=args.seed)
    print(f"dlm serve: {name} ({ckpt.process.name}) on http://{args.host}:{args.port}/ ; Ctrl-C stops",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
