"""Secrets never reach a log line."""

from __future__ import annotations

import dataclasses
import json

import pytest
import structlog
from structlog.testing import capture_logs

from tentaculo.app import create_app
from tentaculo.logging import REDACTED, SecretScrubber, configure_logging, shared_processors
from tests.helpers import ADMIN_TOKEN, serve


async def test_requests_with_tokens_log_no_token(aiohttp_client, settings, admin_headers, make_token) -> None:
    gateway = await serve(aiohttp_client, create_app(dataclasses.replace(settings, access_log="on")))
    db_token = await make_token("read")
    with capture_logs(processors=shared_processors([ADMIN_TOKEN])) as logs:
        await gateway.get("/operator/api/whoami", headers=admin_headers)
        await gateway.get("/operator/api/whoami", headers={"Authorization": f"Bearer {db_token}"})
        await gateway.get(f"/operator/api/whoami?token={db_token}")
        await gateway.get("/operator/api/whoami", headers={"X-VX11-Token": "vx11_wrong_but_long_enough"})
    requests = [e for e in logs if e["event"] == "request"]
    assert len(requests) == 4
    assert all(e["correlation_id"] for e in requests)
    assert [e["token_name"] is not None for e in requests] == [True, True, False, False]
    text = json.dumps(logs, default=str)
    assert ADMIN_TOKEN not in text
    assert db_token not in text
    assert "vx11_wrong_but_long_enough" not in text


def test_scrubber_blanks_secret_keys_and_known_values() -> None:
    scrub = SecretScrubber(["s3cr3t-value-123456"])
    event = scrub(None, "info", {"event": "x", "token": "abc", "detail": "key s3cr3t-value-123456 leaked"})
    assert event["token"] == REDACTED
    assert "s3cr3t" not in event["detail"]


def test_json_logs_in_production(capsys) -> None:
    configure_logging("json", "info", secrets=["another-secret-value"])
    try:
        structlog.get_logger("t").info("hello", note="another-secret-value")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        record = json.loads(line)
        assert record["event"] == "hello" and record["level"] == "info" and "timestamp" in record
        assert record["note"] == REDACTED
    finally:
        structlog.reset_defaults()


async def test_production_logs_no_line_per_request(gateway, admin_headers) -> None:
    """JSON (production) logging leaves the per-request record to the audit table."""
    with capture_logs() as logs:
        await gateway.get("/operator/api/whoami", headers=admin_headers)
    assert not [e for e in logs if e["event"] == "request"]


def test_a_json_log_line_with_bytes_that_are_not_utf8_is_still_written(capsys) -> None:
    configure_logging("json", "info")
    try:
        structlog.get_logger("t").warning("odd_path", path="/operator/api/\udcff\udcfe")
        record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert record["event"] == "odd_path" and record["path"] == "/operator/api/\udcff\udcfe"
    finally:
        structlog.reset_defaults()


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_secret_quoted_in_a_traceback_is_scrubbed(capsys, log_format) -> None:
    configure_logging(log_format, "info", secrets=["sk-quoted-in-a-traceback"])
    try:
        try:
            raise RuntimeError("upstream said: bad key sk-quoted-in-a-traceback")
        except RuntimeError:
            structlog.get_logger("t").exception("call_failed")
        err = capsys.readouterr().err
        assert "call_failed" in err and "RuntimeError" in err
        assert "sk-quoted-in-a-traceback" not in err
    finally:
        structlog.reset_defaults()
