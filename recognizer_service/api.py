"""HTTP API of the recognizer: health, readiness, Prometheus metrics, gallery management, and
the operator's console (``recognizer_service/console/web.py``: ``/``, ``/people``, ``/keys``,
``/cameras``, behind a login with the same token).

| method and path | auth | what |
|---|---|---|
| GET /healthz | - | 200 while the worker thread runs |
| GET /readyz | - | 200 when broker, Redis and at least one model are available, else 503 |
| GET /metrics | - | Prometheus text format |
| GET /v1/models | bearer | loaded key epochs, recognizer ids, calibration |
| GET /v1/galleries | bearer | every gallery (scope, epoch) with template and subject counts |
| GET /v1/galleries/{scope}/{epoch}/subjects | bearer | subjects and their template counts |
| POST /v1/enrollments | bearer | body: one scrambled enrollment face message (binary RLFM) |
| DELETE /v1/subjects/{subject}[?scope=] | bearer | erase a subject's templates, every epoch |
| GET /v1/audit[?count=] | bearer | newest audit entries |

Management endpoints need ``Authorization: Bearer <recognizer.api_token>``; without a
configured token they answer 503, so a gallery is never writable by accident.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from recognizer_service.console.web import mount_console
from recognizer_service.pipeline import REDIS_TRANSIENT, PoisonMessageError, TransientError
from recognizer_service.service import RecognizerService
from rllfpr import __version__
from rllfpr.wire.topics import TopicError, level

_bearer = HTTPBearer(auto_error=False)


def authorized(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The audit actor of an authenticated request; 401 or 503 otherwise."""
    token = request.app.state.service.settings.recognizer.api_token
    if token is None:
        raise HTTPException(503, "gallery management is disabled: set recognizer.api_token")
    expected = token.get_secret_value().encode()
    if credentials is None or not secrets.compare_digest(
        credentials.credentials.encode(), expected
    ):
        raise HTTPException(401, "missing or wrong bearer token")
    token_id = hashlib.sha256(expected).hexdigest()[:8]
    host = request.client.host if request.client else "?"
    return f"http:{token_id}@{host}"


Actor = Annotated[str, Depends(authorized)]


def create_app(service: RecognizerService) -> FastAPI:
    # No /docs, /redoc or /openapi.json: they load assets from a CDN and are readable without
    # a token; the endpoints are listed above and in the README.
    app = FastAPI(
        title="RLLFPR recognizer",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service
    if service.settings.recognizer.console.enabled:
        mount_console(app, service)

    @app.get("/healthz")
    def health() -> Response:
        alive = service.worker_alive
        return _json_status(200 if alive else 503, {"worker": alive})

    @app.get("/readyz")
    def ready() -> Response:
        state = service.readiness()
        body = {"mqtt": state.mqtt, "redis": state.redis, "models": state.models}
        return _json_status(200 if state.ready else 503, body | {"worker": state.worker})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    def models(_actor: Actor) -> list[dict[str, Any]]:
        return [info.model_dump(mode="json") for info in service.models.loaded()]

    @app.get("/v1/galleries")
    def galleries(_actor: Actor) -> list[dict[str, Any]]:
        with _redis_unavailable_is_503():
            return [
                {
                    "scope": scope,
                    "epoch": epoch,
                    "templates": service.gallery.size(scope, epoch),
                    "subjects": len(service.gallery.subjects(scope, epoch)),
                }
                for scope, epoch in service.gallery.galleries()
            ]

    @app.get("/v1/galleries/{scope}/{epoch}/subjects")
    def subjects(scope: str, epoch: int, _actor: Actor) -> dict[str, int]:
        _valid_level(scope)
        with _redis_unavailable_is_503():
            return service.gallery.subjects(scope, epoch)

    @app.post("/v1/enrollments", status_code=201)
    async def enroll(request: Request, actor: Actor) -> dict[str, Any]:
        payload = await request.body()
        try:
            result = service.processor.enroll_payload(payload, actor)
        except PoisonMessageError as error:
            raise HTTPException(400, f"{error.reason}: {error}") from error
        except TransientError as error:
            raise HTTPException(503, str(error)) from error
        return {
            "template_id": result.template_id,
            "subject": result.subject,
            "evicted": result.evicted,
        }

    @app.delete("/v1/subjects/{subject}")
    def erase(
        subject: str, actor: Actor, scope: Annotated[str | None, Query()] = None
    ) -> dict[str, Any]:
        _valid_level(subject)
        with _redis_unavailable_is_503():
            removed = service.erase(subject, actor, scope)
        return {"subject": subject, "templates_erased": removed}

    @app.get("/v1/audit")
    def audit(
        _actor: Actor, count: Annotated[int, Query(ge=1, le=10_000)] = 100
    ) -> list[dict[str, str]]:
        with _redis_unavailable_is_503():
            return service.audit.recent(count)

    return app


def _valid_level(value: str) -> None:
    try:
        level(value)
    except TopicError as error:
        raise HTTPException(422, str(error)) from error


@contextmanager
def _redis_unavailable_is_503() -> Iterator[None]:
    try:
        yield
    except REDIS_TRANSIENT as error:
        raise HTTPException(503, f"Redis unavailable: {error}") from error


def _json_status(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


class BackgroundServer:
    """The HTTP app served by uvicorn on a thread, for programs that do other work meanwhile
    (the demo, tests); ``rllfpr recognizer run`` serves in the foreground."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {host}:{port}")
            time.sleep(0.02)
        self.host = host
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
