"""The engine: one worker thread that batches requests into shared sampler calls.

Requests arrive as `Job`s (canvas rows plus the sampler settings that shape them). The worker
takes the oldest job, waits a short collection window for others, and runs every queued job
whose settings batch with it as rows of one Canvas, so one forward pass serves them all. A
job hears about its rows through `emit(event)` (plain dicts, see below); the HTTP layer turns
those into JSON or server-sent events.

Which jobs share a batch (per-request determinism; see `Settings.batch_key`):
- a request without a seed promises nothing about its randomness: it batches with any other
  unseeded request of equal settings, and the batch draws from a generator the engine seeds;
- a request with a seed must give the same text whatever else is running. The samplers take
  one generator for the whole (B, L) canvas, so a row's draws depend on the rows beside it:
  a seeded request therefore runs alone (its n rows together, exactly as
  `dlm generate --seed S --num-samples n`), unless its sampler's record says it is greedy and
  batch invariant at temperature 0 (tested in tests/test_samplers.py), in which case the seed
  does not matter and it batches like an unseeded one.

Events emitted to a job:
  {"type": "step", "step", "steps", "t", "nfe", "rows": [{"positions", "token_ids", "tokens",
   "confidences"}]}                    after every sampler step (only when the job asks for steps)
  {"type": "text", "row", "text"}      a row's committed text grew (only when the job streams)
  {"type": "done", "rows": [{"text", "finish_reason", "tokens"}], "nfe", "steps", "seconds",
   "batch_rows", "sampler", "temperature"}
  {"type": "error", "status", "message"}
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace


from dlm.errors import DlmError
from dlm.sampling import Canvas, StepInfo
from dlm.sampling.editing import cut_at_stop
from dlm.sampling.registry import RECORDS, Plan
from dlm.sampling.run import run_plan
from dlm.server.metrics import Metrics

log = logging.getLogger("dlm.server")

def request_field(knob: str) -> str:
    """How a sampler knob is spelled in a request body (for messages)."""
    return {"cfg": "cfg_scale"}.get(knob, knob)


def commits_are_final(process, sampler: str) -> bool:
    """Whether a generated position that no longer holds [MASK] will never change again: true for
    absorbing processes (masked, block) and left-to-right samplers, unless the sampler remasks. Under
    uniform or Gaussian noise every position is noise until the end, so nothing streams early."""
    record = RECORDS[sampler]
    return not record.remasks and (process.absorbing or record.left_to_right)


@dataclass(frozen=True)
class Settings:
    """Everything that shapes how a canvas row is sampled; jobs batch only when these are equal."""
    command: str  # "generate" or "infill": as `dlm generate` / `dlm infill` sample them
    generated: int  # positions written per row (max_tokens, or the sum of the span lengths)
    plan: Plan  # the checked sampler request (dlm.sampling.registry.resolve); its seed is None when unseeded

    sampler = property(lambda self: self.plan.sampler)
    steps = property(lambda self: self.plan.steps)
    temperature = property(lambda self: self.plan.temperature)
    seed = property(lambda self: self.plan.seed)

    def batch_key(self) -> "Settings | None":
        """What a job must match to share a batch, or None when it must run alone."""
        if self.seed is None:
            return self
        if self.plan.record.greedy_batch_invariant and self.temperature == 0:
            return replace(self, plan=replace(self.plan, seed=None))
        return None


@dataclass(frozen=True)
class Row:
    """One canvas row and how its generated ids become text."""
    segments: tuple  # canvas segments: token ids (tuple) kept as they are, or an int n of positions to write
    pieces: tuple  # the text's layout: literal strings and span lengths (a completion is just (n,))
    ends_at_eos: bool  # a completion ends at its first end-of-text token; an infill span does not
    stops: tuple[str, ...] = ()


def canvas_tokens(rows: list[Row]) -> int:
    """Positions of the canvas these rows make: the longest row's (shorter rows are padded to it)."""
    return max(sum(s if isinstance(s, int) else len(s) for s in row.segments) for row in rows)


def work(rows: list[Row], steps: int) -> int:
    """What sampling `rows` costs, in token-steps: rows x steps x canvas tokens (each step is at
    most one forward pass over the whole canvas; guidance doubles it)."""
    return len(rows) * steps * canvas_tokens(rows)


@dataclass(eq=False)
class Job:
    settings: Settings
    rows: list[Row]
    emit: Callable[[dict], None]  # called from the worker thread; must be thread-safe
    stream: bool = False  # send "text" events as the committed text grows
    step_events: bool = False  # send a "step" event after every sampler step
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def cost(self) -> int:
        return work(self.rows, self.settings.steps)

    def cancel(self) -> None:
        """The client went away or its time ran out: skip it if queued, stop its batch if it was the last."""
        self.cancelled.set()


class QueueFull(Exception):
    pass


class Abandoned(Exception):
    """Raised from the sampler's callback when every job of a batch was cancelled."""


def render(row: Row, ids: list[int], tokenizer, *, final: bool) -> tuple[str, str | None, int]:
    """The text of a row so far -> (text, finish_reason or None while it may still grow, tokens).

    While sampling (`final=False`) the text stops before the first position still [MASK], and
    holds back what a stop string or an incomplete UTF-8 character could still change, so the
    text only ever grows by appending."""
    mask_id, eos_id = tokenizer.mask_id, tokenizer.eos_id
    out, used, tokens, ended, open_ = [], 0, 0, False, False
    for piece in row.pieces:
        if isinstance(piece, str):
            out.append(piece)
            continue
        span = ids[used:used + piece]
        used += piece
        cut = len(span)
        if row.ends_at_eos and eos_id in span:
            cut, ended = span.index(eos_id), True
        if not final and mask_id in span[:cut]:
            cut, ended, open_ = span.index(mask_id), False, True
        out.append(tokenizer.decode(span[:cut]))
        tokens += cut
        if ended or open_:
            break
    text = "".join(out)
    stopped = cut_at_stop(text, row.stops)
    if len(stopped) < len(text):
        return stopped, "stop", tokens
    if open_:
        held = max((len(s) for s in row.stops), default=1) - 1  # a stop string could still begin here
        text = text[:len(text) - held].rstrip("\ufffd")
        return text, None, tokens
    return text, ("stop" if ended or not row.ends_at_eos else "length"), tokens


def step_rows(info: StepInfo, canvas: Canvas, rows: range, tokenizer) -> list[dict]:
    """What changed in each of `rows` at this step, in positions counted over the row's editable
    (generated) positions, left to right."""
    out = []
    # to the host once per step: indexing device tensors row by row (and float() per token) waits on the GPU each time
    editable_rows, changed_rows, token_rows = canvas.editable.cpu(), info.changed.cpu(), info.tokens.cpu()
    confidence = None if info.confidence is None else info.confidence.cpu()
    for b in rows:
        editable = editable_rows[b]  # (L,)
        changed = changed_rows[b][editable]  # (G,) over the generated positions
        ids = token_rows[b][editable][changed].tolist()  # (k,)
        conf = None
        if confidence is not None:
            conf = [round(c, 4) for c in confidence[b][editable][changed].tolist()]
        out.append({"positions": changed.nonzero().flatten().tolist(), "token_ids": ids,
                    "tokens": [tokenizer.token_text(i) for i in ids], "confidences": conf})
    return out


class Engine:
    """`workers` threads (slots) take batches from one queue and sample them at the same time (torch
    releases the GIL in its kernels). Slot 0 takes the oldest job first, so nothing waits forever;
    the other slots take the cheapest job first (`Job.cost`), so a long request holds one slot and
    short requests from other clients pass it on the others. A batch's seed is drawn when it is
    taken; a seeded job runs alone with its own seed, so concurrency changes no seeded text."""

    def __init__(self, ckpt, *, metrics: Metrics | None = None, max_queue: int = 64, max_batch_rows: int = 16,
                 window_s: float = 0.01, seed: int | None = None, workers: int = 2):
        if workers < 1:
            raise DlmError(f"the engine needs at least 1 worker, got {workers}")
        self.ckpt = ckpt
        self.metrics = metrics or Metrics()
        self.max_queue = max_queue
        self.max_batch_rows = max_batch_rows
        self.window_s = window_s
        self.workers = workers
        self._seeds = random.Random(seed)  # seeds for the batches of unseeded requests (drawn under _cond)
        self._queue: list[Job] = []
        self._cond = threading.Condition()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self.device = next(ckpt.model.parameters()).device

    # -- the public side ------------------------------------------------------------------
    def start(self) -> "Engine":
        if not self._threads:
            self._closing = False
            self._threads = [threading.Thread(target=self._loop, args=(slot == 0,), name=f"dlm-engine-{slot}",
                                              daemon=True) for slot in range(self.workers)]
            for thread in self._threads:
                thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closing = True
            for job in self._queue:
                job.emit({"type": "error", "status": 503, "message": "the server is shutting down"})
            self._queue.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []

    def submit(self, job: Job) -> None:
        if len(job.rows) > self.max_batch_rows:
            raise DlmError(f"a request may have at most {self.max_batch_rows} rows (prompts x n), got {len(job.rows)}")
        with self._cond:
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); retry shortly")
            self._queue.append(job)
            self.metrics.set_queue_depth(len(self._queue))
            self._cond.notify()

    @property
    def alive(self) -> bool:
        """Whether every worker thread is running (GET /health)."""
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    # -- the worker -----------------------------------------------------------------------
    def _head(self, oldest_first: bool) -> Job:
        """The job a slot serves next: the oldest, or the cheapest (the oldest among equals)."""
        return self._queue[0] if oldest_first else min(self._queue, key=lambda job: job.cost)

    def _loop(self, oldest_first: bool) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                head = self._head(oldest_first)
                waiting = sum(len(j.rows) for j in self._queue)
            if head.settings.batch_key() is not None and waiting < self.max_batch_rows:
                time.sleep(self.window_s)  # the collection window: let requests arriving together join
            with self._cond:
                jobs = self._take(oldest_first)
                seed = self._seeds.getrandbits(63)  # used unless the batch is one seeded job
                self.metrics.set_queue_depth(len(self._queue))
            if jobs:
                try:
                    self._run(jobs, seed)
                except Exception:  # never let the worker die; the jobs hear about it
                    log.exception("sampling failed")
                    for job in jobs:
                        job.emit({"type": "error", "status": 500, "message": "internal error while sampling; "
                                  "the server's log has the details"})

    def _take(self, oldest_first: bool) -> list[Job]:
        """Remove and return this slot's next live job and every queued job that batches with it."""
        self._queue = [j for j in self._queue if not j.cancelled.is_set()]
        if not self._queue:
            return []
        head = self._head(oldest_first)
        key = head.settings.batch_key()
        if key is None:
            self._queue.remove(head)
            return [head]
        jobs, rows = [head], len(head.rows)
        for job in self._queue:
            if job is not head and job.settings.batch_key() == key and rows + len(job.rows) <= self.max_batch_rows:
                jobs.append(job)
                rows += len(job.rows)
        self._queue = [j for j in self._queue if j not in jobs]
        return jobs

    def _run(self, jobs: list[Job], seed: int) -> None:
        ckpt, tok = self.ckpt, self.ckpt.tokenizer
        settings = jobs[0].settings
        seed = settings.seed if len(jobs) == 1 and settings.seed is not None else seed
        rows = [row for job in jobs for row in job.rows]
        canvas = Canvas.from_segments([[list(s) if isinstance(s, tuple) else s for s in row.segments] for row in rows],
                                      fill_id=tok.mask_id, pad_id=tok.pad_id, device=self.device)  # (B, L)
        spans, start = [], 0  # each job's rows of the canvas
        for job in jobs:
            spans.append(range(start, start + len(job.rows)))
            start += len(job.rows)
        live = commits_are_final(ckpt.process, settings.sampler)
        shown: dict[tuple[int, int], str] = {}
        counted = 0  # forward passes already in the metrics: counted as they happen, so abandoned work counts too

        def callback(info: StepInfo) -> None:
            nonlocal counted
            self.metrics.forward_passes_done(info.nfe - counted)
            counted = info.nfe
            if all(job.cancelled.is_set() for job in jobs):
                raise Abandoned
            for job, span in zip(jobs, spans):
                if job.cancelled.is_set():
                    continue
                if job.step_events:
                    job.emit({"type": "step", "step": info.step, "steps": info.steps, "t": info.t, "nfe": info.nfe,
                              "rows": step_rows(info, canvas, span, tok)})
                if job.stream and live:
                    for i, b in enumerate(span):
                        text, _, _ = render(job.rows[i], canvas.generated(info.tokens, b), tok, final=False)
                        if len(text) > len(shown.get((id(job), i), "")):
                            shown[(id(job), i)] = text
                            job.emit({"type": "text", "row": i, "text": text})

        try:
            out = run_plan(ckpt, canvas, settings.plan, seed=seed, callback=callback)
            name, temperature = settings.sampler, settings.temperature
        except Abandoned:
            return
        except DlmError as e:
            for job in jobs:
                job.emit({"type": "error", "status": 400, "message": str(e)})
            return
        total = 0
        for job, span in zip(jobs, spans):
            results = []
            for i, b in enumerate(span):
                text, reason, tokens = render(job.rows[i], canvas.generated(out.tokens, b), tok, final=True)
                results.append({"text": text, "finish_reason": reason, "tokens": tokens})
                total += tokens
            job.emit({"type": "done", "rows": results, "nfe": out.nfe, "steps": out.steps, "seconds": out.seconds,
                      "batch_rows": len(rows), "sampler": name, "temperature": temperature})
        self.metrics.batch(len(rows), out.nfe - counted, total)  # the passes after the last step's callback
