"""`tentaculo smoke`: call every endpoint of a running gateway and print a PASS, FAIL or SKIP line each.

Reads the base URL and a token (with every scope, e.g. the admin token) from its arguments or
from TENTACULO_SMOKE_URL / TENTACULO_SMOKE_TOKEN. Exits non-zero when any check fails. A check of
something the gateway was not configured for (the file explorer without roots, chat while the
mock provider is not loaded, a feature turned off) is skipped with the reason, never passed: a
skip says what was not tried. Beyond single calls it opens an event stream and sees a chat's
event arrive on it, opens one with a ticket, and reads a streamed chat and an OpenAI completion.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

SMOKE_PREFIX = "smoke-"
STREAM_WAIT = 10.0  # seconds an event stream may take to deliver what a check waits for


@dataclass
class Check:
    """One call and the statuses that count as a pass."""

    name: str
    method: str
    path: str
    ok: tuple[int, ...] = (200,)
    token: bool = True
    body: Any = None
    headers: dict[str, str] | None = None
    expect: Callable[[Any], bool] | None = None
    keep: str | None = None  # remember the JSON answer under this name for later checks


class Skip(Exception):
    """A check that does not apply to this gateway's configuration; the message says why."""


class Failed(Exception):
    """A check that ran and did not get what a healthy gateway answers."""


@dataclass
class Probe:
    """A check of more than one call (a stream, a ticket), run by ``run``; raises Skip or Failed."""

    name: str
    method: str
    path: str
    run: Callable[[Smoke], Awaitable[str]]


@dataclass
class Smoke:
    """One smoke run: the session, and what earlier checks learned (features, providers, ticket)."""

    session: aiohttp.ClientSession
    base: str
    token: str
    correlation_id: str
    kept: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"X-VX11-Token": self.token}

    def feature_off(self, name: str) -> str | None:
        """Why feature ``name`` is off on purpose (turned off, not configured); None when it should work.

        A feature in ``error`` is not skipped: it is meant to work and does not, which is a failure.
        """
        for flag in self.kept.get("features", {}).get("features", []):
            if flag.get("name") == name and flag.get("status") == "off":
                return f"feature {name} is off: {flag.get('reason') or 'turned off'}"
        return None

    def need_mock(self) -> None:
        """Chat checks use the mock provider, which answers without any configuration."""
        if why := self.feature_off("chat"):
            raise Skip(why)
        if "providers" not in self.kept:
            raise Failed("the provider list could not be read, so no chat was tried")
        names = {p.get("name"): p for p in self.kept["providers"].get("providers", [])}
        if "mock" not in names or names["mock"].get("status") in {"off", "error"}:
            raise Skip("the mock provider is not loaded (TENTACULO_PROVIDERS)")


def checks(correlation_id: str) -> list[Check | Probe]:
    """What a healthy gateway answers, in order; problems must still come as problem+json."""
    return [
        Check("liveness", "GET", "/health", token=False, expect=lambda b: b["status"] == "on"),
        Check("readiness", "GET", "/ready", token=False, expect=lambda b: b["status"] == "on"),
        Check("openapi spec", "GET", "/operator/api/openapi.json", token=False,
              expect=lambda b: b["openapi"].startswith("3.1")),
        Check("refuses a missing token", "GET", "/operator/api/whoami", ok=(401,), token=False,
              expect=lambda b: b["code"] == "auth_required"),
        Check("whoami", "GET", "/operator/api/whoami"),
        Check("tokens", "GET", "/operator/api/tokens", expect=lambda b: isinstance(b["tokens"], list)),
        Check("status", "GET", "/operator/api/status", expect=lambda b: b["status"] in {"on", "degraded", "error", "off"}),
        Check("features", "GET", "/operator/api/features", keep="features"),
        Check("providers", "GET", "/operator/api/providers", keep="providers"),
        Check("modules", "GET", "/operator/api/modules"),
        Check("topology", "GET", "/operator/api/topology", expect=lambda b: "entrypoint" in b),
        Check("metrics", "GET", "/operator/api/metrics?window=5m"),
        Check("prometheus metrics", "GET", "/metrics"),
        Check("events page", "GET", "/operator/api/events", headers={"Accept": "application/json"},
              expect=lambda b: isinstance(b["events"], list)),
        Probe("chat (mock)", "POST", "/operator/api/chat", _chat),
        Probe("chat, streamed (mock)", "POST", "/operator/api/chat", _chat_streamed),
        Probe("event stream sees a chat", "GET", "/operator/api/events", _event_stream),
        Probe("event stream with a ticket", "POST", "/operator/api/events/ticket", _ticket_stream),
        Check("openai models", "GET", "/v1/models", expect=lambda b: b["object"] == "list"),
        Probe("openai chat completion (mock)", "POST", "/v1/chat/completions", _openai_completion),
        Probe("openai chat completion, streamed", "POST", "/v1/chat/completions", _openai_stream),
        Probe("file explorer lists a root", "GET", "/operator/api/fs/list", _file_explorer),
        Probe("trace of the chat", "GET", f"/operator/api/trace/{correlation_id}", _trace),
        Check("proxy refuses an unknown module", "GET", "/operator/api/proxy/no-such-module/health", ok=(404,)),
    ]


async def _json_call(smoke: Smoke, method: str, path: str, *, body: Any = None,
                     headers: dict[str, str] | None = None) -> Any:
    """A call expected to answer 200 with JSON; anything else raises Failed."""
    async with smoke.session.request(method, smoke.base + path, json=body,
                                     headers={**smoke.headers, **(headers or {})}) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise Failed(f"{resp.status}: {raw[:200].decode(errors='replace')}")
        return json.loads(raw)


async def _chat(smoke: Smoke) -> str:
    smoke.need_mock()
    body = await _json_call(smoke, "POST", "/operator/api/chat", body={"message": "smoke test", "provider": "mock"},
                            headers={"X-Correlation-ID": smoke.correlation_id})
    if body.get("provider") != "mock" or not body.get("content"):
        raise Failed(f"unexpected answer: {json.dumps(body)[:200]}")
    smoke.kept["chat"] = body
    return f"answered by mock in {body.get('latency_ms')} ms"


async def _sse_records(resp: aiohttp.ClientResponse, until: Callable[[list[tuple[str, str]]], bool]) -> list[tuple[str, str]]:
    """(event, data) records of a stream, read until ``until`` holds or the stream ends; Failed after STREAM_WAIT."""
    records: list[tuple[str, str]] = []
    name, data = "message", ""
    try:
        async with asyncio.timeout(STREAM_WAIT):
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data = line[5:].strip()
                elif line.startswith("retry:"):
                    records.append(("retry", line[6:].strip()))
                elif not line and data:
                    records.append((name, data))
                    name, data = "message", ""
                if until(records):
                    return records
    except TimeoutError:
        raise Failed(f"nothing more within {STREAM_WAIT:g} s; got {[n for n, _ in records]}") from None
    return records


async def _chat_streamed(smoke: Smoke) -> str:
    smoke.need_mock()
    async with smoke.session.post(smoke.base + "/operator/api/chat", headers=smoke.headers,
                                  json={"message": "smoke test", "provider": "mock", "stream": True}) as resp:
        if resp.status != 200 or resp.content_type != "text/event-stream":
            raise Failed(f"{resp.status} {resp.content_type}: {(await resp.read())[:200].decode(errors='replace')}")
        records = await _sse_records(resp, lambda r: bool(r) and r[-1][0] in {"done", "error"})
    names = [n for n, _ in records]
    if not names or names[0] != "start" or names[-1] != "done" or "delta" not in names:
        raise Failed(f"events {names}, expected start, delta..., done")
    return f"start, {names.count('delta')} deltas, done"


async def _event_stream(smoke: Smoke) -> str:
    if why := smoke.feature_off("events"):
        raise Skip(why)
    smoke.need_mock()
    cid = SMOKE_PREFIX + uuid.uuid4().hex[:12]
    async with smoke.session.get(smoke.base + f"/operator/api/events?types=chat&correlation_id={cid}",
                                 headers={**smoke.headers, "Accept": "text/event-stream"}) as resp:
        if resp.status != 200 or resp.content_type != "text/event-stream":
            raise Failed(f"{resp.status} {resp.content_type}: {(await resp.read())[:200].decode(errors='replace')}")
        await _sse_records(resp, lambda r: any(n == "retry" for n, _ in r))
        started = time.perf_counter()
        await _json_call(smoke, "POST", "/operator/api/chat", body={"message": "smoke event", "provider": "mock"},
                         headers={"X-Correlation-ID": cid})
        records = await _sse_records(resp, lambda r: any(n in {"chat", "error"} for n, _ in r))
    chats = [json.loads(d) for n, d in records if n == "chat"]
    if not chats or chats[0].get("correlation_id") != cid:
        raise Failed(f"no chat event for the chat; got {[n for n, _ in records]}")
    return f"chat event in {(time.perf_counter() - started) * 1000:.1f} ms"


async def _ticket_stream(smoke: Smoke) -> str:
    if why := smoke.feature_off("events"):
        raise Skip(why)
    issued = await _json_call(smoke, "POST", "/operator/api/events/ticket")
    if not issued.get("ticket") or not 0 < issued.get("expires_in", 0) <= 60:
        raise Failed(f"unexpected ticket answer: {sorted(issued)}")
    # No token header: the ticket alone opens the stream, as a browser's EventSource does.
    async with smoke.session.get(smoke.base + "/operator/api/events", params={"ticket": issued["ticket"]},
                                 headers={"Accept": "text/event-stream"}) as resp:
        if resp.status != 200 or resp.content_type != "text/event-stream":
            raise Failed(f"{resp.status} {resp.content_type}: {(await resp.read())[:200].decode(errors='replace')}")
        await _sse_records(resp, lambda r: any(n == "retry" for n, _ in r))
    return f"stream opened with a ticket valid {issued['expires_in']} s"


def _openai_headers(smoke: Smoke) -> dict[str, str]:
    return {"Authorization": f"Bearer {smoke.token}"}


async def _openai_completion(smoke: Smoke) -> str:
    smoke.need_mock()
    async with smoke.session.post(smoke.base + "/v1/chat/completions", headers=_openai_headers(smoke),
                                  json={"model": "mock", "messages": [{"role": "user", "content": "smoke"}]}) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise Failed(f"{resp.status}: {raw[:200].decode(errors='replace')}")
    body = json.loads(raw)
    content = body["choices"][0]["message"]["content"]
    if body.get("object") != "chat.completion" or not content:
        raise Failed(f"unexpected answer: {raw[:200].decode(errors='replace')}")
    return f"{len(content)} characters from {body.get('model')}"


async def _openai_stream(smoke: Smoke) -> str:
    smoke.need_mock()
    async with smoke.session.post(smoke.base + "/v1/chat/completions", headers=_openai_headers(smoke),
                                  json={"model": "mock", "stream": True,
                                        "messages": [{"role": "user", "content": "smoke"}]}) as resp:
        if resp.status != 200 or resp.content_type != "text/event-stream":
            raise Failed(f"{resp.status} {resp.content_type}: {(await resp.read())[:200].decode(errors='replace')}")
        records = await _sse_records(resp, lambda r: bool(r) and r[-1][1] == "[DONE]")
    chunks = [json.loads(d) for _, d in records if d != "[DONE]"]
    if not records or records[-1][1] != "[DONE]" or not chunks or any("error" in c for c in chunks):
        raise Failed(f"expected chunks ending in [DONE]; got {[d[:60] for _, d in records]}")
    return f"{len(chunks)} chunks, then [DONE]"


async def _file_explorer(smoke: Smoke) -> str:
    if why := smoke.feature_off("file_explorer"):
        raise Skip(why)
    roots = (await _json_call(smoke, "GET", "/operator/api/fs/list"))["entries"]
    if not roots:
        raise Failed("the file explorer is on but lists no root")
    listing = await _json_call(smoke, "GET", "/operator/api/fs/list?path=" + roots[0]["name"])
    return f"root {roots[0]['name']!r}: {len(listing['entries'])} entries"


async def _trace(smoke: Smoke) -> str:
    smoke.need_mock()
    if "chat" not in smoke.kept:
        raise Failed("no chat to trace: the chat check failed")
    path = f"/operator/api/trace/{smoke.correlation_id}"
    for _ in range(int(STREAM_WAIT / 0.1)):
        # The chat's rows are written in the background, within a fraction of a second.
        items = (await _json_call(smoke, "GET", path))["items"]
        if any(item.get("kind") == "chat" for item in items):
            return f"{len(items)} items, the chat's row among them"
        await asyncio.sleep(0.1)
    raise Failed(f"no chat row recorded for {smoke.correlation_id} within {STREAM_WAIT:g} s")


async def _run_one(smoke: Smoke, check: Check) -> tuple[bool, str]:
    headers = dict(check.headers or {})
    if check.token:
        headers.update(smoke.headers)
    started = time.perf_counter()
    async with smoke.session.request(check.method, smoke.base + check.path, json=check.body, headers=headers) as resp:
        raw = await resp.read()
        elapsed = (time.perf_counter() - started) * 1000
        if not resp.headers.get("X-Correlation-ID"):
            return False, f"{resp.status} without X-Correlation-ID"
        if resp.status not in check.ok:
            return False, f"{resp.status}: {raw[:200].decode(errors='replace')}"
        if resp.status >= 400 and resp.content_type != "application/problem+json":
            return False, f"{resp.status} is not problem+json"
        if check.expect is not None or check.keep:
            try:
                body = json.loads(raw)
                passed = check.expect(body) if check.expect is not None else True
            except (ValueError, KeyError, TypeError) as exc:
                return False, f"{resp.status}, unexpected body ({type(exc).__name__}: {exc})"
            if not passed:
                return False, f"{resp.status}, unexpected body: {raw[:200].decode(errors='replace')}"
            if check.keep:
                smoke.kept[check.keep] = body
        return True, f"{resp.status} in {elapsed:.1f} ms"


Verdict = Literal["PASS", "FAIL", "SKIP"]


async def _outcome(smoke: Smoke, check: Check | Probe) -> tuple[Verdict, str]:
    try:
        if isinstance(check, Check):
            passed, detail = await _run_one(smoke, check)
            return ("PASS" if passed else "FAIL"), detail
        return "PASS", await check.run(smoke)
    except Skip as exc:
        return "SKIP", str(exc)
    except Failed as exc:
        return "FAIL", str(exc)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return "FAIL", f"no answer: {type(exc).__name__}: {exc}"
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return "FAIL", f"unexpected answer ({type(exc).__name__}: {exc})"


async def run_smoke(base: str, token: str, *, out: Callable[[str], None] = print) -> int:
    """Run every check in order; print one line each; return the number of failures."""
    correlation_id = SMOKE_PREFIX + uuid.uuid4().hex[:12]
    counts: dict[Verdict, int] = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        smoke = Smoke(session, base.rstrip("/"), token, correlation_id)
        for check in checks(correlation_id):
            verdict, detail = await _outcome(smoke, check)
            counts[verdict] += 1
            out(f"{verdict}  {check.method:<5} {check.path:<48} {check.name}: {detail}")
    out(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return counts["FAIL"]


def main(base: str, token: str) -> int:
    """Entry point used by the CLI."""
    return 1 if asyncio.run(run_smoke(base, token)) else 0
