"""JSON Schema files of the wire payloads, generated from the pydantic models.

``python -m rllfpr.wire.schemas [DIR]`` rewrites them (default ``docs/schemas``); a test fails
when the committed files are stale.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import BaseModel

from rllfpr.keys.envelope import SignedEnvelope
from rllfpr.wire.messages import (
    AgentStatus,
    FaceHeader,
    KeyAnnouncement,
    RecognitionEvent,
    Revocation,
)

SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "face-header": FaceHeader,
    "recognition-event": RecognitionEvent,
    "key-announcement": KeyAnnouncement,
    "revocation": Revocation,
    "signed-envelope": SignedEnvelope,
    "agent-status": AgentStatus,
}
DEFAULT_DIRECTORY = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def render(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path = DEFAULT_DIRECTORY) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMA_MODELS.items():
        path = directory / f"{name}.schema.json"
        path.write_text(render(model))
        written.append(path)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path, nargs="?", default=DEFAULT_DIRECTORY)
    for path in write_schemas(parser.parse_args().directory):
        print(path)
