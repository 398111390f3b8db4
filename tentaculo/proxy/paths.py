"""Which module path a proxied call may reach, and which query parameters go with it.

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

Credential-like query parameters (``ticket``, ``token``, ...) and ``_method`` never go upstream.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote, unquote_plus, unquote_to_bytes

from tentaculo.auth.tokens import QUERY_TOKEN_NAMES, TICKET_PARAM
from tentaculo.files.sandbox import DECODE_LAYERS as SANDBOX_DECODE_LAYERS
from tentaculo.http.errors import Problem

CREDENTIAL_PARAMS = QUERY_TOKEN_NAMES | {TICKET_PARAM}
# Query parameters never forwarded: credentials, and ``_method``, which some frameworks take as the method.
_QUERY_DROP = CREDENTIAL_PARAMS | {"_method"}

_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Layers of percent-encoding looked through, as the file explorer does (tentaculo/files/sandbox.py).
DECODE_LAYERS = SANDBOX_DECODE_LAYERS
# Overlong UTF-8 forms of an ASCII character (2, 3 and 4 bytes): invalid, but decoders that accept
# them read %c0%ae as '.' and %c0%af as '/'.
_OVERLONG_ASCII = re.compile(rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80\x81][\x80-\xbf]|\xf0\x80[\x80\x81][\x80-\xbf]")



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

