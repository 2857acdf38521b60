from __future__ import annotations

from rllfpr.wire.schemas import DEFAULT_DIRECTORY, SCHEMA_MODELS, render


def test_committed_json_schemas_are_current() -> None:
    stale = [
        name
        for name, model in SCHEMA_MODELS.items()
        if not (path := DEFAULT_DIRECTORY / f"{name}.schema.json").is_file()
        or path.read_text() != render(model)
    ]
    assert stale == [], f"regenerate with: python -m rllfpr.wire.schemas  (stale: {stale})"
