"""The console's HTTPS server (aiohttp): routes, authentication and CSRF checks, security headers. Handlers gather
(cluster.py, queries.py), let views.py decide, and render (pages.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import ssl
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
from aiohttp import web

from opsmgr.console import assets, queries
from opsmgr.console.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Authenticator, CsrfTokens, bearer_token
from opsmgr.console.cluster import APPROVAL_ANNOTATION, ConsoleCluster, User
from opsmgr.console.config import ConsoleConfig
from opsmgr.console.pages import render
from opsmgr.console.views import (
    RANGES,
    AgentFilter,
    AgentRow,
    TimeRange,
    agent_row,
    chart_series,
    filter_agents,
    pack_summary,
    pending,
)
from opsmgr.db.alert_lifecycle import AlertStateError
from opsmgr.db.model import ResolutionState
from opsmgr.kubeio.kube import KubeError

log = logging.getLogger(__name__)

PUBLIC_PREFIXES = ("/static/", "/vendor/")
PUBLIC_PATHS = {"/login", "/healthz", "/favicon.ico"}  # the favicon: 404, never a login page
STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    # Scripts and styles from this origin only: no inline script can run even if something escaped escaping.
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: under it Chrome sends `Origin: null` with same-origin form posts, which the check refuses.
    "Referrer-Policy": "same-origin",
    "Strict-Transport-Security": "max-age=31536000",
}
ALERT_ACTIONS = {"acknowledge": ResolutionState.ACKNOWLEDGED, "close": ResolutionState.CLOSED}
APPROVAL_ACTIONS = {"approve": "Approved", "reject": "Rejected"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def safe_next(value: object, default: str) -> str:
    """A local path to return to after a form; anything else (another site, //host) is replaced by `default`."""
    text = str(value or "")
    parts = urlsplit(text)
    if not text.startswith("/") or text.startswith("//") or parts.scheme or parts.netloc or "\\" in text:
        return default
    return text


class Console:
    def __init__(self, config: ConsoleConfig, db: queries.Databases, cluster: ConsoleCluster,
                 authenticator: Authenticator | None = None, csrf: CsrfTokens | None = None) -> None:
        self.config = config
        self.db = db
        self.cluster = cluster
        self.authenticator = authenticator or Authenticator(cluster.review)
        self.csrf = csrf or CsrfTokens()

    # --- plumbing -------------------------------------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._headers, self._authenticate], client_max_size=64 * 1024)
        app.add_routes([
            web.get("/healthz", self.healthz),
            web.get("/login", self.login_page), web.post("/login", self.login),
            web.post("/logout", self.logout),
            web.get("/", self.home),
            web.get("/agents", self.agents_page),
            web.get("/agents/by-fqdn/{fqdn}", self.agent_by_fqdn),
            web.get("/agents/{name}", self.agent_page),
            web.post("/agents/{name}/{action}", self.decide_approval),
            web.get("/pending", self.pending_page),
            web.get("/alerts", self.alerts_page),
            web.post("/alerts/{alert_id}/{action}", self.change_alert),
            web.get("/packs", self.packs_page),
            web.get("/packs/{name}", self.pack_page),
            web.get("/static/{file}", self.static_file),
            web.get("/vendor/{file}", self.vendor_file),
        ])
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        except KubeError as error:  # the API server refused the console itself (RBAC) or is away
            log.warning("%s %s: %s", request.method, request.path, error)
            response = self._error(request, 503, "The API server did not answer", str(error))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("%s %s: %s", request.method, request.path, error)
            response = self._error(request, 503, "A database did not answer",
                                   f"{type(error).__name__}: {error}. The page will work again once it answers.")
        response.headers.update(SECURITY_HEADERS)
        if not request.path.startswith(PUBLIC_PREFIXES):
            response.headers["Cache-Control"] = "no-store"
        return response

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        token, from_cookie = bearer_token(request.headers, request.cookies)
        user: User | None = None
        if token is not None:
            review = await self.authenticator.authenticate(token)
            user = review.user if review.authenticated else None
        if token is None or user is None:
            message = "Sign in to use the console." if token is None else "Your token was not accepted; sign in again."
            response = self._login_response(request, message, status=401)
            if from_cookie:
                response.del_cookie(SESSION_COOKIE, path="/")
            response.headers["WWW-Authenticate"] = 'Bearer realm="opsmgr console"'
            return response
        request["user"], request["token"] = user, token
        request["csrf"] = self.csrf.issue(token)
        if request.method not in ("GET", "HEAD"):
            if not self._same_origin(request):
                return self._error(request, 403, "Refused", "The request came from another site.")
            form = await request.post()
            presented = form.get("csrf") or request.headers.get("X-CSRF-Token")
            if not self.csrf.valid(token, str(presented) if presented else None):
                return self._error(request, 403, "Refused: the form has expired",
                                   "The form lacked a valid CSRF token (it may be from before a restart or another "
                                   "session): reload the page and try again.")
            request["form"] = form
        return await handler(request)

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None or origin == "null":
            return origin is None  # browsers send Origin on every POST; `null` is a sandboxed or opaque origin
        return urlsplit(origin).netloc == request.host

    def _page(self, request: web.Request, template: str, *, status: int = 200, refresh: bool = False,
              **context: Any) -> web.Response:
        body = render(template, user=request.get("user"), csrf=request.get("csrf", ""),
                      namespace=self.cluster.namespace, refresh=self.config.refresh_seconds if refresh else None,
                      request_path=request.path_qs, **context)
        return web.Response(text=body, status=status, content_type="text/html")

    def _error(self, request: web.Request, status: int, heading: str, detail: str) -> web.Response:
        return self._page(request, "error.html", status=status, heading=heading, detail=detail)

    def _login_response(self, request: web.Request, message: str, *, status: int) -> web.Response:
        login_csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
        next_path = safe_next(request.path_qs if request.method == "GET" else "/agents", "/agents")
        response = self._page(request, "login.html", status=status, login_csrf=login_csrf, next=next_path,
                              message=message, message_kind="error" if status == 401 else "info")
        response.set_cookie(LOGIN_CSRF_COOKIE, login_csrf, path="/", httponly=True, secure=True,
                            samesite="Strict")
        return response

    # --- sign in --------------------------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def login_page(self, request: web.Request) -> web.Response:
        return self._login_response(request, "", status=200)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not secrets.compare_digest(expected, str(form.get("csrf", ""))) \
                or not self._same_origin(request):
            return self._login_response(request, "The sign-in form expired: try again.", status=403)
        token = str(form.get("token", "")).strip()
        review = await self.authenticator.authenticate(token) if token else None
        if review is None or not review.authenticated or review.user is None:
            log.info("sign-in refused: %s", review.error if review else "no token")
            return self._login_response(request, "That token was not accepted by the API server.", status=401)
        log.info("signed in: %s", review.user.username)
        response = web.HTTPSeeOther(safe_next(form.get("next"), "/agents"))
        response.set_cookie(SESSION_COOKIE, token, path="/", httponly=True, secure=True, samesite="Strict")
        response.del_cookie(LOGIN_CSRF_COOKIE, path="/")
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/agents")

    # --- agents ---------------------------------------------------------------------------------------------------

    async def _rows(self) -> list[AgentRow]:
        bodies = await self.cluster.agents()
        fqdns = [str((body.get("spec") or {}).get("fqdn", "")) for body in bodies]
        states = await queries.monitor_states(self.db, fqdns)
        return [agent_row(body, states.get(fqdn, [])) for body, fqdn in zip(bodies, fqdns, strict=True)]

    async def agents_page(self, request: web.Request) -> web.Response:
        rows = await self._rows()
        wanted = AgentFilter.of(request.query)
        shown = filter_agents(rows, wanted)
        counts = sorted(Tally(row.health for row in rows).items())
        return self._page(request, "agents.html", refresh=True, nav="agents", rows=shown, total=len(rows),
                          filter=wanted, counts=counts)

    async def agent_by_fqdn(self, request: web.Request) -> web.StreamResponse:
        fqdn = request.match_info["fqdn"]
        for body in await self.cluster.agents():
            if (body.get("spec") or {}).get("fqdn") == fqdn:
                raise web.HTTPFound(f"/agents/{body['metadata']['name']}")
        return self._error(request, 404, "No such agent", f"No Agent in this namespace has FQDN {fqdn}.")

    async def agent_page(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await self.cluster.agent(name)
        if body is None:
            return self._error(request, 404, "No such agent", f"There is no Agent {name} in this namespace.")
        fqdn = str((body.get("spec") or {}).get("fqdn", ""))
        states = (await queries.monitor_states(self.db, [fqdn])).get(fqdn, [])
        row = agent_row(body, states)
        counters = await queries.counters(self.db, fqdn)
        chosen = queries.Counter.from_key(request.query.get("counter", ""))
        counter = chosen if chosen in counters else (counters[0] if counters else None)
        window = TimeRange.of(request.query.get("range"), request.query.get("resolution"))
        points = await queries.series(self.db, fqdn, counter, window) if counter is not None else []
        events = await queries.recent_events(self.db, fqdn)
        alerts = await queries.alerts(self.db, active_only=False, agent=fqdn)
        monitors = sorted(states, key=lambda m: (-m.state, m.object_key, m.monitor))
        return self._page(request, "agent.html", refresh=True, nav="agents", row=row, counters=counters,
                          counter=counter, window=window, ranges=list(RANGES), points=points,
                          series=chart_series(points), events=events, alerts=alerts, monitors=monitors,
                          assets=assets.find_assets() is not None)

    async def pending_page(self, request: web.Request) -> web.Response:
        bodies = await self.cluster.agents()
        rows = pending(agent_row(body, []) for body in bodies)
        decisions = {str(body["metadata"]["name"]): str((body["metadata"].get("annotations") or {})
                                                         .get(APPROVAL_ANNOTATION))
                     for body in bodies if APPROVAL_ANNOTATION in (body["metadata"].get("annotations") or {})}
        return self._page(request, "pending.html", refresh=True, nav="pending", rows=rows, decisions=decisions,
                          message=request.query.get("done", "")[:200])

    async def decide_approval(self, request: web.Request) -> web.StreamResponse:
        name, action = request.match_info["name"], request.match_info["action"]
        decision = APPROVAL_ACTIONS.get(action)
        if decision is None:
            raise web.HTTPNotFound()
        user: User = request["user"]
        try:
            await self.cluster.decide_approval(request["token"], name, decision)
        except KubeError as error:
            log.info("%s of Agent %s by %s refused: %s", action, name, user.username, error)
            if error.status == 403:
                return self._error(request, 403, "Kubernetes refused the change",
                                   f"{user.username} may not patch Agent {name}: {error}")
            if error.status == 404:
                return self._error(request, 404, "No such agent", f"There is no Agent {name} in this namespace.")
            raise
        log.info("%s set %s=%s on Agent %s", user.username, APPROVAL_ANNOTATION, decision, name)
        raise web.HTTPSeeOther(f"/pending?done={decision}+{name}")

    # --- alerts ---------------------------------------------------------------------------------------------------

    async def alerts_page(self, request: web.Request) -> web.Response:
        active_only = request.query.get("all") != "1"
        alerts = await queries.alerts(self.db, active_only=active_only)
        return self._page(request, "alerts.html", refresh=True, nav="alerts", alerts=alerts, active_only=active_only,
                          message=request.query.get("done", "")[:200])

    async def change_alert(self, request: web.Request) -> web.StreamResponse:
        target = ALERT_ACTIONS.get(request.match_info["action"])
        try:
            alert_id = UUID(request.match_info["alert_id"])
        except ValueError:
            alert_id = None
        if target is None or alert_id is None:
            raise web.HTTPNotFound()
        user: User = request["user"]
        allowed, reason = await self.cluster.allowed(user, verb="update", resource="alerts")
        if not allowed:
            return self._error(request, 403, "Kubernetes refused the change",
                               f"{user.username} may not update alerts (RBAC: verb update on alerts.opsmgr.io in "
                               f"namespace {self.cluster.namespace}){': ' + reason if reason else ''}.")
        try:
            result = await queries.set_alert_state(self.db, alert_id, target)
        except AlertStateError as error:
            return self._error(request, 409, "The alert cannot change that way", str(error))
        log.info("%s moved alert %s from %s to %s", user.username, alert_id, result.before, result.after)
        back = safe_next(request["form"].get("next"), "/alerts")
        raise web.HTTPSeeOther(back)

    # --- management packs -----------------------------------------------------------------------------------------

    async def packs_page(self, request: web.Request) -> web.Response:
        packs = [pack_summary(body) for body in await self.cluster.packs()]
        return self._page(request, "packs.html", refresh=True, nav="packs",
                          packs=sorted(packs, key=lambda p: p["name"]))

    async def pack_page(self, request: web.Request) -> web.Response:
        body = await self.cluster.pack(request.match_info["name"])
        if body is None:
            return self._error(request, 404, "No such management pack",
                               f"There is no ManagementPack {request.match_info['name']} in this namespace.")
        return self._page(request, "pack.html", nav="packs", pack=pack_summary(body))

    # --- files ----------------------------------------------------------------------------------------------------

    async def static_file(self, request: web.Request) -> web.StreamResponse:
        return _file(STATIC, request.match_info["file"])

    async def vendor_file(self, request: web.Request) -> web.StreamResponse:
        folder = assets.find_assets()
        if folder is None:
            raise web.HTTPNotFound(text="the chart library is missing: run `make console-assets`")
        return _file(folder, request.match_info["file"])


def _file(folder: Path, name: str) -> web.StreamResponse:
    if "/" in name or name.startswith(".") or not (folder / name).is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(folder / name, headers={"Cache-Control": "max-age=3600"})


def server_ssl_context(certificate: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    return context


async def serve(config: ConsoleConfig) -> None:
    """Run the console until SIGTERM or SIGINT."""
    from opsmgr.kubeio.client import open_api_client  # noqa: PLC0415

    api = await open_api_client(config.kubernetes.kubeconfig)
    db = await queries.Databases.open(config.databases.operational_dsn, config.databases.warehouse_dsn,
                                      config.databases.pool_size)
    console = Console(config, db, ConsoleCluster(api, config.kubernetes.namespace))
    runner = web.AppRunner(console.application(), access_log=log)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.listen.address, config.listen.port,
                           ssl_context=server_ssl_context(config.tls.certificate, config.tls.key))
        await site.start()
        if assets.find_assets() is None:
            log.warning("the chart library is missing (run `make console-assets`): charts will not draw")
        log.info("console listening on https://%s:%d/ for namespace %s", config.listen.address,
                 config.listen.port, config.kubernetes.namespace)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await db.close()
        await api.close()
