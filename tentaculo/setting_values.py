"""How ``TENTACULO_*`` values are written and read: the plain parsers and the per-module settings.

``tentaculo.settings`` builds :class:`~tentaculo.settings.Settings` from these; the per-module
variables (``TENTACULO_SERVICE_<NAME>_URL``, ``_TOKEN``, ``_TIMEOUT``, ``_ALLOW``, ``_READ_UPGRADES``)
are read here because their names carry the module's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class SettingsError(ValueError):
    """A configuration variable has a value the gateway cannot use."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


@dataclass(frozen=True, slots=True)
class ModuleTimeouts:
    """One module's ``TENTACULO_SERVICE_<NAME>_TIMEOUT``: seconds, None where the proxy default applies."""

    connect: float | None = None
    read: float | None = None


@dataclass(frozen=True, slots=True)
class AllowRule:
    """One rule of ``TENTACULO_SERVICE_<NAME>_ALLOW``: these methods (None: any) under these path prefixes."""

    methods: frozenset[str] | None
    prefixes: tuple[str, ...]

    def covers(self, path: str) -> bool:
        """Whether ``path`` (decoded, relative to the module's base) is under one of the prefixes."""
        return under_prefixes(self.prefixes, path)


def under_prefixes(prefixes: tuple[str, ...], path: str) -> bool:
    """Whether ``path`` is under one of ``prefixes``, as the module settings' path prefixes mean it.

    A prefix ending in ``/`` matches everything below it; any other prefix matches itself and
    what is below it as a path segment (``/health`` matches ``/health/db``, not ``/healthz``).
    """
    return any(path.startswith(p) if p.endswith("/") else path == p or path.startswith(p + "/")
               for p in prefixes)


SERVICE_PREFIX, SERVICE_SUFFIX = "TENTACULO_SERVICE_", "_URL"
SERVICE_URL_SCHEMES = ("http://", "https://", "redis://", "rediss://")


def service_key(name: str) -> str:
    """How a module name appears in ``TENTACULO_SERVICE_<NAME>_URL``, lower-cased: dashes become ``_``."""
    return name.replace("-", "_").lower()


def read_service_urls(env: Mapping[str, str]) -> dict[str, str]:
    """``TENTACULO_SERVICE_<NAME>_URL=address`` -> {service_key: address}; empty values are ignored."""
    urls: dict[str, str] = {}
    for var, value in env.items():
        if var.startswith(SERVICE_PREFIX) and var.endswith(SERVICE_SUFFIX) and value.strip():
            name = var[len(SERVICE_PREFIX):-len(SERVICE_SUFFIX)]
            if name:
                urls[service_key(name)] = value.strip()
    return urls


SERVICE_OPTION_SUFFIXES = {"_TOKEN": "service_tokens", "_TIMEOUT": "service_timeouts", "_ALLOW": "service_allow",
                           "_READ_UPGRADES": "service_read_upgrades"}
_METHOD = re.compile(r"[A-Z][A-Z-]{0,31}")
_BAD_PREFIX = re.compile(r"//|\\|%|\s|(^|/)\.\.?(/|$)")


def read_service_options(env: Mapping[str, str]) -> dict[str, dict[str, object]]:
    """``TENTACULO_SERVICE_<NAME>_TOKEN`` / ``_TIMEOUT`` / ``_ALLOW`` / ``_READ_UPGRADES`` -> {field: {key: value}}."""
    options: dict[str, dict[str, object]] = {name: {} for name in SERVICE_OPTION_SUFFIXES.values()}
    for var, value in env.items():
        if not var.startswith(SERVICE_PREFIX) or not value.strip():
            continue
        for suffix, name in SERVICE_OPTION_SUFFIXES.items():
            module = var[len(SERVICE_PREFIX):-len(suffix)] if var.endswith(suffix) else ""
            if module:
                raw = value.strip()
                if name == "service_timeouts":
                    options[name][service_key(module)] = parse_module_timeouts(var, raw)
                elif name == "service_allow":
                    options[name][service_key(module)] = parse_allow_rules(var, raw)
                elif name == "service_read_upgrades":
                    options[name][service_key(module)] = parse_prefixes(var, raw, raw)
                else:
                    options[name][service_key(module)] = raw
    return options


def parse_seconds(var: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(var, f"expected a number of seconds, got {raw!r}") from None
    if not 0 < value <= 86_400:
        raise SettingsError(var, f"seconds must be in (0, 86400], got {raw!r}")
    return value


def parse_module_timeouts(var: str, raw: str) -> ModuleTimeouts:
    """``30`` (read timeout) or ``connect=2,read=30`` (either part may be left out)."""
    if "=" not in raw:
        return ModuleTimeouts(read=parse_seconds(var, raw))
    parts: dict[str, float] = {}
    for item in (i.strip() for i in raw.split(",") if i.strip()):
        key, _, value = (x.strip() for x in item.partition("="))
        if key not in ("connect", "read") or key in parts:
            raise SettingsError(var, f"expected SECONDS or connect=SECONDS,read=SECONDS, got {raw!r}")
        parts[key] = parse_seconds(var, value)
    return ModuleTimeouts(connect=parts.get("connect"), read=parts.get("read"))


def parse_allow_rules(var: str, raw: str) -> tuple[AllowRule, ...]:
    """``[METHODS:]PREFIX[,PREFIX...]`` rules separated by ``;``, e.g. ``GET,HEAD:/;POST:/api/jobs``.

    METHODS is a comma list or ``*``; a rule that starts with ``/`` allows every method.
    """
    rules = []
    for rule in (r.strip() for r in raw.split(";") if r.strip()):
        if rule.startswith("/"):
            methods_text, paths_text = "*", rule
        else:
            methods_text, sep, paths_text = rule.partition(":")
            if not sep:
                raise SettingsError(var, f"rule {rule!r}: expected METHODS:PREFIX[,PREFIX...] or PREFIX[,...]")
        methods: frozenset[str] | None = None
        if methods_text.strip() != "*":
            methods = frozenset(m.strip().upper() for m in methods_text.split(",") if m.strip())
            if not methods or not all(_METHOD.fullmatch(m) for m in methods):
                raise SettingsError(var, f"rule {rule!r}: methods must be a comma list of HTTP methods or *")
        rules.append(AllowRule(methods, parse_prefixes(var, paths_text, rule)))
    if not rules:
        raise SettingsError(var, "expected at least one rule, e.g. GET,HEAD:/;POST:/api/")
    return tuple(rules)


def parse_prefixes(var: str, text: str, rule: str) -> tuple[str, ...]:
    """``/prefix,/other`` -> a tuple of checked path prefixes (``rule`` names them in errors)."""
    prefixes = tuple(p.strip() for p in text.split(",") if p.strip())
    if not prefixes:
        raise SettingsError(var, f"rule {rule!r}: name at least one path prefix, e.g. /api/")
    for prefix in prefixes:
        if not prefix.startswith("/") or _BAD_PREFIX.search(prefix):
            raise SettingsError(var, f"rule {rule!r}: prefix {prefix!r} must start with / and hold no "
                                     "'//', '.' or '..' segment, '%', '\\' or spaces")
    return prefixes


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_int(var: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(var, f"expected a number, got {raw!r}") from None


def parse_float(var: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(var, f"expected a number, got {raw!r}") from None


def parse_bool(var: str, raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise SettingsError(var, f"expected true or false, got {raw!r}")


def parse_text(var: str, raw: str) -> str:
    return raw


def parse_path(var: str, raw: str) -> Path:
    return Path(raw)


def parse_items(var: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())
