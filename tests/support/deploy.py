"""The shipped deployment files as the deployment tests read them (Compose merge tags kept)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CONFIG_DIR = DEPLOY / "config"
COMPOSE_DIR = DEPLOY / "compose"


@dataclass(frozen=True)
class Reset:
    """Compose's `!reset` / `!override` merge tags, kept so tests can see them."""

    tag: str
    value: Any


class ComposeLoader(yaml.SafeLoader):
    """YAML loader that understands the Compose merge tags (plain YAML elsewhere)."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return Reset(str(node.tag), value)


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(_tag, _tagged)


def load_documents(path: Path) -> list[Any]:
    return list(yaml.load_all(path.read_text(), Loader=ComposeLoader))


def compose() -> dict[str, Any]:
    documents = load_documents(COMPOSE_DIR / "docker-compose.yml")
    assert len(documents) == 1
    return documents[0]


@dataclass(frozen=True)
class Mount:
    source: str
    target: PurePosixPath


def mounts(service: dict[str, Any]) -> list[Mount]:
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found.append(Mount(source, PurePosixPath(target)))
    return found
