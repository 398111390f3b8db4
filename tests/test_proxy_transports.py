"""The transport interface at its boundary: each transport, against a loopback peer that refuses,
closes, answers garbage, hangs or breaks off, raises the proxy's own errors, never its library's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from multidict import CIMultiDict

from tentaculo.proxy.aiohttp_transport import AiohttpTransport
from tentaculo.proxy.call import (
    CallTimeouts,
    ProxyCall,
    Upstream,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from tentaculo.proxy.lean_transport import LeanTransport
from tentaculo.proxy.transport import Transport
from tentaculo.settings import Settings
from tests.proxy_upstreams import RawModule, Responder, break_off, close_unanswered, garbage, hang


@pytest.fixture(params=["lean", "aiohttp"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    if request.param == "lean":
        lean = LeanTransport(4)
        yield lean
        lean.close()
    else:
        client = AiohttpTransport(Settings())
        await client.start()
        yield client
        await client.close()


def call_to(port: int) -> ProxyCall:
    return ProxyCall(
        service="madre", method="GET", target=Upstream.parse(f"http://127.0.0.1:{port}/base"), rest="x", query="",
        headers=CIMultiDict({"X-Correlation-ID": "transport-1"}), body=None, auth=None,
        timeouts=CallTimeouts(connect=1.0, read=0.3, pool_wait=1.0),
    )


async def test_a_refused_connection_is_upstream_unreachable_and_may_be_retried(transport: Transport) -> None:
    raw = await RawModule(garbage).start()
    await raw.close()  # nothing listens on that port any more
    with pytest.raises(UpstreamError) as caught:
        await transport.send(call_to(raw.port))
    assert type(caught.value) is UpstreamUnreachable
    assert (caught.value.status, caught.value.detail) == (502, "module 'madre' is unreachable: connection refused")
    assert caught.value.retryable


@pytest.mark.parametrize(("respond", "error", "status", "reason", "retryable"), [
    (close_unanswered, UpstreamUnreachable, 502, "closed the connection before answering", True),
    (garbage, UpstreamProtocolError, 502, "sent an invalid HTTP response", False),
    (hang, UpstreamTimeout, 504, "did not answer within 0.3 s", False),
], ids=["closes", "garbage", "hangs"])
async def test_a_peer_that_fails_before_answering_raises_the_proxys_own_error(
    transport: Transport, respond: Responder, error: type[UpstreamError], status: int, reason: str, retryable: bool
) -> None:
    raw = await RawModule(respond).start()
    try:
        with pytest.raises(UpstreamError) as caught:
            await transport.send(call_to(raw.port))
    finally:
        await raw.close()
    assert type(caught.value) is error
    assert (caught.value.status, caught.value.detail) == (status, f"module 'madre' {reason}")
    assert caught.value.retryable is retryable


async def test_a_body_broken_off_raises_the_proxys_own_error_while_reading(transport: Transport) -> None:
    raw = await RawModule(break_off).start()
    try:
        response = await transport.send(call_to(raw.port))
        try:
            assert (response.status, response.content_length) == (200, 100)
            received = b""
            with pytest.raises(UpstreamError) as caught:
                while chunk := await response.read_chunk():
                    received += chunk
            assert received == b"x" * 10
            assert not response.at_eof()
        finally:
            response.close()
    finally:
        await raw.close()
    assert type(caught.value) is UpstreamProtocolError
    assert caught.value.detail == "module 'madre' broke off its response"
