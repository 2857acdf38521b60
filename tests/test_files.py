"""The one private-file writer: atomic, mode 0600, parents 0700, nothing left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rllfpr.files import private_dir, remove, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_private_file_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "secret.key"
    write_private(path, b"one")
    assert path.read_bytes() == b"one"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret.key"]


def test_rewriting_replaces_a_widely_readable_file_with_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new"
    assert mode(path) == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    write_private(path, b"old")

    def broken(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_private(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_exclusive_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    write_private(path, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_private(path, b"second", exclusive=True)
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["vault.key"]


def test_private_dir_tightens_an_existing_directory_and_remove_takes_trees(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    assert mode(private_dir(folder)) == 0o700
    write_private(folder / "x" / "y.bin", b"1")
    remove(folder / "x")
    remove(folder / "absent")
    assert list(folder.iterdir()) == []
