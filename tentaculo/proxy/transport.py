"""Reverse proxy transport to the VX11 modules: its whole contract is written here, once.

A call to ``/operator/api/proxy/<module>/<path>?<query>`` is forwarded to
``<module base address>/<path>?<query>``; the view (``tentaculo/proxy/views.py``) decides
whether it may go, this module carries it.

Path
----
``module_path()`` takes the path exactly as the client sent it and refuses what could land
outside the module's base path. Each segment is looked at as sent and after each of up to three
rounds of percent-decoding (as the file explorer does; a stray ``%`` does not stop the rounds).
A ``.`` or ``..`` segment in any spelling is ``path_forbidden`` (403): ``%2e%2e``,
``%252e%252e``, ``%25252e%25252e``, ``..;``, overlong UTF-8 (``%c0%ae``, ``%e0%80%ae``, and
``..%c0%af``, an overlong ``/``), and dots that Unicode normalisation (NFKC) turns into ``.``
(fullwidth ``%ef%bc%8e``). An empty segment (``//host`` tricks), an encoded ``/`` or ``\\`` at any
layer, a backslash, NUL or control characters, broken percent-encoding, bytes that are not UTF-8
(Latin-1 ``%e9``, an overlong ``/`` alone), or a fourth layer of encoding are ``invalid_path``
(400). What passes is forwarded byte for byte as the client encoded it.

Request
-------
The method, the body and every end-to-end header go upstream, with these changes:

* hop-by-hop headers are dropped: ``Connection`` and every header it names, ``Keep-Alive``,
  ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade`` (and ``Expect``, which
  the gateway answers itself);
* the operator's credentials never leave: ``X-VX11-Token`` and ``Authorization`` are dropped,
  as are credential-like query parameters (``ticket``, ``token``, ...); the module's own
  credential (``TENTACULO_SERVICE_<NAME>_TOKEN``) is sent as ``Authorization: Bearer``;
* method and path overrides never leave: ``X-HTTP-Method-Override``, ``X-Method-Override``,
  ``X-HTTP-Method``, ``X-Original-URL``, ``X-Rewrite-URL`` and the ``_method`` query parameter
  are dropped (a GET or HEAD with a body never gets here: the view refuses it);
* ``X-Correlation-ID`` is the request's correlation id;
* ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` (and ``Forwarded``, ``X-Real-IP``,
  ``X-Forwarded-Port`` / ``-Prefix`` / ``-Server`` / ``-Scheme`` / ``-Ssl``, ``X-Original-Host``,
  ``X-Host``, ``Front-End-Https``, ``X-Url-Scheme``) are taken from the client only when its
  address is in ``TENTACULO_TRUSTED_PROXIES``, and then the client's address is appended to
  ``X-Forwarded-For``; from anyone else they are dropped and ``X-Forwarded-For`` is the address
  this gateway saw. ``TENTACULO_PUBLIC_URL``, when set, is what ``X-Forwarded-Proto`` and
  ``-Host`` say, whoever sent what. Without it and without a trusted proxy's values,
  ``X-Forwarded-Proto`` is the scheme the client connected with and ``X-Forwarded-Host`` is not
  sent: the ``Host`` header is whatever the client wrote (a module that builds links or
  redirects from it would point users at the client's choice), and the address the gateway
  listens on is often ``0.0.0.0`` or an internal name, no better for links.

The body streams: it is read from the client in chunks while it is written upstream, never
held whole, and refused past ``TENTACULO_PROXY_MAX_BODY_BYTES`` (413).

Response
--------
Status, headers and body come back as the module sent them, compressed bodies included
(nothing is decoded), minus the hop-by-hop headers and ``Server``. A ``Location`` pointing
into the module's base address is rewritten to the gateway's proxy path, so internal addresses
do not reach clients. The body streams chunk by chunk as it arrives (SSE and chunked responses
reach the client as they are produced).

The gateway's origin also serves the operator console, so nothing a module answers may act on
that origin. These response headers are dropped: ``Set-Cookie``, ``Set-Cookie2``, every
``Access-Control-*`` (``-Allow-*``, ``-Expose-Headers``, ``-Max-Age``), ``Timing-Allow-Origin``,
``Strict-Transport-Security``, ``Public-Key-Pins`` (and ``-Report-Only``), ``Expect-CT``,
``Alt-Svc``, ``Clear-Site-Data``, ``NEL``, ``Report-To``, ``Reporting-Endpoints``,
``Service-Worker-Allowed``, ``Origin-Agent-Cluster``, ``Accept-CH``, ``Critical-CH``,
``X-Permitted-Cross-Domain-Policies``, every ``Content-Security-Policy*``, ``X-Frame-Options``,
``X-Content-Type-Options``, ``X-XSS-Protection`` and the module's ``X-Correlation-ID``. Every
proxied response carries ``Content-Security-Policy: sandbox`` (the page gets an opaque origin
and runs no script) and ``X-Content-Type-Options: nosniff``, and the gateway's own
``X-Correlation-ID``. A WebSocket handshake's answer is the gateway's own: none of the module's
handshake headers are passed on.

Timeouts, retries, errors
-------------------------
Each module has a connect timeout (``TENTACULO_PROXY_CONNECT_TIMEOUT``) and a read timeout
(``TENTACULO_PROXY_READ_TIMEOUT``: the longest silence while waiting for the response or
between two body chunks), both overridable per module with ``TENTACULO_SERVICE_<NAME>_TIMEOUT``.
Waiting for a free pooled connection is bounded by ``TENTACULO_PROXY_POOL_WAIT``.

A bodyless GET to a plain-HTTP module (the common call) goes over a lean keep-alive pool of its
own: at most ``TENTACULO_PROXY_POOL_PER_MODULE`` connections per module (one idle for over 15 s is
closed by the next call to that module, if the module has not closed it first), the response
head parsed by httptools, the body relayed by Content-Length, chunks or end of connection. Everything else
(bodies, HEAD, WebSocket, TLS) goes through aiohttp's client, under the same rules.

A call is retried (``TENTACULO_PROXY_RETRIES`` times) only when all of these hold: the method
is idempotent per RFC 9110 section 9.2.2 and has no request body (GET, HEAD, OPTIONS, PUT,
DELETE; TRACE is never proxied meaningfully and not retried), and the connection failed before
any response byte arrived (refused, reset, a kept-alive connection the module had closed).
Timeouts are not retried: a slow module would only be asked twice as long.

Failures surface as :class:`UpstreamUnavailable` (502 ``upstream_unavailable``) and
:class:`UpstreamTimeout` (504 ``upstream_timeout``). Their details name the module and the kind
of failure only; never its address, the module's own error text or a stack trace.

WebSocket
---------
A WebSocket upgrade is forwarded the same way (same headers, credentials and path rules);
frames are pumped in both directions and a close code from either side is passed to the other
(an abrupt end becomes 1014 "bad gateway").
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import unicodedata
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, unquote_plus, unquote_to_bytes

import aiohttp
import httptools
import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from tentaculo.auth.tokens import QUERY_TOKEN_NAMES, TICKET_PARAM
from tentaculo.files.sandbox import DECODE_LAYERS as SANDBOX_DECODE_LAYERS
from tentaculo.http.errors import Problem, RequestTimeout, connect_reason
from tentaculo.settings import ModuleTimeouts, Settings, public_origin

log = structlog.get_logger("tentaculo.proxy")

PROXY_ROOT = "/operator/api/proxy"
# RFC 9110 section 9.2.2 idempotent methods the proxy may retry (TRACE left out on purpose).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})
# Request headers that are never copied upstream as they came: credentials, what the transport
# sets itself, and the forwarding headers that are rebuilt.
_REQUEST_DROP = frozenset({
    "host", "content-length", "expect", "x-vx11-token", "authorization", "x-correlation-id",
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
    # Frameworks that honour these would run another method or path than the one the scope and
    # the allow-list were checked against (a read token's GET turned into a DELETE).
    "x-http-method-override", "x-method-override", "x-http-method", "x-original-url", "x-rewrite-url",
})
# Who the client is and which address it called: believed only from TENTACULO_TRUSTED_PROXIES.
_FORWARDING = frozenset({
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip", "x-forwarded-port",
    "x-forwarded-prefix", "x-forwarded-server", "x-forwarded-scheme", "x-forwarded-ssl", "x-original-host",
    "x-host", "front-end-https", "x-url-scheme",
})
# Response headers that would act on the gateway's whole origin, which also serves the operator
# console: cookies, grants to other origins, transport and reporting policy, and the page policy
# the gateway sets itself (SANDBOXED). Prefixes: Proxy-*, Access-Control-*, Content-Security-Policy*.
ORIGIN_HEADERS = frozenset({
    "set-cookie", "set-cookie2", "strict-transport-security", "public-key-pins", "public-key-pins-report-only",
    "expect-ct", "alt-svc", "clear-site-data", "nel", "report-to", "reporting-endpoints", "service-worker-allowed",
    "origin-agent-cluster", "accept-ch", "critical-ch", "timing-allow-origin", "x-permitted-cross-domain-policies",
    "x-frame-options", "x-content-type-options", "x-xss-protection",
})
_RESPONSE_DROP = HOP_BY_HOP | ORIGIN_HEADERS | {"server", "content-length", "x-correlation-id"}
_RESPONSE_DROP_PREFIXES = ("proxy-", "access-control-", "content-security-policy")
# On every proxied response: a module's page gets an opaque origin and runs no script, so it can
# never act as the console; nothing it serves is sniffed into another type.
SANDBOXED = (("Content-Security-Policy", "sandbox"), ("X-Content-Type-Options", "nosniff"))
# Headers aiohttp's client adds when absent: never added, so the module sees only what the client
# sent (a header the client did send is copied like any other).
_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
CREDENTIAL_PARAMS = QUERY_TOKEN_NAMES | {TICKET_PARAM}
# Query parameters never forwarded: credentials, and ``_method``, which some frameworks take as the method.
_QUERY_DROP = CREDENTIAL_PARAMS | {"_method"}
# Module statuses that count against its circuit: it is failing, not the request.
FAILURE_STATUSES = frozenset({500, 502, 503, 504})
CHUNK = 64 * 1024
WS_MAX_MESSAGE = 4 * 1024 * 1024
WS_HEARTBEAT = 30.0
WS_CLOSE_TIMEOUT = 5.0
RETRY_BACKOFF = 0.05

_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Layers of percent-encoding looked through, as the file explorer does (tentaculo/files/sandbox.py).
DECODE_LAYERS = SANDBOX_DECODE_LAYERS
# Overlong UTF-8 forms of an ASCII character (2, 3 and 4 bytes): invalid, but decoders that accept
# them read %c0%ae as '.' and %c0%af as '/'.
_OVERLONG_ASCII = re.compile(rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80\x81][\x80-\xbf]|\xf0\x80[\x80\x81][\x80-\xbf]")


# --------------------------------------------------------------------------- errors


class UpstreamUnavailable(Problem):
    """The module could not be reached or answered with something that is not HTTP (502)."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__("upstream_unavailable", detail, **extra)


class UpstreamTimeout(Problem):
    """The module did not connect or answer in time (504)."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__("upstream_timeout", detail, **extra)


class BodyTooLarge(Exception):
    """The client's body went past ``TENTACULO_PROXY_MAX_BODY_BYTES`` while it streamed."""


# --------------------------------------------------------------------------- paths


def module_path(raw_path: str, service: str) -> tuple[str, str]:
    """Split the raw request path into (the part after the module name as sent, its decoded form).

    Raises ``path_forbidden`` for dot segments in any encoding, ``invalid_path`` for anything
    that could change which host or directory is addressed.
    """
    parts = raw_path.split("/", 5)
    if (len(parts) != 6 or [_decoded(p) for p in parts[1:4]] != ["operator", "api", "proxy"]
            or _decoded(parts[4]) != service):
        raise Problem("invalid_path", "the path must be /operator/api/proxy/<module>/<path>")
    rest = parts[5]
    if not _PATH_CHARS.fullmatch(rest):
        raise Problem("invalid_path", "the path holds characters that are not allowed in a URL path")
    if _BAD_PERCENT.search(rest):
        raise Problem("invalid_path", "the path holds a '%' that is not a percent-encoded byte")
    segments = rest.split("/")
    decoded_segments = []
    for i, segment in enumerate(segments):
        if segment == "" and i != len(segments) - 1:
            raise Problem("invalid_path", "the path holds an empty segment ('//')")
        decoded_segments.append(_check_segment(segment))
    return rest, "/" + "/".join(decoded_segments)


def _decoded(segment: str) -> str:
    return unquote(segment, errors="replace")


def _dot_forbidden() -> Problem:
    return Problem("path_forbidden", "'.' and '..' path segments are refused: they would leave the module's base path")


def _is_dot(value: str) -> bool:
    """A ``.`` or ``..`` segment (``;params`` ignored), also once Unicode-normalised (fullwidth dots)."""
    if value.split(";", 1)[0] in (".", ".."):
        return True
    if value.isascii():
        return False
    # NFKC turns fullwidth and leader dots into '.', fullwidth solidus into '/': servers that
    # normalise would see a dot segment.
    return any(p.split(";", 1)[0] in (".", "..") for p in re.split(r"[/\\]", unicodedata.normalize("NFKC", value)))


def _check_segment(segment: str) -> str:
    """One segment, checked as sent and after each of up to ``DECODE_LAYERS`` rounds of percent-decoding.

    Returns the segment decoded once (what the allow-list is matched against).
    """
    value, first = segment, None
    for layer in range(DECODE_LAYERS + 1):
        if _is_dot(value):
            raise _dot_forbidden()
        if "%" not in value:
            break
        raw = unquote_to_bytes(value)  # lenient: a stray '%' stays as it is, the escapes around it decode
        if len(raw) == len(value.encode()):
            break  # only stray '%'s: nothing left to decode
        if layer == DECODE_LAYERS:
            raise Problem("invalid_path", f"the path is percent-encoded more than {DECODE_LAYERS} times")
        if any(b < 0x20 or b == 0x7F for b in raw):
            raise Problem("invalid_path", "the path holds an encoded NUL or control character")
        if b"/" in raw or b"\\" in raw:
            raise Problem("invalid_path", "encoded '/' and '\\' are refused in a proxied path")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid_utf8(raw) from None
        first = value if first is None else first
    return first if first is not None else value


def _invalid_utf8(raw: bytes) -> Problem:
    """The problem for a segment that is not UTF-8: a dot segment if lenient decoders would read one."""
    lenient = _OVERLONG_ASCII.sub(lambda m: _overlong_char(m.group()), raw).decode("utf-8", errors="replace")
    if any(p.split(";", 1)[0] in (".", "..") for p in re.split(r"[/\\]", lenient)):
        return _dot_forbidden()
    return Problem("invalid_path", "the path holds a percent-encoded byte sequence that is not UTF-8")


def _overlong_char(sequence: bytes) -> bytes:
    """The ASCII character an overlong UTF-8 sequence spells (``c0 ae`` is '.')."""
    value = sequence[0] & (0x1F, 0x0F, 0x07)[len(sequence) - 2]
    for byte in sequence[1:]:
        value = value << 6 | byte & 0x3F
    return bytes((value,))


def forwarded_query(raw_query: str) -> str:
    """The query string as sent, minus credential-like parameters and ``_method`` (never forwarded)."""
    if not raw_query:
        return ""
    return "&".join(
        item for item in raw_query.split("&")
        if item and unquote_plus(item.partition("=")[0]).lower() not in _QUERY_DROP
    )


def is_websocket(request: web.Request) -> bool:
    """Whether the request asks for a WebSocket upgrade (what the view then passes through as one)."""
    return request.method == "GET" and request.headers.get("Upgrade", "").strip().lower() == "websocket"


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a module is reached: origin and base path, with credentials taken out of the URL."""

    origin: str
    base_path: str
    auth: aiohttp.BasicAuth | None
    host: str = ""
    port: int = 0
    plain: bool = False  # plain HTTP: eligible for the lean GET path

    @classmethod
    def parse(cls, address: str) -> Upstream:
        url = URL(address)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("not an http(s) address")
        auth = aiohttp.BasicAuth(url.user or "", url.password or "") if url.user or url.password else None
        return cls(str(url.origin()), url.raw_path.rstrip("/"), auth, url.host, url.port or 80, url.scheme == "http")

    def get_head(self, rest: str, query: str, headers: CIMultiDict[str], auth: aiohttp.BasicAuth | None) -> bytes:
        """A GET's request head as it goes on the wire (what aiohttp's client would send for it)."""
        parts = [f"GET {self.base_path}/{rest}{'?' + query if query else ''} HTTP/1.1\r\n"
                 f"Host: {self.origin.partition('://')[2]}\r\n"]
        parts += [f"{name}: {value}\r\n" for name, value in headers.items()]
        if auth is not None:
            parts.append(f"Authorization: {auth.encode()}\r\n")
        parts.append("\r\n")
        text = "".join(parts)
        if text.count("\n") != len(parts) + 1 or text.count("\r") != len(parts) + 1:
            raise ValueError("a header holds a line break")
        return text.encode("utf-8", "surrogateescape")

    def url(self, rest: str, query: str) -> URL:
        """The module's URL for a proxied path (kept exactly as the client encoded it)."""
        return URL(f"{self.origin}{self.base_path}/{rest}{'?' + query if query else ''}", encoded=True)

    def public_location(self, location: str, service: str) -> str:
        """A ``Location`` into the module, as the gateway's proxy path; others unchanged."""
        for base in (f"{self.origin}{self.base_path}/", f"{self.origin}{self.base_path}"):
            after = location[len(base):]
            if location.startswith(base) and (base.endswith("/") or after[:1] in ("", "?", "#")):
                return f"{PROXY_ROOT}/{service}/{after.lstrip('/')}"
        return location


# --------------------------------------------------------------------------- headers


class TrustedProxies:
    """``TENTACULO_TRUSTED_PROXIES``: addresses whose X-Forwarded-* headers are believed."""

    def __init__(self, items: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(i, strict=False) for i in items)

    def __contains__(self, address: object) -> bool:
        if not self._networks or not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)


def _connection_named(headers: CIMultiDictProxy[str]) -> set[str]:
    """Header names listed in ``Connection``: hop-by-hop too (RFC 9110 section 7.6.1)."""
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


def _hop_by_hop(name: str, named: set[str]) -> bool:
    lower = name.lower()
    return lower in HOP_BY_HOP or lower.startswith("proxy-") or lower in named


def upstream_headers(
    request: web.Request,
    *,
    correlation_id: str,
    credential: str | None,
    trusted: TrustedProxies,
    public: tuple[str, str] | None = None,
) -> CIMultiDict[str]:
    """The headers to send upstream; ``public`` is (scheme, host) of ``TENTACULO_PUBLIC_URL``."""
    inbound = request.headers
    named = _connection_named(inbound)
    out: CIMultiDict[str] = CIMultiDict()
    peer = request.remote or ""
    believe = peer in trusted
    for name, value in inbound.items():
        lower = name.lower()
        if lower in _REQUEST_DROP or _hop_by_hop(name, named) or (lower in _FORWARDING and not believe):
            continue
        if lower == "x-forwarded-for":
            continue  # rebuilt below
        out.add(name, value)
    chain = ", ".join(inbound.getall("X-Forwarded-For", ())) if believe else ""
    out["X-Forwarded-For"] = f"{chain}, {peer}" if chain else peer
    if public is not None:
        out["X-Forwarded-Proto"], out["X-Forwarded-Host"] = public
    elif "X-Forwarded-Proto" not in out:  # still there only when a trusted proxy sent it
        out["X-Forwarded-Proto"] = request.scheme
    # Otherwise X-Forwarded-Host is a trusted proxy's or absent: the Host header is whatever the
    # client wrote, and a module building links from it would send users to the client's choice.
    out["X-Correlation-ID"] = correlation_id
    if credential:
        out["Authorization"] = f"Bearer {credential}"
    return out


def client_headers(upstream: CIMultiDictProxy[str], target: Upstream, service: str) -> CIMultiDict[str]:
    """The module's response headers as the client gets them: sandboxed, nothing that acts on the origin."""
    named = _connection_named(upstream)
    out: CIMultiDict[str] = CIMultiDict(SANDBOXED)
    for name, value in upstream.items():
        lower = name.lower()
        if lower in _RESPONSE_DROP or lower.startswith(_RESPONSE_DROP_PREFIXES) or lower in named:
            continue
        if lower in ("location", "content-location"):
            value = target.public_location(value, service)
        out.add(name, value)
    return out


# --------------------------------------------------------------------------- request body


class RequestBody:
    """The client's body streamed upstream chunk by chunk, at most ``limit`` bytes.

    Records why it stopped early, so the caller can tell a client that went away or sent too
    much from a module that failed.
    """

    def __init__(self, content: aiohttp.StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self.sent = 0
        self.too_large = False
        self.client_failed = False
        self.timed_out: RequestTimeout | None = None  # the client sent too slowly (the gateway's 408)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._content.iter_chunked(CHUNK):
                self.sent += len(chunk)
                if self.sent > self._limit:
                    self.too_large = True
                    raise BodyTooLarge(f"over {self._limit} bytes")
                yield chunk
        except RequestTimeout as exc:
            self.timed_out = exc
            raise
        except (OSError, aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError,
                asyncio.IncompleteReadError):
            self.client_failed = True
            raise


# --------------------------------------------------------------------------- the lean GET path

# Most proxied calls are a bodyless GET over plain HTTP: those skip aiohttp's client machinery and
# go over a small keep-alive pool of their own, parsed by httptools (llhttp). Everything else
# (bodies, HEAD, WebSocket, TLS) keeps using aiohttp.
_HEAD_LIMIT = 80 * 1024  # status line plus headers, as aiohttp's client limits allow
_PAUSE_AT = 4 * CHUNK  # stop reading from the module while this much body waits for the client
_RESUME_AT = CHUNK


class InvalidResponse(Exception):
    """The module answered with something that is not an HTTP/1.1 response."""


class ModuleResponse:
    """A module's answer on the lean path: status and headers, the body read as it arrives.

    Offers what the view uses of ``aiohttp.ClientResponse``: ``status``, ``headers``,
    ``content_length``, ``read()``, ``content.readany()``/``is_eof()``, ``release()``, ``close()``.
    """

    __slots__ = ("_buffered", "_chunks", "_conn", "_error", "_head", "_lost", "_pool", "_raw_headers",
                 "_read_timeout", "_seen", "_settled", "_waiter", "complete", "headers", "keep_alive", "received",
                 "status")

    def __init__(self, pool: _ModulePool, conn: _ModuleConnection, read_timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._pool = pool
        self._conn = conn
        self._read_timeout = read_timeout
        self._head: asyncio.Future[None] = loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._seen = 0
        self._error: BaseException | None = None
        self._lost = False
        self._settled = False
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.received = False  # any byte of the answer arrived (after that, no retry)
        self.complete = False
        self.keep_alive = False

    # -- fed by the connection

    def _data(self, data: bytes) -> None:
        self.received = True
        if not self._head.done():
            self._seen += len(data)
        try:
            self._conn.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(InvalidResponse(str(exc)))
            return
        if not self._head.done() and self._seen > _HEAD_LIMIT:
            self._fail(InvalidResponse("response head too large"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._conn.parser.get_status_code()
        if 100 <= status < 200:
            self._raw_headers.clear()  # an interim answer: the real one follows
            return
        if self._head.done():
            self._fail(InvalidResponse("a second response to one request"))
            return
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(
            (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for n, v in self._raw_headers
        ))
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _PAUSE_AT and self._conn.transport is not None:
            self._conn.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of an interim answer
        self.complete = True
        self.keep_alive = self._conn.parser.should_keep_alive()  # read here: the parser resets after
        self._wake()

    def _connection_lost(self) -> None:
        self._lost = True
        if self.complete:
            return
        if self._head.done() and "Content-Length" not in self.headers and "Transfer-Encoding" not in self.headers:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        else:
            self._fail(aiohttp.ServerDisconnectedError() if not self._head.done()
                       else aiohttp.ClientPayloadError("the module closed the connection mid-body"))

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved: whoever waits re-raises it
        self._wake()
        self._conn.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the caller

    async def wait_head(self) -> None:
        async with asyncio.timeout(self._read_timeout):
            await self._head

    @property
    def content(self) -> ModuleResponse:
        return self

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    def is_eof(self) -> bool:
        return self.complete and not self._chunks

    async def readany(self) -> bytes:
        """The body received so far (waits for some); ``b""`` at its end."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._read_timeout):
                    await self._waiter
            finally:
                self._waiter = None
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if self._buffered > _PAUSE_AT and self._conn.transport is not None and not self._lost:
            self._conn.transport.resume_reading()
        self._buffered = 0
        return data

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Done with a body read to its end: the connection goes back to the pool if it may."""
        if not self._settled:
            self._settled = True
            keep = self.complete and self.keep_alive and self._error is None and not self._lost
            self._pool.put_back(self._conn, keep)

    def close(self) -> None:
        """Done early: the connection is closed (an unread body is never reused)."""
        if not self._settled:
            self._settled = True
            self._pool.put_back(self._conn, False)


class _ModuleConnection(asyncio.Protocol):
    """One kept-alive connection to a module; the current response gets its parsed bytes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: ModuleResponse | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0  # loop time it was last put back in the pool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted any more
            return
        self.response._data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response._connection_lost()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # httptools callbacks, passed on to the response being read
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response.on_body(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response.on_message_complete()


class _ModulePool:
    """At most ``limit`` connections (in use or idle) to one module's host and port.

    Idle connections are reused newest first, so after a burst the oldest sit unused: each call
    that puts a connection back closes those idle for longer than ``IDLE_SECONDS``.
    """

    IDLE_SECONDS = 15.0  # as aiohttp's client keeps an idle connection

    def __init__(self, host: str, port: int, limit: int) -> None:
        self._host = host
        self._port = port
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_ModuleConnection] = []

    async def acquire(self, pool_wait: float, connect: float) -> tuple[_ModuleConnection, bool]:
        """A connection and whether it was reused; its slot is held until ``put_back``."""
        if self._slots.locked():
            try:
                async with asyncio.timeout(pool_wait):
                    await self._slots.acquire()
            except TimeoutError:
                raise aiohttp.ConnectionTimeoutError() from None
        else:
            await self._slots.acquire()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
        try:
            async with asyncio.timeout(connect):
                _, conn = await asyncio.get_running_loop().create_connection(
                    _ModuleConnection, self._host, self._port
                )
        except TimeoutError:
            self._slots.release()
            raise aiohttp.ConnectionTimeoutError() from None
        except BaseException:
            self._slots.release()
            raise
        return conn, False

    def put_back(self, conn: _ModuleConnection, keep: bool) -> None:
        conn.response = None
        if keep and not conn.closed:
            idle = self._idle
            conn.idle_since = now = asyncio.get_running_loop().time()
            idle.append(conn)
            while now - idle[0].idle_since > self.IDLE_SECONDS:  # the oldest first; conn itself stays
                idle.pop(0).abort()
        else:
            conn.abort()
        self._slots.release()

    def close(self) -> None:
        for conn in self._idle:
            conn.abort()
        self._idle.clear()


# --------------------------------------------------------------------------- the transport


class ModuleProxy:
    """One bounded connection pool to the modules and the calls made over it; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.trusted = TrustedProxies(settings.trusted_proxies)
        self.public = public_origin(settings.public_url) if settings.public_url else None
        self._session: aiohttp.ClientSession | None = None
        self._ws_session: aiohttp.ClientSession | None = None
        self._upstreams: dict[str, Upstream] = {}
        self._pools: dict[tuple[str, int], _ModulePool] = {}
        # One ClientTimeout per distinct module setting, built once rather than on every call.
        self._timeouts: dict[ModuleTimeouts | None, aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        # WebSockets hold their connection for as long as they live: they get a pool of their own
        # (same bounds), so open sockets never starve plain calls of connections.
        self._session, self._ws_session = self._new_session(), self._new_session()

    def _new_session(self) -> aiohttp.ClientSession:
        s = self.settings
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.proxy_pool_size, limit_per_host=s.proxy_pool_per_module,
                                           ttl_dns_cache=60),
            timeout=self.timeout(None),
            cookie_jar=aiohttp.DummyCookieJar(),  # one session serves every operator: keep no cookies
            auto_decompress=False,  # bodies pass through as the module encoded them
            trust_env=False,
            skip_auto_headers=_AUTO_HEADERS,
            max_field_size=32 * 1024,
            max_line_size=16 * 1024,
        )

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        for session in (self._session, self._ws_session):
            if session is not None:
                await session.close()
        self._session = self._ws_session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "ModuleProxy.start() was not awaited"
        return self._session

    def upstream(self, address: str) -> Upstream:
        """The parsed base address (cached); ValueError for a non-HTTP one."""
        found = self._upstreams.get(address)
        if found is None:
            if len(self._upstreams) >= 1024:
                self._upstreams.clear()
            found = self._upstreams[address] = Upstream.parse(address)
        return found

    def limits(self, timeouts: ModuleTimeouts | None) -> tuple[float, float]:
        """(connect, read) seconds for a module."""
        t = timeouts or ModuleTimeouts()
        return (t.connect or self.settings.proxy_connect_timeout, t.read or self.settings.proxy_read_timeout)

    def timeout(self, timeouts: ModuleTimeouts | None) -> aiohttp.ClientTimeout:
        """The client timeouts for a module (cached: settings do not change while running)."""
        found = self._timeouts.get(timeouts)
        if found is None:
            connect, read = self.limits(timeouts)
            found = self._timeouts[timeouts] = aiohttp.ClientTimeout(
                total=None, connect=self.settings.proxy_pool_wait + connect, sock_connect=connect, sock_read=read
            )
        return found

    async def send(
        self,
        service: str,
        method: str,
        target: Upstream,
        rest: str,
        query: str,
        headers: CIMultiDict[str],
        *,
        body: RequestBody | None,
        auth: aiohttp.BasicAuth | None,
        timeouts: ModuleTimeouts | None,
    ) -> aiohttp.ClientResponse | ModuleResponse:
        """Send the request and return the module's response with its body still unread.

        The caller owns the response: ``release()`` it when the body was relayed in full,
        ``close()`` it otherwise. Raises UpstreamUnavailable, UpstreamTimeout, or BodyTooLarge.
        """
        retries = self.settings.proxy_retries if method in IDEMPOTENT and body is None else 0
        if body is None and method == "GET" and target.plain:
            return await self._get(service, target, target.get_head(rest, query, headers, auth), retries, timeouts)
        url = target.url(rest, query)
        timeout = self.timeout(timeouts)
        attempt = 0
        while True:
            try:
                return await self.session.request(
                    method, url, headers=headers, data=body.chunks() if body is not None else None, auth=auth,
                    timeout=timeout, allow_redirects=False,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                if body is not None and body.too_large:
                    raise BodyTooLarge() from None
                retryable = isinstance(exc, (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)) and not \
                    isinstance(exc, aiohttp.ClientSSLError)
                if not retryable or attempt >= retries:
                    raise self.failure(service, exc, timeouts) from None
                attempt += 1
                log.info("proxy_retry", service=service, attempt=attempt, error=type(exc).__name__)
            await asyncio.sleep(RETRY_BACKOFF * attempt)

    async def _get(
        self, service: str, target: Upstream, head: bytes, retries: int, timeouts: ModuleTimeouts | None
    ) -> ModuleResponse:
        """The lean path: a bodyless GET over the module's own keep-alive pool."""
        connect, read = self.limits(timeouts)
        key = (target.host, target.port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _ModulePool(target.host, target.port, self.settings.proxy_pool_per_module)
        attempt = 0
        while True:
            response = None
            try:
                conn, _ = await pool.acquire(self.settings.proxy_pool_wait, connect)
                response = conn.response = ModuleResponse(pool, conn, read)
                if conn.closed or conn.transport is None:
                    raise aiohttp.ServerDisconnectedError()
                conn.transport.write(head)
                await response.wait_head()
                return response
            except (aiohttp.ClientError, OSError, InvalidResponse) as exc:
                if response is not None:
                    response.close()
                # Retried only when nothing of an answer arrived: refused, reset, a dropped kept-alive connection.
                retryable = not isinstance(exc, (TimeoutError, InvalidResponse)) and not (
                    response is not None and response.received)
                if not retryable or attempt >= retries:
                    raise self.failure(service, exc, timeouts) from None
                attempt += 1
                log.info("proxy_retry", service=service, attempt=attempt, error=type(exc).__name__)
            except BaseException:
                if response is not None:
                    response.close()  # cancelled (the client left): the module's call ends with it
                raise
            await asyncio.sleep(RETRY_BACKOFF * attempt)

    def failure(self, service: str, exc: BaseException, timeouts: ModuleTimeouts | None) -> Problem:
        """The problem a client sees for ``exc``: names the module and the kind of failure, never its address."""
        connect, read = self.limits(timeouts)
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamTimeout(f"module {service!r} could not be connected to within {connect:g} s "
                                   f"(plus up to {self.settings.proxy_pool_wait:g} s waiting for a free connection)",
                                   service=service)
        if isinstance(exc, (aiohttp.SocketTimeoutError, TimeoutError)):
            return UpstreamTimeout(f"module {service!r} did not answer within {read:g} s", service=service)
        if isinstance(exc, aiohttp.ClientSSLError):
            return UpstreamUnavailable(f"module {service!r} failed the TLS handshake", service=service)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamUnavailable(f"module {service!r} is unreachable: {connect_reason(exc)}", service=service)
        if isinstance(exc, aiohttp.WSServerHandshakeError):
            return UpstreamUnavailable(f"module {service!r} refused the WebSocket upgrade (HTTP {exc.status})",
                                       service=service, upstream_status=exc.status)
        if isinstance(exc, (aiohttp.ClientResponseError, InvalidResponse)):
            return UpstreamUnavailable(f"module {service!r} sent an invalid HTTP response", service=service)
        if isinstance(exc, aiohttp.ClientPayloadError):
            return UpstreamUnavailable(f"module {service!r} broke off its response", service=service)
        if isinstance(exc, OSError) and not isinstance(exc, aiohttp.ClientError):
            return UpstreamUnavailable(f"module {service!r} is unreachable: {connect_reason(exc)}", service=service)
        return UpstreamUnavailable(f"module {service!r} closed the connection before answering", service=service)

    async def websocket(
        self,
        service: str,
        url: URL,
        headers: CIMultiDict[str],
        *,
        protocols: tuple[str, ...],
        auth: aiohttp.BasicAuth | None,
        timeouts: ModuleTimeouts | None,
    ) -> aiohttp.ClientWebSocketResponse:
        """Open the module's side of a WebSocket (handshake bounded by the module's timeouts)."""
        connect, read = self.limits(timeouts)
        try:
            async with asyncio.timeout(self.settings.proxy_pool_wait + connect + read):
                assert self._ws_session is not None, "ModuleProxy.start() was not awaited"
                return await self._ws_session.ws_connect(
                    url, headers=headers, protocols=protocols, auth=auth, autoping=True, heartbeat=WS_HEARTBEAT,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=WS_CLOSE_TIMEOUT),
                    max_msg_size=WS_MAX_MESSAGE,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.failure(service, exc, timeouts) from None


# --------------------------------------------------------------------------- WebSocket pumping


def _sendable(code: int | None) -> int:
    """A close code that may go on the wire: an abrupt end (1006, 1015, unknown) becomes 1014 "bad gateway"."""
    if not code or code in (1005, 1006, 1015):
        return WSCloseCode.BAD_GATEWAY
    return code


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    closes: dict[str, tuple[int, bytes]],
    label: str,
) -> None:
    """Copy frames from ``source`` to ``sink`` until ``source`` closes, then close ``sink`` with its code.

    The code and reason ``source`` closed with are kept in ``closes[label]``, so that a cancelled
    pump's work can be finished.
    """
    try:
        while True:
            msg = await source.receive()
            if msg.type == WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            elif msg.type == WSMsgType.CLOSE:
                code = msg.data if msg.data and msg.data != 1005 else WSCloseCode.OK  # 1005: closed without a code
                reason = msg.extra if isinstance(msg.extra, str) else ""
                closes[label] = (_sendable(code), reason.encode()[:123].decode("utf-8", errors="ignore").encode())
                break
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                closes.setdefault(label, (_sendable(source.close_code), b""))
                break
    except ConnectionError:
        return  # the sink went away: its own pump closes the other side
    if not sink.closed:
        code, message = closes[label]
        with contextlib.suppress(ConnectionError):
            await sink.close(code=code, message=message)


async def pump_websockets(client: web.WebSocketResponse, module: aiohttp.ClientWebSocketResponse) -> None:
    """Relay frames both ways until either side closes; the close code crosses over.

    The server cancels this when the client's connection ends (which is also how a clean close
    ends); the module is then still told the client's close code.
    """
    closes: dict[str, tuple[int, bytes]] = {}
    to_module = asyncio.create_task(_pump(client, module, closes, "client"), name="ws-client-to-module")
    to_client = asyncio.create_task(_pump(module, client, closes, "module"), name="ws-module-to-client")
    try:
        _, pending = await asyncio.wait({to_module, to_client}, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            # One side closed and the other was told: give its pump the close handshake's time.
            await asyncio.wait(pending, timeout=WS_CLOSE_TIMEOUT)
    finally:
        for task in (to_module, to_client):
            task.cancel()
        await asyncio.gather(to_module, to_client, return_exceptions=True)
        if not module.closed:
            code, message = closes.get("client", (WSCloseCode.GOING_AWAY, b""))
            with contextlib.suppress(ConnectionError):
                await module.close(code=code, message=message)
