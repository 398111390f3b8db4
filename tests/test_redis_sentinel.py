"""The gateway on a Redis it finds through Sentinel, against a redis-server and a sentinel this test
starts on free loopback ports (stopped by their process ids)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.db.redisconn import SentinelRedis, redis_client
from tentaculo.settings import Settings
from tests.helpers import ADMIN_TOKEN, serve, wait_for
from tests.test_events import open_stream
from tests.test_redis_tls import REDIS_SERVER, free_port, make_certificates, start_redis, stop

MASTER = "tentaculo-test"

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server command")


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(sentinel address host:port, the master's port) of a sentinel monitoring a redis-server."""
    directory = tmp_path_factory.mktemp("redis-sentinel")
    master_port, sentinel_port = free_port(), free_port()
    master = start_redis(directory, "--port", str(master_port))
    config = directory / "sentinel.conf"
    config.write_text(f"port {sentinel_port}\nbind 127.0.0.1\nsentinel resolve-hostnames no\n"
                      f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n")
    try:
        watcher = start_redis(directory, "--sentinel", config=config, ready="+monitor master")
    except BaseException:
        stop(master)
        raise
    try:
        yield f"127.0.0.1:{sentinel_port}", master_port
    finally:
        stop(watcher)
        stop(master)


def sentinel_settings(settings: Settings, address: str) -> Settings:
    s = dataclasses.replace(settings, redis_url=None, redis_sentinels=(address,), redis_sentinel_master=MASTER,
                            redis_prefix=f"{settings.redis_prefix}sentinel-{uuid.uuid4().hex[:6]}:")
    s.validate()
    return s


async def test_gateway_through_sentinel_is_ready_and_delivers_events(aiohttp_client, settings: Settings,
                                                                     sentinel) -> None:
    address, master_port = sentinel
    s = sentinel_settings(settings, address)
    gw = await serve(aiohttp_client, create_app(s))
    assert isinstance(gw.app[keys.REDIS], SentinelRedis)
    body = await (await gw.get("/ready")).json()
    assert body["checks"]["redis"]["status"] == "on", body
    hub = gw.app[keys.EVENTS]
    await wait_for(lambda: hub.status == "on")
    sse = await open_stream(gw)
    hub.publish("chat", {"message_id": "m-sentinel", "provider": "mock"}, correlation_id="via-sentinel")
    event = await sse.event()
    assert event["event"] == "chat" and event["data"]["correlation_id"] == "via-sentinel"
    # The status page shows the system's Redis as the gateway's, by the sentinel it is found through.
    async def redis_module() -> dict[str, Any]:
        resp = await gw.get("/operator/api/modules", headers={"X-VX11-Token": ADMIN_TOKEN})
        assert resp.status == 200
        return next(m for m in (await resp.json())["modules"] if m["name"] == "redis")

    await wait_for(lambda: gw.app[keys.DEPENDENCIES].redis_check().status == "on")
    module = await redis_module()
    assert (module["status"], module["address_source"]) == ("on", "gateway"), module
    assert module["address"] == f"redis+sentinel://{address}/{MASTER}"
    # The events went to the master the sentinel named, not to any other Redis.
    direct = Redis(host="127.0.0.1", port=master_port)
    try:
        assert [key async for key in direct.scan_iter(match=s.redis_prefix + "*")]
    finally:
        await direct.aclose()


async def test_an_unknown_master_name_is_redis_error_on_ready(aiohttp_client, settings: Settings, sentinel) -> None:
    address, _ = sentinel
    s = dataclasses.replace(sentinel_settings(settings, address), redis_sentinel_master="no-such-master")
    gw = await serve(aiohttp_client, create_app(s))
    resp = await gw.get("/ready")
    body = await resp.json()
    assert resp.status == 503 and body["checks"]["redis"]["status"] == "error", body
    assert "127.0.0.1" not in body["checks"]["redis"]["reason"]


async def test_the_url_gives_database_and_credentials_and_closing_closes_the_sentinel_connections(
        settings: Settings, sentinel, tmp_path: Path) -> None:
    address, _ = sentinel
    s = dataclasses.replace(sentinel_settings(settings, address), redis_url="redis://user:s%40cret@ignored:1/3")
    client = redis_client(s, socket_timeout=1.5)
    assert isinstance(client, SentinelRedis)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"], kwargs["socket_timeout"]) == (3, "user", "s@cret", 1.5)
    assert client.sentinels_of is not None
    assert client.sentinels_of.sentinels[0].connection_pool.connection_kwargs["socket_timeout"] == 1.5
    await client.aclose()


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[str, int, int]]:
    """(sentinel address, master port, replica port): a master, its replica, a sentinel watching both."""
    master_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    started = [start_redis(tmp_path, "--port", str(master_port))]
    try:
        started.append(start_redis(tmp_path, "--port", str(replica_port), "--replicaof", "127.0.0.1", str(master_port),
                                   ready="MASTER <-> REPLICA sync: Finished with success"))
        config = tmp_path / "sentinel.conf"
        config.write_text(f"port {sentinel_port}\nbind 127.0.0.1\nsentinel resolve-hostnames no\n"
                          f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n"
                          f"sentinel down-after-milliseconds {MASTER} 1000\n")
        started.append(start_redis(tmp_path, "--sentinel", config=config, ready="+slave slave"))
        yield f"127.0.0.1:{sentinel_port}", master_port, replica_port
    finally:
        for process in reversed(started):
            stop(process)


async def test_after_a_failover_the_gateway_writes_to_the_promoted_replica(replicated, aiohttp_client,
                                                                            settings: Settings) -> None:
    # ``replicated`` first: its servers stop after the gateway has, which then shuts down promptly.
    address, _master_port, replica_port = replicated
    s = sentinel_settings(settings, address)
    gw = await serve(aiohttp_client, create_app(s))
    hub = gw.app[keys.EVENTS]
    await wait_for(lambda: hub.status == "on")
    sse = await open_stream(gw)
    hub.publish("chat", {"n": 1}, correlation_id="before")
    assert (await sse.event())["data"]["correlation_id"] == "before"

    host, port = address.rsplit(":", 1)
    watcher = Redis(host=host, port=int(port), decode_responses=True)
    try:
        async def failover_started() -> bool:
            try:
                await watcher.execute_command("SENTINEL", "FAILOVER", MASTER)
            except ResponseError as exc:  # NOGOODSLAVE until the sentinel has heard from the replica
                assert "NOGOODSLAVE" in str(exc)
                return False
            return True

        await wait_for(failover_started, timeout=20, interval=0.2)

        async def promoted() -> bool:
            addr = await watcher.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
            return int(addr[1]) == replica_port

        await wait_for(promoted, timeout=20, interval=0.1)
    finally:
        await watcher.aclose()

    # The old master, made a replica, drops its clients: the stream open before ends with an error
    # (the client resumes from there), and the reader reconnects to the promoted node.
    records = []
    try:
        while True:
            records.append(await sse.record(timeout=20))
    except EOFError:
        pass
    assert records and records[-1].get("event") == "error", records

    async def ready() -> bool:
        body = await (await gw.get("/ready")).json()
        return body["checks"]["redis"]["status"] == "on" and hub.status == "on" and hub.reconnects >= 1

    await wait_for(ready, timeout=20, interval=0.1)
    sse = await open_stream(gw)
    hub.publish("chat", {"n": 2}, correlation_id="after")
    assert (await sse.event(timeout=10))["data"]["correlation_id"] == "after"
    new_master = Redis(host="127.0.0.1", port=replica_port)
    try:
        assert (await new_master.info("replication"))["role"] == "master"
        assert [key async for key in new_master.scan_iter(match=s.redis_prefix + "*")]
    finally:
        await new_master.aclose()


async def test_sentinel_and_master_over_tls(aiohttp_client, settings: Settings, tmp_path: Path) -> None:
    files = make_certificates(tmp_path)
    tls = ["--tls-cert-file", str(files["server.crt"]), "--tls-key-file", str(files["server.key"]),
           "--tls-ca-cert-file", str(files["ca.crt"]), "--tls-auth-clients", "no"]
    master_port, sentinel_port = free_port(), free_port()
    started = [start_redis(tmp_path, "--port", "0", "--tls-port", str(master_port), *tls)]
    try:
        config = tmp_path / "sentinel.conf"
        config.write_text(f"port 0\ntls-port {sentinel_port}\nbind 127.0.0.1\ntls-replication yes\n"
                          f"tls-cert-file {files['server.crt']}\ntls-key-file {files['server.key']}\n"
                          f"tls-ca-cert-file {files['ca.crt']}\ntls-auth-clients no\n"
                          f"sentinel resolve-hostnames no\nsentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n")
        started.append(start_redis(tmp_path, "--sentinel", config=config, ready="+monitor master"))
        s = dataclasses.replace(sentinel_settings(settings, f"127.0.0.1:{sentinel_port}"), redis_url="rediss:///0",
                                redis_tls_ca_file=files["ca.crt"])
        gw = await serve(aiohttp_client, create_app(s))
        body = await (await gw.get("/ready")).json()
        assert body["checks"]["redis"]["status"] == "on", body
        hub = gw.app[keys.EVENTS]
        await wait_for(lambda: hub.status == "on")
        sse = await open_stream(gw)
        hub.publish("chat", {"n": 1}, correlation_id="sentinel-tls")
        assert (await sse.event())["data"]["correlation_id"] == "sentinel-tls"
    finally:
        for process in reversed(started):
            stop(process)
