"""The ``tentaculo`` command: run, migrate, token, service, policy, providers, smoke."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TextIO

import asyncpg

from tentaculo import __version__
from tentaculo.auth.tokens import (
    MAX_EXPIRES_IN,
    MAX_REQUESTS_PER_MINUTE,
    SCOPES,
    hash_token,
    new_token,
    ordered_scopes,
    parse_scopes,
)
from tentaculo.auth.views import BOOTSTRAP_TOKEN_NAME, TOKEN_NAME, reserved_name
from tentaculo.db import queries
from tentaculo.db.migrate import MigrationError, migrate
from tentaculo.policy_cli import policy_command, policy_parser
from tentaculo.settings import Settings, SettingsError, secret_values

ADMIN_TOKEN_FILE = "admin-token"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tentaculo", description="The VX11 gateway.")
    parser.add_argument("--version", action="version", version=f"tentaculo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve in the foreground (embedded PostgreSQL and Redis when none is configured)")
    run.add_argument("--host", help="address to listen on (default: TENTACULO_HOST, else 127.0.0.1)")
    run.add_argument("--port", type=_port, help="port to listen on (default: TENTACULO_PORT, else 8000)")
    # One of the supervisor's workers (TENTACULO_WORKERS > 1): started by it, never by hand.
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    sub.add_parser("migrate", help="apply pending database migrations and exit")
    sub.add_parser("providers", help="list the installed provider plugins and their status (starts each one)")
    smoke = sub.add_parser("smoke", help="call every endpoint of a running gateway; non-zero exit on any failure")
    smoke.add_argument("--url", default=os.environ.get("TENTACULO_SMOKE_URL", "http://127.0.0.1:8000"))
    smoke.add_argument("--token-file", help="read the token from this file (default: TENTACULO_SMOKE_TOKEN, "
                       "TENTACULO_ADMIN_TOKEN, then <state dir>/admin-token)")
    token = sub.add_parser("token", help="manage API tokens")
    tsub = token.add_subparsers(dest="token_command", required=True)
    create = tsub.add_parser("create", help="create a token and print it once")
    create.add_argument("name")
    create.add_argument("--scopes", default="read", help=f"comma list of {','.join(SCOPES)} (default: read)")
    create.add_argument("--expires-in", help="lifetime: a number with s, m, h or d, e.g. 30d (default: never expires)")
    create.add_argument("--requests-per-minute", type=int, help="budget of requests per minute (default: none)")
    tsub.add_parser("list", help="list tokens (never their secrets)")
    revoke = tsub.add_parser("revoke", help="revoke the active token with this name")
    revoke.add_argument("name")
    _service_parser(sub)
    policy_parser(sub)
    return parser


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"must be 1..65535, got {text!r}")
    return port


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tentaculo`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"tentaculo: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "smoke":
        return _smoke(settings, args)
    if args.command == "run":
        settings = dataclasses.replace(settings, host=args.host or settings.host, port=args.port or settings.port)
    from tentaculo.logging import configure_logging, resolve_log_format

    settings = dataclasses.replace(settings, log_format=resolve_log_format(settings.log_format))
    configure_logging(
        settings.log_format,
        settings.log_level,
        secrets=secret_values(settings),
    )
    if args.command == "providers":
        return asyncio.run(list_providers(settings))
    if args.command == "run" and args.worker is not None:
        return _run_worker(settings, args.worker)
    try:
        with _databases(settings, need_redis=args.command == "run") as settings:
            if args.command == "run":
                return _run(settings)
            if args.command == "migrate":
                applied = asyncio.run(_migrate(settings))
                print(f"applied migrations: {applied}" if applied else "schema is up to date")
                return 0
            if args.command == "service":
                return asyncio.run(_service_command(settings, args))
            if args.command == "policy":
                return asyncio.run(policy_command(settings, args))
            return asyncio.run(_token_command(settings, args))
    except MigrationError as exc:
        print(f"tentaculo: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"tentaculo: cannot reach PostgreSQL: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _databases(settings: Settings, *, need_redis: bool) -> Iterator[Settings]:
    """Yield settings with database and Redis URLs, starting embedded servers for what is unset."""
    from tentaculo.embedded import EmbeddedPostgres, EmbeddedRedis

    with contextlib.ExitStack() as stack:
        database_url, redis_url = settings.database_url, settings.redis_url
        if not database_url:
            pg = EmbeddedPostgres(settings.state_dir / "postgres")
            running = pg.running_dsn()
            if running and not need_redis:
                # A running gateway's server: used as it is, and left running.
                print(f"using the embedded PostgreSQL running in {pg.directory}", file=sys.stderr)
                database_url = running
            else:
                verb = "joining the" if running else "starting"
                print(f"{verb} embedded PostgreSQL in {pg.directory}", file=sys.stderr)
                database_url = pg.start()
                stack.callback(pg.stop)
        if need_redis and not redis_url and not settings.redis_sentinels:
            redis = EmbeddedRedis(settings.state_dir / "redis")
            redis_url = redis.start()
            print(f"started embedded Redis at {redis.url}", file=sys.stderr)
            stack.callback(redis.stop)
        yield dataclasses.replace(settings, database_url=database_url, redis_url=redis_url)


async def _connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(settings.database_url, timeout=10)


async def _migrate(settings: Settings) -> list[int]:
    conn = await _connect(settings)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def _bootstrap_admin(settings: Settings) -> list[int]:
    """Apply migrations (unless TENTACULO_MIGRATE_ON_START is off: ``tentaculo migrate`` does it then);
    with no token anywhere, create the first admin token and print it once. Returns the versions applied."""
    if settings.admin_token and not settings.migrate_on_start:
        return []  # nothing to do here: the environment's token is the admin
    applied: list[int] = []
    conn = await _connect(settings)
    try:
        if settings.migrate_on_start:
            applied = await migrate(conn)
        if settings.admin_token or await queries.count_active_tokens(conn):
            return applied
        token = new_token()
        # The one token allowed the reserved name: it is the bootstrap token.
        await queries.insert_token(conn, BOOTSTRAP_TOKEN_NAME, hash_token(token), list(SCOPES), "bootstrap")
    finally:
        await conn.close()
    path = settings.state_dir / ADMIN_TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    print(
        "\nFirst admin token (every scope). It is shown once here and kept in "
        f"{path.resolve()} (mode 600):\n\n    {token}\n\n"
        f"Try: curl -H 'X-VX11-Token: {token}' http://{settings.host}:{settings.port}/operator/api/whoami\n"
        f"or sign in with it to the operator console: http://{settings.host}:{settings.port}/operator/\n"
        "\nChat answers once a provider is configured: set DEEPSEEK_API_KEY or TENTACULO_LOCAL_BASE_URL\n"
        "(a local OpenAI-compatible server). Until then, name the built-in test provider:\n"
        f"    curl -H 'X-VX11-Token: {token}' -d '{{\"message\":\"hello\",\"provider\":\"mock\"}}' "
        f"http://{settings.host}:{settings.port}/operator/api/chat\n",
        flush=True,
    )
    return applied


def _run(settings: Settings) -> int:
    from tentaculo.app import create_app
    from tentaculo.http.server import serve

    applied = asyncio.run(_bootstrap_admin(settings))
    if settings.workers > 1:
        # Done once above for every worker: embedded servers, migrations, the first admin token.
        import structlog

        from tentaculo.workers import supervise

        if applied:
            structlog.get_logger("tentaculo.workers").info("migrations_applied", versions=applied)
        return supervise(settings, print_line=_line_to_stderr)
    serve(create_app(settings), settings, loop=_new_loop(), print_line=lambda msg: print(msg, file=sys.stderr))
    return 0


def _run_worker(settings: Settings, number: int) -> int:
    """One worker of ``tentaculo.workers``' supervisor: serve on the shared port, nothing else."""
    from tentaculo.app import create_app
    from tentaculo.http.server import serve

    if not settings.database_url or not settings.redis_url:
        print("tentaculo: --worker is for the processes TENTACULO_WORKERS starts; they are given "
              "TENTACULO_DATABASE_URL and TENTACULO_REDIS_URL", file=sys.stderr)
        return 2
    prefix = f"worker {number} (pid {os.getpid()}): "
    try:
        serve(create_app(settings), settings, loop=_new_loop(), reuse_port=True,
              print_line=lambda msg: _line_to_stderr(prefix + msg))
    except (OSError, asyncpg.PostgresError) as exc:
        _line_to_stderr(f"{prefix}cannot start: {type(exc).__name__}: {exc}")
        return 1
    return 0


def _line_to_stderr(line: str) -> None:
    """One write per line: the supervisor and its workers share a stderr (print() writes the newline apart)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _token_command(settings: Settings, args: argparse.Namespace) -> int:
    conn = await _connect(settings)
    try:
        await migrate(conn)
        if args.token_command == "create":
            if not TOKEN_NAME.fullmatch(args.name):
                print("tentaculo: a token name is 1 to 64 letters, digits, '.', '_' or '-'", file=sys.stderr)
                return 2
            if reserved_name(args.name):
                print(f"tentaculo: the name {args.name!r} is reserved for the bootstrap token", file=sys.stderr)
                return 2
            try:
                scopes = parse_scopes(args.scopes)
            except ValueError as exc:
                print(f"tentaculo: --scopes: {exc}", file=sys.stderr)
                return 2
            try:
                expires_at = _expires_at(args.expires_in)
                requests_per_minute = _budget(args.requests_per_minute)
            except ValueError as exc:
                print(f"tentaculo: {exc}", file=sys.stderr)
                return 2
            token = new_token()
            try:
                await queries.insert_token(conn, args.name, hash_token(token), ordered_scopes(scopes), "cli",
                                           expires_at=expires_at, requests_per_minute=requests_per_minute)
            except asyncpg.UniqueViolationError:
                print(f"tentaculo: an active token named {args.name!r} exists; revoke it first", file=sys.stderr)
                return 1
            print(token)
            until = f", expiring {_when(expires_at)}" if expires_at else ""
            print(f"created token {args.name!r} with scopes {','.join(ordered_scopes(scopes))}{until}; it is not shown again",
                  file=sys.stderr)
            return 0
        if args.token_command == "list":
            rows = await queries.list_tokens(conn)
            print(f"{'NAME':<24} {'SCOPES':<28} {'STATE':<8} {'CREATED':<20} {'EXPIRES':<20} {'LAST USED':<20} "
                  f"{'RPM':<8} REVOKED")
            for r in rows:
                print(f"{r['name']:<24} {','.join(ordered_scopes(r['scopes'])):<28} {r['state']:<8} {_when(r['created_at']):<20} "
                      f"{_when(r['expires_at']):<20} {_when(r['last_used_at']):<20} "
                      f"{r['requests_per_minute'] or '-'!s:<8} {_when(r['revoked_at'])}")
            return 0
        if await queries.revoke_token(conn, args.name):
            # On stdout, as create's token is: a script or a terminal sees that it happened.
            print(f"revoked token {args.name!r}; running gateways refuse it within TENTACULO_TOKEN_CACHE_SECONDS")
            return 0
        print(f"tentaculo: no active token named {args.name!r}", file=sys.stderr)
        return 1
    finally:
        await conn.close()


DURATION = re.compile(r"(\d{1,9})([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``15m``, ``90s`` or ``90`` -> seconds; ValueError otherwise."""
    match = DURATION.fullmatch(text.strip().lower())
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]] if match else 0
    if not 0 < seconds <= MAX_EXPIRES_IN:
        raise ValueError(f"--expires-in: expected a positive number with s, m, h or d (at most 3650d), got {text!r}")
    return seconds


def _expires_at(text: str | None) -> datetime | None:
    return datetime.now(UTC) + timedelta(seconds=parse_duration(text)) if text is not None else None


def _budget(value: int | None) -> int | None:
    if value is not None and not 0 < value <= MAX_REQUESTS_PER_MINUTE:
        raise ValueError(f"--requests-per-minute: expected 1 to {MAX_REQUESTS_PER_MINUTE}, got {value}")
    return value


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def _smoke(settings: Settings, args: argparse.Namespace) -> int:
    from tentaculo.smoke import main as smoke_main

    token = os.environ.get("TENTACULO_SMOKE_TOKEN") or settings.admin_token
    path = args.token_file or (None if token else str(settings.state_dir / ADMIN_TOKEN_FILE))
    if path:
        try:
            with open(path) as f:
                token = f.read().strip()
        except OSError as exc:
            print(f"tentaculo: no token for the smoke run: {exc.strerror}: {path}", file=sys.stderr)
            return 2
    return smoke_main(args.url, token or "")


async def list_providers(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Load every allowed provider plugin as the gateway would and print a line per provider."""
    import aiohttp

    from tentaculo.chat.registry import ProviderRegistry

    async with aiohttp.ClientSession() as http:
        registry = ProviderRegistry(settings, http)
        await registry.start()
        rows = registry.snapshot()
        await registry.close()
    print(f"{'NAME':<12} {'STATUS':<9} {'CIRCUIT':<9} {'VERSION':<9} {'DISTRIBUTION':<20} {'MODELS':<36} REASON", file=out)
    for p in rows:
        models = ",".join(p["models"]) or "-"
        print(f"{p['name']:<12} {p['status']:<9} {p['circuit']['state']:<9} {p['version'] or '-':<9} "
              f"{p['distribution'] or '-':<20} {models:<36} {p['reason'] or ''}", file=out)
    print(f"chain (provider \"auto\"): {', '.join(registry.chain) or '-'}", file=out)
    return 0


SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def _service_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    service = sub.add_parser("service", help="list or change the VX11 modules (running gateways apply it at once)")
    ssub = service.add_subparsers(dest="service_command", required=True)
    ssub.add_parser("list", help="list the modules as configured (live health: GET /operator/api/modules)")
    change = ssub.add_parser("set", help="add a module or change the fields given")
    change.add_argument("name", help="module name: lower-case letters, digits, '-' and '_'")
    change.add_argument("--url", help="base address (http://, https://, redis://, rediss://); '' clears it")
    change.add_argument("--health-path", help="path of its health check (default /health)")
    change.add_argument("--role", help="what it does (a new module's default: module)")
    change.add_argument("--display-name", help="name shown to operators (a new module's default: its name)")
    change.add_argument("--description")
    enabled = change.add_mutually_exclusive_group()
    enabled.add_argument("--enabled", dest="enabled", action="store_true", default=None, help="probe and proxy it")
    enabled.add_argument("--disabled", dest="enabled", action="store_false", help="report it off, never call it")
    edge = ssub.add_parser("edge", help="add or remove an edge of the topology (A depends on or calls B)")
    esub = edge.add_subparsers(dest="edge_command", required=True)
    add = esub.add_parser("add", help="add an edge, or change its kind")
    add.add_argument("source")
    add.add_argument("target")
    add.add_argument("--kind", default="http", help="how source reaches target, e.g. http, pubsub (default http)")
    remove = esub.add_parser("remove", help="remove an edge")
    remove.add_argument("source")
    remove.add_argument("target")


EDGE_KIND = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def _service_errors(args: argparse.Namespace) -> list[str]:
    from tentaculo.settings import SERVICE_URL_SCHEMES

    if args.service_command == "edge":
        errors = [f"{which}: lower-case letters, digits, '-' and '_', at most 64"
                  for which in ("SOURCE", "TARGET") if not SERVICE_NAME.fullmatch(getattr(args, which.lower()))]
        if getattr(args, "kind", None) is not None and not EDGE_KIND.fullmatch(args.kind):
            errors.append("--kind: lower-case letters, digits, '-' and '_', at most 32")
        return errors
    errors = []
    if not SERVICE_NAME.fullmatch(args.name):
        errors.append("NAME: lower-case letters, digits, '-' and '_', at most 64")
    if args.url and not args.url.startswith(SERVICE_URL_SCHEMES):
        errors.append("--url: must start with " + ", ".join(SERVICE_URL_SCHEMES) + " (or be '' to clear it)")
    if args.health_path is not None and not (args.health_path.startswith("/") and len(args.health_path) <= 512):
        errors.append("--health-path: must start with '/'")
    return errors


async def _service_command(settings: Settings, args: argparse.Namespace) -> int:
    from tentaculo.settings import service_key
    from tentaculo.status.services import public_address

    if args.service_command in ("set", "edge") and (errors := _service_errors(args)):
        for error in errors:
            print(f"tentaculo: {error}", file=sys.stderr)
        return 2
    conn = await _connect(settings)
    try:
        await migrate(conn)
        if args.service_command == "list":
            rows = await queries.list_service_configs(conn)
            print(f"{'NAME':<20} {'ROLE':<16} {'ENABLED':<8} {'HEALTH':<12} ADDRESS")
            for r in rows:
                override = settings.service_urls.get(service_key(r["name"]))
                address = public_address(override or r["base_url"]) or "-"
                if override:
                    address += " (from TENTACULO_SERVICE_" + service_key(r["name"]).upper() + "_URL)"
                print(f"{r['name']:<20} {r['role']:<16} {'yes' if r['enabled'] else 'no':<8} "
                      f"{r['health_path']:<12} {address}")
            edges = await queries.list_topology_edges(conn)
            print(f"\nEDGES ({len(edges)}; change with: tentaculo service edge add|remove SOURCE TARGET)")
            for e in edges:
                print(f"{e['source']} -> {e['target']} ({e['kind']})")
            return 0
        if args.service_command == "edge":
            return await _edge_command(conn, args)
        row, created = await queries.set_service_config(
            conn,
            args.name,
            url=args.url or None,
            clear_url=args.url == "",
            health_path=args.health_path,
            enabled=args.enabled,
            role=args.role,
            display_name=args.display_name,
            description=args.description,
        )
    finally:
        await conn.close()
    state = "enabled" if row["enabled"] else "disabled"
    address = public_address(row["base_url"]) or "no address"
    print(f"{'added' if created else 'updated'} module {row['name']!r}: {address}, health {row['health_path']}, "
          f"{state}; running gateways reload it now", file=sys.stderr)
    if settings.service_urls.get(service_key(row["name"])):
        print(f"note: TENTACULO_SERVICE_{service_key(row['name']).upper()}_URL overrides this address where it is set",
              file=sys.stderr)
    return 0


async def _edge_command(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    where = f"{args.source} -> {args.target}"
    if args.edge_command == "remove":
        if not await queries.remove_topology_edge(conn, args.source, args.target):
            print(f"tentaculo: no edge {where}", file=sys.stderr)
            return 1
        print(f"removed edge {where}; running gateways reload it now")
        return 0
    try:
        created = await queries.add_topology_edge(conn, args.source, args.target, args.kind)
    except asyncpg.ForeignKeyViolationError:
        known = {r["name"] for r in await queries.list_service_configs(conn)}
        missing = next(n for n in (args.source, args.target) if n not in known)
        print(f"tentaculo: no module named {missing!r}; add it with: tentaculo service set {missing} --url ...",
              file=sys.stderr)
        return 1
    print(f"{'added' if created else 'updated'} edge {where} ({args.kind}); running gateways reload it now")
    return 0

