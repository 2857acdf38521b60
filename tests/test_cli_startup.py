"""The command line answers at once: help and the light commands never load torch.

Each command runs in its own interpreter (as a user runs it); the child reports which heavy
modules it imported, and its CPU time is measured (CPU rather than wall time, so that a busy
machine does not fail the test)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rllfpr.keys import bundle, material

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "cv2", "onnxruntime", "facenet_pytorch", "PIL", "sklearn")
GROUPS = ("keys", "config", "agent", "recognizer", "gallery", "eval")

_CHILD = f"""
import json, sys
sys.argv = ["rllfpr", *json.loads(sys.argv[1])]
from rllfpr.cli import app
code = 0
try:
    app()
except SystemExit as exit_:
    code = exit_.code or 0
print("\\n@@" + json.dumps([m for m in {HEAVY!r} if m in sys.modules]) + "@@" + str(code))
"""


def _run(arguments: list[str]) -> tuple[str, list[str], int, float]:
    """(output, heavy modules imported, exit status, CPU seconds) of one ``rllfpr`` call."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    environment = os.environ | {"PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(arguments)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output, _, tail = done.stdout.rpartition("\n@@")
    assert tail, f"the child did not finish: {done.stdout}\n{done.stderr}"
    modules, _, code = tail.strip().rpartition("@@")
    return output, json.loads(modules), int(code), cpu


@pytest.mark.parametrize("arguments", [["--help"], *[[group, "--help"] for group in GROUPS]])
def test_help_answers_in_under_a_second_without_heavy_modules(arguments: list[str]) -> None:
    output, heavy, code, cpu = _run(arguments)
    assert code == 0
    assert "Usage" in output
    assert heavy == [], f"`rllfpr {' '.join(arguments)}` imported {heavy}"
    assert cpu < 1.0, f"`rllfpr {' '.join(arguments)}` took {cpu:.2f} s of CPU"


def test_every_group_is_listed_by_the_top_level_help() -> None:
    output, _, _, _ = _run(["--help"])
    for name in (*GROUPS, "demo", "train", "version"):
        assert name in output


def test_config_show_does_not_load_torch() -> None:
    output, heavy, code, cpu = _run(["config", "show"])
    assert code == 0
    assert json.loads(output)["mqtt"]["host"]
    assert heavy == []
    assert cpu < 1.0


def test_keys_inspect_verifies_without_loading_torch(tmp_path: Path) -> None:
    signing = Ed25519PrivateKey.generate()
    fleet = material.FleetKey.generate()
    material.save_public_key(signing.public_key(), tmp_path / "signing.pub.pem")
    material.save_fleet_key(fleet, tmp_path / "fleet.key")
    sealed = bundle.seal(
        epoch=2,
        scope="fleet",
        recognizer_id="r2",
        architecture={"levels": 5},
        state={"w": np.ones(4, np.float32)},
        signing_key=signing,
        fleet_key=fleet,
    )
    (tmp_path / "e2.rlkb").write_bytes(sealed)
    arguments = ["keys", "inspect", str(tmp_path / "e2.rlkb")]
    arguments += ["--trusted", str(tmp_path / "signing.pub.pem")]
    arguments += ["--fleet-key", str(tmp_path / "fleet.key")]
    output, heavy, code, cpu = _run(arguments)
    assert code == 0, output
    assert "verified" in output
    assert heavy == []
    assert cpu < 1.0


class _GalleryApi(BaseHTTPRequestHandler):
    """The two read-only routes `gallery list` calls, answering as the recognizer's API does
    (the real API is tested in test_recognizer_api.py; here only the client's imports count)."""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "Bearer secret-token":
            self.send_response(401)
            self.end_headers()
            return
        routes = {
            "/v1/galleries": [{"scope": "fleet", "epoch": 4, "templates": 3}],
            "/v1/galleries/fleet/4/subjects": {"alice": 2, "bob": 1},
        }
        body = json.dumps(routes.get(self.path)).encode()
        self.send_response(200 if self.path in routes else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def gallery_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GalleryApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_gallery_list_does_not_load_torch(
    gallery_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RLLFPR_RECOGNIZER__API_TOKEN", "secret-token")
    output, heavy, code, cpu = _run(["gallery", "list", "--api", gallery_api])
    assert code == 0, output
    assert "alice" in output
    assert "bob" in output
    assert heavy == []
    assert cpu < 1.0
