"""The HTTP API: OpenAI-style completions, infilling, models, health, metrics and the web page.

Bodies are read and validated by hand (`schema.parse`), so every bad input becomes a 4xx whose
message says what to change, in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dlm.errors import DlmError
from dlm.server.engine import Engine, Job, QueueFull
from dlm.server.metrics import Metrics
from dlm.server.limits import Limits
from dlm.server.schema import ApiError, CompletionRequest, InfillRequest, parse, plan_completion, plan_infill

ENDPOINTS = ("/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/infill")
ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error", 503: "server_error", 504: "timeout_error"}


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"),
                                   "param": param, "code": status}}, status_code=status)


class CountRequests:
    """ASGI middleware: count every answered request by endpoint and status (streams included)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.request(endpoint, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)


async def read_json(request: Request, limit: int):
    """The body as JSON, refusing bodies over `limit` bytes without reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"bad Content-Length header {declared!r}")
        if int(declared) > limit:
            raise ApiError(413, f"the body has {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the body is over the limit of {limit} bytes")
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError(400, "the body's JSON is nested too deeply; send a flat JSON object") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e}); send a JSON object with "
                            f"Content-Type: application/json") from None


def sse(payload: dict, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload)}\n\n"


def create_app(ckpt, *, limits: Limits | None = None, model_name: str = "dlm", seed: int | None = None) -> FastAPI:
    """The app for one loaded checkpoint. Its engine thread starts and stops with the app's lifespan."""
    limits = limits or Limits()
    metrics = Metrics()
    engine = Engine(ckpt, metrics=metrics, max_queue=limits.max_queue, max_batch_rows=limits.max_rows,
                    window_s=limits.window_ms / 1000, seed=seed)
    tok = ckpt.tokenizer

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.close()

    app = FastAPI(title="dlm", description="Diffusion language model server", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.metrics, app.state.limits = engine, metrics, limits
    app.add_middleware(CountRequests, metrics=metrics)

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

    def model_card() -> dict:
        process = ckpt.process
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "dlm",
                "dlm": {"process": process.name, "samplers": list(process.samplers),
                        "default_sampler": process.default_sampler, "infills": bool(process.infills),
                        "context_length": ckpt.context_length, "limits": limits.public()}}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(resources.files("dlm.server").joinpath("page.html").read_text(encoding="utf-8"))

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

    async def generate(request: Request, schema, plan, object_name: str, layout) -> Response:
        started = time.perf_counter()
        req = parse(schema, await read_json(request, limits.max_body_bytes))
        if req.model not in (None, model_name):
            raise ApiError(404, f"model {req.model!r} is not served here; use {model_name!r} (see GET /v1/models)",
                           "model")
        settings, rows = plan(req, ckpt, limits)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event: dict) -> None:  # from the engine's thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                pass

        job = Job(settings, rows, emit, stream=req.stream, step_events=req.stream and req.dlm_steps)
        try:
            engine.submit(job)
        except QueueFull as e:
            raise ApiError(429, str(e)) from None
        deadline = loop.time() + limits.timeout_s
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        prompt_tokens = sum(len(s) for row in rows for s in row.segments if not isinstance(s, int))

        async def next_event() -> dict:
            """The engine's next event; a 504 error event once the request's time is up."""
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    job.cancel()
                    return {"type": "error", "status": 504, "message": f"the request took longer than the "
                            f"server's limit of {limits.timeout_s:g} s; ask for fewer tokens or steps"}
                try:
                    return await asyncio.wait_for(events.get(), timeout=min(remaining, 0.5))
                except asyncio.TimeoutError:
                    if not req.stream and await request.is_disconnected():
                        job.cancel()
                        return {"type": "error", "status": 499, "message": "the client went away"}

        def usage(done: dict) -> dict:
            completion = sum(r["tokens"] for r in done["rows"])
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion}

        def dlm_info(done: dict) -> dict:
            return {k: done[k] for k in ("nfe", "steps", "seconds", "batch_rows", "sampler", "temperature")}

        if not req.stream:
            try:
                event = await next_event()
                while event["type"] not in ("done", "error"):
                    event = await next_event()
            finally:
                job.cancel()  # harmless once done; stops the work if this handler was cancelled
            if event["type"] == "error":
                return error_response(event["status"], event["message"])
            metrics.observe_latency(time.perf_counter() - started)
            return JSONResponse({"id": ident, "object": object_name, "created": created, "model": model_name,
                                 "choices": [{"index": i, "text": r["text"], "finish_reason": r["finish_reason"],
                                              "logprobs": None} for i, r in enumerate(event["rows"])],
                                 "usage": usage(event), "dlm": dlm_info(event)})

        def chunk(index: int, text: str, finish: str | None) -> dict:
            return {"id": ident, "object": object_name, "created": created, "model": model_name,
                    "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]}

        def empty_chunk() -> dict:
            return {**chunk(0, "", None), "choices": [chunk(i, "", None)["choices"][0] for i in range(len(rows))]}

        async def stream():
            sent = [""] * len(rows)
            try:
                if job.step_events:  # named events that still parse as (empty) chunks for stock clients
                    yield sse({**empty_chunk(), "dlm_start": {"steps": settings.steps, "sampler": settings.sampler,
                                                              "rows": [layout(req, row) for row in rows]}},
                              event="dlm.start")
                while True:
                    event = await next_event()
                    if event["type"] == "text":
                        i, text = event["row"], event["text"]
                        if text.startswith(sent[i]) and len(text) > len(sent[i]):
                            yield sse(chunk(i, text[len(sent[i]):], None))
                            sent[i] = text
                    elif event["type"] == "step":
                        step = {k: v for k, v in event.items() if k != "type"}
                        yield sse({**empty_chunk(), "dlm_step": step}, event="dlm.step")
                    elif event["type"] == "done":
                        for i, r in enumerate(event["rows"]):
                            # the committed text only ever grew by appending, so the rest is a suffix
                            rest = r["text"][len(sent[i]):] if r["text"].startswith(sent[i]) else r["text"]
                            yield sse(chunk(i, rest, r["finish_reason"]))
                        if (req.stream_options or {}).get("include_usage"):  # as OpenAI: asked for, choices empty
                            yield sse({**chunk(0, "", None), "choices": [], "usage": usage(event), "dlm": dlm_info(event)})
                        yield "data: [DONE]\n\n"
                        metrics.observe_latency(time.perf_counter() - started)
                        return
                    else:
                        yield sse({"error": {"message": event["message"], "type": ERROR_TYPES.get(event["status"],
                                   "server_error"), "param": None, "code": event["status"]}})
                        return
            finally:
                job.cancel()  # the client disconnected, or the stream ended: either way the job is over

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def completion_layout(req, row) -> dict:
        prompt_ids = row.segments[0]
        return {"pieces": [tok.decode(prompt_ids), row.pieces[0]]}

    def infill_layout(req, row) -> dict:
        return {"pieces": list(row.pieces)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, CompletionRequest, plan_completion, "text_completion", completion_layout)

    @app.post("/v1/infill")
    async def infill(request: Request):
        return await generate(request, InfillRequest, plan_infill, "infill", infill_layout)

    return app

