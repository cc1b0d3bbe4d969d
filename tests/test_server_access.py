"""`dlm serve` against a hostile client (issue 16): each finding reproduced. A 1 MB prompt does not
stall the event loop, a request's cost is refused up front, a long request does not hold short
ones, API keys / Host names / JSON-only bodies / CORS / security headers, no 5xx from input and
/metrics counting everything, slow clients cut off; plus the reply shaping as plain functions."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the [server] extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the [server] extra (uvicorn) is not installed")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from dlm.server import Engine, Job  # noqa: E402
from dlm.server import app as app_module  # noqa: E402
from dlm.server.access import default_allowed_hosts, host_name, is_loopback  # noqa: E402
from dlm.server.app import create_app  # noqa: E402
from dlm.server.limits import Limits  # noqa: E402
from dlm.server.replies import DONE_FRAME, Reply, StreamFrames, error_body, sse  # noqa: E402
from dlm.server.schema import ApiError, CompletionRequest, InfillRequest, plan_completion, plan_infill  # noqa: E402
from dlm.training import load_checkpoint  # noqa: E402

from conftest import train_tiny_run  # noqa: E402
from test_server import LiveServer, SlowModel  # noqa: E402

SMALL = Limits(max_tokens=32, max_steps=64, max_n=4, max_prompts=4, max_rows=8, timeout_s=30)
KEY = "sk-test-0123456789"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return load_checkpoint(train_tiny_run(tmp_path_factory.mktemp("access"), seq_len=64))


def metric(text: str, line_start: str) -> int:
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines() if line.startswith(line_start))


def adversarial_prompt() -> str:
    """Issue 16's: 520,000 'a' and 130,000 distinct characters outside the vocabulary (~1 MB as UTF-8)."""
    points = (c for c in range(0x4E00, 0x110000) if not 0xD800 <= c < 0xE000)
    return "a" * 520_000 + "".join(chr(next(points)) for _ in range(130_000))


# -- 1. the request path: a large prompt never stalls the event loop ---------------------------

def test_check_text_is_linear_in_the_text(ckpt):
    text = adversarial_prompt()
    start = time.perf_counter()
    with pytest.raises(Exception, match="not in this model's character vocabulary"):
        ckpt.tokenizer.check_text(text)
    assert time.perf_counter() - start < 1.0  # was ~15 s: one text.index per unknown character


class CountingTokenizer:
    """The checkpoint's tokenizer, counting calls to encode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.encoded = tokenizer, 0

    def encode(self, text):
        self.encoded += 1
        return self.tokenizer.encode(text)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("endpoint", ["completion", "infill"])
def test_a_text_too_long_for_the_context_is_refused_before_tokenizing(ckpt, endpoint):
    counting = CountingTokenizer(ckpt.tokenizer)
    spied = dataclasses.replace(ckpt, tokenizer=counting)
    with pytest.raises(ApiError, match=r"at least \d+ tokens.*more than the model's context") as e:
        if endpoint == "completion":
            plan_completion(CompletionRequest(prompt="a" * 1_000_000, max_tokens=4), spied, SMALL)
        else:
            plan_infill(InfillRequest(text="a" * 1_000_000 + "<fill:4>"), spied, SMALL)
    assert e.value.status == 400 and counting.encoded == 0
    settings, rows = plan_completion(CompletionRequest(prompt="To be", max_tokens=4), spied, SMALL)
    assert counting.encoded == 1 and rows[0].segments[0] == tuple(ckpt.tokenizer.encode("To be"))


def test_health_answers_within_100_ms_while_a_1_mb_prompt_is_processed(ckpt):
    prompts = {"adversarial": adversarial_prompt(), "ascii": "To be, or not to be " * 50_000}
    with LiveServer(create_app(ckpt, limits=SMALL)) as server, httpx.Client(timeout=30) as health:
        health.get(server.url + "/health")  # connect first
        for name, prompt in prompts.items():
            for path, body in (("/v1/completions", {"prompt": prompt, "max_tokens": 4}),
                               ("/v1/infill", {"text": prompt + "<fill:4>"})):
                data = json.dumps(body, ensure_ascii=False).encode()
                assert len(data) < SMALL.max_body_bytes, (name, len(data))
                reply = {}
                sender = threading.Thread(target=lambda: reply.update(r=httpx.post(
                    server.url + path, content=data, headers=JSON, timeout=30)))
                sender.start()
                waits = []
                while sender.is_alive():
                    start = time.perf_counter()
                    assert health.get(server.url + "/health").status_code == 200
                    waits.append(time.perf_counter() - start)
                sender.join()
                assert reply["r"].status_code == 400 and "context" in reply["r"].json()["error"]["message"]
                assert max(waits) < 0.1, (name, path, max(waits), len(waits))


# -- 2. budgets and fairness ----------------------------------------------------------------

def test_a_request_over_the_work_budget_is_refused_up_front(ckpt):
    limits = dataclasses.replace(SMALL, work_budget=1000)
    with TestClient(create_app(ckpt, limits=limits)) as c:
        r = c.post("/v1/completions", json={"prompt": "To be", "n": 4, "max_tokens": 32, "steps": 64})
        assert r.status_code == 400
        message = r.json()["error"]["message"]
        assert "4 samples x 64 steps x 37 canvas tokens = 9,472 token-steps" in message
        assert "budget of 1,000" in message and r.json()["error"]["param"] == "steps"
        r = c.post("/v1/infill", json={"text": "To be <fill:8> not", "n": 4, "steps": 8, "cfg_scale": 2})
        assert r.status_code == 400 and "x 2 (cfg_scale" in r.json()["error"]["message"]
        r = c.post("/v1/completions", json={"prompt": "To be", "max_tokens": 4, "steps": 4})
        assert r.status_code == 200
        assert metric(c.get("/metrics").text, "dlm_forward_passes_total ") == r.json()["dlm"]["nfe"]  # only it ran


def run_mix(ckpt, workers: int) -> tuple[float, list[float]]:
    """A long job, then 3 short ones, on an engine whose passes take 20 ms -> (long's end, shorts' ends)."""
    slow = SlowModel(ckpt.model, 0.02)
    engine = Engine(dataclasses.replace(ckpt, model=slow), workers=workers)
    done: dict[int, float] = {}
    start = time.monotonic()

    def job(i, **body):
        settings, rows = plan_completion(CompletionRequest(prompt="To be", sampler="confidence", **body), ckpt, SMALL)
        return Job(settings, rows, lambda e: done.setdefault(i, time.monotonic() - start) if e["type"] == "done"
                   else None)

    engine.start()
    engine.submit(job(0, max_tokens=32, steps=40))
    time.sleep(0.1)
    for i in (1, 2, 3):
        engine.submit(job(i, max_tokens=4, steps=2, seed=i))  # seeded: each runs alone
    deadline = time.monotonic() + 30
    while len(done) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.close()
    return done[0], [done[i] for i in (1, 2, 3)]


def test_a_long_request_does_not_hold_short_ones(ckpt):
    long_alone, shorts_alone = run_mix(ckpt, workers=1)
    assert min(shorts_alone) > long_alone  # before: one worker, the short ones wait for the whole long one
    long_end, shorts = run_mix(ckpt, workers=2)
    assert max(shorts) < long_end / 2  # a second slot serves the cheapest first


# -- 3. access ----------------------------------------------------------------------------------

def test_api_key_is_required_on_v1_only(ckpt):
    with TestClient(create_app(ckpt, limits=SMALL, api_key=KEY)) as c:
        body = {"prompt": "To be", "max_tokens": 4, "steps": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Bearer "}):
            r = c.post("/v1/completions", json=body, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
            error = r.json()["error"]
            assert error["code"] == 401 and error["type"] == "authentication_error" and "Bearer" in error["message"] \
                or "not this server's" in error["message"]
        assert c.get("/v1/models").status_code == 401
        assert c.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        assert 'dlm_requests_total{endpoint="/v1/completions",status="401"} 4' in c.get("/metrics").text


def test_openai_client_with_the_api_key(ckpt):
    openai = pytest.importorskip("openai")
    with LiveServer(create_app(ckpt, limits=SMALL, model_name="tiny", api_key=KEY)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
        reply = client.completions.create(model="tiny", prompt="To be", max_tokens=4, extra_body={"steps": 2})
        assert len(reply.choices) == 1
        wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0, timeout=30)
        with pytest.raises(openai.AuthenticationError) as e:
            wrong.completions.create(model="tiny", prompt="To be", max_tokens=4)
        assert e.value.status_code == 401 and e.value.body["code"] == 401


def test_only_json_bodies_are_read(ckpt):
    with TestClient(create_app(ckpt, limits=SMALL)) as c:
        body = json.dumps({"prompt": "To be", "max_tokens": 4, "steps": 2})
        for ct in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            r = c.post("/v1/completions", content=body, headers={"Content-Type": ct} if ct else {})
            assert r.status_code == 415 and "application/json" in r.json()["error"]["message"], ct
        r = c.post("/v1/completions", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
        assert r.status_code == 200
        assert metric(c.get("/metrics").text, "dlm_forward_passes_total ") == r.json()["dlm"]["nfe"]  # only it ran


def test_unknown_host_names_are_refused(ckpt):
    app = create_app(ckpt, limits=SMALL, allowed_hosts=default_allowed_hosts("127.0.0.1"))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/health").status_code == 200
        for host in ("localhost:8000", "[::1]:8000", "LOCALHOST"):
            assert c.get("/v1/models", headers={"Host": host}).status_code == 200, host
        r = c.post("/v1/completions", json={"prompt": "To be"}, headers={"Host": "evil.example"})
        assert r.status_code == 421 and "--allowed-host evil.example" in r.json()["error"]["message"]
        assert c.get("/", headers={"Host": "evil.example:8000"}).status_code == 421
    assert host_name("[::1]:80") == "::1" and host_name("Example.org:1") == "example.org" and host_name("::1") == "::1"
    assert is_loopback("127.0.0.2") and is_loopback("localhost") and is_loopback("::1") and not is_loopback("0.0.0.0")


def test_cors_is_off_unless_an_origin_is_given(ckpt):
    origin = {"Origin": "https://app.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with TestClient(create_app(ckpt, limits=SMALL)) as c:
        assert "access-control-allow-origin" not in c.get("/v1/models", headers=origin).headers
        assert "access-control-allow-origin" not in c.options("/v1/completions", headers=preflight).headers
    with TestClient(create_app(ckpt, limits=SMALL, cors_origins=["https://app.example"], api_key=KEY)) as c:
        r = c.options("/v1/completions", headers=preflight)  # browsers send no key on a preflight
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.get("/v1/models", headers={**origin, "Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"


def test_every_response_has_security_headers_and_the_page_a_csp(ckpt):
    with TestClient(create_app(ckpt, limits=SMALL)) as c:
        for r in (c.get("/"), c.get("/health"), c.get("/nothing"), c.post("/v1/completions", json={"n": 0})):
            assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        csp = c.get("/").headers["content-security-policy"]
        assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp


def test_serve_warns_when_exposed_without_a_key():
    from dlm.cli.serve import exposure_warnings

    assert exposure_warnings("127.0.0.1", None, []) == []
    assert exposure_warnings("0.0.0.0", "k", ["box.lan"]) == []
    warned = exposure_warnings("0.0.0.0", None, [])
    assert any("--api-key" in w for w in warned) and any("--allowed-host" in w for w in warned)
    assert any("--api-key" in w for w in exposure_warnings("192.168.1.5", None, []))


# -- 4. no 5xx from input; /metrics counts every response and every pass ------------------------

def test_an_unexpected_error_is_a_500_in_the_openai_shape_and_counted(ckpt, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app_module, "plan_completion", broken)
    with TestClient(create_app(ckpt, limits=SMALL), raise_server_exceptions=False) as c:
        r = c.post("/v1/completions", json={"prompt": "To be"})
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        error = r.json()["error"]
        assert error["code"] == 500 and error["type"] == "server_error" and "secret" not in r.text
        assert "Traceback" not in r.text
        assert 'dlm_requests_total{endpoint="/v1/completions",status="500"} 1' in c.get("/metrics").text


class FailingModel(SlowModel):
    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("secret internals")
        return self.model(*args, **kwargs)


def test_an_engine_failure_is_a_500_and_its_passes_count(ckpt):
    failing = FailingModel(ckpt.model, 0)
    with TestClient(create_app(dataclasses.replace(ckpt, model=failing), limits=SMALL)) as c:
        r = c.post("/v1/completions", json={"prompt": "To be", "max_tokens": 8, "steps": 8, "sampler": "confidence"})
        assert r.status_code == 500 and "secret" not in r.text and r.json()["error"]["type"] == "server_error"
        text = c.get("/metrics").text
        assert metric(text, "dlm_forward_passes_total ") == 2  # the two passes before the failure
        assert 'dlm_requests_total{endpoint="/v1/completions",status="500"} 1' in text


def test_metrics_count_refusals_and_the_passes_of_timed_out_work(ckpt):
    slow = SlowModel(ckpt.model, 0.05)
    limits = dataclasses.replace(SMALL, timeout_s=0.5, max_body_bytes=1000)
    with TestClient(create_app(dataclasses.replace(ckpt, model=slow), limits=limits, api_key=KEY)) as c:
        auth = {"Authorization": f"Bearer {KEY}"}
        sent = [c.post("/v1/completions", json={"prompt": "To be"}),  # 401
                c.post("/v1/completions", content="{}", headers={**auth, "Content-Type": "text/plain"}),  # 415
                c.post("/v1/completions", content="x" * 2000, headers={**auth, **JSON}),  # 413
                c.post("/v1/completions", json={"prompt": "To be", "max_tokens": 32, "steps": 64,
                                                "sampler": "confidence"}, headers=auth)]  # 504
        assert [r.status_code for r in sent] == [401, 415, 413, 504]
        time.sleep(0.3)  # the cancelled job stops at its next step
        text = c.get("/metrics").text
        assert metric(text, "dlm_requests_total{") == 4
        assert metric(text, "dlm_forward_passes_total ") == slow.calls > 0


def test_a_top_p_too_small_for_float32_is_never_an_empty_completion(ckpt):
    with TestClient(create_app(ckpt, limits=SMALL)) as c:
        r = c.post("/v1/completions", json={"prompt": "To be", "max_tokens": 8, "steps": 8, "sampler": "ancestral",
                                            "top_p": 1e-46, "seed": 0})
        assert r.status_code == 200, r.text
        # the bug: every position kept the mask id, counted as 8 tokens that decode to ""
        choice = r.json()["choices"][0]
        assert len(choice["text"]) == r.json()["usage"]["completion_tokens"]  # one character per token


# -- 5. slow clients ---------------------------------------------------------------------------

def read_all(sock: socket.socket, limit_s: float) -> bytes:
    sock.settimeout(limit_s)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except socket.timeout:
        out += b"<still open>"
    return out


def test_slow_headers_and_slow_bodies_are_cut_off(ckpt):
    limits = dataclasses.replace(SMALL, read_timeout_s=0.5)
    with LiveServer(create_app(ckpt, limits=limits)) as server:
        address = ("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
        with socket.create_connection(address) as sock:  # headers a byte at a time, never finished
            start = time.monotonic()
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
            reply = read_all(sock, 5)
            assert reply.startswith(b"HTTP/1.1 408") and b"headers took longer than 0.5 s" in reply, reply
            assert time.monotonic() - start < 3 and not reply.endswith(b"<still open>")
        with socket.create_connection(address) as sock:  # a body that never arrives whole
            start = time.monotonic()
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 40\r\n\r\n{")
            reply = read_all(sock, 5)
            assert reply.startswith(b"HTTP/1.1 408") and b"body took longer than 0.5 s" in reply, reply
            assert time.monotonic() - start < 3 and not reply.endswith(b"<still open>")
        with socket.create_connection(address) as sock:  # a prompt client on a kept-alive connection is fine
            sock.settimeout(5)
            for _ in range(2):
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                reply = b""
                while not reply.endswith(b"}"):
                    reply += sock.recv(65536)
                assert reply.startswith(b"HTTP/1.1 200")
        text = httpx.get(server.url + "/metrics").text
        assert 'dlm_requests_total{endpoint="other",status="408"} 1' in text
        assert 'dlm_requests_total{endpoint="/v1/completions",status="408"} 1' in text


# -- the reply shaping, as plain functions -------------------------------------------------------

DONE = {"type": "done", "rows": [{"text": "abc", "finish_reason": "length", "tokens": 3},
                                 {"text": "xy", "finish_reason": "stop", "tokens": 2}],
        "nfe": 4, "steps": 4, "seconds": 0.1, "batch_rows": 2, "sampler": "confidence", "temperature": 0.0}


def frames_data(frames: list[str]) -> list:
    out = []
    for frame in frames:
        data = frame.split("data: ", 1)[1].rstrip("\n")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_completion_body_and_usage():
    reply = Reply("text_completion", "tiny", rows=2, prompt_tokens=10)
    body = reply.completion(DONE)
    assert body["object"] == "text_completion" and body["model"] == "tiny" and body["id"].startswith("cmpl-")
    assert [c["text"] for c in body["choices"]] == ["abc", "xy"] and [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert body["dlm"] == {"nfe": 4, "steps": 4, "seconds": 0.1, "batch_rows": 2, "sampler": "confidence",
                           "temperature": 0.0}
    assert error_body(429, "slow down") == {"error": {"message": "slow down", "type": "rate_limit_error",
                                                      "param": None, "code": 429}}
    assert sse({"a": 1}) == 'data: {"a": 1}\n\n' and sse({}, event="dlm.step") == "event: dlm.step\ndata: {}\n\n"


def test_stream_frames_append_only_and_end_with_done():
    frames = StreamFrames(Reply("text_completion", "tiny", rows=2, prompt_tokens=10), include_usage=True)
    out = frames.frames({"type": "text", "row": 0, "text": "a"})
    out += frames.frames({"type": "text", "row": 0, "text": "a"})  # no growth: nothing sent
    out += frames.frames({"type": "text", "row": 0, "text": "ab"})
    out += frames.frames({"type": "step", "step": 1, "steps": 4, "t": 0.5, "nfe": 1, "rows": []})
    assert not frames.finished
    out += frames.frames(DONE)
    data = frames_data(out)
    assert [d["choices"][0]["text"] for d in data[:2]] == ["a", "b"]
    assert data[2]["dlm_step"]["step"] == 1 and len(data[2]["choices"]) == 2 and out[2].startswith("event: dlm.step")
    assert [(d["choices"][0]["index"], d["choices"][0]["text"], d["choices"][0]["finish_reason"])
            for d in data[3:5]] == [(0, "c", "length"), (1, "xy", "stop")]
    assert data[5]["choices"] == [] and data[5]["usage"]["total_tokens"] == 15
    assert out[-1] == DONE_FRAME and frames.finished
    start = frames.start(steps=4, sampler="confidence", layouts=[{"pieces": ["To be", 4]}] * 2)
    assert start.startswith("event: dlm.start\n") and frames_data([start])[0]["dlm_start"]["steps"] == 4


def test_stream_frames_end_with_an_error():
    frames = StreamFrames(Reply("infill", "tiny", rows=1, prompt_tokens=3))
    out = frames.frames({"type": "error", "status": 504, "message": "too slow"})
    assert frames.finished and frames_data(out) == [{"error": {"message": "too slow", "type": "timeout_error",
                                                               "param": None, "code": 504}}]
