"""Service registry, prober, status, modules and topology against real loopback modules,
real PostgreSQL and Redis: healthy, slow, failing, hanging and unreachable modules."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.health import Health
from tentaculo.http.errors import connect_reason
from tentaculo.settings import Settings, SettingsError
from tentaculo.status.services import public_address
from tests.faults import proxy_postgres, proxy_redis
from tests.helpers import serve, wait_for
from tests.proxy_upstreams import RawModule, garbage

STATUS = "/operator/api/status"
MODULES = "/operator/api/modules"
TOPOLOGY = "/operator/api/topology"
SEEDED = {"tentaculo_link", "madre", "switch", "hermes", "hormiguero", "mcp", "spawner", "redis",
          "operator-backend", "operator-frontend"}
ENUM = {"on", "off", "degraded", "error"}


class Module:
    """A VX11 module stand-in on loopback whose /health does what the test says."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.hanging = asyncio.Event()
        self.requests: list[dict[str, str]] = []
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/healthz", self._health)
        self.server = TestServer(app, host="127.0.0.1")

    async def start(self) -> Module:
        await self.server.start_server()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def _health(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        kind = self.behaviour
        if kind == "healthy":
            return web.json_response({"status": "ok"})
        if kind == "plain":
            return web.Response(text="OK")
        if kind == "slow":
            await asyncio.sleep(0.25)
            return web.json_response({"status": "ok"})
        if kind == "failing":
            return web.json_response({"status": "error", "reason": "database down"}, status=503)
        if kind == "says_degraded":
            return web.json_response({"status": "degraded", "reason": "queue backlog"})
        if kind == "says_down":
            return web.json_response({"status": "down", "reason": "disk full"})
        if kind == "hang":
            self.hanging.set()
            await self._release.wait()
            return web.json_response({"status": "ok"})
        raise AssertionError(kind)

    async def close(self) -> None:
        self._release.set()
        await self.server.close()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def modules() -> AsyncIterator[Callable[[str], Awaitable[Module]]]:
    started: list[Module] = []

    async def start(behaviour: str) -> Module:
        module = await Module(behaviour).start()
        started.append(module)
        return module

    yield start
    for module in started:
        await module.close()


def probing(settings: Settings, urls: dict[str, str], **extra: Any) -> Settings:
    """Settings that probe ``urls`` fast: 0.2 s rounds, 0.3 s timeouts, slow beyond 150 ms."""
    values: dict[str, Any] = {
        "service_urls": urls,
        "probe_interval_seconds": 0.2,
        "probe_connect_timeout": 0.3,
        "probe_timeout": 0.3,
        "probe_slow_ms": 150.0,
        **extra,
    }
    return dataclasses.replace(settings, **values)


async def _modules_by_name(client: Any, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    resp = await client.get(MODULES, headers=headers)
    assert resp.status == 200
    return {m["name"]: m for m in (await resp.json())["modules"]}


async def _probed_once(client: Any) -> None:
    prober = client.app[keys.PROBER]
    rounds = prober.rounds

    async def another_round() -> bool:
        return prober.rounds > rounds

    await wait_for(another_round, timeout=5)


async def test_each_kind_of_module_gets_an_honest_status(aiohttp_client, settings, admin_headers, modules) -> None:
    healthy, plain, slow = await modules("healthy"), await modules("plain"), await modules("slow")
    failing, says_degraded = await modules("failing"), await modules("says_degraded")
    says_down = await modules("says_down")
    hang = await modules("hang")
    port = healthy.server.port
    urls = {
        "madre": f"http://ops:s3cret-pass@127.0.0.1:{port}/",
        "switch": slow.url,
        "hermes": failing.url,
        "hormiguero": f"http://127.0.0.1:{closed_port()}",
        "mcp": says_degraded.url,
        "spawner": hang.url,
        "operator_backend": plain.url,
        "operator_frontend": says_down.url,
    }
    client = await serve(aiohttp_client, create_app(probing(settings, urls)))
    await hang.hanging.wait()
    await _probed_once(client)
    got = await _modules_by_name(client, admin_headers)

    assert set(got) == SEEDED
    assert all(m["status"] in ENUM for m in got.values())
    madre = got["madre"]
    assert (madre["status"], madre["reason"], madre["http_status"]) == ("on", None, 200)
    assert madre["latency_ms"] > 0 and madre["checked_at"].endswith("Z")
    assert madre["address"] == f"http://127.0.0.1:{port}/" and madre["address_source"] == "env"
    assert healthy.requests[0]["Authorization"].startswith("Basic ")  # the credentials are used ...
    assert "s3cret" not in (await (await client.get(MODULES, headers=admin_headers)).text())  # ... never shown
    assert got["operator-backend"]["status"] == "on"  # a plain-text 2xx is healthy
    assert got["switch"]["status"] == "degraded" and got["switch"]["reason"].startswith("slow: answered in")
    assert got["hermes"]["status"] == "degraded" and "HTTP 503" in got["hermes"]["reason"]
    assert "database down" in got["hermes"]["reason"] and got["hermes"]["http_status"] == 503
    assert got["mcp"]["status"] == "degraded" and "queue backlog" in got["mcp"]["reason"]
    assert got["operator-frontend"]["status"] == "error" and "disk full" in got["operator-frontend"]["reason"]
    assert got["hormiguero"]["status"] == "error" and got["hormiguero"]["reason"] == "unreachable: connection refused"
    assert got["hormiguero"]["latency_ms"] is None
    assert got["spawner"]["status"] == "error" and got["spawner"]["reason"] == "no answer within 0.3 s"
    # With no address of its own, the system's Redis is the gateway's: checked, and said to be so.
    redis = got["redis"]
    assert (redis["status"], redis["reason"], redis["address_source"]) == ("on", None, "gateway")
    assert redis["address"] == public_address(settings.redis_url) and redis["latency_ms"] > 0
    assert redis["checked_at"].endswith("Z")
    # The gateway's own health comes with the time and latency of its last self-check.
    gateway = got["tentaculo_link"]
    assert gateway["status"] == "on" and gateway["address_source"] == "instance"
    assert gateway["latency_ms"] > 0 and gateway["checked_at"].endswith("Z")
    assert all(m["circuit"]["state"] == "closed" for m in got.values())


async def test_status_is_fast_and_complete_while_a_module_hangs(aiohttp_client, settings, admin_headers,
                                                                 modules) -> None:
    hang = await modules("hang")
    settings = probing(settings, {"spawner": hang.url}, probe_timeout=2.0, probe_connect_timeout=1.0)
    client = await serve(aiohttp_client, create_app(settings))
    await hang.hanging.wait()  # a probe is stuck in the hanging module right now
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        resp = await client.get(STATUS, headers=admin_headers)
        timings.append(time.perf_counter() - started)
        assert resp.status == 200
    assert max(timings) < 0.25, timings
    body = await resp.json()
    assert set(body) >= {"status", "version", "instance", "uptime_s", "services", "features", "providers",
                         "dependencies"}
    assert body["instance"] == settings.instance and body["uptime_s"] > 0
    assert {s["name"] for s in body["services"]} == SEEDED
    spawner = next(s for s in body["services"] if s["name"] == "spawner")
    assert spawner["status"] == "degraded" and spawner["reason"] == "health not checked yet"
    assert set(body["features"]) == {"chat", "events", "metrics", "file_explorer", "proxy"}
    assert all(f["status"] in ENUM for f in body["features"].values())
    assert {p["name"] for p in body["providers"]} >= {"mock"}
    deps = body["dependencies"]
    assert set(deps) == {"postgresql", "redis", "events", "audit"}
    assert deps["postgresql"]["status"] == "on" and deps["postgresql"]["latency_ms"] >= 0
    assert deps["redis"]["status"] == "on" and deps["events"]["status"] == "on"
    assert {"queued", "dropped"} <= set(deps["audit"]) and deps["audit"]["dropped"] == 0
    assert body["status"] == "degraded"
    assert any(r.startswith("module spawner degraded") for r in body["reasons"])
    # The stuck probe ends at its timeout and the module turns error, still without slowing status.
    await wait_for(lambda: _status_of(client, admin_headers, "spawner", "error"), timeout=10)


async def _status_of(client: Any, headers: dict[str, str], name: str, wanted: str) -> bool:
    body = await (await client.get(STATUS, headers=headers)).json()
    return next(s for s in body["services"] if s["name"] == name)["status"] == wanted


async def test_a_status_change_is_published_as_service_status(aiohttp_client, settings, admin_headers, modules) -> None:
    madre = await modules("healthy")
    client = await serve(aiohttp_client, create_app(probing(settings, {"madre": madre.url})))
    hub = client.app[keys.EVENTS]
    await hub.wait_online()
    sub = hub.subscribe(frozenset({"service_status"}))
    try:
        await _probed_once(client)
        madre.behaviour = "failing"
        event = await _next_event(sub, lambda data: data["previous_status"] == "on")
    finally:
        hub.unsubscribe(sub)
    assert event["type"] == "service_status" and event["source"] == settings.instance
    assert event["severity"] == "warning"
    data = event["data"]
    assert data["service"] == "madre" and data["status"] == "degraded" and data["previous_status"] == "on"
    assert "HTTP 503" in data["reason"] and data["latency_ms"] > 0


async def _next_event(sub: Any, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The next event whose data ``wanted`` accepts (earlier ones may still be on their way)."""
    async with asyncio.timeout(5):
        while True:
            event = orjson.loads((await sub.get()).envelope)
            if wanted(event["data"]):
                return event


async def test_the_proxy_circuit_shows_in_status_and_is_published(aiohttp_client, settings, admin_headers,
                                                                   modules) -> None:
    madre = await modules("healthy")
    client = await serve(aiohttp_client, create_app(probing(settings, {"madre": madre.url}, breaker_failures=2)))
    await _probed_once(client)
    registry = client.app[keys.SERVICES]
    entry = registry.get("madre")
    assert entry is not None and entry.address == madre.url and registry.status_of("madre") == Health.ON
    hub = client.app[keys.EVENTS]
    await hub.wait_online()
    sub = hub.subscribe(frozenset({"service_status"}))
    try:
        registry.proxy_failed("madre", "upstream_timeout: no answer within 30 s")
        registry.proxy_failed("madre", "upstream_timeout: no answer within 30 s")
        event = await _next_event(sub, lambda data: data["status"] == "error")
    finally:
        hub.unsubscribe(sub)
    assert event["data"]["status"] == "error" and event["data"]["circuit"] == "open"
    got = (await _modules_by_name(client, admin_headers))["madre"]
    assert got["status"] == "error" and got["circuit"]["state"] == "open" and got["circuit"]["failures"] == 2
    assert "circuit open" in got["reason"] and "no answer within 30 s" in got["reason"]
    assert not entry.breaker.allow()
    registry.proxy_succeeded("madre")
    assert registry.status_of("madre") == Health.ON


async def test_topology_has_database_nodes_and_edges_with_live_status(aiohttp_client, settings, admin_headers,
                                                                       modules, db) -> None:
    madre = await modules("healthy")
    client = await serve(aiohttp_client, create_app(probing(settings, {"madre": madre.url})))
    await _probed_once(client)
    resp = await client.get(TOPOLOGY, headers=admin_headers)
    assert resp.status == 200
    body = await resp.json()
    assert body["entrypoint"] == "tentaculo_link"
    nodes = {n["name"]: n for n in body["nodes"]}
    assert set(nodes) == SEEDED
    assert nodes["tentaculo_link"]["entrypoint"] is True and nodes["tentaculo_link"]["status"] == "on"
    assert nodes["madre"]["status"] == "on" and nodes["switch"]["status"] == "off"
    stored = {(r["source"], r["target"], r["kind"]) for r in await db.fetch("SELECT * FROM topology_edges")}
    assert {(e["source"], e["target"], e["kind"]) for e in body["edges"]} == stored
    assert ("tentaculo_link", "madre", "http") in stored


async def test_new_read_endpoints_need_a_token_and_the_read_scope(gateway, make_token) -> None:
    chat_only = {"X-VX11-Token": await make_token("chat")}
    for path in (STATUS, MODULES, TOPOLOGY, "/operator/api/features"):
        missing = await gateway.get(path)
        assert missing.status == 401 and (await missing.json())["code"] == "auth_required"
        refused = await gateway.get(path, headers=chat_only)
        assert refused.status == 403 and (await refused.json())["required_scope"] == "read"


async def test_postgresql_down_makes_status_error_yet_it_still_answers(aiohttp_client, settings, admin_headers) -> None:
    proxy, dsn = await proxy_postgres(settings.database_url)
    try:
        app = create_app(dataclasses.replace(settings, database_url=dsn, dependency_check_seconds=0.1))
        client = await serve(aiohttp_client, app)
        await proxy.cut()

        async def pg_error() -> bool:
            return client.app[keys.DEPENDENCIES].results["postgresql"].status == "error"

        await wait_for(pg_error, timeout=5)
        resp = await client.get(STATUS, headers=admin_headers)
        assert resp.status == 200
        body = await resp.json()
        assert body["status"] == "error"
        assert body["dependencies"]["postgresql"]["status"] == "error"
        assert body["features"]["metrics"]["status"] == "degraded"
        assert "PostgreSQL unreachable" in body["features"]["metrics"]["reason"]
        await proxy.restore()

        async def pg_back() -> bool:
            return client.app[keys.DEPENDENCIES].results["postgresql"].status == "on"

        await wait_for(pg_back, timeout=10)
        await client.close()
    finally:
        await proxy.close()


async def test_redis_down_makes_events_error_not_off(aiohttp_client, settings, admin_headers) -> None:
    proxy, url = await proxy_redis(settings.redis_url)
    try:
        client = await serve(aiohttp_client, create_app(dataclasses.replace(settings, redis_url=url,
                                                                            dependency_check_seconds=0.1,
                                                                            probe_interval_seconds=0.1)))
        await client.app[keys.EVENTS].wait_online()
        await proxy.cut()

        async def events_broken() -> bool:
            body = await (await client.get(STATUS, headers=admin_headers)).json()
            deps, features = body["dependencies"], body["features"]
            modules = {m["name"]: m for m in body["services"]}
            return (features["events"]["status"] == "error" and deps["redis"]["status"] == "error"
                    and modules["redis"]["status"] == "error")

        await wait_for(events_broken, timeout=10)
        body = await (await client.get(STATUS, headers=admin_headers)).json()
        events = body["features"]["events"]
        assert events["flag"] == "on" and "event hub is offline" in events["reason"]
        assert body["status"] == "degraded" and body["dependencies"]["events"]["status"] == "error"
        # The redis module is the gateway's own Redis: its failure is told once, as the dependency's.
        assert [r for r in body["reasons"] if r.startswith(("redis", "module redis"))] == [
            f"redis error: {body['dependencies']['redis']['reason']}"]
        features = {f["name"]: f for f in (await (await client.get("/operator/api/features",
                                                                    headers=admin_headers)).json())["features"]}
        assert features["events"]["status"] == "error" and features["events"]["flag"] == "on"
        await client.close()
    finally:
        await proxy.close()


async def test_a_redis_module_is_checked_with_ping(aiohttp_client, settings, admin_headers) -> None:
    urls = {"redis": settings.redis_url or "", "hermes": f"redis://127.0.0.1:{closed_port()}/0"}
    client = await serve(aiohttp_client, create_app(probing(settings, urls)))
    await _probed_once(client)
    got = await _modules_by_name(client, admin_headers)
    assert got["redis"]["status"] == "on" and got["redis"]["latency_ms"] > 0
    # The operating system's message would name the address; the reason never does.
    assert got["hermes"]["status"] == "error" and got["hermes"]["reason"] == "unreachable: connection refused"


def test_service_addresses_come_from_the_environment_with_dashes_as_underscores() -> None:
    settings = Settings.from_env({
        "TENTACULO_SERVICE_OPERATOR_BACKEND_URL": "http://10.0.0.5:9000",
        "TENTACULO_SERVICE_MADRE_URL": " https://madre.internal ",
        "TENTACULO_SERVICE_SWITCH_URL": "",
        "TENTACULO_SERVICE_HERMES_TOKEN": "not-an-address",
        "TENTACULO_SERVICES_RELOAD_SECONDS": "3",
    })
    assert settings.service_urls == {"operator_backend": "http://10.0.0.5:9000", "madre": "https://madre.internal"}
    assert settings.services_reload_seconds == 3.0
    assert "10.0.0.5" not in repr(settings)
    with pytest.raises(SettingsError) as bad:
        Settings.from_env({"TENTACULO_SERVICE_MADRE_URL": "ftp://madre"})
    assert bad.value.variable == "TENTACULO_SERVICE_MADRE_URL"
    with pytest.raises(SettingsError) as bad:
        Settings.from_env({"TENTACULO_PROBE_TIMEOUT": "0"})
    assert bad.value.variable == "TENTACULO_PROBE_TIMEOUT"


def test_public_address_never_shows_credentials() -> None:
    assert public_address("http://u:p@host:81/base?token=x#f") == "http://host:81/base"
    assert public_address("redis://:pw@[::1]:6379/0") == "redis://[::1]:6379/0"
    assert public_address(None) is None


def _cli_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENTACULO_", "DEEPSEEK_"))}
    return {**env, "TENTACULO_DATABASE_URL": database_url, **extra}


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tentaculo", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def restore_service_configs(db: asyncpg.Connection) -> AsyncIterator[None]:
    saved = await db.fetch("SELECT * FROM service_configs")
    yield
    names = [r["name"] for r in saved]
    await db.execute("DELETE FROM service_configs WHERE name <> ALL($1::text[])", names)
    for r in saved:
        await db.execute(
            "UPDATE service_configs SET base_url = $2, health_path = $3, enabled = $4, role = $5, display_name = $6"
            " WHERE name = $1", r["name"], r["base_url"], r["health_path"], r["enabled"], r["role"], r["display_name"]
        )


async def test_cli_adds_changes_and_disables_modules_on_a_running_gateway(
    aiohttp_client, settings, admin_headers, modules, database_url, restore_service_configs
) -> None:
    madre, extra = await modules("healthy"), await modules("healthy")
    # The periodic reload is an hour away: only the change notification can explain a prompt update.
    client = await serve(aiohttp_client, create_app(probing(settings, {}, services_reload_seconds=3600)))
    env = _cli_env(database_url)

    code, _, err = await _cli("service", "set", "madre", "--url", madre.url, env=env)
    assert code == 0, err
    assert "updated module 'madre'" in err
    await wait_for(lambda: _module_is(client, admin_headers, "madre", "on"), timeout=5)

    code, _, err = await _cli("service", "set", "madre", "--health-path", "/healthz", "--disabled", env=env)
    assert code == 0, err
    await wait_for(lambda: _module_is(client, admin_headers, "madre", "off"), timeout=5)
    got = (await _modules_by_name(client, admin_headers))["madre"]
    assert got["reason"] == "disabled in service_configs" and got["health_path"] == "/healthz"

    code, _, err = await _cli("service", "set", "ledger", "--url", extra.url, "--role", "accounting", env=env)
    assert code == 0 and "added module 'ledger'" in err
    await wait_for(lambda: _module_is(client, admin_headers, "ledger", "on"), timeout=5)
    assert (await _modules_by_name(client, admin_headers))["ledger"]["role"] == "accounting"

    code, out, _ = await _cli("service", "list", env=_cli_env(database_url, TENTACULO_SERVICE_SWITCH_URL="http://sw:1"))
    assert code == 0
    modules_table = out.split("\n\n")[0]
    lines = {line.split()[0]: line for line in modules_table.splitlines()[1:]}
    assert set(lines) >= SEEDED | {"ledger"}
    assert extra.url in lines["ledger"] and "(from TENTACULO_SERVICE_SWITCH_URL)" in lines["switch"]
    assert " no " in lines["madre"]

    code, _, err = await _cli("service", "set", "Bad Name", "--url", "ftp://x", "--health-path", "h", env=env)
    assert code == 2 and "NAME" in err and "--url" in err and "--health-path" in err


async def _edges_of(client: Any, headers: dict[str, str]) -> set[tuple[str, str, str]]:
    body = await (await client.get("/operator/api/topology", headers=headers)).json()
    return {(e["source"], e["target"], e["kind"]) for e in body["edges"]}


async def test_cli_adds_and_removes_topology_edges_on_a_running_gateway(
    aiohttp_client, settings, admin_headers, database_url, db
) -> None:
    client = await serve(aiohttp_client, create_app(probing(settings, {}, services_reload_seconds=3600)))
    env = _cli_env(database_url)
    assert ("hermes", "mcp", "grpc") not in await _edges_of(client, admin_headers)
    try:
        code, out, err = await _cli("service", "edge", "add", "hermes", "mcp", "--kind", "grpc", env=env)
        assert code == 0, err
        assert out.startswith("added edge hermes -> mcp (grpc)")

        async def shown() -> bool:
            return ("hermes", "mcp", "grpc") in await _edges_of(client, admin_headers)

        await wait_for(shown, timeout=5)
        code, out, _ = await _cli("service", "list", env=env)
        assert code == 0 and "hermes -> mcp (grpc)" in out and "tentaculo_link -> madre (http)" in out

        code, out, err = await _cli("service", "edge", "remove", "hermes", "mcp", env=env)
        assert code == 0 and out.startswith("removed edge hermes -> mcp"), err

        async def gone() -> bool:
            return ("hermes", "mcp", "grpc") not in await _edges_of(client, admin_headers)

        await wait_for(gone, timeout=5)
        code, _, err = await _cli("service", "edge", "remove", "hermes", "mcp", env=env)
        assert code == 1 and "no edge hermes -> mcp" in err
        code, _, err = await _cli("service", "edge", "add", "hermes", "no-such-module", env=env)
        assert code == 1 and "no module named 'no-such-module'" in err and "tentaculo service set" in err
    finally:
        await db.execute("DELETE FROM topology_edges WHERE source = 'hermes' AND target = 'mcp'")


async def _module_is(client: Any, headers: dict[str, str], name: str, status: str) -> bool:
    found = (await _modules_by_name(client, headers)).get(name)
    return found is not None and found["status"] == status


def test_connection_failures_are_told_without_the_address() -> None:
    # asyncio's own message for a refused connection names the peer: only the errno is used.
    assert connect_reason(ConnectionRefusedError(111, "Connect call failed ('10.1.2.3', 8001)")) == "connection refused"
    assert connect_reason(socket.gaierror(-2, "Name or service not known")) == "its host name does not resolve"
    assert connect_reason(OSError(None, "odd failure at 10.1.2.3:8001")) == "connection failed"


async def test_a_silent_redis_module_and_a_failed_tls_handshake_are_told_apart(
    aiohttp_client, settings, admin_headers, modules
) -> None:
    plain = await modules("plain")  # speaks plain HTTP: a TLS client's hello gets no TLS answer
    silent = await RawModule(garbage).start()  # accepts, reads, never answers a PING
    try:
        urls = {"madre": plain.url.replace("http://", "https://"), "hermes": f"redis://127.0.0.1:{silent.port}/0"}
        client = await serve(aiohttp_client, create_app(probing(settings, urls)))
        await _probed_once(client)
        got = await _modules_by_name(client, admin_headers)
        assert (got["madre"]["status"], got["madre"]["reason"]) == ("error", "failed the TLS handshake")
        assert got["hermes"]["status"] == "error" and got["hermes"]["reason"].startswith("timed out")
    finally:
        await silent.close()
