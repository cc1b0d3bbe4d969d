"""Who may use the server, and what every response carries: plain ASGI middleware (no framework
import), so each rule is one readable function.

- `CountResponses` counts every response by endpoint and status, the refusals below and the 500s
  of errors that escape the app included.
- `Guard` answers to allowed Host names only (DNS rebinding: a page of another site that
  resolves its name to 127.0.0.1 sends its own Host), asks for `Authorization: Bearer KEY` on
  /v1/* when the server has a key, takes only `application/json` bodies (a browser's cross-origin
  "simple" POST can send text/plain without asking first), and adds security headers to every
  response (the page's Content-Security-Policy allows its own inline script by hash only).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re

from dlm.server.metrics import Metrics
from dlm.server.replies import error_body

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
# every response: no MIME sniffing, no framing, no referrer; JSON needs no sources at all
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"))
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def host_name(header: str) -> str:
    """A Host header's name, without port and brackets, lower case: '[::1]:8000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only."""
    if host_name(host) == "localhost":
        return True
    try:
        return ipaddress.ip_address(host_name(host)).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(bound: str) -> frozenset[str]:
    """The names a server bound to `bound` answers to unless told more: that address and localhost."""
    return frozenset({*LOCAL_NAMES, host_name(bound)})


def page_csp(html: str) -> str:
    """A Content-Security-Policy for the page: its inline scripts by their sha256, nothing from elsewhere."""
    hashes = [base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
              for script in re.findall(r"<script>(.*?)</script>", html, flags=re.S)]
    scripts = " ".join(f"'sha256-{h}'" for h in hashes) or "'none'"
    return (f"default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; connect-src 'self'; "
            f"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


async def send_error(send, status: int, message: str, headers: tuple = ()) -> None:
    """An error response in OpenAI's shape, straight to ASGI."""
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class CountResponses:
    """Count every response by endpoint and status (streams included); an exception that escapes with
    no response sent counts as the 500 that the app's outermost handler then sends."""

    def __init__(self, app, metrics: Metrics, endpoints: tuple[str, ...]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        started = False

        async def counting_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.metrics.request(endpoint, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            if not started:
                self.metrics.request(endpoint, 500)
            raise


class Guard:
    """Host allow-list, API key on /v1/*, JSON-only POST bodies, security headers on every response.

    `allowed_hosts` None answers to any Host (an app embedded behind another server; `dlm serve`
    always passes a list); "*" in it does the same. `api_key` None asks for no key."""

    def __init__(self, app, *, api_key: str | None = None, allowed_hosts=None, page_csp: str = API_CSP):
        self.app, self.api_key, self.page_csp = app, api_key, page_csp
        hosts = None if allowed_hosts is None else {host_name(h) for h in allowed_hosts}
        self.allowed_hosts = None if hosts is None or "*" in hosts else frozenset(hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        csp = (self.page_csp if scope["path"] == "/" else API_CSP).encode()

        async def secured_send(message):
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in (*SECURITY_HEADERS, (b"content-security-policy", csp)) if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            return await send_error(secured_send, *refusal)
        await self.app(scope, receive, secured_send)

    def refusal(self, scope) -> tuple | None:
        """(status, message, extra headers) for a request refused before it reaches the app, else None."""
        headers = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        if self.allowed_hosts is not None:
            if "host" not in headers:
                return 400, "the request has no Host header; send one (HTTP/1.1 requires it)", ()
            name = host_name(headers["host"])
            if name not in self.allowed_hosts:
                return (421, f"this server does not answer to the Host {name!r}; use one of "
                             f"{', '.join(sorted(self.allowed_hosts))}, or start it with --allowed-host {name}", ())
        path = scope["path"]
        if self.api_key is not None and (path == "/v1" or path.startswith("/v1/")):
            challenge = ((b"www-authenticate", b"Bearer"),)
            scheme, _, given = headers.get("authorization", "").strip().partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                return (401, "this server needs an API key: send the header 'Authorization: Bearer <key>' (the "
                             "OpenAI client sends it from api_key=...)", challenge)
            if not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
                return 401, "the API key is not this server's; check the key you pass", challenge
        if scope["method"] == "POST":
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                got = f"Content-Type {media!r}" if media else "no Content-Type"
                return 415, f"the body has {got}; send JSON with the header 'Content-Type: application/json'", ()
        return None
