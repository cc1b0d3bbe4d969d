"""The HTTP API: OpenAI-style completions, infilling, models, health, metrics and the web page.

Bodies are read and validated by hand (`schema.parse`), so every bad input becomes a 4xx whose
message says what to change, in OpenAI's error shape: {"error": {"message", "type", "param", "code"}};
an unexpected error is a 500 in the same shape, with no traceback.

A generation request, in order (`generate`):
  read_body     the body, within a size limit and a time limit (408 for a client that sends slowly)
  prepare       JSON decoding, validation, tokenization and the compute budget, in a thread: a
                1 MB prompt never stalls the event loop (GET /health answers meanwhile)
  Pending       the job submitted to the engine; its events in order, a 504 once its time is up
  replies       the events as one JSON body or as server-sent events (`dlm.server.replies`)
The middleware around it (`dlm.server.access`) counts every response and refuses unknown Hosts,
missing API keys and bodies that are not JSON before any of this runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from dlm.errors import DlmError
from dlm.server.access import CountResponses, Guard, page_csp
from dlm.server.engine import Engine, Job, QueueFull
from dlm.server.limits import Limits
from dlm.server.metrics import Metrics
from dlm.server.replies import Reply, StreamFrames, error_body, sse
from dlm.server.schema import ApiError, CompletionRequest, InfillRequest, parse, plan_completion, plan_infill

log = logging.getLogger("dlm.server")

ENDPOINTS = ("/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/infill")
# A client too slow with its body gets the connection closed. Any other response that leaves a body
# unread (413, the guard's refusals) keeps it open: closing with unread bytes makes the kernel reset
# the connection, and the client may never read the reply; h11 drops the rest of the body as it
# comes, and dlm.server.listen closes the connection if it takes longer than the read timeout.
CLOSE_AFTER = (408,)


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    headers = {"Connection": "close"} if status in CLOSE_AFTER else None
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


async def read_body(request: Request, limits: Limits) -> bytes:
    """The body's bytes, refusing bodies over `limits.max_body_bytes` without reading them whole, and
    bodies that take longer than `limits.read_timeout_s` to arrive (a client sending a byte now and then)."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"bad Content-Length header {declared!r}")
        if int(declared) > limit:
            raise ApiError(413, f"the body has {declared} bytes; the limit is {limit}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.read_timeout_s
    chunks = request.stream().__aiter__()
    body = bytearray()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), timeout=max(deadline - loop.time(), 0))
        except StopAsyncIteration:
            return bytes(body)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the body took longer than {limits.read_timeout_s:g} s to arrive; send it at "
                                f"once") from None
        except ClientDisconnect:
            raise ApiError(499, "the client went away while sending the body") from None
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the body is over the limit of {limit} bytes")


def decode_json(body: bytes):
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError(400, "the body's JSON is nested too deeply; send a flat JSON object") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e}); send a JSON object with "
                            f"Content-Type: application/json") from None


class Pending:
    """A job on its way through the engine, as the event loop sees it: its events in order, a 504
    once its time is up, a 499 when the client of a non-streaming request went away."""

    def __init__(self, timeout_s: float):
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.timeout_s = timeout_s
        self.deadline = self.loop.time() + timeout_s
        self.job: Job | None = None

    def emit(self, event: dict) -> None:  # from an engine thread
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            pass

    async def next_event(self, request: Request | None = None) -> dict:
        """The engine's next event for this job; `request` given, a 499 error event if it disconnects."""
        while True:
            remaining = self.deadline - self.loop.time()
            if remaining <= 0:
                self.job.cancel()
                return {"type": "error", "status": 504, "message": f"the request took longer than the server's "
                        f"limit of {self.timeout_s:g} s; ask for fewer tokens or steps"}
            try:
                return await asyncio.wait_for(self.events.get(), timeout=min(remaining, 0.5))
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    self.job.cancel()
                    return {"type": "error", "status": 499, "message": "the client went away"}

    async def outcome(self, request: Request) -> dict:
        """The job's last event: "done" or "error"."""
        try:
            event = await self.next_event(request)
            while event["type"] not in ("done", "error"):
                event = await self.next_event(request)
            return event
        finally:
            self.job.cancel()  # harmless once done; stops the work if this handler was cancelled


async def stream_frames(pending: Pending, frames: StreamFrames, first: str | None, on_done):
    """The SSE body of a streaming request; the job stops when the client disconnects."""
    try:
        if first:
            yield first
        while not frames.finished:
            event = await pending.next_event()
            for frame in frames.frames(event):
                yield frame
            if event["type"] == "done":
                on_done()
    except Exception:  # the status line has gone out: say so in the stream's own terms
        log.exception("streaming failed")
        yield sse(error_body(500, "internal error while streaming; the server's log has the details"))
    finally:
        pending.job.cancel()  # the client disconnected, or the stream ended: either way the job is over


def prompt_tokens(rows) -> int:
    return sum(len(s) for row in rows for s in row.segments if not isinstance(s, int))


def create_app(ckpt, *, limits: Limits | None = None, model_name: str = "dlm", seed: int | None = None,
               api_key: str | None = None, allowed_hosts=None, cors_origins=()) -> FastAPI:
    """The app for one loaded checkpoint. Its engine threads start and stop with the app's lifespan.

    `api_key`: required as `Authorization: Bearer KEY` on /v1/*. `allowed_hosts`: the Host names
    answered (None: any; `dlm serve` passes the bound address and localhost unless told more).
    `cors_origins`: origins whose pages may call the API from a browser (none by default)."""
    limits = limits or Limits()
    metrics = Metrics()
    engine = Engine(ckpt, metrics=metrics, max_queue=limits.max_queue, max_batch_rows=limits.max_rows,
                    window_s=limits.window_ms / 1000, seed=seed, workers=limits.workers)
    tok = ckpt.tokenizer
    page_html = resources.files("dlm.server").joinpath("page.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.close()

    app = FastAPI(title="dlm", description="Diffusion language model server", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.metrics, app.state.limits = engine, metrics, limits
    # the last added runs first: count everything, then answer CORS preflights, then the guard
    app.add_middleware(Guard, api_key=api_key, allowed_hosts=allowed_hosts, page_csp=page_csp(page_html))
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(CountResponses, metrics=metrics, endpoints=ENDPOINTS)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param)

    @app.exception_handler(DlmError)
    async def dlm_error(request: Request, exc: DlmError):  # a user error raised below the schema's checks
        return error_response(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        hint = {404: f"no such endpoint {request.url.path}; the endpoints are {', '.join(ENDPOINTS)}",
                405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(exc.status_code, hint.get(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # uvicorn logs the traceback; the client sees none
        return error_response(500, "internal error; the server's log has the details")

    def model_card() -> dict:
        process = ckpt.process
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "dlm",
                "dlm": {"process": process.name, "samplers": list(process.samplers),
                        "default_sampler": process.default_sampler, "infills": bool(process.infills),
                        "context_length": ckpt.context_length, "limits": limits.public()}}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(page_html)

    @app.get("/health")
    async def health():
        alive = engine.alive
        body = {"status": "ok" if alive else "engine stopped", "queue_depth": engine.queue_depth}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics_text():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    def prepare(body: bytes, schema, plan):
        """Bytes -> (request, settings, rows): everything that grows with the body, run in a thread."""
        req = parse(schema, decode_json(body))
        if req.model not in (None, model_name):
            raise ApiError(404, f"model {req.model!r} is not served here; use {model_name!r} (see GET /v1/models)",
                           "model")
        settings, rows = plan(req, ckpt, limits)
        return req, settings, rows

    async def generate(request: Request, schema, plan, object_name: str, layout) -> Response:
        started = time.perf_counter()
        body = await read_body(request, limits)
        req, settings, rows = await asyncio.to_thread(prepare, body, schema, plan)
        pending = Pending(limits.timeout_s)
        pending.job = Job(settings, rows, pending.emit, stream=req.stream, step_events=req.stream and req.dlm_steps)
        try:
            engine.submit(pending.job)
        except QueueFull as e:
            raise ApiError(429, str(e)) from None
        reply = Reply(object_name, model_name, len(rows), prompt_tokens(rows))

        if not req.stream:
            event = await pending.outcome(request)
            if event["type"] == "error":
                return error_response(event["status"], event["message"])
            metrics.observe_latency(time.perf_counter() - started)
            return JSONResponse(reply.completion(event))

        frames = StreamFrames(reply, include_usage=bool((req.stream_options or {}).get("include_usage")))
        first = (frames.start(steps=settings.steps, sampler=settings.sampler,
                              layouts=[layout(row) for row in rows]) if pending.job.step_events else None)
        body = stream_frames(pending, frames, first, lambda: metrics.observe_latency(time.perf_counter() - started))
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def completion_layout(row) -> dict:
        return {"pieces": [tok.decode(row.segments[0]), row.pieces[0]]}

    def infill_layout(row) -> dict:
        return {"pieces": list(row.pieces)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, CompletionRequest, plan_completion, "text_completion", completion_layout)

    @app.post("/v1/infill")
    async def infill(request: Request):
        return await generate(request, InfillRequest, plan_infill, "infill", infill_layout)

    return app
