"""POST /operator/api/chat against the mock provider: answers, streaming, validation, faults, rows."""

from __future__ import annotations

import asyncio
import io
import json

import orjson
from structlog.testing import capture_logs

from tentaculo import keys
from tests.chat_helpers import chat_gateway, chat_rows, new_cid, parse_sse

CHAT = "/operator/api/chat"


async def test_json_answer_has_every_contract_field(aiohttp_client, settings, make_token, db) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    token = await make_token("chat", name=f"chatter-{new_cid()}")
    cid = new_cid()
    resp = await gw.post(CHAT, json={"message": "Which rivers are longest?", "session_id": "s-1"},
                         headers={"Authorization": f"Bearer {token}", "X-Correlation-ID": cid})
    assert resp.status == 200
    assert resp.headers["X-Correlation-ID"] == cid
    body = await resp.json()
    assert set(body) >= {"correlation_id", "message_id", "session_id", "provider", "model", "content", "reasoning",
                         "finish_reason", "usage", "latency_ms", "degraded", "attempts"}
    assert body["correlation_id"] == cid and body["session_id"] == "s-1"
    assert body["provider"] == "mock" and body["model"] == "mock"
    assert body["content"].startswith("Mock answer ") and body["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 13}
    assert body["degraded"] is False
    assert body["attempts"] == [{"provider": "mock", "status": "ok", "error": None,
                                 "latency_ms": body["attempts"][0]["latency_ms"]}]
    [row] = await chat_rows(db, cid)
    assert row["status"] == "ok" and row["provider"] == "mock" and row["model"] == "mock"
    assert str(row["message_id"]) == body["message_id"] and row["session_id"] == "s-1"
    assert row["prompt_tokens"] == 4 and row["completion_tokens"] == 13 and row["streamed"] is False
    assert row["token_name"].startswith("chatter-") and row["instance"] == settings.instance
    assert json.loads(row["attempts"])[0]["status"] == "ok"


async def test_same_question_same_answer_and_messages_form(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    one = await (await gw.post(CHAT, json={"message": "hello there"}, headers=admin_headers)).json()
    two = await (await gw.post(CHAT, json={"messages": [{"role": "user", "content": "hello there"}]},
                               headers=admin_headers)).json()
    other = await (await gw.post(CHAT, json={"message": "something else"}, headers=admin_headers)).json()
    assert one["content"] == two["content"] != other["content"]
    assert one["message_id"] != two["message_id"]


async def test_max_tokens_cuts_the_answer_short(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    body = await (await gw.post(CHAT, json={"message": "hi", "max_tokens": 3}, headers=admin_headers)).json()
    assert body["finish_reason"] == "length" and len(body["content"].split()) == 3 + 3  # "Mock answer <id>:" + 3


async def test_reasoning_model_returns_reasoning(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    body = await (await gw.post(CHAT, json={"message": "think about it", "model": "mock-reasoner"},
                                headers=admin_headers)).json()
    assert body["model"] == "mock-reasoner"
    assert body["reasoning"] == "Considering 3 words of input."


async def test_sse_stream_start_deltas_then_one_done(aiohttp_client, settings, admin_headers, db) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    cid = new_cid()
    json_answer = await (await gw.post(CHAT, json={"message": "stream me"}, headers=admin_headers)).json()
    resp = await gw.post(CHAT, json={"message": "stream me", "stream": True},
                         headers={**admin_headers, "X-Correlation-ID": cid})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Correlation-ID"] == cid
    events = parse_sse(await resp.text())
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "done"
    assert set(names[1:-1]) == {"delta"} and len(names) > 3
    start = events[0][1]
    assert start["correlation_id"] == cid and start["provider"] == "mock" and start["model"] == "mock"
    assert "".join(data["content"] for name, data in events if name == "delta") == json_answer["content"]
    done = events[-1][1]
    assert done["finish_reason"] == "stop" and done["degraded"] is False
    assert done["usage"] == json_answer["usage"] and done["latency_ms"] > 0
    [row] = await chat_rows(db, cid)
    assert row["status"] == "ok" and row["streamed"] is True and str(row["message_id"]) == start["message_id"]


async def test_accept_event_stream_alone_streams(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    resp = await gw.post(CHAT, json={"message": "hi"}, headers={**admin_headers, "Accept": "text/event-stream"})
    events = parse_sse(await resp.text())
    assert next(n for n, _ in events) == "start" and events[-1][0] == "done"


async def test_reasoning_streams_as_reasoning_deltas(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    resp = await gw.post(CHAT, json={"message": "hmm", "model": "mock-reasoner", "stream": True}, headers=admin_headers)
    deltas = [d for n, d in parse_sse(await resp.text()) if n == "delta"]
    assert deltas[0] == {"reasoning": "Considering "}
    assert "".join(d.get("reasoning", "") for d in deltas) == "Considering 1 word of input."
    assert all(set(d) == {"content"} for d in deltas[5:])


async def test_validation_errors_name_each_field(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    cases = [
        ({}, {"message"}),
        ({"message": ""}, {"message"}),
        ({"message": "   "}, {"message"}),
        ({"message": 42}, {"message"}),
        ({"messages": []}, {"messages"}),
        ({"messages": "hello"}, {"messages"}),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, {"messages[0].role"}),
        ({"messages": [{"role": "user", "content": 7}]}, {"messages[0].content"}),
        ({"messages": ["hi"]}, {"messages[0]"}),
        ({"message": "hi", "messages": [{"role": "user", "content": "hi"}]}, {"message"}),
        ({"message": "hi", "stream": "yes"}, {"stream"}),
        ({"message": "hi", "temperature": "hot"}, {"temperature"}),
        ({"message": "hi", "temperature": 9}, {"temperature"}),
        ({"message": "hi", "max_tokens": 0}, {"max_tokens"}),
        ({"message": "hi", "max_tokens": True}, {"max_tokens"}),
        ({"message": "hi", "provider": 3}, {"provider"}),
        ({"message": "hi", "model": ""}, {"model"}),
        ({"message": "hi", "session_id": 12}, {"session_id"}),
        ({"message": "hi", "session_id": "a\u0000b"}, {"session_id"}),
        ({"message": "hi", "metadata": []}, {"metadata"}),
        ({"message": 1, "stream": 2, "temperature": None}, {"message", "stream"}),
    ]
    for body, fields in cases:
        resp = await gw.post(CHAT, json=body, headers=admin_headers)
        assert resp.status == 422, body
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
        assert problem["code"] == "validation_error" and problem["correlation_id"]
        assert {e["field"] for e in problem["errors"]} == fields, body
        assert all(e["message"] for e in problem["errors"])


async def test_unknown_provider_is_422_listing_the_available_ones(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    resp = await gw.post(CHAT, json={"message": "hi", "provider": "gpt-99"}, headers=admin_headers)
    assert resp.status == 422
    problem = await resp.json()
    assert problem["code"] == "validation_error"
    assert problem["available"] == ["auto", "mock"]
    assert problem["errors"][0]["field"] == "provider" and "auto, mock" in problem["errors"][0]["message"]


async def test_unknown_model_is_422_listing_models(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    for body in ({"message": "hi", "provider": "mock", "model": "gpt-4o"}, {"message": "hi", "model": "gpt-4o"}):
        resp = await gw.post(CHAT, json=body, headers=admin_headers)
        assert resp.status == 422
        [error] = (await resp.json())["errors"]
        assert error["field"] == "model" and "mock-reasoner" in error["message"]


async def test_ten_megabyte_message_is_413(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    resp = await gw.post(CHAT, data=io.BytesIO(orjson.dumps({"message": "x" * (10 * 1024 * 1024)})),
                         headers={**admin_headers, "Content-Type": "application/json"})
    assert resp.status == 413
    problem = await resp.json()
    assert problem["code"] == "payload_too_large" and problem["correlation_id"]


async def test_message_over_the_character_limit_is_422(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings, chat_max_chars=1000)
    resp = await gw.post(CHAT, json={"message": "y" * 1001}, headers=admin_headers)
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["field"] == "message"
    resp = await gw.post(CHAT, json={"messages": [{"role": "user", "content": "z" * 600}] * 2}, headers=admin_headers)
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["field"] == "messages"


async def test_invalid_json_is_400(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    resp = await gw.post(CHAT, data=b"{nope", headers={**admin_headers, "Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_json"


async def test_chat_needs_the_chat_scope(aiohttp_client, settings, make_token) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    assert (await gw.post(CHAT, json={"message": "hi"})).status == 401
    reader = await make_token("read")
    resp = await gw.post(CHAT, json={"message": "hi"}, headers={"X-VX11-Token": reader})
    assert resp.status == 403
    assert (await resp.json())["required_scope"] == "chat"


async def test_stall_mid_stream_ends_with_an_error_event(aiohttp_client, settings, admin_headers, db) -> None:
    gw = await chat_gateway(aiohttp_client, settings, provider_read_timeout=0.3)
    cid = new_cid()
    resp = await gw.post(CHAT, json={"message": "hi", "stream": True, "metadata": {"mock": {"fail": "stall"}}},
                         headers={**admin_headers, "X-Correlation-ID": cid})
    assert resp.status == 200
    events = parse_sse(await resp.text())
    names = [n for n, _ in events]
    assert names == ["start", "delta", "error"], names
    problem = events[-1][1]
    assert problem["code"] == "upstream_timeout" and problem["status"] == 504
    assert problem["correlation_id"] == cid and "sent nothing for 0.3 s" in problem["detail"]
    [row] = await chat_rows(db, cid)
    assert row["status"] == "error" and row["error"].startswith("timeout:")


async def test_stall_mid_answer_without_streaming_is_504(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings, provider_read_timeout=0.3)
    resp = await gw.post(CHAT, json={"message": "hi", "metadata": {"mock": {"fail": "stall"}}}, headers=admin_headers)
    assert resp.status == 504
    assert (await resp.json())["code"] == "upstream_timeout"


async def test_failure_after_first_delta_is_not_retried(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings, provider_retries=3)
    resp = await gw.post(CHAT, json={"message": "hi", "stream": True, "metadata": {"mock": {"fail": "midstream"}}},
                         headers=admin_headers)
    events = parse_sse(await resp.text())
    assert [n for n, _ in events] == ["start", "delta", "error"]
    assert events[-1][1]["code"] == "provider_unavailable"
    assert events[-1][1]["attempts"] == [{**events[-1][1]["attempts"][0], "status": "ok"}]


async def test_every_provider_down_is_503_with_attempts(aiohttp_client, settings, admin_headers, db) -> None:
    gw = await chat_gateway(aiohttp_client, settings, providers=("mock", "deepseek"),
                            provider_chain=("deepseek", "mock"), provider_options={"mock": {"fail": "before"}},
                            provider_retries=1)
    cid = new_cid()
    for stream in (False, True):
        resp = await gw.post(CHAT, json={"message": "anyone?", "stream": stream},
                             headers={**admin_headers, "X-Correlation-ID": cid})
        assert resp.status == 503
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
        assert problem["code"] == "provider_unavailable" and problem["correlation_id"] == cid
        assert [(a["provider"], a["status"]) for a in problem["attempts"]] == [
            ("deepseek", "skipped"), ("mock", "error"), ("mock", "error")]
        assert problem["attempts"][0]["error"] == "off: no API key"
        assert problem["attempts"][1]["error"] == "unavailable: mock: told to fail before answering"
    rows = await chat_rows(db, cid, count=2)
    assert [r["status"] for r in rows] == ["error", "error"]
    assert [r["streamed"] for r in rows] == [False, True]
    assert all(r["provider"] is None and "no provider could answer" in r["error"] for r in rows)


async def test_later_link_answering_is_degraded(aiohttp_client, settings, admin_headers, unused_tcp_port) -> None:
    gw = await chat_gateway(aiohttp_client, settings, providers=("mock", "local"), provider_chain=("local", "mock"),
                            provider_options={"local": {"base_url": f"http://127.0.0.1:{unused_tcp_port}/v1",
                                                        "model": "m"}})
    body = await (await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)).json()
    assert body["provider"] == "mock" and body["degraded"] is True
    assert [(a["provider"], a["status"]) for a in body["attempts"]] == [("local", "error"), ("local", "error"),
                                                                        ("mock", "ok")]
    assert "cannot connect" in body["attempts"][0]["error"]


async def test_explicit_provider_is_never_replaced(aiohttp_client, settings, admin_headers, unused_tcp_port) -> None:
    gw = await chat_gateway(aiohttp_client, settings, providers=("mock", "local"), provider_chain=("local", "mock"),
                            provider_options={"local": {"base_url": f"http://127.0.0.1:{unused_tcp_port}/v1",
                                                        "model": "m"}})
    resp = await gw.post(CHAT, json={"message": "hi", "provider": "local"}, headers=admin_headers)
    assert resp.status == 503
    assert {a["provider"] for a in (await resp.json())["attempts"]} == {"local"}


async def test_client_disconnect_mid_stream_records_a_cancelled_row(aiohttp_client, settings, admin_headers,
                                                                     db) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    cid = new_cid()
    resp = await gw.post(CHAT, json={"message": "hi", "stream": True, "metadata": {"mock": {"fail": "stall"}}},
                         headers={**admin_headers, "X-Correlation-ID": cid})
    first = await resp.content.readuntil(b"event: delta")
    assert b"event: start" in first
    resp.close()
    [row] = await chat_rows(db, cid)
    assert row["status"] == "cancelled" and row["provider"] == "mock" and row["streamed"] is True
    assert row["error"] == "the client went away before the answer finished"


async def test_plugin_bug_is_contained_and_logged(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    with capture_logs() as logs:
        resp = await gw.post(CHAT, json={"message": "hi", "metadata": {"mock": {"fail": "bug"}}}, headers=admin_headers)
    assert resp.status == 503
    problem = await resp.json()
    assert problem["attempts"][0]["error"] == "error: mock failed: RuntimeError"
    assert "Traceback" not in await resp.text()
    assert any(e["event"] == "provider_plugin_error" and e["log_level"] == "error" for e in logs)


async def test_reused_correlation_id_records_two_rows(aiohttp_client, settings, admin_headers, db) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    cid = new_cid()
    for _ in range(2):
        assert (await gw.post(CHAT, json={"message": "again"}, headers={**admin_headers, "X-Correlation-ID": cid})).status == 200
    rows = await chat_rows(db, cid, count=2)
    assert len({r["message_id"] for r in rows}) == 2


async def test_chat_listeners_get_metadata_not_text(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    seen: list[dict] = []
    done = asyncio.Event()

    async def listener(info):
        seen.append(dict(info))
        done.set()

    gw.app[keys.PROVIDERS].on_chat.append(listener)
    body = await (await gw.post(CHAT, json={"message": "a secret plan"}, headers=admin_headers)).json()
    await done.wait()
    [info] = seen
    assert info["message_id"] == body["message_id"] and info["status"] == "ok" and info["provider"] == "mock"
    assert "secret plan" not in json.dumps(info) and body["content"] not in json.dumps(info)


async def test_fresh_install_chain_failure_names_each_provider_once_and_says_what_to_do(
        aiohttp_client, settings, admin_headers, unused_tcp_port) -> None:
    # A fresh install: deepseek has no key, local has no server and no model configured.
    gw = await chat_gateway(aiohttp_client, settings, providers=("mock", "deepseek", "local"),
                            provider_chain=("deepseek", "local"), provider_retries=1,
                            provider_options={"local": {"base_url": f"http://127.0.0.1:{unused_tcp_port}/v1"}})
    resp = await gw.post(CHAT, json={"message": "hello"}, headers=admin_headers)
    assert resp.status == 503
    problem = await resp.json()
    detail = problem["detail"]
    assert "(tried: deepseek, local)" in detail
    assert detail.count("cannot connect") == 1 and "local: local:" not in detail
    assert "no API key" in detail
    assert '"provider": "mock"' in detail
    assert "DEEPSEEK_API_KEY" in detail and "TENTACULO_LOCAL_BASE_URL" in detail
    assert all("local: local:" not in (a["error"] or "") for a in problem["attempts"])
