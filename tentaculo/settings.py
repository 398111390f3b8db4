"""Typed settings read from ``TENTACULO_*`` environment variables, validated once."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from tentaculo.http.cors import normalise_origin

# The value types and parsers live in setting_values; the ones callers use stay importable from here.
from tentaculo.setting_values import (
    SERVICE_OPTION_SUFFIXES as SERVICE_OPTION_SUFFIXES,
    SERVICE_PREFIX as SERVICE_PREFIX,
    SERVICE_SUFFIX as SERVICE_SUFFIX,
    SERVICE_URL_SCHEMES as SERVICE_URL_SCHEMES,
    AllowRule as AllowRule,
    ModuleTimeouts as ModuleTimeouts,
    SettingsError as SettingsError,
    parse_bool,
    parse_float,
    parse_int,
    parse_items,
    parse_path,
    parse_text,
    read_service_options,
    read_service_urls,
    service_key as service_key,
    under_prefixes as under_prefixes,
)

MAX_WORKERS = 256


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _default_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway can be told; ``from_env`` is the only reader of the environment."""

    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "tentaculo:"
    # TLS to Redis (a rediss:// URL): see docs/operations.md. Files are checked to exist at start.
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    redis_tls_verify: bool = True
    # Redis Sentinel: the gateway asks these sentinels (host:port) for the master named below.
    redis_sentinels: tuple[str, ...] = ()
    redis_sentinel_master: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    state_dir: Path = Path(".tentaculo")
    instance: str = field(default_factory=_default_instance)
    # Worker processes serving the port (see tentaculo/workers.py); "auto" in the environment: one per core.
    workers: int = 1
    log_format: str = "auto"
    log_level: str = "info"
    access_log: str = "auto"
    # Origins whose pages may call the API from a browser: see tentaculo/http/cors.py.
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    # Slow and greedy clients: see tentaculo/http/server.py.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_min_rate: int = 500
    max_connections_per_client: int = 256
    db_pool_max: int = 10
    db_timeout: float = 2.0
    token_cache_seconds: float = 2.0
    token_grace_seconds: float = 300.0
    audit_buffer: int = 50_000
    audit_batch: int = 500
    audit_flush_seconds: float = 0.2
    drain_seconds: float = 3.0
    shutdown_timeout: float = 10.0
    shutdown_flush_seconds: float = 5.0
    migrate_on_start: bool = True
    # Live events (SSE): see docs/events.md.
    events_ping_seconds: float = 15.0
    events_retry_ms: int = 3000
    # Absorbs a burst for a client that reads slower than it is published (the socket holds only
    # TENTACULO_EVENTS_SEND_BUFFER_BYTES): a queued event is shared, so a slot costs a client 8 bytes.
    events_client_queue: int = 2048
    events_max_clients: int = 10_000
    events_max_streams_per_token: int = 20
    events_send_timeout: float = 10.0
    events_send_buffer_bytes: int = 64 * 1024
    events_publish_buffer: int = 10_000
    events_history_max: int = 10_000
    events_history_seconds: float = 86_400.0
    events_reconnect_max_seconds: float = 5.0
    event_ticket_seconds: int = 30
    event_ticket_secret: str | None = field(default=None, repr=False)
    # Metrics rollups and the file explorer: see README.md.
    metrics_public: bool = False
    metrics_flush_seconds: float = 10.0
    metrics_event_seconds: float = 60.0
    metrics_backlog: int = 360
    fs_roots: Mapping[str, Path] = field(default_factory=dict)
    fs_list_max: int = 1000
    # Chat providers: see docs/providers.md.
    providers: tuple[str, ...] = ()  # allow-list; empty: every installed plugin
    provider_chain: tuple[str, ...] = ("deepseek", "local")
    provider_connect_timeout: float = 5.0
    provider_read_timeout: float = 60.0
    provider_start_timeout: float = 10.0
    provider_retries: int = 1
    provider_retry_backoff: float = 0.25
    # Plugins' options (plugin key -> option -> raw value) may hold their secrets: never in a repr.
    # Each plugin declares and checks its own (tentaculo/chat/options.py); the gateway only gathers them.
    provider_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict, repr=False)
    # The variable that set an option when it was an alias (DEEPSEEK_API_KEY), for error messages.
    provider_option_sources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # The fields whose TENTACULO_* variable was set, for the policies' "source": see from_env.
    from_environment: frozenset[str] = field(default=frozenset(), repr=False)
    breaker_failures: int = 5
    breaker_reset_seconds: float = 30.0
    chat_max_chars: int = 200_000
    chat_max_messages: int = 256
    # VX11 modules: see tentaculo/status/services.py. service_urls: module name (dashes as "_") -> address.
    service_urls: Mapping[str, str] = field(default_factory=dict, repr=False)
    services_reload_seconds: float = 10.0
    probe_interval_seconds: float = 5.0
    probe_connect_timeout: float = 1.0
    probe_timeout: float = 2.0
    probe_slow_ms: float = 1000.0
    features_reload_seconds: float = 0.5
    # Risk rules are re-read this often in case a policy_change event was missed (or the CLI changed them).
    policy_reload_seconds: float = 5.0
    dependency_check_seconds: float = 2.0
    # Reverse proxy to the modules: see tentaculo/proxy/. The per-module maps are keyed like service_urls.
    proxy_connect_timeout: float = 5.0
    proxy_read_timeout: float = 60.0
    proxy_pool_wait: float = 10.0
    proxy_pool_size: int = 512
    proxy_pool_per_module: int = 128
    proxy_retries: int = 1
    proxy_max_body_bytes: int = 100 * 1024 * 1024
    trusted_proxies: tuple[str, ...] = ()
    # The gateway's public origin (https://ops.example.com): what modules are told in X-Forwarded-Host/-Proto.
    public_url: str | None = None
    service_tokens: Mapping[str, str] = field(default_factory=dict, repr=False)
    service_timeouts: Mapping[str, ModuleTimeouts] = field(default_factory=dict)
    service_allow: Mapping[str, tuple[AllowRule, ...]] = field(default_factory=dict)
    # Path prefixes under which a ``read`` token may open a WebSocket through the proxy.
    service_read_upgrades: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Failed authentications per client address: see tentaculo/auth/limits.py.
    auth_failure_burst: int = 20
    auth_failure_rate: float = 5.0
    # How often the tokens used since the last time get their last_used_at written (one UPDATE).
    token_last_used_seconds: float = 60.0

    @property
    def access_log_enabled(self) -> bool:
        """A log line per request: on for the console; in production (JSON) the audit table holds each request."""
        return self.access_log == "on" or (self.access_log == "auto" and self.log_format == "console")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); raise SettingsError naming the bad variable."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name in ("provider_options", "provider_option_sources", "service_urls", "service_tokens",
                          "service_timeouts", "service_allow", "service_read_upgrades", "from_environment"):
                continue
            var = f"TENTACULO_{f.name.upper()}"
            parse = _parser(f.name, f.type, var)
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = parse(var, raw.strip())
        values["from_environment"] = frozenset(values)
        values["provider_options"], values["provider_option_sources"] = _plugin_options(env)
        values["service_urls"] = read_service_urls(env)
        values.update(read_service_options(env))
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check cross-field and range rules."""
        _validate_providers(self)
        if not 0 < self.port < 65536:
            raise SettingsError("TENTACULO_PORT", f"must be 1..65535, got {self.port}")
        if self.log_format not in {"auto", "json", "console"}:
            raise SettingsError("TENTACULO_LOG_FORMAT", "must be one of auto, json, console")
        if self.access_log not in {"auto", "on", "off"}:
            raise SettingsError("TENTACULO_ACCESS_LOG", "must be one of auto, on, off")
        if self.log_level.lower() not in {"debug", "info", "warning", "error"}:
            raise SettingsError("TENTACULO_LOG_LEVEL", "must be one of debug, info, warning, error")
        for name in ("header_timeout", "body_timeout"):
            if not 0 < getattr(self, name) <= 3600:
                raise SettingsError(f"TENTACULO_{name.upper()}", "must be in (0, 3600] seconds")
        if self.body_min_rate < 1:
            raise SettingsError("TENTACULO_BODY_MIN_RATE", "must be at least 1 byte per second")
        if self.max_connections_per_client < 0:
            raise SettingsError("TENTACULO_MAX_CONNECTIONS_PER_CLIENT", "must not be negative (0: no limit)")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise SettingsError("TENTACULO_WORKERS", f"must be 1..{MAX_WORKERS} or auto, got {self.workers}")
        if self.max_body_bytes < 1024:
            raise SettingsError("TENTACULO_MAX_BODY_BYTES", "must be at least 1024")
        for name in ("audit_buffer", "audit_batch", "db_pool_max"):
            if getattr(self, name) < 1:
                raise SettingsError(f"TENTACULO_{name.upper()}", "must be at least 1")
        if self.audit_flush_seconds <= 0:
            raise SettingsError("TENTACULO_AUDIT_FLUSH_SECONDS", "must be positive")
        if not 0 < self.db_timeout <= 60:
            raise SettingsError("TENTACULO_DB_TIMEOUT", "must be in (0, 60] seconds")
        for name in ("token_cache_seconds", "token_grace_seconds", "shutdown_timeout", "drain_seconds",
                     "shutdown_flush_seconds"):
            if getattr(self, name) < 0:
                raise SettingsError(f"TENTACULO_{name.upper()}", "must not be negative")
        _validate_metrics_and_fs(self)
        self._validate_events()
        _validate_services(self)
        _validate_proxy(self)
        _validate_cors(self)
        _validate_limits(self)
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise SettingsError("TENTACULO_ADMIN_TOKEN", "must be at least 16 characters")
        if self.database_url and not self.database_url.startswith(("postgres://", "postgresql://")):
            raise SettingsError("TENTACULO_DATABASE_URL", "must be a postgresql:// URL")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("TENTACULO_REDIS_URL", "must be a redis://, rediss:// or unix:// URL")
        _validate_redis_tls(self)
        _validate_redis_sentinel(self)

    def _validate_events(self) -> None:
        if not 0 < self.events_ping_seconds <= 15:
            raise SettingsError("TENTACULO_EVENTS_PING_SECONDS", "must be in (0, 15]: clients rely on a ping every 15 s")
        if not 0 < self.event_ticket_seconds <= 60:
            raise SettingsError("TENTACULO_EVENT_TICKET_SECONDS", "must be 1..60")
        for name in ("events_client_queue", "events_max_clients", "events_max_streams_per_token", "events_publish_buffer",
                     "events_history_max"):
            if getattr(self, name) < 1:
                raise SettingsError(f"TENTACULO_{name.upper()}", "must be at least 1")
        for name in ("events_send_timeout", "events_history_seconds", "events_reconnect_max_seconds"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"TENTACULO_{name.upper()}", "must be positive")
        if self.events_retry_ms < 0:
            raise SettingsError("TENTACULO_EVENTS_RETRY_MS", "must not be negative")
        if self.events_send_buffer_bytes != 0 and self.events_send_buffer_bytes < 4096:
            raise SettingsError("TENTACULO_EVENTS_SEND_BUFFER_BYTES", "must be 0 (the kernel's own) or at least 4096")
        if self.event_ticket_secret is not None and len(self.event_ticket_secret) < 32:
            raise SettingsError("TENTACULO_EVENT_TICKET_SECRET", "must be at least 32 characters")


PLUGIN_PREFIX = "TENTACULO_PLUGIN_"
# Names the contract fixed for options of the built-in plugins before every plugin option became
# TENTACULO_PLUGIN_<NAME>__<OPTION>; they keep working, and the TENTACULO_PLUGIN_ name wins over them.
PLUGIN_ALIASES = {
    "DEEPSEEK_API_KEY": ("deepseek", "api_key"),
    "DEEPSEEK_BASE_URL": ("deepseek", "base_url"),
    "TENTACULO_LOCAL_BASE_URL": ("local", "base_url"),
    "TENTACULO_LOCAL_MODEL": ("local", "model"),
    "TENTACULO_MOCK_DELAY_MS": ("mock", "delay_ms"),
    "TENTACULO_MOCK_FAIL": ("mock", "fail"),
}


SECRET_OPTION_WORDS = ("key", "token", "secret", "password")


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold, for the log scrubber: the gateway's own and plugins' secret-named options.

    Options a plugin declares secret under another name are added when the registry loads it.
    """
    own = [settings.admin_token, settings.event_ticket_secret, *settings.service_tokens.values()]
    plugins = [value for options in settings.provider_options.values() for name, value in options.items()
               if any(word in name for word in SECRET_OPTION_WORDS)]
    return [value for value in (*own, *plugins) if value]


# How a plugin's name appears in TENTACULO_PLUGIN_<NAME>__<OPTION>: as a module's does in its variables.
plugin_key = service_key


def _plugin_options(env: Mapping[str, str]) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """``TENTACULO_PLUGIN_<NAME>__<OPTION>=value`` and the aliases -> ({name: {option: value}}, {name: {option: alias}}).

    Names are lower-cased; empty values are left out (unset). A plugin variable's value is kept as
    given (a prefix may end in a space); an alias's is stripped, as every other setting's.
    """
    options: dict[str, dict[str, str]] = {}
    sources: dict[str, dict[str, str]] = {}
    for var, value in env.items():
        if var.startswith(PLUGIN_PREFIX) and "__" in var[len(PLUGIN_PREFIX):] and value.strip():
            name, _, option = var[len(PLUGIN_PREFIX):].partition("__")
            if name and option:
                options.setdefault(name.lower(), {})[option.lower()] = value
    for var, (name, option) in PLUGIN_ALIASES.items():
        value = env.get(var, "").strip()
        if value and option not in options.get(name, {}):
            options.setdefault(name, {})[option] = value
            sources.setdefault(name, {})[option] = var
    return options, sources


def _validate_services(s: Settings) -> None:
    for key, url in s.service_urls.items():
        if not url.startswith(SERVICE_URL_SCHEMES):
            raise SettingsError(f"{SERVICE_PREFIX}{key.upper()}{SERVICE_SUFFIX}",
                                "must be an http://, https://, redis:// or rediss:// URL")
    for name in ("services_reload_seconds", "probe_interval_seconds", "probe_connect_timeout", "probe_timeout",
                 "probe_slow_ms", "features_reload_seconds", "dependency_check_seconds", "policy_reload_seconds"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"TENTACULO_{name.upper()}", "must be positive")


def _validate_proxy(s: Settings) -> None:
    for name in ("proxy_connect_timeout", "proxy_read_timeout", "proxy_pool_wait"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"TENTACULO_{name.upper()}", "must be positive")
    for name in ("proxy_pool_size", "proxy_pool_per_module", "proxy_max_body_bytes"):
        if getattr(s, name) < 1:
            raise SettingsError(f"TENTACULO_{name.upper()}", "must be at least 1")
    if not 0 <= s.proxy_retries <= 5:
        raise SettingsError("TENTACULO_PROXY_RETRIES", "must be 0..5")
    for item in s.trusted_proxies:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError("TENTACULO_TRUSTED_PROXIES", f"{item!r} is not an IP address or CIDR") from None
    if s.public_url is not None:
        public_origin(s.public_url)


def public_origin(url: str) -> tuple[str, str]:
    """``TENTACULO_PUBLIC_URL`` -> (scheme, host[:port]); SettingsError unless an absolute http(s) origin."""
    var = "TENTACULO_PUBLIC_URL"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SettingsError(var, f"{url!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(var, "must be an absolute http:// or https:// address, e.g. https://ops.example.com")
    if parts.username is not None or parts.password is not None or parts.path not in ("", "/") or parts.query \
            or parts.fragment or "?" in url or "#" in url or any(c.isspace() or not c.isprintable() for c in url):
        raise SettingsError(var, "must be an origin only: no user, path, query or fragment, e.g. https://ops.example.com")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return parts.scheme, host if port is None else f"{host}:{port}"


def _validate_redis_tls(s: Settings) -> None:
    files = (("TENTACULO_REDIS_TLS_CA_FILE", s.redis_tls_ca_file), ("TENTACULO_REDIS_TLS_CERT_FILE", s.redis_tls_cert_file),
             ("TENTACULO_REDIS_TLS_KEY_FILE", s.redis_tls_key_file))
    for var, path in files:
        if path is None:
            continue
        if not (s.redis_url or "").startswith("rediss://"):
            raise SettingsError(var, "applies to a rediss:// TENTACULO_REDIS_URL only")
        if not path.is_file():
            raise SettingsError(var, f"no such file: {path}")
    if s.redis_tls_key_file is not None and s.redis_tls_cert_file is None:
        raise SettingsError("TENTACULO_REDIS_TLS_KEY_FILE", "needs TENTACULO_REDIS_TLS_CERT_FILE (the client certificate)")


def _validate_redis_sentinel(s: Settings) -> None:
    var = "TENTACULO_REDIS_SENTINELS"
    for item in s.redis_sentinels:
        host, sep, port = item.rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(var, f"{item!r}: expected host:port items separated by commas")
    if s.redis_sentinels and not s.redis_sentinel_master:
        raise SettingsError("TENTACULO_REDIS_SENTINEL_MASTER", "must name the master the sentinels monitor")
    if s.redis_sentinel_master and not s.redis_sentinels:
        raise SettingsError("TENTACULO_REDIS_SENTINEL_MASTER", "needs TENTACULO_REDIS_SENTINELS")
    if s.redis_sentinels and s.redis_url and s.redis_url.startswith("unix://"):
        raise SettingsError("TENTACULO_REDIS_URL", "must be redis:// or rediss:// with TENTACULO_REDIS_SENTINELS")


def _validate_limits(s: Settings) -> None:
    if s.auth_failure_burst < 1:
        raise SettingsError("TENTACULO_AUTH_FAILURE_BURST", "must be at least 1")
    if not 0 < s.auth_failure_rate <= 1000:
        raise SettingsError("TENTACULO_AUTH_FAILURE_RATE", "must be in (0, 1000] failures per second")
    if not 0 < s.token_last_used_seconds <= 3600:
        raise SettingsError("TENTACULO_TOKEN_LAST_USED_SECONDS", "must be in (0, 3600]")


def _validate_providers(s: Settings) -> None:
    for name in ("provider_connect_timeout", "provider_read_timeout", "provider_start_timeout",
                 "breaker_reset_seconds"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"TENTACULO_{name.upper()}", "must be positive")
    for name in ("provider_retries", "provider_retry_backoff"):
        if getattr(s, name) < 0:
            raise SettingsError(f"TENTACULO_{name.upper()}", "must not be negative")
    for name in ("breaker_failures", "chat_max_chars", "chat_max_messages"):
        if getattr(s, name) < 1:
            raise SettingsError(f"TENTACULO_{name.upper()}", "must be at least 1")


FS_ROOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _fs_roots(var: str, raw: str) -> dict[str, Path]:
    """``name=path,name=path`` -> {name: Path}; names are what clients put first in a path."""
    roots: dict[str, Path] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, path = (s.strip() for s in item.partition("="))
        if not sep or not path:
            raise SettingsError(var, f"expected name=path items separated by commas, got {item!r}")
        if not FS_ROOT_NAME.fullmatch(name):
            raise SettingsError(var, f"root name {name!r} must be letters, digits, '._-' (max 64)")
        if name in roots:
            raise SettingsError(var, f"root name {name!r} is given twice")
        roots[name] = Path(path)
    return roots


def _validate_metrics_and_fs(s: Settings) -> None:
    if not 1 <= s.metrics_flush_seconds <= 300:
        raise SettingsError("TENTACULO_METRICS_FLUSH_SECONDS", "must be 1..300")
    if s.metrics_event_seconds < 0:
        raise SettingsError("TENTACULO_METRICS_EVENT_SECONDS", "must not be negative (0 turns the event off)")
    for name in ("metrics_backlog", "fs_list_max"):
        if getattr(s, name) < 1:
            raise SettingsError(f"TENTACULO_{name.upper()}", "must be at least 1")
    if s.fs_list_max > 100_000:
        raise SettingsError("TENTACULO_FS_LIST_MAX", "must be at most 100000")


def _cors_origins(var: str, raw: str) -> tuple[str, ...]:
    """``http://localhost:5173,https://ops.example.com`` -> normalised origins, each once."""
    origins: list[str] = []
    for item in (part.strip() for part in raw.split(",") if part.strip()):
        try:
            origin = normalise_origin(item)
        except ValueError as exc:
            raise SettingsError(var, str(exc)) from None
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def _validate_cors(s: Settings) -> None:
    for origin in s.cors_origins:
        if _cors_origins("TENTACULO_CORS_ORIGINS", origin) != (origin,):
            raise SettingsError("TENTACULO_CORS_ORIGINS", f"{origin!r} is not written as a browser sends it")


def _workers(var: str, raw: str) -> int:
    if raw.lower() == "auto":
        return available_cores()
    if not raw.isdigit():
        raise SettingsError(var, f"expected a number of processes or auto, got {raw!r}")
    return parse_int(var, raw)


# How ``from_env`` reads a field from its variable, by the field's annotation as written in Settings.
_PARSERS: dict[str, Callable[[str, str], object]] = {
    "str": parse_text, "str | None": parse_text, "int": parse_int, "float": parse_float, "bool": parse_bool, "Path": parse_path,
    "Path | None": parse_path, "Mapping[str, Path]": _fs_roots, "tuple[str, ...]": parse_items,
}
# Fields whose variable says more than their type does.
_FIELD_PARSERS: dict[str, Callable[[str, str], object]] = {"cors_origins": _cors_origins, "workers": _workers}


def _parser(name: str, annotation: object, var: str) -> Callable[[str, str], object]:
    """The parser of field ``name``; TypeError for a type with none, rather than the raw string passed on."""
    parse = _FIELD_PARSERS.get(name) or _PARSERS.get(str(annotation))
    if parse is None:
        raise TypeError(f"settings field {name!r} ({var}) has type {annotation}, which from_env cannot parse: "
                        "add a parser to tentaculo.settings._PARSERS")
    return parse
