"""The ``rllfpr`` command line: the composition root, and the one core module that imports the
services' command modules (``edge_agent.cli``, ``recognizer_service.cli``,
``enrollment_station.cli``, ``trainer.cli``, ``trainer.keys_cli``); those import their heavy
dependencies only when a command runs."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.cli import agent_app
from enrollment_station.cli import enroll, keep, reenroll
from recognizer_service.cli import gallery_app, recognizer_app
from rllfpr import __version__
from rllfpr.cli_support import ConfigOption, console, fail, settings_or_fail
from rllfpr.keys import bundle, material
from trainer.cli import eval_app, recognizer_calibrate, train
from trainer.keys_cli import keys_activate, keys_revoke, keys_rotate, keys_status

app = typer.Typer(
    help="RLLFPR: privacy-preserving face recognition at the edge.", no_args_is_help=True
)
keys_app = typer.Typer(help="Key material and key bundles.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(config_app, name="config")


@app.command()
def version() -> None:
    """Print the RLLFPR version."""
    console.print(__version__)


@config_app.command("show")
def config_show(config: Path | None = ConfigOption) -> None:
    """Print the effective configuration (defaults < file < environment), secrets masked."""
    console.print_json(settings_or_fail(config).model_dump_json())


@keys_app.command("init")
def keys_init(
    directory: Path = typer.Argument(..., help="Where to write the key files (created 0700)."),
    force: bool = typer.Option(False, help="Overwrite existing key files."),
) -> None:
    """Create the trainer's Ed25519 signing key and a fleet AES-256-GCM key.

    signing.pem stays with the trainer (offline); signing.pub.pem goes to every agent and
    recognizer; fleet.key goes to every process of the scope, over a secure channel.
    """
    paths = {
        "signing": directory / "signing.pem",
        "public": directory / "signing.pub.pem",
        "fleet": directory / "fleet.key",
    }
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise fail(f"refusing to overwrite {', '.join(existing)} (use --force)")
    signing_key = Ed25519PrivateKey.generate()
    fleet_key = material.FleetKey.generate()
    material.save_signing_key(signing_key, paths["signing"])
    material.save_public_key(signing_key.public_key(), paths["public"])
    material.save_fleet_key(fleet_key, paths["fleet"])
    console.print(
        f"signer id {material.signer_id(signing_key.public_key())}, fleet key id {fleet_key.key_id}"
    )
    for role, path in paths.items():
        console.print(f"  {role:8} {path}")


@keys_app.command("inspect")
def keys_inspect(
    bundle_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A key bundle."),
    trusted: list[Path] = typer.Option([], "--trusted", help="Public key(s) to verify with."),
    fleet_key: Path | None = typer.Option(None, help="Fleet key to check decryption with."),
) -> None:
    """Show a bundle's public header; with --trusted and --fleet-key, verify it fully."""
    data = bundle_file.read_bytes()
    try:
        header = bundle.read_header(data)
        console.print_json(header.model_dump_json())
        if trusted and fleet_key:
            keys = material.load_fleet_key(fleet_key)
            opened = bundle.open_bundle(
                data, material.trusted_signers(trusted), {keys.key_id: keys}
            )
            shapes = {name: list(array.shape) for name, array in opened.state.items()}
            console.print(
                f"[green]verified[/green]: signature and decryption OK, "
                f"{len(shapes)} tensors, sha256 {opened.sha256}"
            )
            console.print_json(json.dumps(shapes))
    except (bundle.BundleError, material.KeyMaterialError) as error:
        raise fail(str(error)) from error


@app.command("demo")
def demo(
    output: Path = typer.Option(Path("runs/demo"), help="Where report.md, report.json go."),
    config: Path | None = ConfigOption,
    web_console: bool = typer.Option(
        True,
        "--console/--no-console",
        help="Serve the operator's console (address and token printed) during the demo and "
        "after it, until Ctrl-C.",
    ),
) -> None:
    """The whole pipeline on this machine: local Mosquitto and Redis 8, trainer-built key
    epochs, enrollment, an edge agent replaying LFW photos, live events, a key rotation."""
    from demo.run import DemoError, run
    from rllfpr.local_services import ServiceError

    settings = settings_or_fail(config)
    try:
        run(settings, output, console, web_console=web_console)
    except (ServiceError, FileNotFoundError, TimeoutError, DemoError) as error:
        raise fail(f"demo stopped: {error}") from error


app.command("train")(train)
keys_app.command("rotate")(keys_rotate)
keys_app.command("activate")(keys_activate)
keys_app.command("revoke")(keys_revoke)
keys_app.command("status")(keys_status)
app.add_typer(eval_app, name="eval")
app.add_typer(agent_app, name="agent")
recognizer_app.command("calibrate")(recognizer_calibrate)
app.add_typer(recognizer_app, name="recognizer")
gallery_app.command("enroll")(enroll)
gallery_app.command("keep")(keep)
gallery_app.command("reenroll")(reenroll)
app.add_typer(gallery_app, name="gallery")

if __name__ == "__main__":
    app()
