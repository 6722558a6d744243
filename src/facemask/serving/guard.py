"""The service's front door, one ASGI middleware: API keys, upload size, WebSocket origin and
back-pressure. Health probes and the pages (GET) stay open; every API call (POST), the data read
with GET (`/metrics`, `/cameras/status`) and every WebSocket need a key once keys are configured.

A key is sent as `X-API-Key: <key>` or `Authorization: Bearer <key>`; a browser's WebSocket, which
cannot set headers, offers it as the subprotocol `apikey.<key>` beside `facemask`. Keys are kept as
SHA-256 digests, compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request

from facemask.config import ConfigError, Serving

SUBPROTOCOL = "facemask"
KEY_PROTOCOL_PREFIX = "apikey."
KEYED_READS = frozenset({"/metrics", "/cameras/status"})  # GETs that need the key (the others: pages, probes)
KEYED_PREFIXES = ("/events",)  # and every GET under these (the review API: alerts, snapshots, clips)


def keyed_read(path: str) -> bool:
    return path in KEYED_READS or path.startswith(KEYED_PREFIXES)


def load_api_keys(cfg: Serving, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Keys from FACEMASK_API_KEYS (comma-separated) and the keys file (FACEMASK_API_KEYS_FILE or
    `api_keys_file`: one per line, `#` comments); none configured: the service is open."""
    keys = [k.strip() for k in environ.get("FACEMASK_API_KEYS", "").split(",") if k.strip()]
    file = environ.get("FACEMASK_API_KEYS_FILE") or cfg.api_keys_file
    if file:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"the API keys file {path} does not exist")
        lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
        keys += [line for line in lines if line]
        if not keys:
            raise ConfigError(f"the API keys file {path} holds no key")
    if any(len(k) < 16 for k in keys):
        raise ConfigError("API keys must be at least 16 characters: `make api-key` prints a new one")
    return keys


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_id(key: str | None) -> str | None:
    """Which key sent a request, as records may name it: the start of its digest, never the key."""
    return _digest(key).hex()[:12] if key else None


class Guard:
    """The front door's settings and its count of API calls in flight; configured by the service
    once its models are loaded (until then every guarded call is answered 503)."""

    def __init__(self) -> None:
        self.cfg: Serving | None = None
        self._digests: list[bytes] = []
        self.in_flight = 0

    def configure(self, cfg: Serving, keys: Iterable[str]) -> None:
        self.cfg, self._digests = cfg, [_digest(k) for k in keys]

    @property
    def keys_required(self) -> bool:
        return bool(self._digests)

    def key_ok(self, key: str | None) -> bool:
        if not self._digests:
            return True
        if not key:
            return False
        digest = _digest(key)
        return any([hmac.compare_digest(digest, d) for d in self._digests])  # no early exit

    @property
    def ready(self) -> bool:
        """Ready for a request now: configured (the service configures the guard last, once its
        pipelines are loaded and warmed up) and a free place at the door (a load balancer sends the
        next request to another replica while this one is full)."""
        return self.cfg is not None and self.in_flight < self.capacity

    @property
    def capacity(self) -> int:
        """API calls admitted at once: one per pipeline running, `max_waiting` queued."""
        assert self.cfg is not None
        return self.cfg.pipelines + self.cfg.max_waiting


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def request_key(scope) -> str | None:
    h = _headers(scope)
    if key := h.get("x-api-key"):
        return key
    scheme, _, token = h.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    for proto in h.get("sec-websocket-protocol", "").split(","):
        if (proto := proto.strip()).startswith(KEY_PROTOCOL_PREFIX):
            return proto.removeprefix(KEY_PROTOCOL_PREFIX)
    return None


def origin_allowed(scope, allowed: list[str]) -> bool:
    """No Origin (not a browser), the service's own origin, or a configured one."""
    h = _headers(scope)
    origin = h.get("origin")
    if not origin:
        return True
    return urlsplit(origin).netloc == h.get("host") or origin.rstrip("/") in {o.rstrip("/") for o in allowed}


async def _reply(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    def __init__(self, app, guard: Guard, fields: Mapping[str, Iterable[str]] | None = None):
        """`fields`: per API path, the multipart fields it takes (any other is a 400, not a 500)."""
        self.app, self.guard = app, guard
        self.fields = {path: frozenset(names) for path, names in (fields or {}).items()}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":
            return await self._websocket(scope, receive, send)
        if scope["type"] != "http" or (scope["method"] in ("GET", "HEAD") and not keyed_read(scope["path"])):
            return await self.app(scope, receive, send)
        guard = self.guard
        if guard.cfg is None:
            return await _reply(send, 503, "the service is starting", {"retry-after": "5"})
        if not guard.key_ok(request_key(scope)):
            return await _reply(
                send, 401, "a valid API key is required: send it as X-API-Key", {"www-authenticate": "Bearer"}
            )
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        limit = guard.cfg.max_upload_bytes
        length = _headers(scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _reply(send, 413, f"the upload is {int(length)} bytes, over the limit of {limit}")
        body = bytearray()  # read here, within the limit, then handed on
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                return await _reply(send, 413, f"the upload is over the limit of {limit} bytes")
            if not message.get("more_body", False):
                break
        if problem := await _form_problem(scope, bytes(body), self.fields.get(scope["path"])):
            return await _reply(send, 400, problem)
        # admitted once its upload is in: a slow upload holds a connection, not a pipeline's place
        if guard.in_flight >= guard.capacity:
            return await _reply(send, 503, "busy: too many requests in flight, retry shortly", {"retry-after": "1"})
        guard.in_flight += 1
        try:
            await self.app(scope, _replay(bytes(body), receive), send)
        finally:
            guard.in_flight -= 1

    async def _websocket(self, scope, receive, send) -> None:
        guard = self.guard
        reason = None
        if guard.cfg is None:
            reason = "the service is starting"
        elif not guard.key_ok(request_key(scope)):
            reason = "a valid API key is required"
        elif not origin_allowed(scope, guard.cfg.allowed_origins):
            reason = "this page's origin may not open the camera stream"
        if reason is None:
            return await self.app(scope, receive, send)
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008, "reason": reason})  # refused: HTTP 403


async def _form_problem(scope, body: bytes, expected: frozenset[str] | None) -> str | None:
    """Why a multipart upload cannot be what the API takes, or None."""
    if expected is None or not _headers(scope).get("content-type", "").startswith("multipart/form-data"):
        return None
    try:
        form = await Request(scope, _replay(body, None)).form()
    except Exception as err:  # python-multipart raises several types for a broken body
        return f"malformed multipart upload ({type(err).__name__})"
    names = set(form.keys())
    await form.close()
    if unknown := names - expected:
        return f"unknown form field(s) {sorted(unknown)}: this API takes {sorted(expected)}"
    return None


def _replay(body: bytes, receive):
    """A `receive` that hands on the body read already, then the client's own messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
