"""The import directions of the tree (README, Layout): every package imports the core, no service
imports another, the core imports no service (but for the command-line composition root), and
the product trainer does not import its studies."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
CORE = "rllfpr"
SERVICES = ("edge_agent", "recognizer_service", "enrollment_station", "trainer")
ANYTHING = ("demo", "benchmarks", "tests")
# rllfpr.cli assembles the ``rllfpr`` command: it alone may import the services' command modules.
COMPOSITION_ROOT = "rllfpr.cli"
COMMAND_MODULES = {
    "edge_agent.cli",
    "recognizer_service.cli",
    "enrollment_station.cli",
    "trainer.cli",
    "trainer.keys_cli",
    "demo.run",
}
STUDIES = "trainer.studies"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_imports(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    ours = (CORE, *SERVICES, *ANYTHING)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found |= {name for name in names if name.split(".")[0] in ours}
    return found


def graph() -> dict[str, set[str]]:
    return {
        module_name(path): our_imports(path)
        for package in (CORE, *SERVICES, "demo")
        for path in sorted((REPO / package).rglob("*.py"))
    }


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def allowed(importer: str, imported: str) -> bool:
    top = importer.split(".")[0]
    target = imported.split(".")[0]
    if top == "demo" or target == CORE:
        return True
    if top == CORE:
        return importer == COMPOSITION_ROOT and imported in COMMAND_MODULES
    if top != target:
        return False
    if within(imported, STUDIES) and not within(importer, STUDIES):
        return importer == "trainer.cli"
    return True


def violations() -> list[str]:
    return sorted(
        f"{importer} imports {imported}"
        for importer, imports in graph().items()
        for imported in imports
        if not allowed(importer, imported)
    )


def test_the_graph_sees_imports_at_the_top_and_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "import numpy\nfrom rllfpr.wire import codec\n\n"
        "def f():\n    from trainer.train import embed\n    import edge_agent.agent\n"
    )
    assert our_imports(source) == {"rllfpr.wire", "trainer.train", "edge_agent.agent"}


@pytest.mark.parametrize(
    ("importer", "imported", "expected"),
    [
        ("edge_agent.agent", "rllfpr.wire.codec", True),
        ("edge_agent.agent", "edge_agent.link", True),
        ("recognizer_service.cli", "trainer.train", False),
        ("recognizer_service.pipeline", "edge_agent.prepare", False),
        ("enrollment_station.enrollment", "recognizer_service.gallery", False),
        ("trainer.rotation", "enrollment_station.vault", False),
        ("rllfpr.wire.codec", "edge_agent.agent", False),
        ("rllfpr.cli", "edge_agent.cli", True),
        ("rllfpr.cli", "edge_agent.agent", False),
        ("trainer.rotation", "trainer.studies.design", False),
        ("trainer.cli", "trainer.studies.privacy.report", True),
        ("trainer.studies.design", "trainer.train", True),
        ("demo.run", "recognizer_service.service", True),
    ],
)
def test_the_rules(importer: str, imported: str, expected: bool) -> None:
    assert allowed(importer, imported) is expected


def test_every_import_follows_the_rules() -> None:
    assert violations() == []


def test_the_image_holds_every_package_the_command_line_imports() -> None:
    dockerfile = (REPO / "deploy" / "compose" / "Dockerfile").read_text()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    needed = {name.split(".")[0] for name in our_imports(REPO / "rllfpr" / "cli.py")} - {"demo"}
    assert needed <= copied


# --- per-role installs -------------------------------------------------------------------------

ROLE_EXTRAS = ("agent", "station", "recognizer", "trainer")
# What a role's install leaves out, by import name: what the other roles alone need.
NOT_INSTALLED = {
    "agent": ("matplotlib", "sklearn", "skimage", "scipy", "fastapi", "uvicorn", "redis", "tqdm"),
    "station": (
        "matplotlib",
        "sklearn",
        "skimage",
        "scipy",
        "fastapi",
        "uvicorn",
        "redis",
        "tqdm",
        "prometheus_client",
    ),
    "recognizer": ("matplotlib", "sklearn", "skimage", "scipy", "tqdm"),
}
# What each role runs: its modules are imported and its commands answer --help.
ROLE_MODULES = {
    "agent": ("edge_agent.agent", "edge_agent.backends", "edge_agent.tensorrt_backend"),
    "station": ("enrollment_station.enrollment", "enrollment_station.vault"),
    "recognizer": ("recognizer_service.service", "recognizer_service.api"),
}
ROLE_COMMANDS = {
    "agent": [["agent", "--help"], ["agent", "run", "--help"]],
    "station": [["gallery", "enroll", "--help"], ["gallery", "reenroll", "--help"]],
    "recognizer": [["recognizer", "run", "--help"], ["gallery", "list", "--help"]],
}
PACKAGE_OF = {  # distribution name -> import name, where they differ
    "scikit-learn": "sklearn",
    "scikit-image": "skimage",
    "prometheus-client": "prometheus_client",
    "opencv-python-headless": "cv2",
    "pyyaml": "yaml",
    "paho-mqtt": "paho",
    "pydantic-settings": "pydantic_settings",
}


def requirement_names(requirements: list[str]) -> set[str]:
    names = {re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0] for requirement in requirements}
    return {PACKAGE_OF.get(name.lower(), name.lower()) for name in names}


def project() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return dict(tomllib.load(handle)["project"])


@pytest.mark.parametrize("role", sorted(NOT_INSTALLED))
def test_a_role_install_pulls_none_of_the_other_roles_packages(role: str) -> None:
    extras = project()["optional-dependencies"]
    installed = requirement_names(project()["dependencies"] + extras[role])
    assert not installed & set(NOT_INSTALLED[role])
    assert set(extras) >= {*ROLE_EXTRAS, "dev"}


def test_setup_and_the_image_install_every_role() -> None:
    setup = (REPO / "scripts" / "setup").read_text()
    assert f"[{','.join(ROLE_EXTRAS)},dev]" in setup
    dockerfile = (REPO / "deploy" / "compose" / "Dockerfile").read_text()
    assert f'".[{",".join(ROLE_EXTRAS)}]"' in dockerfile


_ROLE_CHILD = """
import importlib.abc, json, sys
blocked = set(json.loads(sys.argv[1]))

class NotInstalled(importlib.abc.MetaPathFinder):
    \"\"\"Finds nothing of a blocked package, as if it were not installed.\"\"\"

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            return None
        return self.finder.find_spec(name, path, target)

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()

sys.meta_path[:] = [NotInstalled(finder) for finder in sys.meta_path]
for module in json.loads(sys.argv[2]):
    importlib.import_module(module)
from rllfpr.cli import app
for arguments in json.loads(sys.argv[3]):
    sys.argv = ["rllfpr", *arguments]
    try:
        app()
    except SystemExit as done:
        assert not done.code, (arguments, done.code)
print("ROLE-OK")
"""


@pytest.mark.slow
@pytest.mark.parametrize("role", sorted(ROLE_MODULES))
def test_a_role_runs_without_the_other_roles_packages(role: str) -> None:
    """Each role's modules import, and its commands answer, with the packages its install
    leaves out made unimportable."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _ROLE_CHILD,
            json.dumps(NOT_INSTALLED[role]),
            json.dumps(ROLE_MODULES[role]),
            json.dumps(ROLE_COMMANDS[role]),
        ],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO), "COLUMNS": "200"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ROLE-OK" in done.stdout
