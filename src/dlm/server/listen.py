"""How uvicorn listens for `dlm serve`: HTTP/1.1 through h11, with a time limit on a request's headers.

uvicorn times out idle keep-alive connections, but not a client that sends its headers one byte
at a time (its h11 protocol cancels the keep-alive timer on every byte received). `TimedH11Protocol`
arms its own timer when a connection opens and after every response, and cancels it when h11 has
read a whole request head; when it fires, the client gets a 408 and the connection closes. (The
body has its own limit in the app, `dlm.server.app.read_body`.) Responses sent here, outside the
app, are counted in /metrics like the app's.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from dlm.server.metrics import Metrics
from dlm.server.replies import error_body


def raw_error(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response in OpenAI's shape, for a connection that is then closed."""
    body = json.dumps(error_body(status, message)).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


def timed_protocol(read_timeout_s: float, metrics: Metrics | None = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol, with `read_timeout_s` to send a request's headers."""

    class TimedH11Protocol(H11Protocol):
        _headers_timer: asyncio.TimerHandle | None = None
        _partial = False  # some bytes of the next request head have arrived

        def _arm(self) -> None:
            self._disarm()
            self._partial = False
            self._headers_timer = self.loop.call_later(read_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._headers_timer is not None:
                self._headers_timer.cancel()
                self._headers_timer = None

        def _too_slow(self) -> None:
            self._headers_timer = None
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.IDLE and self._partial:  # a head half sent: say why before closing
                self.transport.write(raw_error(408, "Request Timeout", f"the request's headers took longer than "
                                               f"{read_timeout_s:g} s to arrive; send them at once"))
                if metrics is not None:
                    metrics.request("other", 408)
            self.transport.close()  # else an idle connection, or the rest of a body that was already answered

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                self._partial = True
                return  # a head still arriving: its timer, armed when it could begin, runs on
            if self.conn.our_state is h11.DONE and self.conn.their_state is not h11.DONE:
                if self._headers_timer is None:  # answered already (a refusal), but the client sends on
                    self._arm()
            else:
                self._disarm()  # a whole request head has been read; the app times its body

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request's head on this keep-alive connection

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:  # h11 could not parse the request
            super().send_400_response(msg)
            if metrics is not None:
                metrics.request("other", 400)

    return TimedH11Protocol


def server_config(app, **kwargs) -> uvicorn.Config:
    """A uvicorn config for an app of `dlm.server.app.create_app`: its limits' read timeout on headers."""
    limits, metrics = app.state.limits, app.state.metrics
    kwargs.setdefault("log_level", "warning")
    return uvicorn.Config(app, http=timed_protocol(limits.read_timeout_s, metrics), **kwargs)


class ServedInThread:
    """An app served by uvicorn (`server_config`) in a thread on a free port of 127.0.0.1, as a
    context manager: the tests' live server and the serving benchmarks."""

    def __init__(self, app, *, start_timeout_s: float = 20.0, **config):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.start_timeout_s = start_timeout_s
        self.server = uvicorn.Server(server_config(app, **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServedInThread":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
