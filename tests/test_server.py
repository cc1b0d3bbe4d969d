"""`dlm serve`: the HTTP API (FastAPI TestClient and a live uvicorn on 127.0.0.1 driven by the
official `openai` client), streaming, the batching engine, validation, a schema fuzz test and
the web page in a real headless chromium."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi", reason="the [server] extra (fastapi) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the [server] extra (uvicorn) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from dlm.cli import main  # noqa: E402
from dlm.server import Engine, Job  # noqa: E402
from dlm.server.app import create_app  # noqa: E402
from dlm.server.limits import Limits  # noqa: E402
from dlm.server.listen import ServedInThread  # noqa: E402
from dlm.server.schema import CompletionRequest, plan_completion  # noqa: E402
from dlm.training import load_checkpoint  # noqa: E402

from conftest import train_tiny_run  # noqa: E402

SMALL = Limits(max_tokens=32, max_steps=64, max_n=4, max_prompts=4, max_rows=8, timeout_s=30)
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("serve"), seq_len=64)


@pytest.fixture(scope="module")
def ckpt(run_dir):
    return load_checkpoint(run_dir)


@pytest.fixture(scope="module")
def client(ckpt):
    with TestClient(create_app(ckpt, limits=SMALL, model_name="tiny", seed=0)) as c:
        yield c


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


LiveServer = ServedInThread  # uvicorn in a thread on a free port (also tests/test_server_access.py)


@pytest.fixture(scope="module")
def live(ckpt):
    with LiveServer(create_app(ckpt, limits=SMALL, model_name="tiny", seed=0)) as server:
        yield server


@pytest.fixture(scope="module")
def openai_client(live):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def sse_events(text: str) -> list[tuple[str, object]]:
    """A text/event-stream body -> [(event name, parsed data)]; '[DONE]' stays a string."""
    out = []
    for block in text.strip().split("\n\n"):
        event, data = "message", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
        out.append((event, data if data == "[DONE]" else json.loads(data)))
    return out


# -- models, health, metrics, the page ------------------------------------------------------

def test_models_health_metrics_and_page(client, ckpt):
    card = client.get("/v1/models").json()["data"][0]
    assert card["id"] == "tiny" and card["dlm"]["process"] == ckpt.process.name
    assert card["dlm"]["default_sampler"] in card["dlm"]["samplers"]
    assert card["dlm"]["context_length"] == ckpt.context_length and card["dlm"]["limits"]["max_tokens"] == 32
    assert client.get("/health").json()["status"] == "ok"
    client.post("/v1/completions", json={"prompt": "To be", "max_tokens": 4, "steps": 2})
    text = client.get("/metrics").text
    for name in ("dlm_requests_total", "dlm_tokens_generated_total", "dlm_forward_passes_total", "dlm_queue_depth",
                 "dlm_request_latency_seconds_bucket", "dlm_request_latency_seconds_count"):
        assert name in text, name
    assert 'dlm_requests_total{endpoint="/v1/completions",status="200"}' in text
    passes = [line for line in text.splitlines() if line.startswith("dlm_forward_passes_total ")]
    assert int(passes[0].split()[1]) >= 1
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<script" in page.text and "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere


# -- completions and infilling ---------------------------------------------------------------

def test_completion_matches_dlm_generate(client, run_dir, capsys):
    """A seeded request gives exactly the text `dlm generate` gives with the same seed and knobs."""
    body = {"prompt": "To be", "max_tokens": 10, "steps": 5, "sampler": "ancestral", "temperature": 1, "n": 3,
            "seed": 3}
    reply = client.post("/v1/completions", json=body).json()
    assert main(["generate", str(run_dir), "--prompt", "To be", "--length", "10", "--steps", "5", "--sampler",
                 "ancestral", "--num-samples", "3", "--temperature", "1", "--seed", "3", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["samples"]
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
    assert ["To be" + c["text"] for c in reply["choices"]] == cli
    assert reply["object"] == "text_completion" and reply["model"] == "tiny"
    assert reply["usage"]["prompt_tokens"] == 3 * len("To be")
    assert reply["usage"]["completion_tokens"] == sum(len(c["text"]) for c in reply["choices"])  # char model
    assert reply["dlm"]["sampler"] == "ancestral" and 1 <= reply["dlm"]["nfe"] <= 5


def test_list_of_prompts_gives_n_choices_each(client):
    reply = client.post("/v1/completions", json={"prompt": ["To be", "The"], "n": 2, "max_tokens": 5,
                                                 "steps": 5}).json()
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2, 3]
    assert all(c["finish_reason"] in ("stop", "length") for c in reply["choices"])


def test_infill_keeps_the_text_around_the_span(client):
    reply = client.post("/v1/infill", json={"text": "To be, <fill:6> not to be", "seed": 1, "n": 2}).json()
    assert len(reply["choices"]) == 2
    for choice in reply["choices"]:
        text = choice["text"]
        assert text.startswith("To be, ") and text.endswith(" not to be")
        assert len(text) <= len("To be,  not to be") + 6
    assert reply["usage"]["completion_tokens"] == 12


# -- validation: 4xx with a message that says what to change ---------------------------------

BAD = [
    ({"prompt": "To be", "max_tokens": 0}, 400, "'max_tokens' must be in [1, 32]"),
    ({"prompt": "To be", "max_tokens": 10**9}, 400, "'max_tokens' must be in [1, 32]"),
    ({"prompt": "To be", "n": 99}, 400, "'n' must be in [1, 4]"),
    ({"prompt": "To be", "steps": 0}, 400, "'steps' must be in [1, 64]"),
    ({"prompt": "To be", "sampler": "nope"}, 400, "cannot sample a masked model"),
    ({"prompt": "To be", "sampler": "ancestral", "threshold": 0.9}, 400, "does not take 'threshold'"),
    ({"prompt": "To be", "temperature": -1}, 400, "'temperature' must be in [0, 10.0]"),
    ({"prompt": "To be", "top_p": 0}, 400, "'top_p' must be in (0, 1]"),
    ({"prompt": "To be", "seed": -1}, 400, "'seed' must be in"),
    ({"prompt": 5}, 400, "'prompt"),
    ({"prompt": []}, 400, "empty list"),
    ({"prompt": ["a"] * 5}, 400, "at most 4"),
    ({"prompt": "To be", "logprobs": 2}, 400, "unknown field 'logprobs': this server does not support it"),
    ({"prompt": "To be", "stop": ["a", "b", "c", "d", "e"]}, 400, "give at most 4"),
    ({"prompt": "To be", "stop": [""]}, 400, "'stop' string must have 1 to 64"),
    ({"prompt": "e" * 200, "max_tokens": 8}, 400, "shorten the prompt or lower max_tokens"),
    ({"prompt": "To be \u2603"}, 400, "not in this model's character vocabulary"),
    ({"prompt": "To be", "max_tokens": 8, "sampler": "confidence", "block_length": 1, "steps": 2}, 400,
     "at least 8 'steps'"),
    ({"prompt": "To be", "model": "gpt-4"}, 404, "is not served here; use 'tiny'"),
    ({"prompt": ["a", "b", "c", "d"], "n": 4}, 400, "ask for at most 8"),
    ({"prompt": "To be", "dlm_steps": True}, 400, "set 'stream': true"),
]


def test_deeply_nested_json_is_a_400_in_the_openai_shape(client):
    body = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = client.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]


def test_a_span_too_long_to_be_a_number_is_a_400(client):
    r = client.post("/v1/infill", json={"text": "To be <fill:" + "9" * 5000 + ">"})
    assert r.status_code == 400 and "digits" in r.json()["error"]["message"]


@pytest.mark.parametrize("body,status,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_completion_is_a_4xx_that_says_what_to_change(client, body, status, message):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"], error["message"]
    assert error["type"] and error["code"] == status


@pytest.mark.parametrize("text,message", [("no span here", "no span to fill"),
                                          ("a <fill:0> b", "asks for no tokens"),
                                          ("a <fill:2-5> b", "one length"),
                                          ("a <fill:99> b", "must be in [1, 32]")])
def test_bad_infill_is_a_400(client, text, message):
    r = client.post("/v1/infill", json={"text": text})
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_malformed_bodies(client):
    as_json = {"Content-Type": "application/json"}
    r = client.post("/v1/completions", content=b"{nope", headers=as_json)
    assert "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/v1/completions", content=b'{"prompt": "To be", "temperature": NaN}', headers=as_json)
    assert r.status_code == 400  # Python's json reads NaN; the schema refuses it
    assert "JSON object" in client.post("/v1/completions", json=[1, 2]).json()["error"]["message"]
    r = client.post("/v1/completions", content=b"x" * (SMALL.max_body_bytes + 1), headers=as_json)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    r = client.post("/v1/infill", json={})
    assert r.status_code == 400 and "'text' is required" in r.json()["error"]["message"]
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and "/v1/completions" in r.json()["error"]["message"]


# -- streaming -------------------------------------------------------------------------------

def test_stream_appends_the_committed_prefix_and_matches_the_full_reply(client):
    body = {"prompt": "To be", "max_tokens": 16, "steps": 16, "sampler": "confidence", "block_length": 4,
            "seed": 0}
    full = client.post("/v1/completions", json=body).json()["choices"][0]
    r = client.post("/v1/completions", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == ("message", "[DONE]")
    chunks = [data for event, data in events[:-1]]
    assert {e for e, _ in events} == {"message"}  # no step events unless asked for
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == full["finish_reason"]
    # blocks of 4 commit left to right: the text arrives in several pieces before the end
    assert sum(1 for c in chunks[:-1] if c["choices"][0]["text"]) >= 2 or full["finish_reason"] == "stop"


def test_stream_with_step_events_covers_every_position_once(client):
    body = {"prompt": "To be", "max_tokens": 12, "steps": 6, "sampler": "confidence", "stream": True,
            "dlm_steps": True, "stream_options": {"include_usage": True}}
    events = sse_events(client.post("/v1/completions", json=body).text)
    start = [d["dlm_start"] for e, d in events if e == "dlm.start"]
    steps = [d["dlm_step"] for e, d in events if e == "dlm.step"]
    assert start[0]["rows"][0]["pieces"] == ["To be", 12] and start[0]["steps"] == 6
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= 6
    written = [p for s in steps for p in s["rows"][0]["positions"]]
    assert sorted(written) == list(range(12))  # the confidence sampler commits each position exactly once
    for s in steps:
        row = s["rows"][0]
        assert len(row["tokens"]) == len(row["positions"]) == len(row["confidences"])
        assert all(0 <= c <= 1 for c in row["confidences"])
    usage = [d for e, d in events if e == "message" and d != "[DONE]" and "usage" in d]
    assert all(c["text"] == "" for e, d in events if e.startswith("dlm.") for c in d["choices"])
    assert usage and usage[-1]["choices"] == [] and usage[-1]["usage"]["completion_tokens"] <= 12


def test_stream_of_an_infill(client):
    events = sse_events(client.post("/v1/infill", json={"text": "To be, <fill:5> not", "stream": True,
                                                        "seed": 2}).text)
    text = "".join(d["choices"][0]["text"] for e, d in events if e == "message" and d != "[DONE]")
    assert text.startswith("To be, ") and text.endswith(" not")


# -- the engine: batching, determinism, 429, time limits, cancellation ------------------------

def plan(ckpt, **body):
    return plan_completion(CompletionRequest(**body), ckpt, SMALL)


def collect(engine, jobs_settings_rows):
    """Submit jobs (before the worker starts, so batching is deterministic), run, return their done events."""
    results, jobs = [], []
    for settings, rows in jobs_settings_rows:
        events = []
        jobs.append(Job(settings, rows, events.append))
        results.append(events)
    for job in jobs:
        engine.submit(job)
    engine.start()
    deadline = time.monotonic() + 60
    while not all(any(e["type"] in ("done", "error") for e in ev) for ev in results):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    engine.close()
    return [next(e for e in ev if e["type"] in ("done", "error")) for ev in results]


def test_greedy_requests_batch_and_get_the_text_they_get_alone(ckpt):
    knobs = dict(max_tokens=12, steps=6, sampler="confidence", block_length=4, temperature=0)
    alone = collect(Engine(ckpt), [plan(ckpt, prompt="To be", **knobs)])[0]
    together = collect(Engine(ckpt), [plan(ckpt, prompt=p, seed=s, **knobs)
                                      for p, s in [("The slings", 5), ("To be", 9), ("Or", None)]])
    assert alone["batch_rows"] == 1 and all(d["batch_rows"] == 3 for d in together)  # one shared sampler call
    assert together[1]["rows"][0]["text"] == alone["rows"][0]["text"]


def test_seeded_sampling_runs_alone_and_unseeded_batches(ckpt):
    knobs = dict(prompt="To be", max_tokens=8, steps=4, sampler="ancestral", temperature=1)
    alone = collect(Engine(ckpt), [plan(ckpt, seed=7, n=2, **knobs)])[0]
    mixed = collect(Engine(ckpt, seed=0), [plan(ckpt, **knobs), plan(ckpt, seed=7, n=2, **knobs), plan(ckpt, **knobs),
                                           plan(ckpt, seed=8, **knobs)])
    assert [d["batch_rows"] for d in mixed] == [2, 2, 2, 1]  # the two unseeded together, each seeded one alone
    assert mixed[1]["rows"] == alone["rows"]  # same seed -> same text, whatever else was queued


def test_full_queue_is_429_and_slow_request_is_504(ckpt):
    app = create_app(ckpt, limits=dataclasses.replace(SMALL, max_queue=1, timeout_s=1.0))
    c = TestClient(app)  # no lifespan: the engine never starts, so the first request waits in the queue
    first = {}
    waiter = threading.Thread(target=lambda: first.update(r=c.post("/v1/completions", json={"prompt": "To be"})))
    waiter.start()
    deadline = time.monotonic() + 10
    while app.state.engine.queue_depth == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    r = c.post("/v1/completions", json={"prompt": "To be"})
    assert r.status_code == 429 and "queue is full" in r.json()["error"]["message"]
    waiter.join(timeout=20)
    assert first["r"].status_code == 504 and "limit of 1 s" in first["r"].json()["error"]["message"]


class SlowModel:
    """Wraps a denoiser: each forward pass takes `delay` seconds and is counted."""

    def __init__(self, model, delay):
        self.model, self.delay, self.calls = model, delay, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        time.sleep(self.delay)
        return self.model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_cancelled_jobs_stop_their_batch(ckpt):
    slow = SlowModel(ckpt.model, 0.01)
    engine = Engine(dataclasses.replace(ckpt, model=slow))
    settings, rows = plan(ckpt, prompt="To be", max_tokens=30, steps=30, sampler="confidence")
    events = []

    def emit(event):
        events.append(event)
        if event["type"] == "step" and event["step"] == 3:
            job.cancel()

    job = Job(settings, rows, emit, step_events=True)
    engine.submit(job)
    engine.start()
    deadline = time.monotonic() + 10
    while slow.calls < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    engine.close()
    assert slow.calls == 4 and not any(e["type"] == "done" for e in events)  # stopped at the next step's callback
    assert engine.metrics.forward_passes == 4  # abandoned work counts: every pass that ran


def test_client_disconnect_stops_generation(ckpt):
    httpx = pytest.importorskip("httpx")
    slow = SlowModel(ckpt.model, 0.05)
    app = create_app(dataclasses.replace(ckpt, model=slow), limits=SMALL)
    with LiveServer(app) as server:
        body = {"prompt": "To be", "max_tokens": 30, "steps": 30, "sampler": "confidence", "stream": True,
                "dlm_steps": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("event: dlm.step"):
                    break  # hang up after the first step
        time.sleep(1.0)
        calls = slow.calls
        time.sleep(0.5)
        assert slow.calls == calls < 30  # nothing runs any more, and the job did not run to its end
        assert httpx.get(server.url + "/health").json()["status"] == "ok"


# -- the official openai client against a live server ---------------------------------------

def test_openai_client_completion_n_and_errors(openai_client):
    import openai

    reply = openai_client.completions.create(model="tiny", prompt="To be", max_tokens=8, seed=1, n=3,
                                             extra_body={"steps": 4})
    assert len(reply.choices) == 3 and [c.index for c in reply.choices] == [0, 1, 2]
    assert all(isinstance(c.text, str) and c.finish_reason in ("stop", "length") for c in reply.choices)
    assert reply.usage.completion_tokens <= 24
    again = openai_client.completions.create(model="tiny", prompt="To be", max_tokens=8, seed=1, n=3,
                                             extra_body={"steps": 4})
    assert [c.text for c in again.choices] == [c.text for c in reply.choices]
    assert [m.id for m in openai_client.models.list()] == ["tiny"]
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        openai_client.completions.create(model="tiny", prompt="To be", max_tokens=1000)


def test_openai_client_streaming(openai_client):
    body = dict(model="tiny", prompt="To be", max_tokens=12, seed=4, extra_body={"steps": 6})
    full = openai_client.completions.create(**body).choices[0].text
    pieces = [chunk.choices[0].text for chunk in openai_client.completions.create(stream=True, **body)]
    assert "".join(pieces) == full
    # step events parse as chunks with empty text: a stock client streaming with them on still gets the text
    stepped = openai_client.completions.create(stream=True, **{**body, "extra_body": {"steps": 6, "dlm_steps": True}})
    assert "".join(chunk.choices[0].text for chunk in stepped) == full


def test_openai_client_stop_strings(openai_client):
    body = dict(model="tiny", prompt="To be", max_tokens=24, temperature=0,
                extra_body={"sampler": "confidence", "steps": 12})
    text = openai_client.completions.create(**body).choices[0].text
    visible = [ch for ch in text[1:] if ch.strip()]
    if not visible:
        pytest.skip(f"the tiny model wrote no visible character to stop at: {text!r}")
    stop = visible[0]
    cut = openai_client.completions.create(stop=[stop], **body).choices[0]
    assert cut.text == text[:text.index(stop)] and cut.finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in openai_client.completions.create(stop=[stop], stream=True, **body))
    assert streamed == cut.text


# -- the command line ----------------------------------------------------------------------

def test_dlm_serve_starts_and_answers(run_dir):
    httpx = pytest.importorskip("httpx")
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "dlm", "serve", str(run_dir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DLM_API_KEY": "sk-env"})
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "dlm serve did not come up"
            time.sleep(0.2)
        key = {"Authorization": "Bearer sk-env"}
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=key).json()
        assert models["data"][0]["id"] == "run"  # the folder's name
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401  # the key from DLM_API_KEY
        assert httpx.get(f"http://localhost:{port}/v1/models", headers=key).status_code == 200
        rebound = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={**key, "Host": f"evil.example:{port}"})
        assert rebound.status_code == 421  # the default allow-list: the bound address and localhost
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_dlm_serve_refuses_a_bad_port(run_dir, capsys):
    assert main(["serve", str(run_dir), "--port", "70000"]) == 1
    assert "--port must be between 1 and 65535" in capsys.readouterr().err


# -- fuzzing the request schema ----------------------------------------------------------------

def test_fuzzed_requests_never_get_a_5xx(ckpt):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    limits = Limits(max_tokens=8, max_steps=8, max_n=2, max_prompts=2, max_rows=4, max_stop=2, timeout_s=20)
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 40), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=12), st.sampled_from(["To be", "confidence", "ancestral", "remdm", "tiny"]))
    value = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                                              inner, max_size=2),
                         max_leaves=5)
    fields = ["prompt", "text", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "stream", "seed",
              "steps", "sampler", "block_length", "threshold", "cfg_scale", "dlm_steps", "model", "user",
              "stream_options", "logprobs", "bogus"]
    bodies = st.dictionaries(st.sampled_from(fields), value, max_size=6)

    with TestClient(create_app(ckpt, limits=limits, model_name="tiny")) as c:
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(endpoint=st.sampled_from(["/v1/completions", "/v1/infill"]), body=bodies)
        def check(endpoint, body):
            r = c.post(endpoint, json=body)
            assert r.status_code < 500, (body, r.text)
            if r.status_code >= 400:
                assert r.json()["error"]["message"]

        check()
        assert c.get("/health").json()["status"] == "ok"
        assert c.post("/v1/completions", json={"prompt": "To be", "max_tokens": 4}).status_code == 200
    assert hypothesis  # used


# -- the web page in a real headless chromium -------------------------------------------------

def test_web_page_in_chromium(live):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (make install adds it where apt-get and root are available)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            outside = []
            page.on("request", lambda req: outside.append(req.url) if not req.url.startswith(live.url) else None)
            page.goto(live.url + "/")
            page.wait_for_selector("#sampler option", state="attached")
            assert "tiny" in page.inner_text("#model")
            # a completion, drawn step by step
            page.fill("#prompt", "To be")
            page.fill("#max_tokens", "16")
            page.fill("#steps", "8")
            page.select_option("#sampler", "confidence")
            page.fill("#delay", "40")
            page.click("#go")
            page.wait_for_selector("body[data-state=done]", timeout=30000)
            trace = page.evaluate("window.dlmTrace")
            assert len(trace) >= 2 and trace[0]["masked"] > trace[-1]["masked"] == 0  # text appeared over steps
            assert page.inner_text("#canvas").startswith("To be")
            assert page.locator("#canvas .cell").count() == 16
            # an infill: the text around the span stays, the span fills in
            page.fill("#prompt", "To be, <fill:6> not to be")
            page.fill("#delay", "150" if os.environ.get("DLM_SCREENSHOT") else "0")
            page.click("#go")
            if os.environ.get("DLM_SCREENSHOT"):  # mid-way, masked positions still dimmed
                page.wait_for_function("window.dlmTrace.length >= 2")
                page.screenshot(path=os.environ["DLM_SCREENSHOT"])
            page.wait_for_selector("body[data-state=done]", timeout=30000)
            final = page.inner_text("#final")
            assert final.startswith("To be, ") and final.endswith(" not to be"), final
            assert page.locator("#canvas .cell").count() == 6
            assert page.locator("#canvas .cell.masked").count() == 0
            assert not outside, outside
        finally:
            browser.close()


# -- the load test script, small ----------------------------------------------------------------

def test_load_script_runs_without_errors(live):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    serve_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_load)
    result = serve_load.load(live.url, requests=24, concurrency=8, body={"max_tokens": 8, "steps": 4},
                            prompts=["To be", "The ", "And "])
    assert result["errors"] == 0, result["first_errors"]
    assert 0 < result["p50_s"] <= result["p99_s"] and result["requests_per_s"] > 0
    assert serve_load.mean_batch_rows(live.url) >= 1


def test_dlm_serve_refuses_a_port_in_use(run_dir, capsys):
    with free_socket() as busy:
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(run_dir), "--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
