"""The console in a real browser: Debian's headless Chromium driven by Selenium, against the real
recognizer (served by uvicorn), a real Mosquitto and Redis 8, signed key announcements, and an
agent process that is killed.

Each page is saved as a screenshot in a temporary folder, or in ``$CONSOLE_SCREENSHOTS`` when
set (``CONSOLE_SCREENSHOTS=docs/console python -m pytest tests/test_console_browser.py``
refreshes the README's). Without Chromium and chromedriver the module is skipped, except under
``scripts/test`` (``RLLFPR_REQUIRE_BROWSER=1``), where ``scripts/setup`` installed them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import SecretStr

from recognizer_service.api import BackgroundServer, create_app
from recognizer_service.service import RecognizerService
from rllfpr.local_services import Endpoint
from rllfpr.models.recognizer import Recognizer
from rllfpr.models.store import ModelStore, OpenSetCalibration
from rllfpr.wire import topics
from rllfpr.wire.messages import AgentStatus, KeyAnnouncement, KeyState, Revocation, utc_now
from tests.support.agent import KeyFactory, retain
from tests.support.recognizer import TINY, Client, counter, face, image, make_settings, noisy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
REQUIRED = os.environ.get("RLLFPR_REQUIRE_BROWSER") == "1"
if not REQUIRED:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)
    pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.integration
TOKEN = "browser-test-token"
SCOPE = "fleet"
ACTIVE = 2
GRACE_S = 600

# The agent's MQTT link (retained status, last will) in a process of its own, to be killed.
AGENT_LINK = """
import sys, threading
from pathlib import Path
from edge_agent.link import AgentLink
from edge_agent.metrics import AgentMetrics
from edge_agent.spool import Spool
from rllfpr.config import MqttSettings

port, agent, folder = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
metrics = AgentMetrics()
link = AgentLink(
    MqttSettings(port=port), agent=agent, site="lobby", camera="cam-7", key_scope="fleet",
    spool=Spool(folder / "spool.sqlite3", 100, 1 << 20), metrics=metrics,
    on_key_message=lambda _payload: None, max_inflight=4, reconnect_initial_s=1,
    reconnect_max_s=1, status_interval_s=1,
)
link.start()
metrics.frames.inc(40)
link.set_status(2, None)
print("running", flush=True)
threading.Event().wait()
"""


def wait_for(
    driver: WebDriver, condition: Callable[[WebDriver], Any], timeout_s: float = 20
) -> Any:
    """Poll ``condition`` while pages load (elements of the page being left go stale)."""
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout_s, 0.1, ignored).until(condition)


def wait_for_text(driver: WebDriver, by: str, value: str, expected: str) -> None:
    wait_for(driver, lambda d: expected in d.find_element(by, value).text)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("console"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyFactory:
    return KeyFactory(tmp_path_factory.mktemp("trainer"), scope=SCOPE)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny recognizers for epochs 0-3; epoch 0 was revoked."""
    root = tmp_path_factory.mktemp("models")
    models = ModelStore(root)
    for epoch in range(4):
        torch.manual_seed(epoch)
        calibration = OpenSetCalibration(threshold=0.95, min_margin=0.0)
        models.publish(SCOPE, epoch, Recognizer(TINY), calibration)
    models.revoke(SCOPE, 0)
    return root


@pytest.fixture(scope="module")
def console(
    mqtt_broker: Endpoint,
    redis_endpoint: Endpoint,
    store: Path,
    keys: KeyFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RecognizerService, str]]:
    """The recognizer and its console on a free port, after a rotation 1 -> 2 with epoch 3
    staged: signed, retained announcements as the trainer publishes them."""
    now = utc_now()
    for epoch, state, issued in (
        (1, KeyState.ACTIVE, now - timedelta(hours=30)),
        (ACTIVE, KeyState.ACTIVE, now - timedelta(seconds=60)),
        (3, KeyState.STAGED, now - timedelta(seconds=30)),
    ):
        announcement = KeyAnnouncement(
            scope=SCOPE,
            epoch=epoch,
            state=state,
            bundle_id=uuid.uuid4(),
            bundle_sha256="0" * 64,
            issued_at=issued,
            grace_s=GRACE_S,
        )
        retain(mqtt_broker, topics.key_announcements(SCOPE, epoch), sign(keys, announcement))
    retain(
        mqtt_broker, topics.key_revocation(SCOPE, 0), sign(keys, Revocation(scope=SCOPE, epoch=0))
    )
    base = make_settings(mqtt_broker, redis_endpoint, store, consensus_faces=1)
    settings = base.model_copy(
        update={
            "keys": keys.settings(tmp_path_factory.mktemp("keys")),
            "recognizer": base.recognizer.model_copy(update={"api_token": SecretStr(TOKEN)}),
        }
    )
    service = RecognizerService(settings, client_id=f"rec-{uuid.uuid4().hex[:8]}")
    service.start()
    server = BackgroundServer(create_app(service))
    watch = service.keywatch
    assert watch is not None
    deadline = utc_now() + timedelta(seconds=20)
    while len(watch.announcements()) < 3 or service.models.retirement(SCOPE, 1) is None:
        assert utc_now() < deadline, "the key announcements did not arrive"
        time.sleep(0.05)
    yield service, server.url
    server.close()
    service.stop()


def sign(keys: KeyFactory, message: Any) -> bytes:
    from rllfpr.keys import envelope

    return envelope.sign(message, keys.signing_key)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or "chromium"
    profile = tempfile.mkdtemp(prefix="rllfpr-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1360,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER or "chromedriver"), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def client(mqtt_broker: Endpoint) -> Iterator[Client]:
    publisher = Client(mqtt_broker, "browser-test-client")
    yield publisher
    publisher.close()


def rows(driver: WebDriver, selector: str) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, selector)


# The tests run in this order and share the browser's session ----------------------------------


def test_log_in_and_watch_events_arrive_live(
    console: tuple[RecognizerService, str], browser: WebDriver, client: Client, screenshots: Path
) -> None:
    service, url = console
    browser.get(url + "/")
    assert "Log in" in browser.title  # the 401 page is the login form
    browser.find_element(By.ID, "token").send_keys("wrong")
    browser.find_element(By.ID, "login").click()
    wait_for_text(browser, By.TAG_NAME, "main", "Wrong token.")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "stream-state").text == "live")
    cookie = browser.get_cookie("rllfpr_session")
    assert cookie is not None
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"

    people = {name: image(900 + i) for i, name in enumerate(("alice", "bob", "carol", "dave"))}
    for name, pixels in people.items():
        client.publish(*face(pixels, subject=name, epoch=ACTIVE)[:2])
    wait_for(browser, lambda _: counter(service, "rllfpr_templates_enrolled_total") == 4)
    sightings: list[tuple[str | None, str]] = [
        ("alice", "cam-0"), ("bob", "cam-1"), (None, "cam-0"), ("carol", "cam-0"), ("bob", "cam-0")
    ]  # fmt: skip
    for track, (who, camera) in enumerate(sightings):
        pixels = noisy(people[who], track) if who else image(990 + track)
        topic, payload, _id = face(pixels, epoch=ACTIVE, track=track, camera=camera)
        client.publish(topic, payload)
        shown_rows = track + 1
        wait_for(browser, lambda d: len(rows(d, "#events tbody tr")) == shown_rows)  # noqa: B023
    newest = rows(browser, "#events tbody tr")[0]
    assert newest.find_element(By.CSS_SELECTOR, "td.decision").text == "bob"
    shown = [
        r.find_element(By.CSS_SELECTOR, "td.decision").text
        for r in rows(browser, "#events tbody tr")
    ]
    assert shown == ["bob", "carol", "unknown", "bob", "alice"]
    assert browser.find_element(By.ID, "unknown-shown").text == "1"
    assert browser.find_element(By.ID, "events-total").text == "5"
    wait_for(
        browser,
        lambda d: all(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 32
            for img in d.find_elements(By.CSS_SELECTOR, "#events td.faces img")
        ),
    )  # every event shows the 32 x 32 scrambled face it was decided on
    browser.save_screenshot(str(screenshots / "live.png"))
    browser.get(url + "/?decision=unknown")
    assert [
        r.find_element(By.CSS_SELECTOR, "td.decision").text
        for r in rows(browser, "#events tbody tr")
    ] == ["unknown"]


def test_erase_a_subject_and_it_is_gone_from_redis(
    console: tuple[RecognizerService, str], browser: WebDriver, screenshots: Path
) -> None:
    service, url = console
    prefix = service.settings.redis.key_prefix
    index = f"{prefix}:templates:*:carol"  # her per-subject index, in any key layout
    assert len(list(service.redis.scan_iter(index))) == 1
    browser.get(url + "/people")
    subjects = [r.get_attribute("data-subject") for r in rows(browser, "tr[data-subject]")]
    assert subjects == ["alice", "bob", "carol", "dave"]
    browser.save_screenshot(str(screenshots / "people.png"))
    browser.find_element(By.CSS_SELECTOR, 'button[data-erase="carol"]').click()
    wait_for_text(browser, By.TAG_NAME, "main", "key epoch 2: 1 templates")
    assert service.gallery.subjects(SCOPE, ACTIVE).get("carol") == 1  # not before confirming
    browser.find_element(By.ID, "confirm-erase").click()
    wait_for_text(browser, By.ID, "erased", "Erased carol: 1 templates deleted")
    assert "carol" not in service.gallery.subjects(SCOPE, ACTIVE)
    assert list(service.redis.scan_iter(index)) == []
    shard = service.gallery.set_key(SCOPE, ACTIVE, 0)
    members = [m.decode() for m in service.redis.execute_command("VRANDMEMBER", shard, 100)]
    assert sorted(m.split("/")[0] for m in members) == ["alice", "bob", "dave"]
    audit = browser.find_element(By.ID, "audit-log").text
    assert "erase" in audit
    assert "subject=carol" in audit


def test_keys_page_shows_each_epoch_state(
    console: tuple[RecognizerService, str], browser: WebDriver, screenshots: Path
) -> None:
    _service, url = console
    browser.get(url + "/keys")
    states = {
        r.get_attribute("data-epoch"): r.find_element(By.CSS_SELECTOR, "td.state").text
        for r in rows(browser, "tr[data-epoch]")
    }
    assert states["3"] == "staged"
    assert states["2"] == "active"
    assert states["1"].startswith("retiring until ")
    assert states["0"] == "revoked"
    browser.save_screenshot(str(screenshots / "keys.png"))


def test_a_camera_goes_offline_when_its_agent_is_killed(
    console: tuple[RecognizerService, str],
    browser: WebDriver,
    client: Client,
    mqtt_broker: Endpoint,
    screenshots: Path,
    tmp_path: Path,
) -> None:
    _service, url = console
    steady = AgentStatus(
        agent="dock-gate", site="dock", state="online", key_epoch=ACTIVE, cameras=["gate"],
        version="0.1.0", fps=9.8, faces_published=312, spool_messages=0,
    )  # fmt: skip
    client.publish(topics.agent_status("dock-gate"), steady.model_dump_json(), retain=True)
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT_LINK, str(mqtt_broker.port), "lobby-cam-7", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == "running"
        browser.get(url + "/cameras")
        row = 'tr[data-agent="lobby-cam-7"]'
        wait_for(
            browser,
            lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") == "online",
        )
        agent.send_signal(signal.SIGKILL)  # no goodbye: only the broker's last will speaks
        agent.wait(10)
        wait_for(
            browser,
            lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") == "offline",
        )
        cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, row + " td")]
        assert "connection lost" in cells[3]
        assert cells[7] == str(ACTIVE)  # its key epoch while it ran
        assert cells[8].endswith("s ago")  # last seen: its latest status while running
        browser.save_screenshot(str(screenshots / "cameras.png"))
        browser.find_element(By.CSS_SELECTOR, 'button[data-forget="lobby-cam-7"]').click()
        wait_for(browser, lambda d: not rows(d, row))
        assert rows(browser, 'tr[data-agent="dock-gate"]')
    finally:
        if agent.poll() is None:
            agent.kill()
