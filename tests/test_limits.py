"""Rate limits on real gateways: failed authentications per client address, shared through Redis."""

from __future__ import annotations

import dataclasses
import random
import uuid

from aiohttp.test_utils import TestClient

from tentaculo.app import create_app
from tentaculo.auth.tokens import new_token
from tentaculo.embedded import free_port
from tentaculo.settings import Settings
from tests.faults import proxy_redis
from tests.helpers import serve, wait_for

WHOAMI = "/operator/api/whoami"


def _address() -> str:
    """A client address no other test uses (limits are shared through Redis for the whole run)."""
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def _from(address: str, token: str | None = None) -> dict[str, str]:
    headers = {"X-Forwarded-For": address}
    if token is not None:
        headers["X-VX11-Token"] = token
    return headers


async def _guess(client: TestClient, address: str) -> int:
    resp = await client.get(WHOAMI, headers=_from(address, new_token()))
    await resp.read()
    return resp.status


async def test_wrong_tokens_past_the_burst_are_refused_with_retry_after(
    aiohttp_client, settings, admin_headers
) -> None:
    """Guessing used to be unlimited: every wrong token got its 401 at once."""
    limited = dataclasses.replace(settings, trusted_proxies=("127.0.0.1",), auth_failure_burst=Settings().auth_failure_burst)
    client = await serve(aiohttp_client, create_app(limited))
    attacker, bystander = _address(), _address()
    statuses = [await _guess(client, attacker) for _ in range(30)]
    assert statuses[:20] == [401] * 20  # the default burst
    assert 429 in statuses[20:]
    resp = await client.get(WHOAMI, headers=_from(attacker, new_token()))
    body = await resp.json()
    assert resp.status == 429 and body["code"] == "rate_limited" and body["correlation_id"]
    assert int(resp.headers["Retry-After"]) >= 1
    # A blocked address is refused before its token is looked at: a right guess would not show.
    valid = admin_headers["X-VX11-Token"]
    assert (await client.get(WHOAMI, headers=_from(attacker, valid))).status == 429
    # Another address is not affected, with a valid token or a wrong one.
    assert (await client.get(WHOAMI, headers=_from(bystander, valid))).status == 200
    assert await _guess(client, bystander) == 401


async def test_valid_tokens_are_never_counted(aiohttp_client, settings, admin_headers) -> None:
    client = await serve(aiohttp_client, create_app(dataclasses.replace(
        settings, trusted_proxies=("127.0.0.1",), auth_failure_burst=2, auth_failure_rate=0.1)))
    address = _address()
    for _ in range(10):
        assert (await client.get(WHOAMI, headers=_from(address, admin_headers["X-VX11-Token"]))).status == 200
    assert [await _guess(client, address) for _ in range(3)] == [401, 401, 429]


async def test_forwarded_for_from_an_untrusted_peer_does_not_change_the_address(aiohttp_client, settings) -> None:
    """Without TENTACULO_TRUSTED_PROXIES a client cannot dodge the limit by inventing X-Forwarded-For."""
    client = await serve(aiohttp_client, create_app(dataclasses.replace(
        settings, auth_failure_burst=3, auth_failure_rate=0.1, redis_prefix=settings.redis_prefix + uuid.uuid4().hex)))
    statuses = [await _guess(client, _address()) for _ in range(4)]
    assert statuses == [401, 401, 401, 429]


async def test_a_bad_event_ticket_counts_as_a_failure(aiohttp_client, settings) -> None:
    client = await serve(aiohttp_client, create_app(dataclasses.replace(
        settings, trusted_proxies=("127.0.0.1",), auth_failure_burst=2, auth_failure_rate=0.1)))
    address = _address()
    statuses = []
    for _ in range(3):
        resp = await client.get("/operator/api/events?ticket=bm90LWEtdGlja2V0.c2ln", headers=_from(address))
        statuses.append(resp.status)
        body = await resp.json()
        assert body["code"] in ("invalid_token", "rate_limited")
    assert statuses == [401, 401, 429]


async def test_two_instances_share_the_failure_count(aiohttp_client, settings) -> None:
    shared = dataclasses.replace(settings, trusted_proxies=("127.0.0.1",), auth_failure_burst=4,
                                 auth_failure_rate=0.1)
    a = await serve(aiohttp_client, create_app(dataclasses.replace(shared, instance="limits-a")))
    b = await serve(aiohttp_client, create_app(dataclasses.replace(shared, instance="limits-b")))
    address = _address()
    assert [await _guess(a, address), await _guess(b, address), await _guess(a, address),
            await _guess(b, address)] == [401] * 4
    assert await _guess(b, address) == 429
    assert await _guess(a, address) == 429
    ready = await (await a.get("/ready")).json()
    assert ready["checks"]["auth_limiter"]["status"] == "on"


async def test_without_redis_each_instance_still_limits_and_ready_says_degraded(
    aiohttp_client, settings
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    client = await serve(aiohttp_client, create_app(dataclasses.replace(
        settings, redis_url=closed, trusted_proxies=("127.0.0.1",), auth_failure_burst=3, auth_failure_rate=0.1)))
    address = _address()
    assert [await _guess(client, address) for _ in range(4)] == [401, 401, 401, 429]
    assert await _guess(client, _address()) == 401
    body = await (await client.get("/ready")).json()
    limiter = body["checks"]["auth_limiter"]
    assert limiter["status"] == "degraded"
    assert limiter["reason"] == "Redis unreachable: limiting per instance"


async def test_the_limiter_goes_back_to_redis_by_itself(aiohttp_client, settings) -> None:
    proxy, url = await proxy_redis(settings.redis_url)
    try:
        client = await serve(aiohttp_client, create_app(dataclasses.replace(
            settings, redis_url=url, trusted_proxies=("127.0.0.1",), auth_failure_burst=2, auth_failure_rate=0.1)))
        await proxy.cut()
        address = _address()
        assert [await _guess(client, address) for _ in range(3)] == [401, 401, 429]

        async def limiter_status() -> str:
            return (await (await client.get("/ready")).json())["checks"]["auth_limiter"]["status"]

        assert await limiter_status() == "degraded"
        await proxy.restore()
        await wait_for(lambda: _is(limiter_status(), "on"))
        # Counting is shared again: a new address gets its full burst from Redis.
        other = _address()
        assert [await _guess(client, other) for _ in range(3)] == [401, 401, 429]
    finally:
        await proxy.close()


async def _is(value, expected: str) -> bool:
    return await value == expected


async def _budgeted(client: TestClient, admin_headers: dict[str, str], per_minute: int,
                    scopes: tuple[str, ...] = ("read",)) -> str:
    resp = await client.post("/operator/api/tokens", headers=admin_headers, json={
        "name": f"budget-{uuid.uuid4().hex[:8]}", "scopes": list(scopes), "requests_per_minute": per_minute})
    assert resp.status == 201, await resp.text()
    return (await resp.json())["token"]


async def test_a_token_past_its_budget_is_refused_and_every_answer_carries_the_figures(
    gateway, admin_headers
) -> None:
    token = await _budgeted(gateway, admin_headers, 3)
    seen = []
    for _ in range(3):
        resp = await gateway.get(WHOAMI, headers={"X-VX11-Token": token})
        assert resp.status == 200
        assert resp.headers["RateLimit-Limit"] == "3"
        seen.append(int(resp.headers["RateLimit-Remaining"]))
        assert 0 < int(resp.headers["RateLimit-Reset"]) <= 60
    assert seen == [2, 1, 0]
    resp = await gateway.get(WHOAMI, headers={"X-VX11-Token": token})
    body = await resp.json()
    assert resp.status == 429 and body["code"] == "rate_limited" and body["correlation_id"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 20  # one request's share of the minute
    assert resp.headers["RateLimit-Remaining"] == "0" and resp.headers["RateLimit-Limit"] == "3"
    assert token not in await resp.text()
    # Other tokens are not touched, and carry no figures.
    other = await gateway.get(WHOAMI, headers=admin_headers)
    assert other.status == 200 and "RateLimit-Limit" not in other.headers


async def test_a_streamed_answer_carries_the_budget_headers(gateway, admin_headers) -> None:
    token = await _budgeted(gateway, admin_headers, 10, ("read", "chat"))
    resp = await gateway.post("/operator/api/chat", headers={"X-VX11-Token": token}, json={
        "message": "hello", "provider": "mock", "stream": True})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["RateLimit-Limit"] == "10" and resp.headers["RateLimit-Remaining"] == "9"
    await resp.read()
    resp = await gateway.get("/operator/api/events", headers={"X-VX11-Token": token})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["RateLimit-Remaining"] == "8"
    resp.close()
    resp = await gateway.get("/operator/api/tokens", headers={"X-VX11-Token": token})
    assert resp.status == 403  # refused for its scope, and still told its budget
    assert resp.headers["RateLimit-Remaining"] == "7"


async def test_a_budget_is_shared_by_every_instance(aiohttp_client, settings, admin_headers) -> None:
    a = await serve(aiohttp_client, create_app(dataclasses.replace(settings, instance="budget-a")))
    b = await serve(aiohttp_client, create_app(dataclasses.replace(settings, instance="budget-b")))
    token = await _budgeted(a, admin_headers, 4)
    headers = {"X-VX11-Token": token}
    statuses = [(await c.get(WHOAMI, headers=headers)).status for c in (a, b, a, b)]
    assert statuses == [200] * 4
    assert (await b.get(WHOAMI, headers=headers)).status == 429
    assert (await a.get(WHOAMI, headers=headers)).status == 429


async def test_without_redis_a_budget_still_holds_per_instance(aiohttp_client, settings, admin_headers) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    client = await serve(aiohttp_client, create_app(dataclasses.replace(settings, redis_url=closed)))
    token = await _budgeted(client, admin_headers, 2)
    statuses = [(await client.get(WHOAMI, headers={"X-VX11-Token": token})).status for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_the_counted_address_of_a_client() -> None:
    from aiohttp.test_utils import make_mocked_request

    from tentaculo.auth.limits import client_address
    from tentaculo.http.trusted import TrustedProxies

    def address(peer: str, forwarded: str | None = None, trusted: tuple[str, ...] = ()) -> str:
        headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
        request = make_mocked_request("GET", "/", headers=headers)
        request._cache["remote"] = peer
        return client_address(request, TrustedProxies(trusted))

    assert address("192.0.2.7") == "192.0.2.7"
    assert address("192.0.2.7", "10.9.9.9") == "192.0.2.7"  # an untrusted peer's header is ignored
    # Read from the right: the hop our balancer saw, unless that hop is a trusted proxy itself.
    assert address("10.0.0.1", "203.0.113.5, 198.51.100.9", ("10.0.0.0/8",)) == "198.51.100.9"
    assert address("10.0.0.1", "203.0.113.5, 10.0.0.2", ("10.0.0.0/8",)) == "203.0.113.5"
    assert address("10.0.0.1", "not-an-ip", ("10.0.0.0/8",)) == "10.0.0.1"
    # IPv6 clients count by their /64; IPv4 seen through a dual-stack socket counts as IPv4.
    assert address("2001:db8:1:2:aaaa::1") == address("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address("::ffff:192.0.2.7") == "192.0.2.7"
    assert address("::ffff:192.0.2.7") != address("::ffff:192.0.2.8")


async def test_once_blocks_lapse_requests_are_back_to_paying_nothing(aiohttp_client, settings, admin_headers) -> None:
    from tentaculo import keys

    client = await serve(aiohttp_client, create_app(dataclasses.replace(
        settings, trusted_proxies=("127.0.0.1",), auth_failure_burst=1, auth_failure_rate=10)))
    assert [await _guess(client, _address()) for _ in range(1)] == [401]
    attacker = _address()
    assert [await _guess(client, attacker) for _ in range(2)] == [401, 429]
    limiter = client.app[keys.AUTH_LIMITER]
    assert limiter.blocked

    async def forgotten() -> bool:
        resp = await client.get(WHOAMI, headers=_from(_address(), admin_headers["X-VX11-Token"]))
        return resp.status == 200 and not limiter.blocked

    await wait_for(forgotten, timeout=5)


async def test_ready_says_degraded_as_soon_as_redis_is_away(aiohttp_client, settings) -> None:
    """Before any failure is counted: the limiter must not claim to be shared while it cannot be."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    client = await serve(aiohttp_client, create_app(dataclasses.replace(settings, redis_url=closed)))
    body = await (await client.get("/ready")).json()
    assert body["checks"]["auth_limiter"]["status"] == "degraded"
    assert body["checks"]["auth_limiter"]["reason"] == "Redis unreachable: limiting per instance"


def test_limit_settings_are_read_and_checked() -> None:
    import pytest

    from tentaculo.settings import Settings, SettingsError

    s = Settings.from_env({"TENTACULO_AUTH_FAILURE_BURST": "50", "TENTACULO_AUTH_FAILURE_RATE": "0.5",
                           "TENTACULO_TOKEN_LAST_USED_SECONDS": "30"})
    assert (s.auth_failure_burst, s.auth_failure_rate, s.token_last_used_seconds) == (50, 0.5, 30.0)
    defaults = Settings.from_env({})
    assert (defaults.auth_failure_burst, defaults.auth_failure_rate, defaults.token_last_used_seconds) == (20, 5.0, 60.0)
    for var, bad in (("TENTACULO_AUTH_FAILURE_BURST", "0"), ("TENTACULO_AUTH_FAILURE_RATE", "0"),
                     ("TENTACULO_AUTH_FAILURE_RATE", "5000"), ("TENTACULO_TOKEN_LAST_USED_SECONDS", "0")):
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({var: bad})
        assert caught.value.variable == var


async def test_a_token_past_its_budget_is_refused_without_asking_redis_again(
    aiohttp_client, settings, admin_headers
) -> None:
    """A client far past its limit must not cost a Redis call per request (nor slip through if Redis goes)."""
    from tentaculo import keys

    proxy, url = await proxy_redis(settings.redis_url)
    try:
        client = await serve(aiohttp_client, create_app(dataclasses.replace(settings, redis_url=url)))
        token = await _budgeted(client, admin_headers, 1)
        headers = {"X-VX11-Token": token}
        assert (await client.get(WHOAMI, headers=headers)).status == 200
        refused = await client.get(WHOAMI, headers=headers)
        assert refused.status == 429
        await proxy.cut()
        for _ in range(3):
            again = await client.get(WHOAMI, headers=headers)
            assert again.status == 429 and again.headers["RateLimit-Remaining"] == "0"
            assert int(again.headers["Retry-After"]) <= int(refused.headers["Retry-After"])
        assert client.app[keys.RATE_COUNTER].status == "on"  # Redis was not asked
    finally:
        await proxy.close()
