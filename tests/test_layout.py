"""The import directions of the tree (README, Layout): every package imports the core, no service
imports another, the core imports no service (but for the command-line composition root), and
the product trainer does not import its studies."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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
