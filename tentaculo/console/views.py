"""Routes of the console: the shell page for every view address and its static assets.

Assets live under ``/operator/static/<version>/``, where the version is a hash of every file
shipped in ``static/``: a browser may cache them for a year, and a new release is a new address.
The shell page (``index.html``) names that version, so it is never cached without a check.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from tentaculo.auth.tokens import PUBLIC, requires

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/operator"
API_PREFIX = "/operator/api/"
VERSION_PLACEHOLDER = "__STATIC__"

# Every console answer (page, assets, and their errors) carries these.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
IMMUTABLE = "public, max-age=31536000, immutable"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
    ".map": "application/json",
}
COMPRESSIBLE = (".js", ".mjs", ".css", ".svg", ".json", ".map", ".html", "")
# A view address is anything under /operator/ except the API and the assets.
VIEW_PATTERN = r"(?!api(?:/|$)|static(?:/|$)).+"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class Bundle:
    version: str
    assets: dict[str, Asset]
    index: Asset


def _asset(body: bytes, suffix: str) -> Asset:
    squeezed = gzip.compress(body, mtime=0) if suffix in COMPRESSIBLE and len(body) > 512 else None
    if squeezed is not None and len(squeezed) >= len(body):
        squeezed = None
    content_type = CONTENT_TYPES.get(suffix, "text/plain; charset=utf-8")
    return Asset(body, squeezed, content_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')


@functools.cache
def bundle(root: Path = STATIC_DIR) -> Bundle:
    """Every file under ``root`` read once; the version hashes all of them with their names."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha256()
    assets = {}
    for path in files:
        rel = path.relative_to(root).as_posix()
        body = path.read_bytes()
        digest.update(rel.encode() + b"\0" + body + b"\0")
        assets[rel] = _asset(body, path.suffix)
    version = digest.hexdigest()[:16]
    page = assets.pop("index.html").body.replace(VERSION_PLACEHOLDER.encode(), f"{PREFIX}/static/{version}".encode())
    return Bundle(version, assets, _asset(page, ".html"))


def _send(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    body, etag, encoding = asset.body, asset.etag, None
    if asset.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
        body, etag, encoding = asset.gzipped, asset.etag[:-1] + '-gz"', "gzip"
    headers = {"Cache-Control": cache_control, "ETag": etag, "Vary": "Accept-Encoding"}
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    response = web.Response(body=body, headers=headers)
    response.headers["Content-Type"] = asset.content_type
    return response


@requires(PUBLIC)
async def page(request: web.Request) -> web.Response:
    """The console's shell page, for every view address (so a reload keeps the view)."""
    return _send(request, bundle().index, "no-cache")


@requires(PUBLIC)
async def redirect(request: web.Request) -> web.Response:
    """``/operator`` is the console's overview at ``/operator/``."""
    raise web.HTTPPermanentRedirect(f"{PREFIX}/")


@requires(PUBLIC)
async def static(request: web.Request) -> web.Response:
    """A console asset; cached for a year under the current version, revalidated under any other."""
    found = bundle()
    asset = found.assets.get(request.match_info["path"])
    if asset is None:
        raise web.HTTPNotFound()
    current = request.match_info["version"] == found.version
    return _send(request, asset, IMMUTABLE if current else "no-cache")


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the CSP and framing headers on every console answer, errors included."""
    path = request.path
    if (path == PREFIX or path.startswith(PREFIX + "/")) and not (path + "/").startswith(API_PREFIX):
        response.headers.update(SECURITY_HEADERS)


def setup(app: web.Application) -> None:
    """Add the console's routes; call it after every ``/operator/api/`` route is added."""
    app.on_response_prepare.append(add_security_headers)
    app.router.add_get(PREFIX, redirect)
    app.router.add_get(PREFIX + "/", page)
    app.router.add_get(PREFIX + "/static/{version}/{path:.+}", static)
    app.router.add_get(PREFIX + "/{view:" + VIEW_PATTERN + "}", page)
