"""The Tornado application and the serve loop: routes, settings, listening, graceful stop."""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Any

from tornado import httpserver, locale, netutil, web

from wecomd import checks, connections, sdnotify
from wecomd.config import Config
from wecomd.handlers import (assignments, bot, callback, contacts, conversations, dashboard, kf, live, metrics, ops,
                             quick_replies, rules, static, team, thread)
from wecomd.handlers.base import DEFAULT_LOCALE
from wecomd.paths import TRANSLATIONS_DIR, resource_dir
from wecomd.services import Services
from wecomd.store import StoreError

logger = logging.getLogger(__name__)
access_log = logging.getLogger("wecomd.access")

DRAIN_SECONDS = 25.0  # below systemd's default 90 s stop timeout, above WeCom's 5 s budget

# The dashboard's panels: each is a handler module with its routes and a view module
# static/<name>.js that static/app.js builds (tests/test_pages.py holds them to that).
PANELS = (conversations, thread, rules, live, team)


def make_app(services: Services) -> web.Application:
    """Build the application from every handler module's `routes(services)`: the one route table."""
    handlers: list = []
    # bot first: its route takes the /callback/NAME of the configured bots, the rest go to the apps.
    for module in (bot, callback, ops, metrics, dashboard, contacts, assignments, quick_replies, kf) + PANELS:
        handlers.extend(module.routes(services))
    # Tornado keeps translations process-wide; loading the same files again is harmless.
    locale.load_translations(str(TRANSLATIONS_DIR))
    locale.set_default_locale(DEFAULT_LOCALE)
    return web.Application(
        handlers,
        template_path=str(resource_dir("templates")),
        static_path=str(resource_dir("static")),
        static_handler_class=static.StaticHandler,  # a NUL in the path is a 404, not a traceback
        cookie_secret=services.cookie_secret,
        xsrf_cookies=True,
        xsrf_cookie_kwargs=dict(samesite="Strict"),
        login_url="/login",
        websocket_ping_interval=25,
        websocket_ping_timeout=20,
        log_function=_log_request,
        services=services,
    )


def server_options(config: Config) -> dict[str, Any]:
    """HTTPServer keyword arguments; the exact max_body is enforced per handler (413)."""
    return dict(xheaders=config.server.xheaders, max_body_size=max(4 * config.server.max_body, 1 << 20),
                idle_connection_timeout=config.server.idle_timeout, body_timeout=config.server.body_timeout)


def make_server(app: web.Application, services: Services) -> connections.LimitedHTTPServer:
    """The HTTP server of `serve`: connection caps and timeouts from [server], counted in /metrics."""
    config = services.config
    server = connections.LimitedHTTPServer(app, limits=connections.Limits.from_config(config.server),
                                           **server_options(config))
    services.metrics.registry.register(connections.ConnectionCollector(server))
    return server


def _log_request(handler: web.RequestHandler) -> None:
    if isinstance(handler, callback.CallbackHandler):
        return  # it writes its own line, with what it found out about the message
    # The path only: query strings carry signatures and nonces, and never belong in logs.
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    access_log.log(
        level, "%d %s %s (%s) %.1fms", status, handler.request.method,
        handler.request.path, handler.request.remote_ip, 1000.0 * handler.request.request_time(),
    )


async def serve(config: Config, ready: Any = None) -> None:
    """Run until SIGTERM/SIGINT, then stop accepting, drain in-flight requests and close."""
    sockets = _listen(config)  # first: a busy port leaves nothing half-started
    try:
        services = await _start_services(config)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    server = make_server(make_app(services), services)
    # What start-up made (modules, templates, the config, some 46,000 objects) lives as long as the
    # process. Frozen, the collector's full passes no longer walk it: unfrozen, each one held the
    # event loop 25-27 ms, and callbacks with it (docs/kf.md, Speed).
    gc.collect()
    gc.freeze()
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    logger.info("wecomd listening on http://%s:%d/ (apps: %s)", config.server.listen_host, port,
                ", ".join(config.apps) or "none")
    if ready is not None:
        ready(port)
    summary = "listening on %s:%d" % (config.server.listen_host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # `systemctl reload wecomd`: re-read apps and rules, keep every connection.
    loop.add_signal_handler(signal.SIGHUP, _reload, services, summary)
    # Type=notify: systemd starts dependent units, and allows `systemctl reload`, only now; so the
    # SIGHUP handler must already be in place (SIGHUP's default action would end the process).
    sdnotify.ready()
    sdnotify.status("%s; apps: %s" % (summary, ", ".join(config.apps) or "none"))
    await stop.wait()
    loop.remove_signal_handler(signal.SIGHUP)
    await _shutdown(server, services)


def _listen(config: Config) -> list:
    try:
        return netutil.bind_sockets(config.server.listen_port, config.server.listen_host)
    except OSError as exc:
        raise checks.StartupError(checks.listen_problem(config.server.listen_host, config.server.listen_port,
                                                        exc)) from None


async def _start_services(config: Config) -> Services:
    """Services with the database migrated and writable and media_dir writable; else StartupError."""
    checks.prepare_media_dir(config.server.media_dir)
    services = Services(config)
    try:
        await services.start()
    except StoreError as exc:
        services.writer.close()
        raise checks.StartupError(checks.database_problem(config.server.database, exc)) from None
    return services


def _reload(services: Services, summary: str) -> None:
    sdnotify.reloading()
    done = services.reload()
    sdnotify.ready()  # after RELOADING=1 systemd waits for READY=1, also when the reload was refused
    apps = ", ".join(services.config.apps) or "none"
    sdnotify.status("%s; apps: %s%s" % (summary, apps, "" if done else "; reload refused, see the log"))


async def _shutdown(server: httpserver.HTTPServer, services: Services) -> None:
    sdnotify.stopping()
    sdnotify.status("stopping: draining %d in-flight request(s)" % services.inflight.count)
    logger.info("stopping: no new connections, draining %d in-flight request(s)", services.inflight.count)
    server.stop()
    services.hub.close_all()  # close_all_connections() leaves websockets open
    if not await services.inflight.wait_idle(DRAIN_SECONDS):
        logger.warning("drain timed out after %.0fs with %d request(s) in flight", DRAIN_SECONDS,
                       services.inflight.count)
    await server.close_all_connections()
    await services.close()
    logger.info("stopped")
