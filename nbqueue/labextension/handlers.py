"""REST handlers under ``<base_url>/nbqueue/api/`` for the JupyterLab side panel.

Every handler requires Jupyter server authentication. POST and DELETE requests also pass jupyter_server's
XSRF check: a browser sends the ``_xsrf`` cookie value as ``X-XSRFToken``, and token-authenticated requests
are exempt. Redis calls run in a thread pool, so a slow Redis does not block the server's event loop.

Errors are JSON (``{"message": ..., "reason": ...}``): 400 for an invalid parameter, 404 for a missing job,
409 for an action the job's state does not allow, and 503 when Redis cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import redis
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from nbqueue.connection import blocking_client, connect, describe
from nbqueue.errors import (
    ConnectionResolutionError,
    InvalidJobOperation,
    InvalidOptionError,
    NoSuchJobError,
)
from nbqueue.labextension import views

#: Seconds one Redis command (or connection attempt) may take before the request fails with 503.
REDIS_TIMEOUT_S = 5.0
#: Resource name passed to jupyter_server's authorizer for these handlers.
AUTH_RESOURCE = "nbqueue"


class NbqueueHandler(APIHandler):
    """Base handler: resolves the Redis connection and turns nbqueue and Redis errors into HTTP errors."""

    auth_resource = AUTH_RESOURCE

    async def call_redis(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``function(client, *args, **kwargs)`` in a thread and return its result, mapping errors to HTTP."""

        def run() -> Any:
            # connect() resolves NBQUEUE_REDIS_URL, else the embedded server, as the library does. The
            # derived client adds a socket timeout and no retries, so an unreachable server fails fast.
            client = blocking_client(connect(), REDIS_TIMEOUT_S)
            return function(client, *args, **kwargs)

        try:
            return await asyncio.get_running_loop().run_in_executor(None, run)
        except NoSuchJobError as exc:
            raise web.HTTPError(404, str(exc), reason="Job not found") from exc
        except InvalidJobOperation as exc:
            raise web.HTTPError(409, str(exc), reason="Invalid job operation") from exc
        except InvalidOptionError as exc:
            raise web.HTTPError(400, str(exc), reason="Invalid parameter") from exc
        except (redis.ConnectionError, redis.TimeoutError, ConnectionResolutionError) as exc:
            message = f"Cannot reach Redis: {exc}. Start a server or set NBQUEUE_REDIS_URL before starting Jupyter"
            self.log.warning("nbqueue: %s", message)
            raise web.HTTPError(503, message, reason="Redis unavailable") from exc

    def int_argument(self, name: str, default: int) -> int:
        """Return the query argument ``name`` as an int, or raise 400 if it is not a whole number."""
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise web.HTTPError(400, f"{name}={raw!r} is invalid: use a whole number", reason="Invalid parameter")

    def text_argument(self, name: str) -> str | None:
        """Return the query argument ``name``, or None when it is missing or empty."""
        return self.get_query_argument(name, None) or None


class QueuesHandler(NbqueueHandler):
    """``GET /nbqueue/api/queues``: every queue with its number of jobs per state."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        queues = await self.call_redis(views.queue_counts)
        self.finish(json.dumps({"queues": queues, "states": list(views.QUEUE_STATES)}))


class WorkersHandler(NbqueueHandler):
    """``GET /nbqueue/api/workers``: every live worker with its state, current jobs, counters and heartbeat age."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        workers = await self.call_redis(views.worker_rows)
        self.finish(json.dumps({"workers": workers}))


class JobsHandler(NbqueueHandler):
    """``GET /nbqueue/api/jobs?queue=&status=&tag=&offset=0&limit=50``: a page of jobs, newest first."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        page = await self.call_redis(
            views.job_page,
            queue=self.text_argument("queue"),
            status=self.text_argument("status"),
            tag=self.text_argument("tag"),
            offset=self.int_argument("offset", 0),
            limit=self.int_argument("limit", 50),
        )
        self.finish(json.dumps(page))


class JobHandler(NbqueueHandler):
    """``GET /nbqueue/api/jobs/<id>``: one job in full; ``DELETE`` deletes it with its results and output."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        detail = await self.call_redis(views.job_detail, job_id)
        self.finish(json.dumps({"job": detail}))

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        outcome = await self.call_redis(views.run_action, job_id, "delete")
        self.finish(json.dumps(outcome))


class JobActionHandler(NbqueueHandler):
    """``POST /nbqueue/api/jobs/<id>/<action>``, where action is ``stop``, ``cancel``, ``requeue`` or ``delete``."""

    @web.authenticated
    @authorized
    async def post(self, job_id: str, action: str) -> None:
        outcome = await self.call_redis(views.run_action, job_id, action)
        self.finish(json.dumps(outcome))


class StatusHandler(NbqueueHandler):
    """``GET /nbqueue/api/status``: the Redis server in use (password masked) and whether it responds."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        url = await self.call_redis(lambda client: (client.ping(), describe(client))[1])
        self.finish(json.dumps({"redis": url, "ok": True}))


def handlers(base_url: str) -> list[tuple[str, type[NbqueueHandler]]]:
    """Return the URL patterns and handlers to add to the Jupyter server's web application.

    Job ids are matched percent-encoded, so an id containing ``/`` must be sent as ``%2F``; tornado
    decodes the captured id before it reaches the handler.
    """
    api = url_path_join(base_url, "nbqueue", "api")
    return [
        (url_path_join(api, "status"), StatusHandler),
        (url_path_join(api, "queues"), QueuesHandler),
        (url_path_join(api, "workers"), WorkersHandler),
        (url_path_join(api, "jobs"), JobsHandler),
        (url_path_join(api, "jobs", r"([^/]+)"), JobHandler),
        (url_path_join(api, "jobs", r"([^/]+)", r"([^/]+)"), JobActionHandler),
    ]
