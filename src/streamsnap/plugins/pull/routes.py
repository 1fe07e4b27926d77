"""The WCS-style pull API: ``/rest-api/pull/startup``, ``find_all`` and ``terminate``."""

from __future__ import annotations

import logging

from aiohttp import web

from ...core.app import APP_KEY
from ...core.errors import StreamNameInUse
from ...core.http import FAILURES, BadRequest, error_response, failure_response, json_body
from ...core.names import check_publish_name
from .pulls import PULL, PullPlugin
from .urls import parse_source_url

log = logging.getLogger(__name__)


def _plugin(request: web.Request) -> PullPlugin | None:
    return request.app[APP_KEY].state.get(PULL)


async def rest_startup(request: web.Request) -> web.Response:
    """``POST /rest-api/pull/startup {"uri", "localStreamName"}``: pull until terminated."""
    plugin = _plugin(request)
    try:
        body = await json_body(request)
        uri, name = body.get("uri"), body.get("localStreamName") or body.get("uri")
        if not isinstance(uri, str) or not uri or not isinstance(name, str) or not name:
            raise BadRequest("fields 'uri' and 'localStreamName' must be non-empty strings")
        if plugin is None:
            raise BadRequest("the pull plugin is disabled")
        url = parse_source_url(uri, plugin.settings)
        if name == uri:
            name = url.public
        else:
            reason = check_publish_name(name)  # the rule every publisher's name follows
            if reason:
                raise BadRequest(f"localStreamName: {reason}")
        remote = request.remote or ""
        async with plugin._admission(remote, name):
            target = await plugin.admit(url, remote, name)
            log.info("stream %s: pull of %s started over REST by %s", name, url.public, remote)
            pull = await plugin.start_pull(
                name,
                plugin.with_credentials(url, target.address),
                plugin.transport_for(url),
                on_demand=False,
                target=target,
            )
    except StreamNameInUse:
        return error_response(request, 409, "Stream name is already in use")
    except FAILURES as exc:
        return failure_response(request, exc)
    return web.json_response(pull.describe())


async def rest_find_all(request: web.Request) -> web.Response:
    try:
        await json_body(request)  # no fields, but the same content rules
    except BadRequest as exc:
        return error_response(request, exc.status, str(exc))
    plugin = _plugin(request)
    pulls = [p.describe() for p in plugin.cameras.values()] if plugin else []
    if not pulls:
        return error_response(request, 404, "Pull not found")
    return web.json_response(pulls)


async def rest_terminate(request: web.Request) -> web.Response:
    """``POST /rest-api/pull/terminate {"localStreamName"}``: stop pulling."""
    plugin = _plugin(request)
    try:
        body = await json_body(request)
        name = body.get("localStreamName")
        if not isinstance(name, str) or not name:
            raise BadRequest("field 'localStreamName' must be a non-empty string")
    except BadRequest as exc:
        return error_response(request, exc.status, str(exc))
    pull = plugin.cameras.get(name) if plugin else None
    if pull is None:
        return error_response(request, 404, "Pull not found")
    await plugin.drop(pull, "Stopped by rest /pull/terminate")
    return web.Response(status=200)
