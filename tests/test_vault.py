"""The enrollment station's vault: encrypted at rest, bound to its subject, re-alignable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from enrollment_station.vault import (
    PhotoVault,
    VaultError,
    VaultFace,
    create_vault_key,
    face_region,
    load_vault_key,
)
from rllfpr.faces.detect import Detection
from rllfpr.keys.material import KeyMaterialError

LANDMARKS = np.array([[38, 52], [74, 52], [56, 72], [42, 92], [70, 92]], np.float32)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (160, 140, 3), dtype=np.uint8)


def _detection() -> Detection:
    return Detection(
        np.array([30.0, 40.0, 82.0, 104.0]), 0.99, LANDMARKS + np.array([10, 8], np.float32)
    )


@pytest.fixture
def vault(tmp_path: Path) -> PhotoVault:
    create_vault_key(tmp_path / "vault.key")
    return PhotoVault(tmp_path / "vault", load_vault_key(tmp_path / "vault.key"))


def test_region_realigns_like_the_whole_photo() -> None:
    image = _image(0)
    detection = _detection()
    face = face_region(image, detection, "a.jpg")
    from rllfpr.faces.align import align

    for size in (64, 112):  # same warp up to float rounding of the shifted landmarks
        difference = np.abs(
            face.aligned(size).astype(int) - align(image, detection.landmarks, size)
        )
        assert difference.max() <= 1
        assert (difference > 0).mean() < 0.005
    assert face.region.shape[0] < image.shape[0]


def test_faces_round_trip_and_accumulate(vault: PhotoVault) -> None:
    first = face_region(_image(1), _detection(), "1.jpg")
    second = face_region(_image(2), _detection(), "2.jpg")
    assert vault.add("alice", [first]) == 1
    assert vault.add("alice", [second]) == 2
    faces = vault.faces("alice")
    assert [f.source for f in faces] == ["1.jpg", "2.jpg"]
    assert np.array_equal(faces[1].region, second.region)
    assert np.allclose(faces[0].landmarks, first.landmarks)
    assert vault.subjects() == ["alice"]


def test_nothing_readable_at_rest(vault: PhotoVault) -> None:
    face = face_region(_image(3), _detection(), "secret-name.jpg")
    vault.add("bob", [face])
    path = vault.directory / "bob.rlpv"
    data = path.read_bytes()
    assert b"secret-name" not in data
    assert face.region.tobytes()[:64] not in data
    assert path.stat().st_mode & 0o077 == 0


def test_tampered_renamed_or_wrong_key_files_are_refused(vault: PhotoVault, tmp_path: Path) -> None:
    vault.add("carol", [face_region(_image(4), _detection(), "c.jpg")])
    path = vault.directory / "carol.rlpv"
    path.rename(vault.directory / "dave.rlpv")
    with pytest.raises(VaultError, match="does not decrypt"):
        vault.faces("dave")
    (vault.directory / "dave.rlpv").rename(path)
    other = PhotoVault(vault.directory, os.urandom(32))
    with pytest.raises(VaultError, match="does not decrypt"):
        other.faces("carol")
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(VaultError, match="does not decrypt"):
        vault.faces("carol")
    with pytest.raises(VaultError, match="no photos"):
        vault.faces("nobody")


def test_erase_forgets_the_subject(vault: PhotoVault) -> None:
    vault.add("erin", [face_region(_image(5), _detection(), "e.jpg")])
    assert vault.erase("erin")
    assert vault.subjects() == []
    assert not vault.erase("erin")


def test_vault_key_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    create_vault_key(path)
    with pytest.raises(FileExistsError):
        create_vault_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyMaterialError, match="readable by others"):
        load_vault_key(path)
    assert isinstance(VaultFace, type)


def test_station_keeps_photos_and_reenrolls_them_under_a_new_epoch(
    mqtt_broker: object, data_root: Path, tmp_path: Path
) -> None:

    import yaml
    from typer.testing import CliRunner

    from rllfpr.cli import app
    from rllfpr.wire import codec, topics
    from tests.support.agent import SMALL_SN, KeyFactory, self_learned
    from tests.support.mqtt import Capture, wait_until

    keys = KeyFactory(tmp_path)
    network = self_learned(
        SMALL_SN.model_copy(update={"input_size": 64}), 5, _image(9)[None, :64, :64]
    )
    bundle_file = tmp_path / "epoch5.rlkb"
    bundle_file.write_bytes(keys.bundle(network, 5))
    endpoint = mqtt_broker
    config = tmp_path / "station.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mqtt": {"host": endpoint.host, "port": endpoint.port},  # type: ignore[attr-defined]
                "keys": keys.settings(tmp_path / "station-keys").model_dump(mode="json"),
            }
        )
    )
    watch = Capture(endpoint, topics.ALL_ENROLLMENTS, name="watch")  # type: ignore[arg-type]
    photos = data_root / "lfw" / "Colin_Powell"
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in sorted(photos.glob("*.jpg"))[:3]:
        (folder / photo.name).symlink_to(photo)
    runner = CliRunner()
    vault = ["--vault", str(tmp_path / "vault"), "--vault-key", str(tmp_path / "vault.key")]
    kept = runner.invoke(
        app, ["gallery", "keep", str(folder), "--subject", "colin", *vault, "--create-key"]
    )
    assert kept.exit_code == 0, kept.output
    assert "kept 3 faces" in kept.output
    sent = runner.invoke(
        app,
        ["gallery", "reenroll", "--bundle", str(bundle_file), *vault, "--site", "hq",
         "--config", str(config)],
    )  # fmt: skip
    assert sent.exit_code == 0, sent.output
    try:
        wait_until(lambda: len(watch.all()) >= 3, timeout_s=10)
    finally:
        watch.close()
    headers = [codec.decode(message.payload).header for message in watch.all()]
    assert [(h.subject, h.key_epoch, h.purpose) for h in headers] == [("colin", 5, "enroll")] * 3
    assert all(h.height == 64 for h in headers)
