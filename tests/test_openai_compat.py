"""The OpenAI-compatible face, driven by the official ``openai`` Python client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
from openai import AsyncOpenAI

from tests.chat_helpers import chat_gateway, chat_rows, new_cid
from tests.confirm_helpers import confirmed


@pytest.fixture
async def gw(aiohttp_client, settings):
    return await chat_gateway(aiohttp_client, settings)


@pytest.fixture
async def client(gw, make_token) -> AsyncIterator[AsyncOpenAI]:
    token = await make_token("chat")
    async with AsyncOpenAI(api_key=token, base_url=str(gw.make_url("/v1")), max_retries=0, timeout=10) as c:
        yield c


async def test_models_list(client) -> None:
    ids = [m.id async for m in client.models.list()]
    assert ids == ["auto", "mock", "mock-reasoner"]


async def test_completion_matches_the_operator_chat(client, gw, admin_headers) -> None:
    completion = await client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "Same answer everywhere?"}])
    operator = await (await gw.post("/operator/api/chat", json={"message": "Same answer everywhere?"},
                                    headers=admin_headers)).json()
    assert completion.choices[0].message.content == operator["content"]
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 3 and completion.usage.total_tokens == 3 + 13
    assert completion.model == "mock" and completion.id.startswith("chatcmpl-")


async def test_streaming_with_usage(client) -> None:
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Stream please"}]
    whole = await client.chat.completions.create(model="auto", messages=messages)
    stream = await client.chat.completions.create(model="auto", messages=messages, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 13


async def test_reasoning_model_by_id(client) -> None:
    completion = await client.chat.completions.create(
        model="mock-reasoner", messages=[{"role": "user", "content": "why"}], max_completion_tokens=100)
    assert completion.choices[0].message.reasoning_content == "Considering 1 word of input."


async def test_rows_are_written_for_openai_chats(client, gw, db) -> None:
    cid = new_cid()
    await client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}],
                                         extra_headers={"X-Correlation-ID": cid})
    [row] = await chat_rows(db, cid)
    assert row["status"] == "ok" and row["provider"] == "mock"


async def test_auth_errors_surface_as_sdk_errors(gw, make_token) -> None:
    base = str(gw.make_url("/v1"))
    async with AsyncOpenAI(api_key="vx11_not_a_real_token_at_all", base_url=base, max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}])
    reader = await make_token("read")
    async with AsyncOpenAI(api_key=reader, base_url=base, max_retries=0) as read_only:
        with pytest.raises(openai.PermissionDeniedError):
            await read_only.models.list()


async def test_refusals_before_the_handler_carry_the_openai_error_too(gw, client, admin_headers) -> None:
    base = str(gw.make_url("/v1"))
    async with AsyncOpenAI(api_key="vx11_not_a_real_token_at_all", base_url=base, max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as refused:
            await bad.models.list()
    assert refused.value.body["code"] == "invalid_token"
    # The SDK's message is the error member's, not the whole document.
    assert refused.value.message.endswith(" - the token is unknown, revoked or malformed")
    off = await confirmed(gw, "PUT", "/operator/api/features/chat", json={"status": "off", "reason": "maintenance window"},
                          headers=admin_headers)
    assert off.status == 200
    try:
        with pytest.raises(openai.InternalServerError) as disabled:
            await client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}])
        assert disabled.value.status_code == 503
        assert disabled.value.body["code"] == "feature_disabled"
        assert disabled.value.message.endswith("turned off: maintenance window")
    finally:
        await gw.put("/operator/api/features/chat", json={"status": "on"}, headers=admin_headers)
    unrouted = await gw.get("/v1/no-such-thing", headers=admin_headers)
    assert unrouted.status == 404 and (await unrouted.json())["error"]["code"] == "not_found"
    # The operator API keeps plain problem+json.
    elsewhere = await gw.get("/operator/api/no-such-thing", headers=admin_headers)
    assert "error" not in await elsewhere.json()


async def test_unknown_model_is_404_model_not_found_listing_the_models(client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    assert caught.value.message.endswith(
        " - the model 'gpt-4o' does not exist; models: auto, mock, mock-reasoner (GET /v1/models)")
    with pytest.raises(openai.NotFoundError) as retrieved:
        await client.models.retrieve("gpt-4o")
    assert retrieved.value.body["code"] == "model_not_found"


async def test_models_retrieve(client) -> None:
    model = await client.models.retrieve("mock-reasoner")
    assert (model.id, model.object, model.owned_by) == ("mock-reasoner", "model", "mock")
    assert (await client.models.retrieve("auto")).owned_by == "tentaculo"


async def test_unsupported_parameters_say_which_and_why(client) -> None:
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await client.chat.completions.create(model="mock", messages=hi, n=2)
    assert caught.value.message.endswith(" - n: only 1 is supported")
    assert caught.value.body["param"] == "n"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await client.chat.completions.create(model="mock", messages=hi, tools=[tool])
    assert caught.value.message.endswith(" - tools: not supported by this gateway")
    assert caught.value.body["param"] == "tools"
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await client.chat.completions.create(model="mock", messages=[])
    assert caught.value.body["param"] == "messages"
    assert caught.value.message.endswith(" - messages: must hold at least one message")


async def test_a_providers_state_does_not_change_which_models_exist(aiohttp_client, settings, make_token) -> None:
    # deepseek without a key is off: its names still exist, and chatting with them says why it cannot answer.
    gw = await chat_gateway(aiohttp_client, settings, providers=("mock", "deepseek"))
    token = await make_token("chat")
    async with AsyncOpenAI(api_key=token, base_url=str(gw.make_url("/v1")), max_retries=0) as c:
        ids = [m.id async for m in c.models.list()]
        assert ids == ["auto", "mock", "mock-reasoner", "deepseek", "deepseek-chat", "deepseek-reasoner"]
        assert (await c.models.retrieve("deepseek-chat")).owned_by == "deepseek"
        with pytest.raises(openai.NotFoundError) as unknown:
            await c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        assert unknown.value.message.endswith(f"models: {', '.join(ids)} (GET /v1/models)")
        with pytest.raises(openai.InternalServerError) as off:
            await c.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "hi"}])
        assert off.value.body["code"] == "provider_unavailable" and "no API key" in off.value.message


async def test_failure_mid_stream_raises_in_the_sdk(client) -> None:
    stream = await client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_body={"metadata": {"mock": {"fail": "midstream"}}})
    received = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 1
    assert "failed mid-answer" in caught.value.message


async def test_all_providers_down_is_503(client) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}],
                                             extra_body={"metadata": {"mock": {"fail": "before"}}})
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "provider_unavailable"
    assert [a["provider"] for a in caught.value.body["attempts"]] == ["mock", "mock"]
