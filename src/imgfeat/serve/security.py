"""Who may talk to the service, and how long a request may take: an ASGI middleware.

    app = Guard(app, allowed_hosts=hosts_for("127.0.0.1"), token=None, body_timeout_s=30)

In order, for every HTTP request:
  1. the `Host` header must name this service (`hosts_for`): the bound address, localhost,
     127.0.0.1, [::1] or a name the user allowed. A DNS-rebinding page (Host: evil.example
     resolving to 127.0.0.1) gets 421, so a browser can never read the API from another origin;
  2. with a token, every path but `PUBLIC_PATHS` needs `Authorization: Bearer <token>` or the
     `imgfeat_token` cookie the page sets (SameSite=Strict, so other sites cannot send it): 401;
  3. the request body must arrive within `body_timeout_s` of the first read: a client trickling
     it byte by byte gets 408 instead of holding the connection;
  4. every response carries nosniff, no-referrer and a Content-Security-Policy (`PAGE_CSP` for
     the page; `API_CSP`, nothing may load, for the rest; `docs_csp` for /docs).
Every refusal is the JSON body {"error": kind, "detail": sentence} the routes use.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
import time
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import unquote

import anyio
from starlette.exceptions import HTTPException

TOKEN_COOKIE = "imgfeat_token"
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
# the page and its static files hold no data and must load before the page can send a token
PUBLIC_PATHS = ("/healthz", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def hosts_for(bind: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The `Host` names a service bound to `bind` answers to: the address, the local names, `extra`.

    A wildcard bind (0.0.0.0, ::) adds "*ip": any IP literal. A DNS-rebinding attack needs a
    name that resolves to the server; a page whose origin is an IP literal is the server itself.
    """
    names = {*LOCAL_NAMES, *(_normal(name) for name in extra)}
    if bind in WILDCARD_BINDS:
        names.add("*ip")
    else:
        names.add(_normal(bind))
    return tuple(sorted(names))


def _normal(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def host_name(header: str) -> str:
    """The host part of a `Host` header: no port, no IPv6 brackets, lower case."""
    header = header.strip()
    if header.startswith("["):
        return _normal(header[1:header.find("]")] if "]" in header else header)
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return _normal(header)


def host_allowed(header: str | None, allowed: Iterable[str]) -> bool:
    if not header:
        return False
    name = host_name(header)
    allowed = set(allowed)
    if name in allowed:
        return True
    if "*ip" in allowed:
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False
    return False


def docs_csp(html: str) -> str:
    """A CSP for FastAPI's Swagger UI page: its CDN, and its inline script by hash only."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
                      for body in re.findall(r"<script>(.*?)</script>", html, flags=re.S))
    return (f"default-src 'none'; script-src https://cdn.jsdelivr.net {hashes}; "
            f"style-src https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
            f"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class Guard:
    """The ASGI middleware described in the module docstring.

    Args:
        app: the ASGI app to guard.
        allowed_hosts: from `hosts_for`.
        token: the bearer token, or None for no authentication.
        body_timeout_s: seconds from the first body read to the end of the body.
        csp: {path: Content-Security-Policy} for HTML pages; other paths get `API_CSP`.
    """

    def __init__(self, app: Any, allowed_hosts: Iterable[str], token: str | None = None,
                 body_timeout_s: float = 30.0, csp: dict[str, str] | None = None):
        self.app = app
        self.allowed_hosts = frozenset(allowed_hosts)
        self.token = token.encode() if token else None
        self.body_timeout_s = body_timeout_s
        self.csp = {"/": PAGE_CSP, **(csp or {})}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if not host_allowed(headers.get("host"), self.allowed_hosts):
            await _refuse(send, 421, "unknown-host",
                          f"this service does not answer to Host {headers.get('host', '')[:100]!r}; "
                          f"start it with --allowed-host NAME to add a name")
            return
        path = scope.get("path", "")
        if self.token is not None and not _public(path) and not self._authorised(headers):
            await _refuse(send, 401, "unauthorised", "send the token as 'Authorization: Bearer TOKEN' "
                                                      "(imgfeat serve --token / IMGFEAT_TOKEN)",
                          extra=[(b"www-authenticate", b'Bearer realm="imgfeat"')])
            return
        csp = self.csp.get(path, API_CSP).encode()

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"content-security-policy", csp),
                                      (b"x-content-type-options", b"nosniff"),
                                      (b"referrer-policy", b"no-referrer")]
            await send(message)

        await self.app(scope, self._deadline(receive), secured)

    def _authorised(self, headers: dict[str, str]) -> bool:
        assert self.token is not None
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), self.token):
            return True
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == TOKEN_COOKIE and hmac.compare_digest(unquote(value).encode(), self.token):
                return True
        return False

    def _deadline(self, receive: Receive) -> Receive:
        """`receive` that raises 408 once the body has taken longer than `body_timeout_s`."""
        started: list[float] = []
        finished: list[bool] = []

        async def timed() -> Message:
            if finished:  # after the body only a disconnect can come: no deadline on that
                return await receive()
            if not started:
                started.append(time.monotonic())
            left = self.body_timeout_s - (time.monotonic() - started[0])
            with anyio.move_on_after(max(left, 0)):
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    finished.append(True)
                return message
            raise HTTPException(408, f"the request body did not arrive within {self.body_timeout_s:g} s")

        return timed


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}


async def _refuse(send: Send, status: int, kind: str, detail: str,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": kind, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"content-security-policy", API_CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
