"""Problem codes of the contract and the exception that carries them to the error middleware."""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any

import aiohttp
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

# code -> (HTTP status, title). The contract fixes the codes; statuses follow RFC 9110.
PROBLEMS: dict[str, tuple[int, str]] = {
    "auth_required": (401, "Authentication required"),
    "invalid_token": (401, "Invalid token"),
    "forbidden": (403, "Forbidden"),
    "not_found": (404, "Not found"),
    "model_not_found": (404, "Model not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "bad_request": (400, "Bad request"),
    "conflict": (409, "Conflict"),
    "invalid_json": (400, "Invalid JSON"),
    "validation_error": (422, "Validation error"),
    "request_timeout": (408, "Request timeout"),
    "payload_too_large": (413, "Payload too large"),
    "rate_limited": (429, "Too many requests"),
    "feature_disabled": (503, "Feature disabled"),
    "module_unconfigured": (503, "Module not configured"),
    "provider_unavailable": (503, "Provider unavailable"),
    "shutting_down": (503, "Shutting down"),
    "upstream_unavailable": (502, "Upstream unavailable"),
    "upstream_timeout": (504, "Upstream timeout"),
    "path_forbidden": (403, "Path forbidden"),
    "confirmation_required": (428, "Confirmation required"),
    "confirmation_invalid": (403, "Confirmation invalid"),
    "invalid_path": (400, "Invalid path"),
    "internal_error": (500, "Internal error"),
}

PROBLEM_TYPE_BASE = "https://vx11.dev/problems/"


class Problem(Exception):
    """A failure the client should see as ``application/problem+json`` with ``code``."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if code not in PROBLEMS:
            raise ValueError(f"unknown problem code {code!r}")
        super().__init__(detail)
        self.code = code
        self.status = status or PROBLEMS[code][0]
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self, correlation_id: str) -> dict[str, Any]:
        """The RFC 9457 document for this problem."""
        return problem_body(self.code, self.detail, correlation_id, status=self.status, **self.extra)


def problem_body(
    code: str, detail: str, correlation_id: str, *, status: int | None = None, **extra: Any
) -> dict[str, Any]:
    """Build a problem document for ``code``."""
    default_status, title = PROBLEMS[code]
    return {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status or default_status,
        "detail": detail,
        "code": code,
        "correlation_id": correlation_id,
        **extra,
    }


class RequestTimeout(Problem):
    """The client sent its request body too slowly (408); the connection closes after the answer."""

    def __init__(self, detail: str) -> None:
        super().__init__("request_timeout", detail)


class ValidationFailed(Problem):
    """Request body or parameters failed validation; ``errors`` names each field."""

    def __init__(self, errors: list[dict[str, str]], detail: str = "the request is not valid") -> None:
        super().__init__("validation_error", detail, errors=errors)


# Routes of the OpenAI-compatible face: their problems also carry OpenAI's ``error`` member.
OPENAI_PREFIX = "/v1/"


def openai_error(problem: Problem) -> dict[str, Any]:
    """The ``error`` member OpenAI's SDKs read: message, type, code, param (and attempts, when known).

    The SDKs show only ``message``: for a validation failure it names each field and what is wrong
    with it, since the problem's detail is a summary.
    """
    errors = problem.extra.get("errors")
    message = problem.detail
    if errors and problem.code == "validation_error":
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    error: dict[str, Any] = {"message": message, "type": problem.code, "code": problem.code,
                             "param": errors[0]["field"] if errors else None}
    if "attempts" in problem.extra:
        error["attempts"] = problem.extra["attempts"]
    return error


def unavailable(detail: str) -> Problem:
    """The answer to a call that needs a dependency while it is away: 503 with a time to come back."""
    return Problem("upstream_unavailable", detail, status=503, headers={"Retry-After": "2"})


def database_unreachable(detail: str = "PostgreSQL is unreachable; try again shortly") -> Problem:
    """The answer to a call that needs PostgreSQL while it is away: 503 with a time to come back."""
    return unavailable(detail)


def failure_reason(exc: BaseException) -> str:
    """An exception told for a status, a readiness check or a log line: its type and what it says.

    An error of the operating system, or one wrapping it (as redis-py's and asyncpg's do), is told
    by its errno only: their messages name the peer's address or socket path.
    """
    name = type(exc).__name__
    os_error = _os_error_in(exc)
    if isinstance(os_error, ssl.SSLCertVerificationError):
        # Its message may name the host the certificate was not valid for: told by kind only.
        return f"{name}: TLS handshake failed: the server's certificate is not trusted"
    if isinstance(os_error, ssl.SSLError):
        return f"{name}: TLS handshake failed"
    if isinstance(os_error, TimeoutError):
        return f"{name}: timed out"
    if os_error is not None:
        return f"{name}: {connect_reason(os_error)}"
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return name  # redis-py writes "Error 111 connecting to <host>:<port>" and does not always chain the cause
    text = str(exc)
    return f"{name}: {text}" if text else name


def _os_error_in(exc: BaseException | None, depth: int = 5) -> OSError | None:
    """The first OSError in ``exc``'s chain of causes (client libraries re-raise theirs in layers)."""
    while exc is not None and depth > 0:
        if isinstance(exc, OSError):
            return exc
        exc, depth = exc.__cause__ or exc.__context__, depth - 1
    return None


def connect_reason(exc: BaseException) -> str:
    """Why a connection failed, from its errno only: the OS message may carry the peer's address."""
    os_error = getattr(exc, "os_error", exc)  # aiohttp's connector errors wrap the OSError
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(os_error, socket.gaierror):
        return "its host name does not resolve"
    if isinstance(os_error, OSError) and os_error.errno:
        return os.strerror(os_error.errno).lower()
    return "connection failed"
