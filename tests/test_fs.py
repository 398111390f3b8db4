"""The sandboxed file explorer: listings, every way out of a root refused, caps, unreadable entries."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.files.sandbox import Sandbox, parse_path
from tentaculo.health import Health
from tentaculo.http.errors import Problem
from tentaculo.settings import Settings, SettingsError
from tests.helpers import serve

LIST = "/operator/api/fs/list"
BIG = 100_000


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of 100,000 regular files, made once for the module.

    Most are hard links to a few seed files: a listing only sees directory entries, and linking
    is several times faster than allocating 100,000 inodes (ext4 allows 65,000 links per inode).
    """
    path = tmp_path_factory.mktemp("big")
    seeds = 4
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(seeds):
            os.close(os.open(f"f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        for i in range(seeds, BIG):
            os.link(f"f{i % seeds:06d}", f"f{i:06d}", src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)
    assert sum(1 for _ in os.scandir(path)) == BIG
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """docs/ with files, a subdirectory, symlinks in and out of the root; outside/ beside it."""
    docs, outside = tmp_path / "docs", tmp_path / "outside"
    (docs / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the operator")
    (docs / "readme.txt").write_text("hello")
    (docs / "sub" / "a.txt").write_text("a" * 42)
    (docs / "link_in").symlink_to(docs / "sub")
    (docs / "relative_in").symlink_to("sub")
    (docs / "link_out").symlink_to(outside)
    (docs / "sneaky").symlink_to("../outside")
    (docs / "etc").symlink_to("/etc")
    return tmp_path


async def _gateway(aiohttp_client, settings: Settings, **changes) -> TestClient:
    return await serve(aiohttp_client, create_app(dataclasses.replace(settings, **changes)))


async def _list(gw: TestClient, headers: dict, path: str | None = None, *, raw: str | None = None):
    if raw is not None:  # exactly these bytes on the wire, no client-side (de)normalisation
        url = URL(f"{LIST}?path={raw}", encoded=True)
        resp = await gw.get(url, headers=headers)
    else:
        resp = await gw.get(LIST, params={} if path is None else {"path": path}, headers=headers)
    return resp, await resp.text()


def _names(body: dict) -> list[str]:
    return [e["name"] for e in body["entries"]]


async def test_lists_a_root_with_types_sizes_and_utc_times(aiohttp_client, settings, tree, admin_headers) -> None:
    gw = await _gateway(aiohttp_client, settings, fs_roots={"docs": tree / "docs"})
    resp, text = await _list(gw, admin_headers, "docs")
    assert resp.status == 200, text
    body = await resp.json()
    assert body["root"] == "docs" and body["path"] == "docs" and body["truncated"] is False
    assert _names(body) == ["etc", "link_in", "link_out", "readme.txt", "relative_in", "sneaky", "sub"]
    entries = {e["name"]: e for e in body["entries"]}
    assert entries["readme.txt"]["type"] == "file" and entries["readme.txt"]["size"] == 5
    assert entries["sub"]["type"] == "dir" and entries["link_out"]["type"] == "symlink"
    assert entries["readme.txt"]["modified"].endswith("Z") and "T" in entries["readme.txt"]["modified"]
    assert str(tree) not in text
    resp, text = await _list(gw, admin_headers, "docs/sub/")
    assert (await resp.json())["entries"][0] | {"modified": None} == {
        "name": "a.txt", "type": "file", "size": 42, "modified": None, "readable": True}
    assert (await resp.json())["path"] == "docs/sub"


async def test_no_path_lists_the_roots_by_name(aiohttp_client, settings, tree, admin_headers) -> None:
    gw = await _gateway(aiohttp_client, settings, fs_roots={"docs": tree / "docs", "gone": tree / "missing"})
    resp, text = await _list(gw, admin_headers)
    body = await resp.json()
    assert body["root"] is None and _names(body) == ["docs", "gone"]
    assert [e["readable"] for e in body["entries"]] == [True, False]
    assert str(tree) not in text
    resp, text = await _list(gw, admin_headers, "gone")
    assert resp.status == 404 and (await resp.json())["code"] == "not_found" and str(tree) not in text


async def test_symlinks_inside_the_root_are_followed(aiohttp_client, settings, tree, admin_headers) -> None:
    gw = await _gateway(aiohttp_client, settings, fs_roots={"docs": tree / "docs"})
    for path in ("docs/link_in", "docs/relative_in", "docs/./sub"):
        resp, text = await _list(gw, admin_headers, path)
        assert resp.status == 200, text
        assert _names(await resp.json()) == ["a.txt"]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("docs/../outside", "dot-dot"),
        ("docs/sub/../../outside", "dot-dot deeper"),
        ("..", "dot-dot alone"),
        ("docs/%2e%2e/outside", "encoded dot-dot"),
        ("docs/%2E%2E%2Foutside", "encoded dot-dot and slash"),
        ("docs/%252e%252e/outside", "double-encoded dot-dot"),
        ("docs/%25252e%25252e/outside", "triple-encoded dot-dot"),
        ("docs/..%5coutside", "encoded backslash"),
        ("docs%5c..%5coutside", "backslash separators"),
        ("docs/%255c", "double-encoded backslash"),
        ("/etc", "absolute"),
        ("%2fetc", "encoded absolute"),
        ("%252fetc", "double-encoded absolute"),
        ("docs/readme.txt%00.png", "NUL byte"),
        ("docs/%2500", "double-encoded NUL byte"),
        ("docs/link_out", "symlink to a directory outside"),
        ("docs/sneaky", "relative symlink escaping"),
        ("docs/etc", "symlink to an absolute host path"),
        ("docs/link_out/..", "through an escaping symlink"),
    ],
)
async def test_every_way_out_of_the_root_is_forbidden(
    aiohttp_client, settings, tree, admin_headers, raw, why
) -> None:
    gw = await _gateway(aiohttp_client, settings, fs_roots={"docs": tree / "docs"})
    resp, text = await _list(gw, admin_headers, raw=raw)
    assert resp.status == 403, f"{why}: {text}"
    problem = await resp.json()
    assert problem["code"] == "path_forbidden" and resp.content_type == "application/problem+json"
    assert problem["correlation_id"] == resp.headers["X-Correlation-ID"]
    assert str(tree) not in text and "secret" not in text and "/etc" not in problem["detail"].replace("docs/etc", "")


async def test_unknown_roots_and_missing_paths_are_404_and_malformed_is_400(
    aiohttp_client, settings, tree, admin_headers
) -> None:
    gw = await _gateway(aiohttp_client, settings, fs_roots={"docs": tree / "docs"})
    for path, status, code in (
        ("nope/x", 404, "not_found"),
        ("docs/missing", 404, "not_found"),
        ("docs/readme.txt", 400, "invalid_path"),
        ("docs/a\x01b", 400, "invalid_path"),
        ("docs/" + "x" * 300, 400, "invalid_path"),
        ("docs/" + "a/" * 2100, 400, "invalid_path"),
    ):
        resp, text = await _list(gw, admin_headers, path)
        assert (resp.status, (await resp.json())["code"]) == (status, code), path
        assert str(tree) not in text


async def test_no_roots_configured_answers_404_and_the_feature_says_why(gateway, admin_headers) -> None:
    resp, _ = await _list(gateway, admin_headers, "docs")
    assert resp.status == 404 and (await resp.json())["code"] == "not_found"
    resp, _ = await _list(gateway, admin_headers)
    assert (await resp.json())["entries"] == []
    assert gateway.app[keys.FEATURES].effective("file_explorer") == Health("off", "no roots configured")


async def test_a_directory_of_100000_files_is_capped_and_fast(
    aiohttp_client, settings, big_dir, admin_headers
) -> None:
    gw = await _gateway(aiohttp_client, settings, fs_roots={"big": big_dir})
    started = time.perf_counter()
    resp, text = await _list(gw, admin_headers, "big")
    elapsed = time.perf_counter() - started
    body = await resp.json()
    assert resp.status == 200 and body["truncated"] is True
    assert len(body["entries"]) == 1000 == gw.app[keys.SETTINGS].fs_list_max
    assert _names(body) == sorted(_names(body))
    assert elapsed < 2.0, f"listing took {elapsed:.2f} s"


async def test_a_full_but_not_overflowing_listing_is_not_truncated(
    aiohttp_client, settings, tree, admin_headers
) -> None:
    gw = await _gateway(aiohttp_client, settings, fs_roots={"docs": tree / "docs"}, fs_list_max=7)
    body = await (await _list(gw, admin_headers, "docs"))[0].json()
    assert len(body["entries"]) == 7 and body["truncated"] is False
    gw = await _gateway(aiohttp_client, settings, fs_roots={"docs": tree / "docs"}, fs_list_max=6)
    body = await (await _list(gw, admin_headers, "docs"))[0].json()
    assert len(body["entries"]) == 6 and body["truncated"] is True


def _can_open(path: Path, flags: int) -> bool:
    try:
        os.close(os.open(path, flags))
        return True
    except PermissionError:
        return False


async def test_unreadable_entries_are_reported_without_failing_the_listing(
    aiohttp_client, settings, tree, admin_headers
) -> None:
    docs = tree / "docs"
    (docs / "locked.txt").write_text("x")
    (docs / "locked").mkdir()
    os.mkfifo(docs / "pipe")
    os.chmod(docs / "locked.txt", 0)
    os.chmod(docs / "locked", 0)
    try:
        # Root (CAP_DAC_OVERRIDE) reads through mode 000: ask the system what this process can do.
        file_readable = _can_open(docs / "locked.txt", os.O_RDONLY)
        dir_readable = _can_open(docs / "locked", os.O_RDONLY | os.O_DIRECTORY)
        gw = await _gateway(aiohttp_client, settings, fs_roots={"docs": docs})
        resp, text = await _list(gw, admin_headers, "docs")
        assert resp.status == 200, text
        entries = {e["name"]: e for e in (await resp.json())["entries"]}
        assert "pipe" not in entries  # FIFOs, sockets and devices are not listed
        assert entries["locked.txt"]["readable"] is file_readable and entries["locked.txt"]["size"] == 1
        assert entries["locked"]["readable"] is dir_readable and entries["readme.txt"]["readable"] is True
        resp, text = await _list(gw, admin_headers, "docs/locked")
        if dir_readable:
            assert resp.status == 200 and (await resp.json())["entries"] == []
        else:
            problem = await resp.json()
            assert resp.status == 403 and problem["code"] == "path_forbidden"
            assert "permission denied" in problem["detail"] and str(tree) not in text
    finally:
        os.chmod(docs / "locked", 0o755)
        os.chmod(docs / "locked.txt", 0o644)


async def test_needs_read_scope_and_obeys_the_feature_flag(
    aiohttp_client, settings, tree, admin_headers, make_token
) -> None:
    gw = await _gateway(aiohttp_client, settings, fs_roots={"docs": tree / "docs"})
    assert (await gw.get(LIST, params={"path": "docs"})).status == 401
    chat_only = await make_token("chat")
    assert (await gw.get(LIST, params={"path": "docs"}, headers={"X-VX11-Token": chat_only})).status == 403
    flags = gw.app[keys.FEATURES]
    await flags.set("file_explorer", "off", "maintenance", "tests")
    try:
        resp = await gw.get(LIST, params={"path": "docs"}, headers=admin_headers)
        assert resp.status == 503 and (await resp.json())["code"] == "feature_disabled"
    finally:
        await flags.set("file_explorer", "on", None, "tests")
    assert (await gw.get(LIST, params={"path": "docs"}, headers=admin_headers)).status == 200


def test_path_parsing_rules() -> None:
    assert parse_path("docs") == ("docs", ())
    assert parse_path("docs//a/./b/") == ("docs", ("a", "b"))
    assert parse_path("docs/100%25 done") == ("docs", ("100%25 done",))  # a literal percent is a name
    for bad in ("../x", "docs/..", "/x", "docs\\x", "docs/%2e%2e", "a\x00"):
        with pytest.raises(Problem) as caught:
            parse_path(bad)
        assert caught.value.code == "path_forbidden", bad


def test_roots_setting_is_parsed_and_checked() -> None:
    s = Settings.from_env({"TENTACULO_FS_ROOTS": "logs=/var/log, docs = ./docs"})
    assert s.fs_roots == {"logs": Path("/var/log"), "docs": Path("./docs")}
    for bad in ("logs", "logs=", "a b=/x", "logs=/a,logs=/b", "../x=/y"):
        with pytest.raises(SettingsError, match="TENTACULO_FS_ROOTS"):
            Settings.from_env({"TENTACULO_FS_ROOTS": bad})



def test_the_explorer_is_off_with_a_reason_until_a_root_is_configured(tree) -> None:
    assert Sandbox({}, max_entries=100).health() == Health("off", "no roots configured")
    assert Sandbox({"docs": tree / "docs"}, max_entries=100).health() == Health.ON

def test_a_symlink_swapped_in_after_the_check_is_not_followed(tree, monkeypatch) -> None:
    docs = tree / "docs"
    sandbox = Sandbox({"docs": docs}, max_entries=100)
    real_realpath = os.path.realpath

    def check_then_swap(path, *args, **kwargs):
        resolved = real_realpath(path, *args, **kwargs)
        if str(path).endswith("sub"):  # the race: sub becomes a link out right after the check
            (docs / "sub").rename(tree / "sub-moved")
            (docs / "sub").symlink_to(tree / "outside")
        return resolved

    monkeypatch.setattr(os.path, "realpath", check_then_swap)
    with pytest.raises(Problem) as caught:
        sandbox._list("docs", ("sub",))
    assert caught.value.code == "path_forbidden" and "changed while being opened" in caught.value.detail
