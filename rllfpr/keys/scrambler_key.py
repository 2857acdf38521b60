"""Open a key bundle into a ready scrambler network, with the keys this machine is configured with.

Shared by everything that scrambles faces outside the trainer: the enrollment CLI (and the edge
agent). Verification is ``open_bundle``'s: trusted signature first, then decryption with a held
fleet key. The key-ring epoch policy (``KeyRing``) is the caller's business: an enrollment
station legitimately scrambles for a staged epoch and for the active one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from rllfpr.config import KeySettings
from rllfpr.keys.bundle import BundleError, BundleHeader, open_bundle
from rllfpr.keys.material import FleetKey, KeyMaterialError, load_fleet_key, trusted_signers

if TYPE_CHECKING:
    from rllfpr.models.scrambler import ScramblerNetwork


@dataclass(frozen=True)
class ScramblerKey:
    header: BundleHeader  # epoch, scope, recognizer_id of the verified bundle
    network: ScramblerNetwork


def verification_keys(
    keys: KeySettings,
) -> tuple[dict[str, Ed25519PublicKey], dict[str, FleetKey]]:
    """Trusted signers and fleet keys named by the configuration; raises ``KeyMaterialError``."""
    if not keys.trusted_signers:
        raise KeyMaterialError("no trusted signer configured (keys.trusted_signers)")
    if keys.fleet_key_file is None:
        raise KeyMaterialError("no fleet key configured (keys.fleet_key_file)")
    fleet_key = load_fleet_key(keys.fleet_key_file)
    return trusted_signers(keys.trusted_signers), {fleet_key.key_id: fleet_key}


def open_scrambler_bundle(data: bytes, keys: KeySettings) -> ScramblerKey:
    """Verify and decrypt a bundle and build its SN; raises ``BundleError`` with the reason."""
    from rllfpr.models.scrambler import ScramblerNetwork

    trusted, fleet_keys = verification_keys(keys)
    opened = open_bundle(data, trusted, fleet_keys, accept_format_1=keys.accept_format_1)
    try:
        network = ScramblerNetwork.from_key_state(opened.architecture, opened.state)
    except (KeyError, ValueError, RuntimeError) as error:
        raise BundleError(f"bundle state does not fit its SN architecture: {error}") from error
    return ScramblerKey(opened.header, network)
