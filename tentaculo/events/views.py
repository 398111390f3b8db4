"""Live events: the SSE stream, the same history as a JSON page, and tickets for browsers."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from typing import Any

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from tentaculo import keys
from tentaculo.auth.tickets import rejected
from tentaculo.auth.tokens import TICKET_PARAM, requires
from tentaculo.events.envelope import (
    ERROR,
    EVENT_TYPES,
    RESET,
    EventKey,
    EventRef,
    control_frame,
    parse_event_id,
    position_frame,
    stream_bound,
)
from tentaculo.events.fanout import (
    CLIENT_GONE,
    DISABLED,
    REDIS_LOST,
    REVOKED,
    SHUTDOWN,
    StreamClosed,
    Subscription,
    TooManyClients,
)
from tentaculo.events.history import ResumePlan, StaleCursor
from tentaculo.events.hub import REDIS_FAILURES, EventHub, EventsUnavailable
from tentaculo.http.errors import Problem, ValidationFailed, problem_body
from tentaculo.http.jsonio import json_response
from tentaculo.http.middlewares import CORRELATION_RE, presented_token
from tentaculo.status.features import feature

HISTORY_PAGE = 500
SHUTDOWN_RETRY_MS = 1000
PAGE_DEFAULT, PAGE_MAX = 50, 500


def _filters(request: web.Request) -> tuple[frozenset[str] | None, str | None]:
    """``types`` and ``correlation_id`` from the query; 422 naming the known types."""
    errors = []
    types: frozenset[str] | None = None
    raw = request.query.get("types")
    if raw is not None:
        types = frozenset(t.strip() for t in raw.split(",") if t.strip())
        unknown = sorted(types - set(EVENT_TYPES))
        if unknown or not types:
            errors.append(
                {
                    "field": "types",
                    "message": f"unknown event types: {', '.join(unknown) or '(none given)'}; "
                    f"known types: {', '.join(EVENT_TYPES)}",
                }
            )
    correlation_id = request.query.get("correlation_id")
    if correlation_id is not None and not CORRELATION_RE.fullmatch(correlation_id):
        errors.append({"field": "correlation_id", "message": "not a correlation id: letters, digits, ._:- (max 128)"})
    if errors:
        raise Problem(
            "validation_error", "the event filters are not valid", errors=errors, known_types=list(EVENT_TYPES)
        )
    return types, correlation_id


def _event_id_param(value: str | None, field: str) -> EventRef | None:
    if value is None or not value.strip():
        return None
    ref = parse_event_id(value)
    if ref is None:
        raise ValidationFailed([{"field": field, "message": "not an event id: send the id: of an event received, "
                                 "e.g. 1712345600000000:1712345678901-0"}])
    return ref


def _resume_from(request: web.Request) -> EventRef | None:
    """``Last-Event-ID`` (what EventSource sends on reconnect) wins over ``?last_event_id=``."""
    header = request.headers.get("Last-Event-ID")
    if header is not None and header.strip():
        return _event_id_param(header, "Last-Event-ID")
    return _event_id_param(request.query.get("last_event_id"), "last_event_id")


class _EventStream(EventSourceResponse):
    """An event stream that closes its connection when it ends (``Connection: close``).

    Its socket keeps the stream's small send buffer (TENTACULO_EVENTS_SEND_BUFFER_BYTES): a later
    request on it, a large download say, must not inherit that buffer. Said in the head, so a
    client does not put the connection back in its pool only to find it closed.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.force_close()
        self.headers["Connection"] = "close"  # aiohttp_sse says keep-alive, which aiohttp then keeps


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


def _via_ticket(request: web.Request) -> bool:
    return TICKET_PARAM in request.query and presented_token(request) is None


def _unavailable(reason: str, retry_after: float = 1.0) -> Problem:
    return Problem(
        "upstream_unavailable",
        f"live events are unavailable: {reason}",
        status=503,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


@requires("read", ticket=True)
@feature("events")
async def events(request: web.Request) -> web.StreamResponse:
    """SSE stream of live events (resumable); with ``Accept: application/json``, a page of recent ones."""
    hub = request.app[keys.EVENTS]
    types, correlation_id = _filters(request)
    if _wants_json(request):
        if _via_ticket(request):
            raise rejected("an event ticket only opens event streams; send the X-VX11-Token header", "wrong_purpose")
        return await _page(request, hub, types, correlation_id)
    resume = _resume_from(request)
    principal = request[keys.PRINCIPAL]
    # A ticket's principal carries the row id of the token it was issued to: its streams count there.
    owner = principal.token_id if principal.token_id is not None else principal.name
    try:
        sub = hub.subscribe(types, correlation_id, principal.token_id, owner)
    except EventsUnavailable as exc:
        raise _unavailable(exc.reason, exc.retry_after) from None
    except TooManyClients as exc:
        raise Problem("rate_limited", str(exc), headers={"Retry-After": "5"}) from None
    try:
        plan = None
        if resume is not None:
            try:
                plan = await hub.history.resume_plan(resume)
            except REDIS_FAILURES as exc:
                raise _unavailable(f"cannot read the event history: {type(exc).__name__}") from None
        return await _stream(request, hub, sub, plan)
    finally:
        hub.unsubscribe(sub)


async def _stream(
    request: web.Request, hub: EventHub, sub: Subscription, plan: ResumePlan | None
) -> web.StreamResponse:
    settings = request.app[keys.SETTINGS]
    cid = request[keys.CORRELATION_ID]
    timeout = settings.events_send_timeout
    _bound_send_buffer(request, settings.events_send_buffer_bytes)
    # No timer per write (it would cost more than the write): a stalled reader is cut by the ping
    # task's send timeout, by TCP_USER_TIMEOUT, or when its queue overflows; each aborts the
    # transport, which wakes a write blocked on drain with ConnectionResetError.
    async with sse_response(
        request, ping_interval=settings.events_ping_seconds, send_timeout=timeout, response_cls=_EventStream
    ) as resp:
        write = resp.write
        transport = request.transport
        if transport is not None:
            sub.on_slow = transport.abort
        # The ping task ends when the client goes away or the stream is stopped; wake the reader then.
        watcher = asyncio.ensure_future(resp.wait())
        watcher.add_done_callback(lambda _: sub.close(CLIENT_GONE))
        try:
            await write(f"retry: {settings.events_retry_ms}\r\n\r\n".encode())
            last: EventKey = (0, 0)
            if plan is not None:
                replayed = await _replay(hub, sub, plan, write, cid)
                if replayed is None:
                    return resp
                last = replayed
            while True:
                try:
                    event = await sub.get()
                except StreamClosed as closed:
                    if closed.reason == REDIS_LOST:
                        await write(_error_frame(hub, cid, hub.reason or "Redis unreachable"))
                    elif closed.reason == REVOKED:
                        problem = problem_body("invalid_token", "the token that opened this stream was revoked or has expired",
                                               cid, status=401)
                        await write(control_frame(ERROR, problem, source=hub.instance, correlation_id=cid,
                                                  severity="error"))
                    elif closed.reason == SHUTDOWN:
                        # Reconnect soon, to another instance: the balancer stopped sending here.
                        await write(f"retry: {SHUTDOWN_RETRY_MS}\r\n\r\n".encode() + control_frame(
                            SHUTDOWN, {"reason": "the instance is shutting down; reconnect to resume",
                                       "retry_ms": SHUTDOWN_RETRY_MS},
                            source=hub.instance, correlation_id=cid, severity="info"))
                    elif closed.reason == DISABLED:
                        problem = problem_body("feature_disabled", "live events were turned off", cid,
                                               feature="events")
                        await write(control_frame(ERROR, problem, source=hub.instance, correlation_id=cid,
                                                  severity="error"))
                    break
                if event.key <= last:  # already replayed from history
                    continue
                last = event.key
                await write(event.frame)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stalled; it resumes with Last-Event-ID
        finally:
            watcher.cancel()
    return resp


async def _replay(hub: EventHub, sub: Subscription, plan: ResumePlan, write: Any, cid: str) -> EventKey | None:
    """Send what a resuming client missed; return the position live delivery continues from (None: stop).

    A subscription ended meanwhile (token revoked, shutdown, ...) stops the replay at once; the live
    loop then sends the final frame that says why.
    """
    if plan.reset:
        await write(_reset_frame(hub, cid, plan.oldest))
    start, position, sent, epoch = plan.start, plan.position, None, plan.epoch
    # What the client's Last-Event-ID is now: its own id, unless reset made that meaningless.
    holds = None if plan.reset else plan.position
    last: EventKey = (0, 0)
    if position is not None and (ref := parse_event_id(position)) is not None:
        last = ref[1]
    while sub.reason is None:
        try:
            batch = await hub.history.since(start, HISTORY_PAGE)
        except REDIS_FAILURES as exc:
            await write(_error_frame(hub, cid, f"cannot read the event history: {type(exc).__name__}"))
            return None
        if batch and epoch is not None and batch[0].epoch != epoch:
            # Redis was emptied since the plan (or a page ago): this is a new history, not the rest of
            # the client's. Say reset and replay the new one from its start.
            await write(_reset_frame(hub, cid, None))
            start, position, holds, epoch, last = "-", None, None, batch[0].epoch, (0, 0)
            continue
        if batch:
            epoch = batch[0].epoch  # later pages must be of the same history
        for event in batch:
            if sub.reason is not None:
                break
            if sub.matches(event):
                await write(event.frame)
                sent = event.id
            position, last = event.id, event.key
        start = stream_bound(last)
        if len(batch) < HISTORY_PAGE:
            break
    if position is not None and position != (sent or holds):
        # Events the filters skipped (or a reset) still move the client's position, so a later
        # resume neither rescans them nor resets again.
        await write(position_frame(position))
    return last


def _bound_send_buffer(request: web.Request, size: int) -> None:
    """Cap the kernel's send buffer of this stream's socket.

    Left to autotuning, the kernel grows the send buffer of a client that stopped reading to
    megabytes (about 4 MB measured on loopback) while the stream waits to be cut: with hundreds of
    stuck clients that is gigabytes of kernel memory. A stream needs little: events are small, and
    a client that keeps up empties the buffer as fast as it fills.
    """
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None and size else None
    if sock is not None:
        with contextlib.suppress(OSError):  # a socket already gone: the stream ends on its own
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def _reset_frame(hub: EventHub, cid: str, oldest: str | None) -> bytes:
    data = {
        "reason": "the last event id is older than the retained history, or of another history "
        "(Redis was replaced or emptied since); some events were not kept: reload state, then follow this stream",
        "oldest_retained_id": oldest,
    }
    return control_frame(RESET, data, source=hub.instance, correlation_id=cid)


def _error_frame(hub: EventHub, cid: str, reason: str) -> bytes:
    problem = problem_body("upstream_unavailable", f"live events stopped: {reason}", cid, status=503)
    return control_frame(ERROR, problem, source=hub.instance, correlation_id=cid, severity="error")


async def _page(
    request: web.Request, hub: EventHub, types: frozenset[str] | None, correlation_id: str | None
) -> web.Response:
    raw_limit = request.query.get("limit", str(PAGE_DEFAULT))
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= PAGE_MAX:
        raise ValidationFailed([{"field": "limit", "message": f"an integer from 1 to {PAGE_MAX}"}])
    before = _event_id_param(request.query.get("before"), "before")
    try:
        found, cursor = await hub.history.recent(limit=limit, before=before, types=types, correlation_id=correlation_id)
    except StaleCursor as exc:
        raise ValidationFailed([{"field": "before", "message": f"{exc}: start again without before"}]) from None
    except REDIS_FAILURES as exc:
        raise _unavailable(f"cannot read the event history: {type(exc).__name__}") from None
    return json_response({"events": [orjson.Fragment(e.envelope) for e in found], "next": cursor})


@requires("read")
@feature("events")
async def ticket(request: web.Request) -> web.Response:
    """A short-lived ticket that opens event streams for the calling token (for EventSource)."""
    tickets = request.app[keys.TICKETS]
    value = await tickets.issue(request[keys.PRINCIPAL])
    return json_response({"ticket": value, "expires_in": tickets.ttl_seconds}, headers={"Cache-Control": "no-store"})
