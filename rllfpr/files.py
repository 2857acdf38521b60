"""Private files: written atomically with mode 0600, in directories of mode 0700.

Key material, key rings, vaults, bundles and engines hold secrets; every program writes them
through ``write_private``, so a crash leaves the old file or the new one (never a torn one) and
no other user can read them at any moment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def private_dir(path: Path) -> Path:
    """``path`` as a directory of mode 0700 (created with its parents when missing)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600. With ``exclusive``, refuse (with
    ``FileExistsError``) when ``path`` exists, without a moment where it is half written."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:  # mkstemp creates it 0600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(temporary, path)  # fails if path exists
        else:
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def remove(path: Path) -> None:
    """Delete a file or a directory tree; absent is fine."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
