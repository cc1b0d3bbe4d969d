"""Counters for GET /metrics, written in the Prometheus text exposition format (version 0.0.4)
by hand: a handful of numbers does not need the prometheus_client dependency."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds, upper bounds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # rows per batched sampler call


class Histogram:
    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts):
            cumulative += count
            out.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        return out + [f"{name}_sum {self.total:.6f}", f"{name}_count {self.n}"]


class Metrics:
    """Thread-safe: the HTTP handlers and the engine's worker thread both write here."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, HTTP status) -> count
        self.tokens = 0  # completion tokens handed back
        self.forward_passes = 0  # denoiser passes; a batched pass counts once
        self.batches = 0
        self.queue_depth = 0  # jobs waiting for the worker (a gauge, set by the engine)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_rows = Histogram(BATCH_BUCKETS)

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self.latency.observe(seconds)

    def batch(self, rows: int, nfe: int, tokens: int) -> None:
        """A finished sampler call: its rows, its forward passes not yet counted, its tokens."""
        with self._lock:
            self.batches += 1
            self.batch_rows.observe(rows)
            self.forward_passes += nfe
            self.tokens += tokens

    def forward_passes_done(self, nfe: int) -> None:
        """Passes counted as they run (after each sampler step), so cancelled and timed-out work counts."""
        with self._lock:
            self.forward_passes += nfe

    def set_queue_depth(self, depth: int) -> None:
        with self._lock:
            self.queue_depth = depth

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP dlm_requests_total HTTP responses, by endpoint and status (refusals and 500s included).",
                     "# TYPE dlm_requests_total counter"]
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(f'dlm_requests_total{{endpoint="{endpoint}",status="{status}"}} {count}')
            lines += ["# HELP dlm_tokens_generated_total Completion tokens generated.",
                      "# TYPE dlm_tokens_generated_total counter", f"dlm_tokens_generated_total {self.tokens}",
                      "# HELP dlm_forward_passes_total Denoiser forward passes (a batched pass counts once).",
                      "# TYPE dlm_forward_passes_total counter", f"dlm_forward_passes_total {self.forward_passes}",
                      "# HELP dlm_batches_total Batched sampler calls.",
                      "# TYPE dlm_batches_total counter", f"dlm_batches_total {self.batches}",
                      "# HELP dlm_queue_depth Requests waiting for the sampler.",
                      "# TYPE dlm_queue_depth gauge", f"dlm_queue_depth {self.queue_depth}",
                      "# HELP dlm_request_latency_seconds Time from arrival to the last byte of generation requests.",
                      "# TYPE dlm_request_latency_seconds histogram",
                      *self.latency.lines("dlm_request_latency_seconds"),
                      "# HELP dlm_batch_rows Canvas rows per batched sampler call.",
                      "# TYPE dlm_batch_rows histogram", *self.batch_rows.lines("dlm_batch_rows")]
        return "\n".join(lines) + "\n"
