"""The ``backinstock`` command: serve, migrate and manage keys.

Each command imports what it uses when it runs: at module level are only typer, rich's
console and what the options name (the key scopes). So ``--help`` or ``keys generate-env``
start without the database layer, Alembic or the web app, and every other command loads
only its own (``check`` no Alembic, ``keys create`` no web app).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from backinstock.auth.scopes import Scope

if TYPE_CHECKING:
    from pydantic import ValidationError
    from rich.console import RenderableType
    from sqlalchemy.ext.asyncio import AsyncSession

    from backinstock.catalog.schemas import PolicyOut
    from backinstock.config import Settings
    from backinstock.demo import DemoInstance, DemoResult
    from backinstock.errors import ApiError

app = typer.Typer(help="Back-in-stock notifications.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys and data keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
policy_app = typer.Typer(
    help="A product's own rules: settings overridden for one SKU.", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")
err = Console(stderr=True)
_SERVE_LOG = "backinstock.serve"  # the logger of serve's own lines
T = TypeVar("T")
# The key rings production requires, as `keys generate-env` prints them.
ENV_KEY_SETTINGS = (
    "BACKINSTOCK_ENCRYPTION_KEYS",
    "BACKINSTOCK_BLIND_INDEX_KEY",
    "BACKINSTOCK_TOKEN_KEY",
)


@app.callback()
def _main() -> None:
    from backinstock.ops.logging import configure_logging

    # Logs go to stderr so that stdout carries only what a command prints (a new key, say).
    configure_logging("WARNING", json=False, stream=sys.stderr)


def _settings() -> Settings:
    from backinstock.config import Settings

    return Settings.from_env()


def _ensure_schema(settings: Settings) -> None:
    # The embedded database migrates itself; production runs `backinstock migrate` on deploy.
    if settings.core.is_sqlite:
        from backinstock import migrations

        migrations.upgrade(settings.core.database_url)


def _with_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    import asyncio

    from backinstock import db
    from backinstock.errors import ApiError

    async def run() -> T:
        engine = db.create_engine(settings.core.database_url, pool_size=2)
        try:
            async with db.transaction(db.sessionmaker(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except ApiError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Migrate if needed and serve the API."""
    import structlog
    import uvicorn

    from backinstock import migrations
    from backinstock.crypto import KeyConfigError, load_keys
    from backinstock.ops.logging import configure_logging

    settings = _settings()
    if settings.core.log_json:
        # From the first line on, what serve writes is JSON lines, like the app's own logs.
        configure_logging(settings.core.log_level, json=True)
    try:
        load_keys(settings.crypto, production=not settings.core.is_sqlite)
    except KeyConfigError as exc:
        if settings.core.log_json:
            structlog.get_logger(_SERVE_LOG).error("refusing_to_start", reason=str(exc))
        else:
            err.print(f"[red]Refusing to start:[/red] {exc}")
        raise typer.Exit(2) from None
    migrations.upgrade(settings.core.database_url)
    _banner(settings, host, port)
    # Forwarded headers only from the proxies the operator names; uvicorn's own default
    # (its FORWARDED_ALLOW_IPS, else localhost) would let any local client pick its IP.
    proxies = settings.core.forwarded_allow_ips.strip()
    uvicorn.run(
        "backinstock.main:app_from_env",
        factory=True,
        host=host,
        port=port,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
        access_log=False,
        log_config=None,
    )


def _banner(settings: Settings, host: str, port: int) -> None:
    """Where the service listens and what to do first. With JSON logs (the default) this is
    one JSON log line on stdout, like every line after it, so log collectors never see
    console text; the coloured lines are added only for a person at a terminal."""
    base = f"http://{host}:{port}"
    mode = "embedded (SQLite, in-process broker)" if settings.core.is_sqlite else "production"
    hint = "backinstock keys create --name storefront --scope subscribe"
    if settings.core.log_json:
        import structlog

        structlog.get_logger(_SERVE_LOG).info(
            "serving",
            url=base,
            mode="embedded" if settings.core.is_sqlite else "production",
            docs=f"{base}/docs",
            health=f"{base}/healthz",
            create_key=hint,
        )
        if not sys.stderr.isatty():
            return
    err.print(f"[bold]backinstock[/bold] on {base} — {mode}")
    err.print(f"  create a key:  {hint}")
    err.print(f"  API docs:      {base}/docs    contract: openapi.yaml")
    err.print(f"  health:        {base}/healthz  {base}/readyz  {base}/metrics")


@app.command()
def worker(
    processes: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    threads: Annotated[int, typer.Option(help="Threads per process.")] = 8,
    poll_ms: Annotated[
        int, typer.Option(help="How often an idle worker polls Redis, in milliseconds.")
    ] = 100,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve the worker processes' Prometheus metrics, summed, on this port "
            "(at /metrics; see docs/operations.md).",
            min=1,
            max=65535,
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Interface for --metrics-port (0.0.0.0 for a scraper elsewhere).")
    ] = "127.0.0.1",
    metrics_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the processes keep their metrics files (emptied at start; default: "
            "a directory per port under the system's temporary directory)."
        ),
    ] = None,
    queues: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            help="Take work from this queue only (repeat for several; default: all): "
            "'waves' writes restock waves, 'dispatch' sends. A host on 'waves' alone gives "
            "the writers an event loop no sender shares (docs/architecture.md, worker hosts).",
        ),
    ] = None,
) -> None:
    """Dramatiq workers, each with the sweeper and wave scheduler (production mode)."""
    from backinstock import migrations, tasks
    from backinstock.crypto import KeyConfigError, load_keys

    known = sorted({task.queue for task in tasks.TASKS})
    unknown = sorted(set(queues or ()) - set(known))
    if unknown:
        err.print(f"[red]No such queue:[/red] {', '.join(unknown)} (queues: {', '.join(known)})")
        raise typer.Exit(2)
    settings = _settings()
    if not settings.core.redis_url:
        err.print(
            "[red]backinstock worker needs BACKINSTOCK_REDIS_URL[/red]; without it, "
            "`backinstock serve` runs the workers in-process."
        )
        raise typer.Exit(2)
    try:
        load_keys(settings.crypto, production=not settings.core.is_sqlite)
    except KeyConfigError as exc:
        err.print(f"[red]Refusing to start:[/red] {exc}")
        raise typer.Exit(2) from None
    migrations.upgrade(settings.core.database_url)
    args = [
        sys.executable,
        "-m",
        "dramatiq",
        "backinstock.worker",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        # SIGTERM: the actors drain within SHUTDOWN_GRACE_SECONDS (see worker.py); Dramatiq
        # must not wait its default 10 minutes for anything beyond that.
        "--worker-shutdown-timeout",
        str(int((settings.delivery.shutdown_grace_seconds + 5) * 1000)),
    ]
    if metrics_port is not None:
        args += ["--fork-function", _worker_metrics(metrics_port, metrics_host, metrics_dir)]
    if queues:
        args += ["--queues", *sorted(set(queues))]
    # Dramatiq's idle consumers poll every 0.5-1x this; its 1 s default alone would eat the
    # "first message within a second" budget twice (the wave, then the first send batch).
    os.environ["dramatiq_worker_timeout"] = str(poll_ms)  # noqa: SIM112 - dramatiq reads this name
    os.execv(sys.executable, args)  # noqa: S606 - dramatiq's supervisor handles signals


def _worker_metrics(port: int, host: str, directory: Path | None) -> str:
    """Set up the environment the worker processes count in (prometheus_client's
    multiprocess mode, read when they first import it) and return the function Dramatiq
    forks to serve the sum."""
    import tempfile

    from backinstock.ops import exposition

    directory = directory or Path(tempfile.gettempdir()) / f"backinstock-worker-metrics-{port}"
    exposition.prepare_directory(directory)
    os.environ[exposition.MULTIPROC_DIR] = str(directory)
    os.environ[exposition.HOST] = host
    os.environ[exposition.PORT] = str(port)
    return exposition.FORK_FUNCTION


@app.command()
def check(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer.")] = 5.0,
) -> None:
    """Exit 0 when the database and Redis (if BACKINSTOCK_REDIS_URL is set) answer, else 1
    with the reason on stderr: the worker's container healthcheck (it serves no HTTP)."""
    import asyncio

    from sqlalchemy import text

    from backinstock import db

    settings = _settings()
    problems: list[str] = []

    async def database() -> None:
        engine = db.create_engine(settings.core.database_url, pool_size=2)
        try:
            async with engine.connect() as conn:
                await asyncio.wait_for(conn.execute(text("SELECT 1")), timeout)
        finally:
            await engine.dispose()

    try:
        asyncio.run(asyncio.wait_for(database(), timeout))
    except Exception as exc:  # any failure means "not healthy"
        problems.append(f"database does not answer ({type(exc).__name__})")
    if settings.core.redis_url:
        import redis

        try:
            client = redis.Redis.from_url(
                settings.core.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            problems.append(f"redis does not answer ({type(exc).__name__})")
    for problem in problems:
        err.print(f"[red]unhealthy:[/red] {problem}")
    if problems:
        raise typer.Exit(1)
    err.print("[green]ok[/green]")


@app.command()
def status(
    watch: Annotated[bool, typer.Option("--watch", help="Redraw until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option(help="Seconds between redraws with --watch.", min=0)
    ] = 2.0,
    count: Annotated[
        int | None, typer.Option(help="With --watch, stop after this many redraws.", min=1)
    ] = None,
) -> None:
    """Open waves with progress per SKU, pending work by channel, the oldest due message
    and the providers configured, read from BACKINSTOCK_DATABASE_URL."""
    import asyncio
    import contextlib

    from rich.live import Live

    from backinstock import db
    from backinstock import status as status_view

    settings = _settings()
    _ensure_schema(settings)
    console = Console()

    async def frames() -> None:
        engine = db.create_engine(settings.core.database_url, pool_size=2)
        sessions = db.sessionmaker(engine)

        async def frame() -> RenderableType:
            async with sessions() as session:
                report = await status_view.gather(session, settings, db.utcnow())
            return status_view.render(report)

        try:
            if not watch:
                console.print(await frame())
                return
            drawn = 0
            # A terminal is redrawn in place; a pipe or a file gets one frame after another.
            with (
                Live(console=console, auto_refresh=False)
                if console.is_terminal
                else _Frames(console) as live
            ):
                while count is None or drawn < count:
                    if drawn:
                        await asyncio.sleep(interval)
                    live.update(await frame(), refresh=True)
                    drawn += 1
        finally:
            await engine.dispose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(frames())


class _Frames:
    """``--watch`` without a terminal: each redraw printed in turn."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def __enter__(self) -> _Frames:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def update(self, renderable: RenderableType, refresh: bool = False) -> None:
        self._console.print(renderable)


@app.command()
def demo(
    database: Annotated[
        Path,
        typer.Option(help="The demo's own SQLite file, started afresh on each run."),
    ] = Path("backinstock-demo.db"),
    port: Annotated[
        int | None,
        typer.Option(help="Port for serving the demo afterwards (default: a free one from 8001)."),
    ] = None,
) -> None:
    """Fill a demo instance of its own (its own SQLite file and key file; your instance is
    never touched) with sample shoppers, a restock, clicks, orders and coupons (dev outbox
    only, never a real provider), and print how to serve it and where to look."""
    import asyncio

    from rich.progress import Progress

    from backinstock import demo as demo_module
    from backinstock import migrations

    user = _settings()  # the user's instance: read, never opened
    try:
        instance = demo_module.create_instance(database, port, user)
    except demo_module.DemoRefused as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    demo_module.prepare_environment(instance)
    settings = _settings()
    migrations.upgrade(settings.core.database_url)
    with Progress(console=err) as progress:
        task = progress.add_task("demo", total=demo_module.steps())

        def advance(description: str) -> None:
            progress.update(task, advance=1, description=description)

        try:
            result = asyncio.run(demo_module.run(settings, advance))
        except demo_module.DemoRefused as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    _demo_summary(instance, instance.serve_command(_program(), user), result)


def _program() -> str:
    """How this command was started, so that printed commands run the same installation."""
    if Path(sys.argv[0]).name == "backinstock":
        return shlex.quote(sys.argv[0])
    return f"{shlex.quote(sys.executable)} -m backinstock"


def _demo_summary(instance: DemoInstance, serve_command: str, result: DemoResult) -> None:
    base = instance.base_url
    console = Console(soft_wrap=True)  # keys, URLs and commands stay whole for copy and paste
    console.print(
        f"[green]demo ready[/green]: {result.notified} notified, {result.clicks} clicks, "
        f"{result.orders} orders, {result.coupons} follow-up coupons"
    )
    console.print(
        f"demo database:       {instance.database} (keys in {instance.key_file.name}); "
        "your own instance was not touched"
    )
    console.print("serve the demo:", highlight=False)
    console.print(f"  {serve_command}", markup=False, highlight=False)
    console.print("then, while it runs:")
    console.print(f"dashboard:           {base}/dashboard  (sign in with the stats key below)")
    console.print(
        f"dev outbox:          curl -H 'Authorization: Bearer {result.admin_key}' "
        f"{base}/v1/dev/outbox",
        highlight=False,
    )
    console.print(
        f"funnel:              curl -H 'Authorization: Bearer {result.stats_key}' "
        f"{base}/v1/stats/funnel",
        highlight=False,
    )
    console.print("stats key:")
    typer.echo(result.stats_key)


@app.command()
def widget(
    key: Annotated[str, typer.Option(help="The page's publishable key.")] = "pk_…",
    sku: Annotated[str, typer.Option(help="The product's SKU.")] = "TSHIRT-RED-M",
    locale: Annotated[str, typer.Option(help="The shopper's language: zh-CN or en.")] = "zh-CN",
) -> None:
    """Print the snippet a store pastes into a product page: this instance's widget
    (PUBLIC_BASE_URL), pinned to the newest version by its Subresource Integrity hash."""
    from html import escape

    from backinstock.storefront import widget as released

    base = _settings().core.public_base_url.rstrip("/")
    latest = released.latest()
    typer.echo(
        f'<script src="{escape(base + latest.path)}"\n'
        f'        integrity="{latest.integrity}"\n'
        f'        crossorigin="anonymous" defer></script>\n'
        f'<div data-backinstock-sku="{escape(sku)}" data-backinstock-key="{escape(key)}" '
        f'data-locale="{escape(locale)}"></div>'
    )
    err.print(
        f"widget {latest.version}: {len(latest.body):,} bytes, "
        f"{len(latest.gzipped):,} bytes gzipped; the script once per page, a div per product"
    )


@app.command()
def migrate() -> None:
    """Apply the database migrations to BACKINSTOCK_DATABASE_URL."""
    from backinstock import migrations

    settings = _settings()
    migrations.upgrade(settings.core.database_url)
    err.print("[green]database is up to date[/green]")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A unique name, e.g. 'storefront'.")],
    scope: Annotated[
        list[Scope] | None,
        typer.Option(help="Repeat for several scopes (secret keys; not with --publishable)."),
    ] = None,
    publishable: Annotated[
        bool,
        typer.Option(
            "--publishable",
            help="A browser-safe key (pk_…) for a web page: it can only create pending "
            "subscriptions, from the --origin pages.",
        ),
    ] = False,
    origin: Annotated[
        list[str] | None,
        typer.Option(
            help="With --publishable: a page origin allowed to use the key, e.g. "
            "https://shop.example (https; http only for 127.0.0.1 or localhost). Repeat "
            "for several."
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="If a key of that name exists (even revoked), give it a new secret and "
            "these scopes: the old secret stops working within seconds.",
        ),
    ] = False,
) -> None:
    """Create an API key; the key is printed once, alone on stdout. An existing name is an
    error (exit 1) unless --replace is given. A secret key (bis_…) needs --scope; a
    publishable key (--publishable, pk_…) needs --origin and takes no scope."""
    from backinstock.auth import service as auth
    from backinstock.errors import Conflict

    scopes, origins = _key_grants(scope or [], publishable, origin or [])
    settings = _settings()
    _ensure_schema(settings)

    async def create(session: AsyncSession) -> tuple[str, bool]:
        if replace:
            return await auth.replace_key(session, name, scopes, origins)
        try:
            return await auth.create_key(session, name, scopes, origins), False
        except Conflict as exc:
            raise Conflict(
                f"{exc.message}: nothing was created. Add --replace to give it a new key "
                "(the old one stops working), or choose another --name."
            ) from None

    secret, replaced = _with_session(settings, create)
    grants = (
        f"publishable, origins: {' '.join(origins)}"
        if origins is not None
        else f"scopes: {' '.join(sorted(s.value for s in scopes))}"
    )
    if replaced:
        err.print(f"replaced key '{name}' ({grants}); the old key stops working within 5 seconds")
    else:
        err.print(f"created key '{name}' with {grants}")
    if origins is None:
        err.print("store it now: it cannot be shown again")
    else:
        err.print("it may sit in your pages' source; it cannot be shown again")
    typer.echo(secret)


def _key_grants(
    scopes: list[Scope], publishable: bool, origins: list[str]
) -> tuple[list[Scope], list[str] | None]:
    """The scopes, or (for a publishable key) the normalised origins, a new key is given."""
    from backinstock.auth import service as auth

    if not publishable:
        if origins:
            raise typer.BadParameter("--origin is for publishable keys: add --publishable")
        if not scopes:
            raise typer.BadParameter("a secret key needs at least one --scope")
        return scopes, None
    if scopes:
        raise typer.BadParameter("a publishable key has no scopes: leave out --scope")
    try:
        return [], auth.normalize_origins(origins)
    except auth.InvalidOrigin as exc:
        raise typer.BadParameter(str(exc), param_hint="--origin") from None


@keys_app.command("generate-env")
def keys_generate_env() -> None:
    """Print fresh data keys as BACKINSTOCK_*=… lines for an .env file (e.g.
    `backinstock keys generate-env > .env`). Generate them once per instance and keep them:
    contacts sealed under lost keys cannot be read again."""
    from backinstock.crypto import new_key_spec

    typer.echo("# backinstock data keys: keep secret, back up, never commit.")
    typer.echo("# Losing BACKINSTOCK_ENCRYPTION_KEYS loses every stored contact.")
    for setting in ENV_KEY_SETTINGS:
        typer.echo(f"{setting}={new_key_spec('k1')}")


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (never their secrets): secret keys with their scopes, publishable keys
    with their origins."""
    from rich.table import Table

    from backinstock.auth import service as auth
    from backinstock.auth.scopes import KeyKind

    settings = _settings()
    _ensure_schema(settings)

    async def rows(session: AsyncSession) -> list[tuple[str, ...]]:
        return [
            (
                k.name,
                k.prefix + "…",
                k.kind,
                k.scopes if k.kind == KeyKind.SECRET else "\n".join((k.origins or "").split()),
                k.created_at.isoformat(timespec="seconds"),
                k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "",
            )
            for k in await auth.list_keys(session)
        ]

    table = Table("name", "prefix", "kind", "scopes / origins", "created", "revoked")
    for row in _with_session(settings, rows):
        table.add_row(*row)
    # Piped or redirected, the table is as wide as it needs: origins are not cut short.
    Console(width=None if sys.stdout.isatty() else 240).print(table)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke an API key (it stops working within seconds on every API process)."""
    from backinstock.auth import service as auth

    settings = _settings()
    _ensure_schema(settings)
    _with_session(settings, lambda s: auth.revoke_key(s, name))
    err.print(f"revoked '{name}'")


@keys_app.command("rotate-data")
def keys_rotate_data() -> None:
    """Re-encrypt every stored contact under the newest data key and re-index it."""
    import asyncio

    from rich.progress import Progress

    from backinstock import db, keyops
    from backinstock.crypto import load_keys

    settings = _settings()
    _ensure_schema(settings)
    keys = load_keys(settings.crypto, production=not settings.core.is_sqlite)

    async def run() -> int:
        engine = db.create_engine(settings.core.database_url, pool_size=2)
        sessions = db.sessionmaker(engine)
        try:
            total = await keyops.count_sealed_rows(sessions)
            with Progress(console=err) as progress:
                task = progress.add_task("re-encrypting", total=total)
                return await keyops.rotate_data(sessions, keys, lambda n: progress.advance(task, n))
        finally:
            await engine.dispose()

    done = asyncio.run(run())
    err.print(f"[green]re-encrypted {done} rows under key '{keys.cipher.newest_key_id}'[/green]")


SkuArgument = Annotated[str, typer.Argument(help="The product's SKU.", show_default=False)]
_SKU = re.compile(r"[!-~]{1,128}")


def _checked_sku(sku: str) -> str:
    if not _SKU.fullmatch(sku):
        raise typer.BadParameter(
            "a SKU is 1 to 128 printable ASCII characters without spaces", param_hint="SKU"
        )
    return sku


def _rule_names() -> str:
    from backinstock.catalog import policy as product_policy

    return ", ".join(product_policy.NAMES)


def _rule_value(name: str, raw: str) -> object:
    """A rule's value as a body would carry it: channels comma-separated, ``null`` for
    none, numbers as JSON numbers (anything else is left for the rule to refuse)."""
    if raw == "null":
        return None
    if name == "channels":
        return [part.strip() for part in raw.split(",") if part.strip()]
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _parse_rules(assignments: list[str]) -> dict[str, object]:
    from backinstock.catalog import policy as product_policy

    given: dict[str, object] = {}
    for assignment in assignments:
        name, equals, raw = assignment.partition("=")
        name = name.strip()
        if not equals or name not in product_policy.NAMES:
            raise typer.BadParameter(
                f"expected NAME=VALUE with NAME one of {_rule_names()}", param_hint="RULES"
            )
        given[name] = _rule_value(name, raw.strip())
    return given


def _refusal(exc: ValidationError) -> ApiError:
    from backinstock.errors import ApiError

    reasons = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'rules'}: {error['msg']}"
        for error in exc.errors()
    )
    return ApiError(f"Refused, nothing was changed: {reasons}", code="invalid_field")


def _print_policy(shown: PolicyOut) -> None:
    from rich.table import Table

    updated = shown.updated_at.isoformat(timespec="seconds") if shown.updated_at else "never"
    table = Table(
        "rule", "value", "source", title=shown.sku, caption=f"overrides replaced: {updated}"
    )
    for name, rule in shown.policy:
        value = rule.value
        if isinstance(value, list):
            text = ",".join(c.value for c in value)
        else:
            text = str(value) if isinstance(value, str) else f"{value:g}"
        table.add_row(name, text, rule.source.value)
    Console(width=None if sys.stdout.isatty() else 240).print(table)


@policy_app.command("show")
def policy_show(sku: SkuArgument) -> None:
    """Each rule's value for SKU as it applies now, and its source: `product` (the SKU's
    own) or `settings`."""
    from backinstock.catalog import policy as product_policy

    sku = _checked_sku(sku)
    settings = _settings()
    _ensure_schema(settings)
    _print_policy(_with_session(settings, lambda s: product_policy.show(s, settings, sku)))


@policy_app.command("set")
def policy_set(
    sku: SkuArgument,
    rules: Annotated[
        list[str] | None,
        typer.Argument(
            help="NAME=VALUE, e.g. batch_multiplier=2 batch_interval_seconds=300 "
            "soldout_compensation=coupon channels=sms,email (VALUE null removes the "
            "override).",
            metavar="[NAME=VALUE]...",
            show_default=False,
        ),
    ] = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(
            "--clear", help="Remove this rule's override: the setting applies again. Repeatable."
        ),
    ] = None,
) -> None:
    """Change some of SKU's rules and keep the others, then show them all. Rules:
    batch_multiplier, batch_interval_seconds, hold_seconds, followup_after_seconds,
    soldout_compensation (off, message or coupon), substitute_after_seconds, channels; each
    takes the setting's own bounds. They apply from the SKU's next wave step, follow-up
    decision, sell-out, substitute offer and subscription."""
    from pydantic import ValidationError

    from backinstock import db
    from backinstock.catalog import policy as product_policy
    from backinstock.catalog.schemas import PolicyIn

    sku = _checked_sku(sku)
    given = _parse_rules(rules or [])
    cleared = clear or []
    for name in cleared:
        if name not in product_policy.NAMES:
            raise typer.BadParameter(f"rules are {_rule_names()}", param_hint="--clear")
    if not given and not cleared:
        raise typer.BadParameter("give NAME=VALUE or --clear NAME", param_hint="RULES")
    settings = _settings()
    _ensure_schema(settings)

    async def change(session: AsyncSession) -> PolicyOut:
        merged = {**await product_policy.overrides(session, sku), **given}
        for name in cleared:
            merged.pop(name, None)
        try:
            wanted = PolicyIn.model_validate(merged)
        except ValidationError as exc:
            raise _refusal(exc) from None
        await product_policy.replace(session, sku, wanted, db.utcnow())
        return await product_policy.show(session, settings, sku)

    _print_policy(_with_session(settings, change))
