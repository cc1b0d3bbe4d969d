"""What the server sends back, as plain functions of the engine's events (no HTTP here): OpenAI's
error shape, a completion's JSON, usage, and a stream's server-sent-event frames.

The engine's events are described in `dlm.server.engine`; `Reply` holds what every body of one
request shares (its id, object name, model), `StreamFrames` turns one request's events into SSE
frames, keeping per row the text already sent so that a stream only ever appends.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
               415: "invalid_request_error", 421: "invalid_request_error", 429: "rate_limit_error",
               499: "client_closed_request", 500: "server_error", 503: "server_error", 504: "timeout_error"}
DONE_FRAME = "data: [DONE]\n\n"


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": status}}


def sse(payload: dict, event: str | None = None) -> str:
    """One server-sent event: an optional `event:` line and one `data:` line of JSON."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload)}\n\n"


def usage(done: dict, prompt_tokens: int) -> dict:
    completion = sum(r["tokens"] for r in done["rows"])
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def dlm_info(done: dict) -> dict:
    """dlm's own account of a finished request: forward passes, steps, seconds, batch size, sampler."""
    return {k: done[k] for k in ("nfe", "steps", "seconds", "batch_rows", "sampler", "temperature")}


@dataclass(frozen=True)
class Reply:
    """What every body of one request's reply shares."""
    object_name: str  # "text_completion" or "infill"
    model: str
    rows: int  # choices in the reply (prompts x n)
    prompt_tokens: int
    ident: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    def head(self) -> dict:
        return {"id": self.ident, "object": self.object_name, "created": self.created, "model": self.model}

    def completion(self, done: dict) -> dict:
        """The whole reply of a request that does not stream, from its "done" event."""
        choices = [{"index": i, "text": r["text"], "finish_reason": r["finish_reason"], "logprobs": None}
                   for i, r in enumerate(done["rows"])]
        return {**self.head(), "choices": choices, "usage": usage(done, self.prompt_tokens), "dlm": dlm_info(done)}

    def chunk(self, index: int, text: str, finish: str | None = None) -> dict:
        return {**self.head(), "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]}

    def empty_chunk(self) -> dict:
        """A chunk with an empty text for every row: what dlm's named events carry, so stock clients read on."""
        return {**self.head(), "choices": [self.chunk(i, "")["choices"][0] for i in range(self.rows)]}


class StreamFrames:
    """One streaming request's engine events -> SSE frames (strings). `finished` turns true after the
    last frame ([DONE] or an error)."""

    def __init__(self, reply: Reply, *, include_usage: bool = False):
        self.reply, self.include_usage = reply, include_usage
        self.sent = [""] * reply.rows  # per row, the text already sent
        self.finished = False

    def start(self, *, steps: int, sampler: str, layouts: list[dict]) -> str:
        """The `dlm.start` event: the steps, the sampler and each row's layout (literal text and span lengths)."""
        return sse({**self.reply.empty_chunk(), "dlm_start": {"steps": steps, "sampler": sampler, "rows": layouts}},
                   event="dlm.start")

    def frames(self, event: dict) -> list[str]:
        kind = event["type"]
        if kind == "text":
            i, text = event["row"], event["text"]
            if text.startswith(self.sent[i]) and len(text) > len(self.sent[i]):
                delta, self.sent[i] = text[len(self.sent[i]):], text
                return [sse(self.reply.chunk(i, delta))]
            return []
        if kind == "step":
            step = {k: v for k, v in event.items() if k != "type"}
            return [sse({**self.reply.empty_chunk(), "dlm_step": step}, event="dlm.step")]
        self.finished = True
        if kind == "done":
            out = []
            for i, r in enumerate(event["rows"]):
                # the committed text only ever grew by appending, so the rest is a suffix
                rest = r["text"][len(self.sent[i]):] if r["text"].startswith(self.sent[i]) else r["text"]
                out.append(sse(self.reply.chunk(i, rest, r["finish_reason"])))
            if self.include_usage:  # as OpenAI: only when asked for, in a last chunk whose choices are empty
                out.append(sse({**self.reply.head(), "choices": [], "usage": usage(event, self.reply.prompt_tokens),
                                "dlm": dlm_info(event)}))
            return out + [DONE_FRAME]
        return [sse(error_body(event["status"], event["message"]))]
