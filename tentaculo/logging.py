"""structlog setup: request context first, secrets scrubbed, JSON in production, console in development."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from typing import Any

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Keys whose values are secrets whatever they hold.
SECRET_KEYS = frozenset({"token", "authorization", "x-vx11-token", "password", "api_key", "secret", "ticket"})
REDACTED = "[redacted]"


class SecretScrubber:
    """Processor that blanks secret-named keys and any occurrence of a known secret value."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(s for s in secrets if s)

    def add(self, secrets: Iterable[str]) -> None:
        """Scrub these values too from now on."""
        self.secrets = tuple(dict.fromkeys((*self.secrets, *(s for s in secrets if s))))

    def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
        for key, value in event.items():
            if key.lower() in SECRET_KEYS:
                event[key] = REDACTED
            elif self.secrets and isinstance(value, str):
                for secret in self.secrets:
                    if secret in value:
                        value = value.replace(secret, REDACTED)
                event[key] = value
        return event


def _json_dumps(obj: Any, **_: Any) -> str:
    try:
        return orjson.dumps(obj, default=str).decode()
    except orjson.JSONEncodeError:
        # A client's bytes that are not UTF-8 reach strings as lone surrogates (a path, a header),
        # which orjson refuses; the standard library escapes them, so the line is still written.
        return json.dumps(obj, default=str, ensure_ascii=True)


def shared_processors(secrets: Iterable[str]) -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        SecretScrubber(secrets),
    ]


def redact_also(secrets: Iterable[str]) -> None:
    """Scrub these values too from every log line from now on: secrets known only later, such as a
    plugin's secret options once the registry has read its declarations."""
    for processor in structlog.get_config()["processors"]:
        if isinstance(processor, SecretScrubber):
            processor.add(secrets)


def resolve_log_format(log_format: str) -> str:
    """``auto`` means console on a terminal, JSON otherwise."""
    if log_format == "auto":
        return "console" if sys.stderr.isatty() else "json"
    return log_format


def configure_logging(log_format: str = "auto", level: str = "info", secrets: Iterable[str] = ()) -> None:
    """Configure structlog and route the standard library's loggers (aiohttp, asyncpg) through it."""
    log_format = resolve_log_format(log_format)
    pre = shared_processors(secrets)
    renderer: Any
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    # A traceback quotes exception messages, which may hold a secret: scrub it once it is text, in
    # either format (the console then prints the plain traceback rather than its own rendering).
    pre_render: list[Any] = [structlog.processors.format_exc_info, pre[-1]]
    numeric = _LEVELS[level.lower()]
    structlog.configure(
        processors=[*pre, structlog.processors.StackInfoRenderer(), *pre_render, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (print() makes two): workers sharing a stderr never interleave mid-line.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *pre],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *pre_render, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiohttp's own access log would print query strings; the gateway logs requests itself.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # pgserver narrates every start-up step at INFO.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
