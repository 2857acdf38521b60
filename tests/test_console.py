"""The operator's console over HTTP (no browser): authentication, CSRF, the pages' content,
the scrambled faces it shows, and the agent fleet, against a real Mosquitto and Redis 8."""

from __future__ import annotations

import io
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr
from rich.console import Console
from starlette.routing import Mount
from typer.testing import CliRunner

from demo.console import DemoConsole, with_token
from recognizer_service.api import create_app
from recognizer_service.console.auth import COOKIE
from recognizer_service.console.fleet import Fleet, StatusError
from recognizer_service.gallery import connect_redis
from recognizer_service.recent_faces import RecentFaces
from recognizer_service.service import RecognizerService
from rllfpr.cli import app
from rllfpr.config import RedisSettings, Settings
from rllfpr.local_services import Endpoint, free_port
from rllfpr.wire import topics
from rllfpr.wire.messages import AgentStatus, utc_now
from tests import test_recognizer_service as service_tests
from tests.support.recognizer import (
    EPOCH,
    Client,
    counter,
    face,
    image,
    make_settings,
    noisy,
    wait_until,
)

pytestmark = pytest.mark.integration
TOKEN = "console token for the tests"
HOST = "testserver"
PUBLIC = {"/healthz", "/readyz", "/metrics", "/login", "/static"}

model_store = service_tests.model_store
client = service_tests.client


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def console_settings(
    broker: Endpoint, redis_endpoint: Endpoint, store: Path, **recognizer: Any
) -> Settings:
    base = make_settings(broker, redis_endpoint, store, **recognizer)
    options = base.recognizer.model_copy(update={"api_token": SecretStr(TOKEN)})
    return base.model_copy(update={"recognizer": options})


@pytest.fixture
def service(
    mqtt_broker: Endpoint, redis_endpoint: Endpoint, model_store: Path
) -> Iterator[RecognizerService]:
    running = RecognizerService(
        console_settings(mqtt_broker, redis_endpoint, model_store), client_id=unique("rec")
    )
    running.start()
    yield running
    running.stop()


def logged_in(service: RecognizerService) -> TestClient:
    browser = TestClient(create_app(service), base_url=f"http://{HOST}")
    answer = browser.post(
        "/login", data={"token": TOKEN, "next": "/people"}, follow_redirects=False
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/people"
    return browser


def csrf_of(html: str) -> str:
    found = re.search(r'<meta name="csrf" content="([0-9a-f]{64})">', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def every_route(service: RecognizerService) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, path parameters filled in."""
    app = create_app(service)
    routes = []
    for route in app.routes:
        if isinstance(route, Mount):
            routes.append(("GET", f"{route.path}/console.css"))
        elif isinstance(route, APIRoute):
            path = route.path.replace("{message_id}", str(uuid.uuid4()))
            path = re.sub(r"\{[a-z_]+\}", "1", path)
            routes += [(method, path) for method in sorted(route.methods or ())]
    return routes


# Nothing without a session --------------------------------------------------------------------


def test_every_page_and_endpoint_is_refused_without_a_token_or_session(
    service: RecognizerService,
) -> None:
    anonymous = TestClient(create_app(service))
    forged = TestClient(create_app(service), cookies={COOKIE: "forged-session-id"})
    checked = set()
    for method, path in every_route(service):
        if path.split("?")[0] in PUBLIC or path.startswith("/static/"):
            continue
        for who in (anonymous, forged):
            status = who.request(method, path, data={"csrf": "x"}).status_code
            assert status in (401, 403), f"{method} {path}: {status} without authentication"
        checked.add(path.split("/console/faces/")[0])
    pages = {"/", "/people", "/people/erase", "/keys", "/cameras", "/cameras/forget", "/logout"}
    assert pages | {"/console/stream", "", "/v1/galleries", "/v1/enrollments"} <= checked
    # A browser asking for a page gets the login form, with the 401.
    page = anonymous.get("/people", headers={"accept": "text/html"})
    assert page.status_code == 401
    assert 'name="token"' in page.text
    assert "<table" not in page.text
    # The public routes hold no data, and FastAPI's CDN-backed /docs is off.
    assert anonymous.get("/static/console.css").status_code == 200
    assert anonymous.get("/login").status_code == 200
    assert anonymous.get("/docs").status_code in (401, 404)
    assert anonymous.get("/openapi.json").status_code in (401, 404)


def test_without_an_api_token_the_console_is_closed(
    mqtt_broker: Endpoint, redis_endpoint: Endpoint, model_store: Path
) -> None:
    settings = make_settings(mqtt_broker, redis_endpoint, model_store)  # no api_token
    service = RecognizerService(settings)
    anonymous = TestClient(create_app(service))
    assert anonymous.get("/login").status_code == 503
    assert anonymous.post("/login", data={"token": ""}).status_code == 503
    assert anonymous.get("/").status_code == 503


def test_login_cookie_is_httponly_strict_and_logout_ends_the_session(
    service: RecognizerService,
) -> None:
    browser = TestClient(create_app(service), base_url=f"http://{HOST}")
    wrong = browser.post("/login", data={"token": "guess"}, follow_redirects=False)
    assert wrong.status_code == 401
    assert COOKIE not in wrong.cookies
    answer = browser.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
    cookie = answer.history[0].headers["set-cookie"]
    assert answer.history[0].headers["location"] == "/"  # no open redirect
    assert f"{COOKIE}=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; set behind TLS
    assert answer.status_code == 200
    assert "Live" in answer.text
    html = browser.get("/people").text
    assert browser.post("/logout", follow_redirects=False).status_code == 403  # no CSRF token
    ended = browser.post("/logout", data={"csrf": csrf_of(html)}, follow_redirects=False)
    assert ended.status_code == 303
    token = answer.history[0].cookies[COOKIE]
    again = TestClient(create_app(service), cookies={COOKIE: token})
    assert again.get("/people").status_code == 401  # ended on the server, not only forgotten
    sessions = list(service.redis.scan_iter(f"{service.settings.redis.key_prefix}:console:*"))
    assert sessions == []


def test_cross_site_posts_are_refused_and_change_nothing(
    service: RecognizerService, client: Client
) -> None:
    client.publish(*face(image(31), subject="mallory-target")[:2])
    wait_until(lambda: counter(service, "rllfpr_templates_enrolled_total") == 1)
    browser = logged_in(service)
    token = csrf_of(browser.get("/people").text)
    erase = {"subject": "mallory-target", "confirm": "yes"}
    attempts = [
        ({"origin": "https://evil.example"}, {"csrf": token}),
        ({"sec-fetch-site": "cross-site"}, {"csrf": token}),
        ({}, {}),  # same origin, no token
        ({}, {"csrf": "0" * 64}),  # same origin, wrong token
    ]
    for headers, extra in attempts:
        refused = browser.post("/people/erase", data=erase | extra, headers=headers)
        assert refused.status_code == 403, (headers, extra)
    assert service.gallery.subjects("fleet", EPOCH) == {"mallory-target": 1}
    cross_login = TestClient(create_app(service)).post(
        "/login", data={"token": TOKEN}, headers={"origin": "https://evil.example"}
    )
    assert cross_login.status_code == 403
    accepted = browser.post(
        "/people/erase",
        data=erase | {"csrf": token},
        headers={"origin": f"http://{HOST}", "sec-fetch-site": "same-origin"},
        follow_redirects=False,
    )
    assert accepted.status_code == 303
    assert service.gallery.subjects("fleet", EPOCH) == {}


# The pages ------------------------------------------------------------------------------------


def test_live_page_shows_events_with_the_scrambled_faces_they_were_decided_on(
    service: RecognizerService, client: Client
) -> None:
    alice = image(41)
    client.publish(*face(alice, subject="alice")[:2])
    wait_until(lambda: counter(service, "rllfpr_templates_enrolled_total") == 1)
    probe = noisy(alice, 3)
    client.publish(*face(probe, track=7, camera="door")[:2])
    stranger = image(42)
    client.publish(*face(stranger, track=8, camera="door")[:2])
    feed = service.console_feed
    assert feed is not None
    wait_until(lambda: feed.events.counts().events == 2)
    browser = logged_in(service)
    html = browser.get("/").text
    assert "alice" in html
    assert ">unknown<" in html
    assert re.search(r'<b id="unknown-total">1</b> unknown of <b id="events-total">2</b>', html)
    assert "\u03c3" not in html.split("<tbody>")[1]  # cosine scores carry no unit mark (sigma)
    only_unknown = browser.get("/", params={"decision": "unknown", "camera": "door"}).text
    assert "alice" not in only_unknown.split("<tbody>")[1]
    event = next(e for e in feed.events.recent() if e.decision == "match")
    (message_id,) = [str(m) for m in event.message_ids]
    png = browser.get(f"/console/faces/{message_id}.png")
    assert png.headers["content-type"] == "image/png"
    shown = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(shown, probe)  # exactly the wire pixels it decided on
    assert browser.get(f"/console/faces/{uuid.uuid4()}.png").status_code == 404
    headers = browser.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"


def test_faces_are_kept_only_as_long_as_configured(
    mqtt_broker: Endpoint, redis_endpoint: Endpoint, model_store: Path, client: Client
) -> None:
    settings = console_settings(mqtt_broker, redis_endpoint, model_store)
    console = settings.recognizer.console.model_copy(update={"face_retention_s": 0})
    options = settings.recognizer.model_copy(update={"console": console})
    service = RecognizerService(
        settings.model_copy(update={"recognizer": options}), client_id=unique("rec")
    )
    service.start()
    try:
        client.publish(*face(image(43), track=9)[:2])
        wait_until(
            lambda: counter(service, "rllfpr_events_published_total", decision="unknown") > 0
        )
        prefix = settings.redis.key_prefix
        assert list(service.redis.scan_iter(f"{prefix}:face:*")) == []
    finally:
        service.stop()
    kept = RecognizerService(
        console_settings(mqtt_broker, redis_endpoint, model_store), client_id=unique("rec")
    )
    kept.start()
    try:
        _topic, payload, message_id = face(image(44), track=10)
        client.publish(_topic, payload)
        wait_until(lambda: counter(kept, "rllfpr_events_published_total", decision="unknown") > 0)
        key = f"{kept.settings.redis.key_prefix}:face:{message_id}"
        assert kept.redis.get(key) == payload
        assert 0 < kept.redis.ttl(key) <= kept.settings.recognizer.console.face_retention_s
    finally:
        kept.stop()


def test_keeping_faces_is_best_effort_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    nowhere = connect_redis(RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"))
    faces = RecentFaces(nowhere, "t", retention_s=60)
    assert faces.keep([("m", b"face")]) is False  # Redis away: logged, the batch goes on
    assert "not kept for the console" in caplog.text
    assert RecentFaces(nowhere, "t", retention_s=0).keep([("m", b"face")]) is True  # nothing to do


def test_people_page_erases_after_confirmation_and_audits_it(
    service: RecognizerService, client: Client
) -> None:
    for index, name in enumerate(("bob", "carol", "carol")):
        client.publish(*face(image(50 + index), subject=name)[:2])
    wait_until(lambda: counter(service, "rllfpr_templates_enrolled_total") == 3)
    browser = logged_in(service)
    html = browser.get("/people").text
    assert 'data-subject="bob"' in html
    assert 'data-subject="carol"' in html
    assert "2 subjects, 3 templates" in html
    assert 'data-subject="bob"' not in browser.get("/people", params={"q": "aro"}).text
    prefix = service.settings.redis.key_prefix
    carol_index = f"{prefix}:templates:*:carol"  # her per-subject index, in any key layout
    assert len(list(service.redis.scan_iter(carol_index))) == 1
    token = csrf_of(html)
    confirm = browser.post("/people/erase", data={"csrf": token, "subject": "carol"})
    assert confirm.status_code == 200
    assert "gallery <code>fleet</code>, key epoch 1: 2 templates" in confirm.text
    assert service.gallery.subjects("fleet", EPOCH) == {"bob": 1, "carol": 2}  # not yet
    done = browser.post(
        "/people/erase", data={"csrf": token, "subject": "carol", "scope": "", "confirm": "yes"}
    )
    assert "Erased <b>carol</b>: 2 templates deleted" in done.text
    assert service.gallery.subjects("fleet", EPOCH) == {"bob": 1}
    assert list(service.redis.scan_iter(carol_index)) == []
    erasure = next(e for e in service.audit.recent() if e["action"] == "erase")
    assert erasure["subject"] == "carol"
    assert erasure["templates"] == "2"
    assert erasure["actor"].startswith("console:")
    audit = browser.get("/people", params={"action": "erase"}).text.split('id="audit-log"')[1]
    assert "subject=<b>carol</b>" in audit
    assert ">enroll<" not in audit
    bad = browser.post("/people/erase", data={"csrf": token, "subject": "../x", "confirm": "yes"})
    assert bad.status_code == 422


def test_keys_page_lists_the_loaded_epoch_and_its_recognizer(service: RecognizerService) -> None:
    html = logged_in(service).get("/keys").text
    (info,) = service.models.loaded()
    row = html.split(f'data-epoch="{EPOCH}"')[1].split("</tr>")[0]
    assert info.recognizer_id[:16] in row
    assert "published" in row  # no trusted signer here: no announcement is followed
    assert "0.950" in row  # the calibrated threshold


def publish_status(client: Client, status: AgentStatus | None, agent: str = "") -> None:
    name = status.agent if status else agent
    payload = status.model_dump_json().encode() if status else b""
    client.publish(topics.agent_status(name), payload, retain=True)


def test_cameras_page_shows_agents_offline_stale_and_forgets_them(
    service: RecognizerService, client: Client
) -> None:
    agent = f"gate-{uuid.uuid4().hex[:6]}"
    online = AgentStatus(
        agent=agent,
        site="dock",
        state="online",
        key_epoch=3,
        cameras=["gate"],
        version="9.9",
        fps=12.5,
        faces_published=41,
        spool_messages=2,
    )
    publish_status(client, online)
    feed = service.console_feed
    assert feed is not None
    wait_until(lambda: feed.fleet.status(agent) is not None)
    browser = logged_in(service)
    rows = browser.get("/cameras", params={"fragment": "rows"}).text
    row = rows.split(f'data-agent="{agent}"')[1].split("</tr>")[0]
    for shown in ("online", "12.5", "41", ">2<", ">3<", "9.9"):
        assert shown in row, shown
    token = csrf_of(browser.get("/cameras").text)
    busy = browser.post("/cameras/forget", data={"csrf": token, "agent": agent})
    assert busy.status_code == 409  # an agent that runs is not forgotten
    will = online.model_copy(update={"state": "offline", "reason": "connection lost"})
    publish_status(client, will)
    wait_until(lambda: (s := feed.fleet.status(agent)) is not None and s.state == "offline")
    rows = browser.get("/cameras", params={"fragment": "rows"}).text
    row = rows.split(f'data-agent="{agent}"')[1].split("</tr>")[0]
    assert 'data-state="offline"' in row[:60]
    for shown in ("connection lost", "12.5", "41", ">3<"):  # its last figures while it ran
        assert shown in row, shown
    forgotten = browser.post("/cameras/forget", data={"csrf": token, "agent": agent})
    assert forgotten.status_code == 200
    wait_until(lambda: feed.fleet.status(agent) is None)
    assert next(e for e in service.audit.recent() if e["action"] == "forget")["agent"] == agent


def test_fleet_flags_stale_agents_and_rejects_foreign_statuses() -> None:
    fleet = Fleet(stale_after_s=60)
    now = utc_now()
    fresh = AgentStatus(agent="a", site="s", state="online", version="1", at=now)
    old = AgentStatus(agent="b", site="s", state="online", version="1")
    old = old.model_copy(update={"at": now - timedelta(seconds=61)})
    gone = AgentStatus(agent="c", site="s", state="offline", version="1")
    gone = gone.model_copy(update={"at": now - timedelta(hours=1)})
    for status in (fresh, old, gone):
        fleet.update(status.agent, status.model_dump_json().encode())
    assert {row.agent: row.stale for row in fleet.rows(now)} == {"a": False, "b": True, "c": False}
    last_seen = {row.agent: row.last_seen for row in fleet.rows(now)}
    assert last_seen == {"a": now, "b": old.at, "c": None}
    version_1 = json.loads(fresh.model_dump_json())
    for figure in ("fps", "faces_published", "spool_messages"):
        del version_1[figure]
    fleet.update("a", json.dumps(version_1 | {"schema_version": 1}).encode())
    assert fleet.status("a") is not None
    with pytest.raises(StatusError):
        fleet.update("d", fresh.model_dump_json().encode())  # a's status on d's topic
    with pytest.raises(StatusError):
        fleet.update("a", b"{not json")
    fleet.update("a", b"")
    assert [row.agent for row in fleet.rows(now)] == ["b", "c"]


def test_the_demo_serves_the_console_until_stopped(service: RecognizerService) -> None:
    output = io.StringIO()
    web = DemoConsole(service, Console(file=output, width=200), port=free_port())
    token = service.settings.recognizer.api_token
    assert token is not None
    printed = output.getvalue()
    assert f"{web.url}/" in printed
    assert token.get_secret_value() in printed
    with urllib.request.urlopen(f"{web.url}/login") as page:
        assert 'name="token"' in page.read().decode()
    stop = threading.Event()
    holder = threading.Thread(target=web.hold, args=(stop,))
    holder.start()
    time.sleep(0.2)
    with urllib.request.urlopen(f"{web.url}/healthz") as health:
        assert health.status == 200  # still served while the demo holds
    stop.set()
    holder.join(15)
    assert not holder.is_alive()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{web.url}/healthz", timeout=2)
    assert with_token(service.settings).recognizer.api_token != token  # a fresh one per run
    help_text = CliRunner().invoke(app, ["demo", "--help"]).output
    assert "--no-console" in help_text


def test_live_rows_mark_s_norm_scores_with_their_unit() -> None:
    from recognizer_service.console.web import event_view, templates
    from rllfpr.wire.messages import RecognitionEvent, utc_now

    def row(score_kind: str) -> str:
        event = RecognitionEvent(
            decision="match",
            subject="alice",
            score=4.25,
            margin=1.5,
            score_kind=score_kind,
            site="lobby",
            camera="door",
            agent="a1",
            track_id=3,
            message_ids=[uuid.uuid4()],
            captured_at=utc_now(),
            decision_latency_ms=12.0,
            key_epoch=2,
        )
        view = event_view(event)
        assert view["score_kind"] == score_kind
        html = templates.get_template("live.html").render(
            request_path="/",
            csrf="",
            logged_in=True,
            version="test",
            events=[view],
            only={},
            sites=[],
            cameras=[],
            counts=None,
            unknown_shown=0,
            face_retention_s=60,
        )
        return html.split("<tbody>")[1].split("</tr>")[0]

    assert "<td>4.250 \u03c3</td><td>1.500 \u03c3</td>" in row("s_norm")
    assert "<td>4.250</td><td>1.500</td>" in row("cosine")
