"""What one request may ask for: the explicit limits that validation enforces (`dlm serve` flags
override some). Plain dataclass, no FastAPI, so the command line can read the defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 256  # tokens generated per row (and the model's context bounds prompt + max_tokens)
    default_max_tokens: int = 64  # when a completion leaves out max_tokens (as `dlm generate --length`)
    max_n: int = 8  # samples per prompt
    max_prompts: int = 8  # prompts in one completion request
    max_rows: int = 16  # prompts x n; also the most canvas rows the engine batches together
    max_steps: int = 1024
    max_stop: int = 4  # stop strings (OpenAI's limit), each at most max_stop_chars long
    max_stop_chars: int = 64
    max_temperature: float = 10.0
    max_cfg_scale: float = 50.0
    max_body_bytes: int = 1 << 20  # request body, bytes
    max_queue: int = 64  # requests waiting for the sampler before new ones get 429
    timeout_s: float = 120.0  # from arrival to the end of generation
    window_ms: float = 10.0  # how long the engine waits for requests to batch with the first one
    # token-steps one request may cost: rows x steps x canvas tokens (x2 with guidance), refused up
    # front above it. Far below what timeout_s allows, so no request holds a worker for long: the
    # request of issue 16 that ran into the 120 s limit (n=8, 128 tokens, 1024 steps, cfg) costs ~2**21.
    work_budget: int = 1 << 18
    workers: int = 2  # engine slots sampling at once (see dlm.server.engine.Engine)
    read_timeout_s: float = 20.0  # for a request's headers, and again for its body

    def public(self) -> dict:
        return asdict(self)
