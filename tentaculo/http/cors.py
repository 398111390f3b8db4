"""Calls from pages on other origins (CORS), for the exact origins of ``TENTACULO_CORS_ORIGINS``.

Two small pieces instead of aiohttp-cors (0.8.1), which was tried first and does not fit:

* it refuses a resource with a ``*`` route (the proxy's) unless its handler is a class-based view;
* its preflight answers are routes of their own, so they would pass through auth and be refused
  there (a browser never sends a token with a preflight), and every route would list OPTIONS in
  its 405's ``Allow``;
* it never sends ``Vary: Origin``, and asserts that no ``Access-Control-Allow-Origin`` is set
  before its hook runs;
* its hook costs 7-8 µs of CPU per request from a listed origin and 3-4 µs per request without
  ``Origin``, against under 1 µs for ``cors_headers`` plus 0.2 µs for ``cors_preflight``
  (``python -m bench.cors``, aiohttp-cors 0.8.1). Small next to a whole request; the misfits
  above decided.

``cors_preflight`` (a middleware inside audit, outside auth) answers preflights: 204 with what
the API accepts for a listed origin, ``403 forbidden`` without any CORS header for any other,
never forwarded to a module. ``cors_headers`` (``on_response_prepare``, so streamed answers get
them too) grants a listed origin every answer. Tokens travel in headers, never cookies, so
credentials mode is never granted, and ``*`` is never sent.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from tentaculo.http.errors import Problem

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]

# The proxy route accepts any method; these are the ones a page can have a reason to send.
ALLOW_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# The request headers the API reads that are not CORS-safelisted.
ALLOW_HEADERS = "X-VX11-Token, Authorization, Content-Type, Last-Event-ID, X-Correlation-ID, X-VX11-Confirm"
# Response headers a page may read besides the safelisted ones.
EXPOSE_HEADERS = "X-Correlation-ID, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"
# Chromium caps a preflight's cache at 2 h. A long cache is safe: an origin taken off the list
# loses Access-Control-Allow-Origin on every answer at once, which blocks the page anyway.
MAX_AGE = "7200"
DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|[0-9a-f:.]*:[0-9a-f:.]*")


def normalise_origin(text: str) -> str:
    """``text`` as a browser writes it in ``Origin``: scheme and host in lower case, no default port.

    Raises ValueError saying what is wrong: a scheme other than http/https, no host, a path,
    query, fragment or user, a bad port, or ``*``.
    """
    text = text.strip()
    if text == "*":
        raise ValueError("'*' is not accepted: list each origin, e.g. http://localhost:5173")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} is not an origin: bad host or port") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{text!r} is not an origin: write scheme://host[:port] with http or https")
    if parts.path or parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"{text!r} is not an origin: no path, not even '/', no query or fragment")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r} is not an origin: no user or password")
    host = parts.hostname  # lower case, IPv6 without brackets
    try:
        host = host.encode("idna").decode("ascii")  # browsers send international names in punycode
    except UnicodeError:
        raise ValueError(f"{text!r} is not an origin: the host name is not valid") from None
    if not _HOST.fullmatch(host) or port == 0:
        raise ValueError(f"{text!r} is not an origin: bad host or port")
    if ":" in host:
        host = f"[{host}]"
    shown_port = "" if port is None or port == DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{shown_port}"


def is_preflight(request: web.BaseRequest) -> bool:
    """A browser's CORS preflight: OPTIONS with ``Origin`` and ``Access-Control-Request-Method``."""
    headers = request.headers
    return request.method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers


async def announced_route(request: web.Request) -> str | None:
    """For a preflight, the route template of the request it announces (None: not routed, or no preflight).

    A preflight is audited as routed when the call it asks about would be: most routes do not
    accept OPTIONS themselves, so aiohttp's own match is a 405 that says nothing.
    """
    if not is_preflight(request):
        return None
    method = request.headers["Access-Control-Request-Method"].strip()
    if not method.isalpha():
        return None
    match = await request.app.router.resolve(request.clone(method=method))
    if match.http_exception is not None:
        return None
    resource = match.route.resource
    return resource.canonical if resource is not None else None


def cors_preflight(origins: tuple[str, ...]) -> Middleware:
    """Answers preflights itself, before auth: a browser sends no token with them."""
    allowed = frozenset(origins)
    granted = {
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Max-Age": MAX_AGE,
    }

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" or not is_preflight(request):
            return await handler(request)
        if request.headers["Origin"] not in allowed:
            # No CORS header on this answer (cors_headers adds none): the browser blocks the call.
            raise Problem("forbidden", "this origin may not call the API from a browser; "
                                       "the gateway's TENTACULO_CORS_ORIGINS lists those that may")
        return web.Response(status=204, headers=granted)

    return preflight


def cors_headers(origins: tuple[str, ...]) -> ResponseHook:
    """on_response_prepare: a listed origin may read every answer (errors and streams included).

    While any origin is listed, every answer carries ``Vary: Origin``, so that no cache hands an
    answer made for one origin (or none) to another. A grant that something else put on the
    answer (a proxied module's ``*``, its credentials) is removed: the grant is the gateway's alone.
    """
    allowed = frozenset(origins)

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        if "Access-Control-Allow-Origin" in headers or "Access-Control-Allow-Credentials" in headers:
            for name in [k for k in headers if k.lower().startswith("access-control-")]:
                headers.popall(name, None)
        if not allowed:
            return
        vary = headers.get("Vary")
        if vary is None:
            headers["Vary"] = "Origin"
        elif not any(item.strip().lower() in ("origin", "*") for item in vary.split(",")):
            headers["Vary"] = f"{vary}, Origin"
        origin = request.headers.get("Origin")
        if origin is not None and origin in allowed:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS

    return add
