"""Which headers cross the proxy, both ways, and who is believed about where a call came from.

Request
-------
The method, the body and every end-to-end header go upstream, with these changes:

* hop-by-hop headers are dropped: ``Connection`` and every header it names, ``Keep-Alive``,
  ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade`` (and ``Expect``, which
  the gateway answers itself);
* the operator's credentials never leave: ``X-VX11-Token`` and ``Authorization`` are dropped
  (credential-like query parameters too: see ``paths.py``); the module's own credential
  (``TENTACULO_SERVICE_<NAME>_TOKEN``) is sent as ``Authorization: Bearer``;
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

Response
--------
Status, headers and body come back as the module sent them, compressed bodies included
(nothing is decoded), minus the hop-by-hop headers and ``Server``. A ``Location`` pointing
into the module's base address is rewritten to the gateway's proxy path, so internal addresses
do not reach clients.

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
"""

from __future__ import annotations

import re

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tentaculo.http.trusted import TrustedProxies
from tentaculo.proxy.call import Upstream

PROXY_ROOT = "/operator/api/proxy"
# A reference a browser resolves to another origin: a scheme, or "//", "/\\", "\\" first (after
# the spaces and control characters browsers strip).
_LEAVES_ORIGIN = re.compile(r"[\x00-\x20]*([A-Za-z][A-Za-z0-9+.-]*:|[/\\][\t\n\r]*[/\\]|\\)")
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
            public = public_location(value, target, service)
            if public is None:
                continue  # it would send the client off the gateway's origin
            value = public
        out.add(name, value)
    return out



def public_location(location: str, target: Upstream, service: str) -> str | None:
    """A ``Location`` as the client may follow it on the gateway's origin.

    Into the module (absolute, or a path under its base path): the gateway's proxy path for it.
    A relative reference, or a path of the gateway's origin: unchanged. Anywhere else (another
    origin, a scheme, ``//host``, ``/\\host``): None, so the header is dropped; passed on, it would
    make the gateway's origin an open redirect for whoever controls a module's answers.
    """
    for base in (f"{target.origin}{target.base_path}/", f"{target.origin}{target.base_path}"):
        after = location[len(base):]
        if location.startswith(base) and (base.endswith("/") or after[:1] in ("", "?", "#")):
            return f"{PROXY_ROOT}/{service}/{after.lstrip('/')}"
    if _LEAVES_ORIGIN.match(location):
        return None
    base = target.base_path
    if location.startswith("/") and base and (location == base or location.startswith((base + "/", base + "?"))):
        return f"{PROXY_ROOT}/{service}/{location[len(base):].lstrip('/')}"
    return location
