"""Sandbox: directory listings under named roots, never outside them.

A client path is ``<root>/<relative>``. It is refused (``path_forbidden``) when it is absolute,
holds a NUL byte or a backslash, has a ``..`` segment, or would have one after percent-decoding
(``%2e%2e``, ``%252e%252e``, ...), and when it resolves, through symlinks, outside its root.
Containment is decided on the fully resolved path; the directory is then opened one component
at a time from the root's descriptor with ``O_NOFOLLOW``, so a symlink swapped in after the
check makes the open fail instead of leading outside. Listings read at most ``max_entries``
entries (``os.scandir``, stopped early) and say ``truncated``. Responses and problems name
paths only as ``<root>/<relative>``, never as host paths.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import structlog

from tentaculo.health import Health
from tentaculo.http.errors import Problem

log = structlog.get_logger("tentaculo.sandbox")

# Percent-encoded, 1024 characters (up to 4 UTF-8 bytes each) still fit the server's 16 KB request line.
MAX_PATH_CHARS = 1024
MAX_SEGMENT_BYTES = 255
DECODE_LAYERS = 3
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CONTROL = frozenset(chr(c) for c in (*range(1, 32), 127))


@dataclass(frozen=True, slots=True)
class Listing:
    """One directory's entries: ``root`` is None for the list of roots."""

    root: str | None
    path: str
    entries: list[dict[str, Any]]
    truncated: bool

    def as_dict(self) -> dict[str, Any]:
        return {"root": self.root, "path": self.path, "entries": self.entries, "truncated": self.truncated}


def _forbidden(detail: str) -> Problem:
    return Problem("path_forbidden", detail)


def _check_layer(text: str, encoded: bool) -> None:
    how = "percent-encoded " if encoded else ""
    if "\x00" in text:
        raise _forbidden(f"the path holds a {how}NUL byte")
    if "\\" in text:
        raise _forbidden(f"the path holds a {how}backslash; separate segments with /")
    if text.startswith("/"):
        raise _forbidden(f"{how}absolute paths are refused; send <root>/<relative>")
    if ".." in text.split("/"):
        raise _forbidden(f"the path holds a {how}'..' segment; paths cannot leave their root")


def parse_path(raw: str) -> tuple[str, tuple[str, ...]]:
    """``<root>/<relative>`` -> (root name, segments); raise ``path_forbidden`` or ``invalid_path``.

    ``raw`` is the query value as decoded once by the server; further decoding is only looked at.
    """
    if len(raw) > MAX_PATH_CHARS:
        raise Problem("invalid_path", f"the path is longer than {MAX_PATH_CHARS} characters")
    _check_layer(raw, encoded=False)
    layer = raw
    for _ in range(DECODE_LAYERS):
        decoded = unquote(layer)
        if decoded == layer:
            break
        _check_layer(decoded, encoded=True)
        layer = decoded
    if any(ch in _CONTROL for ch in raw):
        raise Problem("invalid_path", "the path holds control characters")
    segments = tuple(s for s in raw.split("/") if s not in ("", "."))
    if not segments:
        raise Problem("invalid_path", "the path is empty; send <root>/<relative>")
    for segment in segments:
        if len(os.fsencode(segment)) > MAX_SEGMENT_BYTES:
            raise Problem("invalid_path", f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    return segments[0], segments[1:]


def _display(name: str) -> str:
    """A file name as JSON can carry it (undecodable bytes shown as escapes)."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _modified(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, UTC)


def _entry(entry: os.DirEntry[str], dir_fd: int) -> dict[str, Any] | None:
    """One listing entry; None for sockets, FIFOs and devices, which are not listed."""
    name = _display(entry.name)
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError as exc:  # vanished or unreadable between readdir and stat
        return {"name": name, "type": "dir" if entry.is_dir(follow_symlinks=False) else "file", "size": None,
                "modified": None, "readable": False, "error": os.strerror(exc.errno or errno.EIO)}
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return {"name": name, "type": "symlink", "size": None, "modified": _modified(st), "readable": None}
    if stat.S_ISDIR(mode):
        kind, size, need = "dir", None, os.R_OK | os.X_OK
    elif stat.S_ISREG(mode):
        kind, size, need = "file", st.st_size, os.R_OK
    else:
        return None
    try:
        readable = os.access(entry.name, need, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        readable = False
    return {"name": name, "type": kind, "size": size, "modified": _modified(st), "readable": readable}


class Sandbox:
    """Lists directories under the configured roots; see the module docstring for the rules."""

    def __init__(self, roots: Mapping[str, Path], *, max_entries: int, concurrency: int = 4) -> None:
        self.roots = dict(roots)
        self.max_entries = max_entries
        self._slots = asyncio.Semaphore(concurrency)

    def health(self) -> Health:
        """The file explorer's own health: ``off`` with no roots configured."""
        if not self.roots:
            return Health("off", "no roots configured")
        return Health.ON

    async def list(self, raw: str | None) -> Listing:
        """The listing of ``raw`` (``<root>/<relative>``; empty: the roots themselves)."""
        if raw is None or raw == "":
            parsed = None
        else:
            parsed = parse_path(raw)
            if parsed[0] not in self.roots:
                known = ", ".join(sorted(self.roots)) or "none configured"
                raise Problem("not_found", f"there is no root named {parsed[0]!r}; roots: {known}")
        async with self._slots:  # bounded: each listing holds a worker thread
            loop = asyncio.get_running_loop()
            if parsed is None:
                return await loop.run_in_executor(None, self._list_roots)
            return await loop.run_in_executor(None, self._list, parsed[0], parsed[1])

    def _list_roots(self) -> Listing:
        entries = []
        for name in sorted(self.roots):
            try:
                st = os.stat(self.roots[name])
                ok = stat.S_ISDIR(st.st_mode) and os.access(self.roots[name], os.R_OK | os.X_OK)
                entries.append({"name": name, "type": "dir", "size": None, "modified": _modified(st), "readable": ok})
            except OSError:
                entries.append({"name": name, "type": "dir", "size": None, "modified": None, "readable": False,
                                "error": "the root's directory is missing"})
        return Listing(None, "", entries, False)

    def _list(self, root: str, parts: tuple[str, ...]) -> Listing:
        shown = "/".join((root, *parts))
        try:
            base = os.path.realpath(self.roots[root], strict=True)
        except OSError:
            log.warning("fs_root_missing", root=root, path=str(self.roots[root]))
            raise Problem("not_found", f"the directory of root {root!r} is missing") from None
        try:
            target = os.path.realpath(os.path.join(base, *parts))
        except OSError:
            raise Problem("not_found", f"{shown} does not exist or cannot be resolved") from None
        if target != base and os.path.commonpath([base, target]) != base:
            raise _forbidden(f"{shown} resolves outside its root (through a symlink)")
        relative = os.path.relpath(target, base)
        components = [] if relative == "." else relative.split(os.sep)
        fd = self._open_beneath(base, components, shown)
        try:
            return self._scan(fd, root, shown)
        finally:
            os.close(fd)

    def _open_beneath(self, base: str, components: Sequence[str], shown: str) -> int:
        """Open ``base/components`` one directory at a time, following no symlink."""
        try:
            fd = os.open(base, _DIR_FLAGS)
        except OSError:
            raise Problem("not_found", "the root's directory cannot be opened") from None
        for component in components:
            try:
                child = os.open(component, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                os.close(fd)
                raise Problem("not_found", f"{shown} does not exist") from None
            except NotADirectoryError:
                # Linux answers ENOTDIR, not ELOOP, for a symlink under O_DIRECTORY | O_NOFOLLOW.
                swapped = _is_symlink(component, fd)
                os.close(fd)
                if swapped:  # a symlink appeared after the containment check
                    raise _forbidden(f"{shown} changed while being opened; refused") from None
                raise Problem("invalid_path", f"{shown} is not a directory") from None
            except PermissionError:
                os.close(fd)
                raise _forbidden(f"the gateway may not read {shown} (permission denied)") from None
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.ELOOP:  # a symlink appeared after the containment check
                    raise _forbidden(f"{shown} changed while being opened; refused") from None
                raise Problem("not_found", f"{shown} cannot be opened ({os.strerror(exc.errno or errno.EIO)})") from None
            os.close(fd)
            fd = child
        return fd

    def _scan(self, fd: int, root: str, shown: str) -> Listing:
        entries: list[dict[str, Any]] = []
        truncated = False
        seen = 0
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if seen >= self.max_entries:
                        truncated = True
                        break
                    seen += 1
                    item = _entry(entry, fd)
                    if item is not None:
                        entries.append(item)
        except PermissionError:
            raise _forbidden(f"the gateway may not read {shown} (permission denied)") from None
        entries.sort(key=lambda e: e["name"])
        return Listing(root, shown, entries, truncated)
