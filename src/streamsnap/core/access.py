"""Who may use which route: the access each plugin declares where it registers a route, and
the middleware that asks for API credentials (``[auth] token`` or ``users``) where it must.

An unmatched request under the first path segment of an API route is an API request too: it
needs credentials, then gets a WCS error body rather than aiohttp's plain 404.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from .auth import Authenticator, LoginThrottled
from .config import Config
from .errors import NotAllowed
from .http import Guard, Route, error_response

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger(__name__)

_FAILED = object()
API_USER: web.RequestKey[str] = web.RequestKey("streamsnap_api_user", str)  # who they proved


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_access_warning(config: Config) -> str | None:
    """What to warn about at start when the server listens beyond loopback without auth."""
    auth, host = config.auth, config.server.host
    if auth.token or auth.users or is_loopback(host):
        return None
    return (
        f"serving on {host} without authentication: anyone who can reach it can publish, take "
        "snapshots and terminate streams; set [auth] token or [auth] users (see "
        "conf/streamsnap.toml), or listen on 127.0.0.1"
    )


def credentials_of(request: web.Request) -> str:
    """The Authorization header, or ``?access_token=`` (EventSource and <img src> cannot set
    headers) as a bearer token."""
    given = request.headers.get("Authorization", "")
    if not given and "access_token" in request.query:
        given = "Bearer " + request.query["access_token"]
    return given


def _first_segment(path: str) -> str:
    """``/rest-api`` of ``/rest-api/stream/find``; ``/metrics`` of ``/metrics``."""
    return "/" + path.lstrip("/").split("/", 1)[0]


class Access:
    """The routes' declared access and the credentials check in front of them."""

    def __init__(self, app: App, auth: Authenticator, refused: Counter[str]) -> None:
        self.app = app
        self.auth = auth
        self.refused = refused
        self._routes: dict[Any, str | Guard] = {}  # route -> its declared access
        self._api_prefixes: set[str] = set()  # first path segments of API routes

    def add_routes(self, web_app: web.Application, routes: list[Any]) -> None:
        """Add a plugin's routes, remembering the access each declares (``Route``; a plain
        route definition needs API credentials)."""
        for item in routes:
            route = item if isinstance(item, Route) else Route(item)
            for added in web_app.add_routes([route.definition]):
                self._routes[added] = route.access  # per route: a resource has several methods
                if added.resource is None:
                    continue
                for twin in added.resource:  # the HEAD route aiohttp adds beside a GET
                    if twin.method == "HEAD" and twin.handler is added.handler:
                        self._routes[twin] = route.access
                if route.access != "open":
                    self._api_prefixes.add(_first_segment(added.resource.canonical))

    def of_request(self, request: web.Request) -> str | Guard:
        """The access of the route ``request`` matched: ``"open"``, ``"api"`` or a guard;
        an unmatched request is ``"api"`` under an API route's first segment, else open."""
        route = request.match_info.route
        if route in self._routes:
            return self._routes[route]
        return "api" if _first_segment(request.path) in self._api_prefixes else "open"

    def of_route(self, route: web.AbstractRoute) -> str | Guard:
        """The access a plugin declared for one of its routes."""
        return self._routes.get(route, "api")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """With ``[auth]`` on, the APIs (not the pages) need credentials."""
        access = self.of_request(request)
        if access != "open":
            try:  # a plugin may prove who sent it (authenticate_request), or refuse it
                by, plugin = await self.app.pm.afirst(
                    "authenticate_request", {"app": self.app, "request": request}, _FAILED
                )
            except NotAllowed as exc:
                self.refused["authenticate_request"] += 1
                return error_response(request, exc.status, str(exc))
            if by is _FAILED:  # fail closed: a check that broke lets nothing through
                self.refused["authenticate_request"] += 1
                return error_response(request, 403, f"request refused: plugin {plugin} failed")
            if by:
                request[API_USER] = by
        if self.auth.enabled and request.method != "OPTIONS" and access != "open":
            if callable(access) and access(request):
                request[API_USER] = ""  # let in by the route's own rule, not as an API user
            else:
                try:
                    user = await self.api_user(request)
                except LoginThrottled as exc:
                    return self._throttled(request, exc)
                if not user:
                    return self._unauthorized(request, bool(credentials_of(request)))
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            if access == "open":
                raise
            # API paths answer in JSON, in the WCS error shape, even when no route matched
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(request, exc.status, exc.reason, headers=headers)

    async def api_user(self, request: web.Request) -> str:
        """Who the request's API credentials prove (``"token"`` or a user name), or "".
        Raises LoginThrottled while the client's address has failed too often."""
        if not self.auth.enabled:
            return ""
        if API_USER not in request:  # checked once per request, however many ask
            user = await self.auth.check_header(credentials_of(request), request.remote or "")
            request[API_USER] = user or ""
        return request[API_USER]

    def _throttled(self, request: web.Request, exc: LoginThrottled) -> web.Response:
        log.warning("http %s %s from %s: %s", request.method, request.path, request.remote, exc)
        self.refused["failed_logins"] += 1
        body = {"status": 429, "error": "Too Many Requests", "message": str(exc)}
        return web.json_response(
            {**body, "path": request.path},
            status=429,
            headers={"Retry-After": str(exc.retry_after)},
        )

    def _unauthorized(self, request: web.Request, wrong: bool) -> web.Response:
        what = "wrong credentials" if wrong else "no credentials"
        log.warning("http %s %s from %s: %s", request.method, request.path, request.remote, what)
        self.refused["unauthorized"] += 1
        schemes, headers = [], CIMultiDict[str]()
        if self.auth.token:
            schemes.append("Bearer <token>")
            headers.add("WWW-Authenticate", 'Bearer realm="streamsnap"')
        if self.auth.users:
            schemes.append("Basic <user:password>")
            # a page's own script (the console) asks for credentials itself: a Basic challenge
            # would make the browser pop its login box over it (the usual X-Requested-With
            # convention says which requests those are)
            if request.headers.get("X-Requested-With", "").lower() != "xmlhttprequest":
                headers.add("WWW-Authenticate", 'Basic realm="streamsnap", charset="UTF-8"')
        message = f"{what}: Authorization: {' or '.join(schemes)} required"
        return web.json_response(
            {"status": 401, "error": "Unauthorized", "path": request.path, "message": message},
            status=401,
            headers=headers,
        )
