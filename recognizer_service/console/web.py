"""The console's pages: server-rendered HTML (Jinja2), a little JavaScript, no build step.

| method and path | what |
|---|---|
| GET /login, POST /login | the login form; the API token buys a session cookie |
| POST /logout | ends the session |
| GET / | Live: recognition events as they arrive, filters, unknown counter, scrambled faces |
| GET /console/stream | the Live page's server-sent events (``recognition``) |
| GET /console/faces/{message id}.png | a scrambled face the recognizer decided on |
| GET /people, POST /people/erase | galleries, subjects, erasure (confirmed), the audit log |
| GET /keys | key epochs per scope: state, grace window, recognizer |
| GET /cameras, POST /cameras/forget | agents from their retained status; forget an offline one |
| GET /static/... | the stylesheet and the script (public: they hold no data) |

Every page and endpoint except ``/login`` and ``/static`` needs a session (401 otherwise, the
login form for a browser); every POST needs the CSRF token and the same origin (403).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import cv2
import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from recognizer_service.console.auth import (
    COOKIE,
    CSRF_FIELD,
    ConsoleError,
    Session,
    Sessions,
    check_csrf,
    same_origin,
    token_id,
    token_matches,
)
from recognizer_service.console.feed import ConsoleFeed
from recognizer_service.console.keys import key_table
from recognizer_service.console.live import EventFilter
from recognizer_service.pipeline import REDIS_TRANSIENT
from recognizer_service.service import RecognizerService
from rllfpr import __version__, mqtt
from rllfpr.wire import codec
from rllfpr.wire.messages import RecognitionEvent
from rllfpr.wire.topics import TopicError, level

HERE = Path(__file__).parent
MAX_FORM_BYTES = 16_384
KEEPALIVE_S = 15.0
AUDIT_ACTIONS = ("enroll", "erase", "search", "drop", "expire", "load", "forget")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _utc(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="seconds") if value else ""


def _stamp(value: datetime | str | None) -> str:
    """A time for people: ``2026-11-26 12:00:05`` (UTC)."""
    if not value:
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _ago(value: datetime | None) -> str:
    if value is None:
        return "-"
    seconds = max(0, int((datetime.now(timezone.utc) - value).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


templates.filters["utc"] = _utc
templates.filters["stamp"] = _stamp
templates.filters["ago"] = _ago


def event_view(event: RecognitionEvent) -> dict[str, Any]:
    """What a Live row shows (also the JSON of a server-sent event)."""
    return {
        "event_id": str(event.event_id),
        "decided_at": _utc(event.decided_at),
        "site": event.site,
        "camera": event.camera,
        "decision": event.decision,
        "subject": event.subject,
        "score": round(event.score, 3),
        "margin": round(event.margin, 3),
        "score_kind": event.score_kind,
        "track_id": event.track_id,
        "key_epoch": event.key_epoch,
        "latency_ms": round(event.decision_latency_ms),
        "faces": [str(m) for m in event.message_ids],
    }


def mount_console(app: FastAPI, service: RecognizerService) -> None:
    """Add the console's routes to the recognizer's HTTP app."""
    options = service.settings.recognizer
    sessions = Sessions(
        service.redis, service.settings.redis.key_prefix, options.console.session_ttl_s
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="console-static")

    def feed() -> ConsoleFeed:
        if service.console_feed is None:
            raise ConsoleError(503, "the console's MQTT feed is not running")
        return service.console_feed

    def api_token() -> str:
        token = options.api_token
        if token is None:
            raise ConsoleError(503, "the console is disabled: set recognizer.api_token")
        return token.get_secret_value()

    def session_of(request: Request) -> Session:
        api_token()
        found = sessions.find(request.cookies.get(COOKIE, ""))
        if found is None:
            raise ConsoleError(401, "log in first")
        return found

    def page(request: Request, name: str, session: Session | None, **context: Any) -> HTMLResponse:
        body = templates.get_template(name).render(
            request_path=request.url.path,
            csrf=session.csrf if session else "",
            logged_in=session is not None,
            version=__version__,
            **context,
        )
        return HTMLResponse(body, headers=SECURITY_HEADERS)

    async def form(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise ConsoleError(413, "form too large")
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: values[-1] for name, values in fields.items()}

    @app.exception_handler(ConsoleError)
    async def refused(request: Request, error: ConsoleError) -> Response:
        wants_page = "text/html" in request.headers.get("accept", "")
        if error.status == 401 and wants_page and request.method == "GET":
            response = page(
                request, "login.html", None, next=_local_path(str(request.url.path)), error=""
            )
            response.status_code = 401
            return response
        return Response(
            f"{error.reason}\n",
            status_code=error.status,
            media_type="text/plain",
            headers=SECURITY_HEADERS,
        )

    # Log in and out -----------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> HTMLResponse:
        api_token()
        return page(request, "login.html", None, next=_local_path(next), error="")

    @app.post("/login")
    async def login(request: Request) -> Response:
        expected = api_token()
        if not same_origin(request):
            raise ConsoleError(403, "cross-origin request refused")
        fields = await form(request)
        target = _local_path(fields.get("next", "/"))
        if not token_matches(fields.get("token", ""), expected):
            await asyncio.sleep(0.5)  # slows guessing; the token is the only secret
            refusal = page(request, "login.html", None, next=target, error="Wrong token.")
            refusal.status_code = 401
            return refusal
        host = request.client.host if request.client else "?"
        with _redis_unavailable_is_503():
            session = sessions.create(f"console:{token_id(expected)}@{host}")
        response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            session.token,
            max_age=options.console.session_ttl_s,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        session = session_of(request)
        check_csrf(request, session, (await form(request)).get(CSRF_FIELD))
        sessions.end(session.token)
        response = RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # Live ---------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def live(
        request: Request, site: str = "", camera: str = "", decision: str = ""
    ) -> HTMLResponse:
        session = session_of(request)
        only = EventFilter(site, camera, decision if decision in {"match", "unknown"} else "")
        events = feed().events
        shown = [event_view(e) for e in events.recent(only)]
        sites, cameras = events.places()
        return page(
            request,
            "live.html",
            session,
            events=shown,
            only=only,
            sites=sorted({*sites, *([site] if site else [])}),
            cameras=sorted({*cameras, *([camera] if camera else [])}),
            counts=events.counts(),
            unknown_shown=sum(e["decision"] == "unknown" for e in shown),
            face_retention_s=options.console.face_retention_s,
        )

    @app.get("/console/stream")
    async def stream(request: Request) -> StreamingResponse:
        session_of(request)
        events = feed().events

        async def messages() -> AsyncIterator[bytes]:
            listener = events.listen()
            try:
                yield b"retry: 2000\n\n"
                while True:
                    try:
                        event = await listener.next(KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": keep-alive\n\n"
                        continue
                    if event is None:  # fell behind: the browser reconnects
                        return
                    data = json.dumps(event_view(event) | {"counts": vars(events.counts())})
                    yield f"event: recognition\ndata: {data}\n\n".encode()
            finally:
                events.unlisten(listener)

        headers = SECURITY_HEADERS | {"X-Accel-Buffering": "no"}
        return StreamingResponse(messages(), media_type="text/event-stream", headers=headers)

    @app.get("/console/faces/{message_id}.png")
    def face(request: Request, message_id: uuid.UUID) -> Response:
        session_of(request)
        with _redis_unavailable_is_503():
            payload = service.recent_faces.get(str(message_id))
        if payload is None:
            return Response(b"expired\n", 404, media_type="text/plain", headers=SECURITY_HEADERS)
        png = face_png(payload)
        return Response(png, media_type="image/png", headers=SECURITY_HEADERS)

    # People -------------------------------------------------------------------------------

    @app.get("/people", response_class=HTMLResponse)
    def people(request: Request, q: str = "", action: str = "") -> HTMLResponse:
        session = session_of(request)
        gallery = service.gallery
        with _redis_unavailable_is_503():
            galleries = []
            for scope, epoch in gallery.galleries():
                names = gallery.find_subjects(scope, epoch, q, limit=200)
                galleries.append(
                    {
                        "scope": scope,
                        "epoch": epoch,
                        "subjects": gallery.subject_count(scope, epoch),
                        "templates": gallery.size(scope, epoch),
                        "rows": gallery.enrolment_spans(scope, epoch, names),
                    }
                )
            audit = service.audit.recent(500 if action else 100)
        if action in AUDIT_ACTIONS:
            audit = [entry for entry in audit if entry.get("action") == action][:100]
        return page(
            request,
            "people.html",
            session,
            galleries=galleries,
            q=q,
            audit=audit,
            action=action,
            actions=AUDIT_ACTIONS,
            erased=request.query_params.get("erased", ""),
            count=request.query_params.get("count", ""),
        )

    @app.post("/people/erase", response_class=HTMLResponse)
    async def erase(request: Request) -> Response:
        session = session_of(request)
        fields = await form(request)
        check_csrf(request, session, fields.get(CSRF_FIELD))
        subject, scope = fields.get("subject", ""), fields.get("scope", "") or None
        try:
            level(subject)
            if scope is not None:
                level(scope)
        except TopicError as error:
            raise ConsoleError(422, str(error)) from error
        with _redis_unavailable_is_503():
            if fields.get("confirm") != "yes":
                held = [
                    (s, e, n)
                    for s, e in service.gallery.galleries()
                    if scope in (None, s)
                    and (n := service.gallery.enrolment_spans(s, e, [subject])[subject][0])
                ]
                return page(
                    request, "erase.html", session, subject=subject, scope=scope or "", held=held
                )
            removed = service.erase(subject, session.actor, scope)
        target = f"/people?erased={quote(subject)}&count={removed}"
        return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)

    # Keys ---------------------------------------------------------------------------------

    @app.get("/keys", response_class=HTMLResponse)
    def keys(request: Request) -> HTMLResponse:
        session = session_of(request)
        rows = key_table(service.models, service.keywatch, options.scopes)
        return page(
            request,
            "keys.html",
            session,
            rows=rows,
            watching=service.keywatch is not None,
            scopes=options.scopes,
        )

    # Cameras ------------------------------------------------------------------------------

    @app.get("/cameras", response_class=HTMLResponse)
    def cameras(request: Request, fragment: str = "") -> HTMLResponse:
        session = session_of(request)
        name = "cameras_rows.html" if fragment == "rows" else "cameras.html"
        fleet = feed().fleet
        return page(
            request,
            name,
            session,
            rows=fleet.rows(),
            stale_after_s=int(fleet.stale_after.total_seconds()),
            homeassistant=feed().discovery is not None,
        )

    @app.post("/cameras/forget")
    async def forget(request: Request) -> Response:
        session = session_of(request)
        fields = await form(request)
        check_csrf(request, session, fields.get(CSRF_FIELD))
        agent = fields.get("agent", "")
        status = feed().fleet.status(agent)
        if status is None:
            raise ConsoleError(404, f"no agent {agent!r}")
        if status.state != "offline":
            raise ConsoleError(409, f"agent {agent} is {status.state}: stop it first")
        try:
            feed().forget_agent(agent)
        except mqtt.MqttError as error:
            raise ConsoleError(503, str(error)) from error
        with _redis_unavailable_is_503():
            service.audit.record("forget", session.actor, agent=agent, site=status.site)
        return RedirectResponse("/cameras", status_code=303, headers=SECURITY_HEADERS)


def face_png(payload: bytes) -> bytes:
    """A stored face message as a grey PNG of its wire pixels (the scrambled face)."""
    pixels = codec.decode(payload).pixels
    grey = np.clip(np.rint(pixels.astype(np.float32)), 0, 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", grey)
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(png)


def _local_path(target: str) -> str:
    """Only a path of this site may follow a login (no open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if target.startswith(("/login", "/logout", "/static", "/console/")):
        return "/"
    return target


@contextmanager
def _redis_unavailable_is_503() -> Iterator[None]:
    try:
        yield
    except REDIS_TRANSIENT as error:
        raise ConsoleError(503, f"Redis unavailable: {error}") from error
