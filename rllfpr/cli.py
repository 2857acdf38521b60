"""The ``rllfpr`` command line. Each service adds its sub-application here when it works."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console

from rllfpr import __version__
from rllfpr.config import ConfigError, load_settings
from rllfpr.keys import bundle, material

app = typer.Typer(
    help="RLLFPR: privacy-preserving face recognition at the edge.", no_args_is_help=True
)
keys_app = typer.Typer(help="Key material and key bundles.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
eval_app = typer.Typer(help="Measure accuracy and privacy.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(eval_app, name="eval")
console = Console()

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config file (else $RLLFPR_CONFIG).")


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)


@app.command()
def version() -> None:
    """Print the RLLFPR version."""
    console.print(__version__)


@config_app.command("show")
def config_show(config: Path | None = ConfigOption) -> None:
    """Print the effective configuration (defaults < file < environment), secrets masked."""
    try:
        settings = load_settings(config)
    except ConfigError as error:
        raise _fail(str(error)) from error
    console.print_json(settings.model_dump_json())


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
        raise _fail(f"refusing to overwrite {', '.join(existing)} (use --force)")
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
        raise _fail(str(error)) from error


RunsOption = typer.Option(Path("runs"), help="Checkpoints and logs go to RUNS/<name>/.")


def _experiment(path: Path) -> Any:
    from pydantic import ValidationError

    from trainer.config import ExperimentConfig

    try:
        return ExperimentConfig.from_yaml(path)
    except (OSError, ValidationError) as error:
        raise _fail(f"invalid experiment config {path}:\n{error}") from error


@app.command("train")
def train_command(
    experiment: Path = typer.Argument(..., exists=True, dir_okay=False, help="Experiment YAML."),
    view: str = typer.Option("scrambled", help="original or scrambled (with key A)."),
    runs: Path = RunsOption,
    config: Path | None = ConfigOption,
) -> None:
    """Train one recognizer (resumes from RUNS/<name>/<view>/checkpoint.pt when present)."""
    from trainer.data import split_per_identity
    from trainer.experiment import load_dataset, make_key
    from trainer.train import train

    if view not in ("original", "scrambled"):
        raise _fail(f"unknown view {view!r}: use original or scrambled")
    settings = load_settings(config)
    spec = _experiment(experiment)
    data = load_dataset(spec, settings.data, settings.cache)
    train_index, _ = split_per_identity(data.labels, spec.data.test_fraction, spec.data.split_seed)
    train_data = data.subset(train_index)
    key = make_key(spec, spec.key_seeds[0], train_data.faces) if view == "scrambled" else None
    run_dir = runs / spec.name / ("original" if view == "original" else "scrambled-key-a")
    result = train(spec, train_data, view, key, run_dir)  # type: ignore[arg-type]
    console.print(f"trained in {result.seconds:.0f} s; last epoch: {result.history[-1]}")


@eval_app.command("accuracy")
def eval_accuracy(
    experiment: Path = typer.Argument(..., exists=True, dir_okay=False, help="Experiment YAML."),
    runs: Path = RunsOption,
    output: Path | None = typer.Option(None, help="Also copy accuracy.json here."),
    config: Path | None = ConfigOption,
) -> None:
    """Closed-set identification, original vs scrambled trained identically, plus
    revocability across two keys and the uint8 conversion's cost; writes accuracy.json."""
    from trainer.experiment import run_accuracy

    settings = load_settings(config)
    spec = _experiment(experiment)
    command = f"rllfpr eval accuracy {experiment}"
    result = run_accuracy(spec, settings.data, settings.cache, runs, command)
    text = json.dumps(result, indent=2) + "\n"
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    console.print(_accuracy_table(result))
    console.print(f"written: {runs / spec.name / 'accuracy.json'}")


def _accuracy_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=result["protocol"])
    if "verification_view1" in result:
        for column in ("faces", "accuracy", "ROC AUC", "TAR@FAR 1%", "TAR@FAR 0.1%"):
            table.add_column(column)
        for name, row in result["verification_view1"].items():
            table.add_row(
                name,
                f"{row['accuracy']:.1%}",
                f"{row['roc_auc']:.3f}",
                f"{row['tar_at_far_1e-2']:.1%}",
                f"{row['tar_at_far_1e-3']:.1%}",
            )
        return table
    closed = result["closed_set"]
    rows = {
        "original": closed["original"],
        "scrambled (key A)": closed["scrambled"],
        "scrambled, float32 input": closed["scrambled_float32_input"],
        "key-A model+gallery, key-B probes": closed["cross_key"][
            "key_a_recognizer_and_gallery_key_b_probes"
        ],
        "key-B model, stolen key-A gallery": closed["cross_key"][
            "key_b_recognizer_stolen_key_a_gallery"
        ],
    }
    for column in ("faces", "accuracy (95% CI)", "misidentification", "macro F1", "chance"):
        table.add_column(column)
    for name, row in rows.items():
        low, high = row["accuracy_ci95"]
        table.add_row(
            name,
            f"{row['accuracy']:.1%} ({low:.1%}-{high:.1%})",
            f"{row['misidentification']:.2%}",
            f"{row['f1']:.3f}",
            f"{row['chance']:.1%}",
        )
    return table


@eval_app.command("screen")
def eval_screen(
    dataset: str = typer.Option("att_orl", help="Folder under the data root, or a path."),
    alignment: str = typer.Option("resize", help="mtcnn (detect + 5-point align) or resize."),
    size: int = typer.Option(64, help="Side of the aligned face, pixels."),
    levels: int = typer.Option(5, min=1, max=6, help="SN pool/unpool levels."),
    min_images: int = typer.Option(1, help="Keep identities with at least this many images."),
    max_identities: int | None = typer.Option(None, help="Keep at most this many identities."),
    max_images: int | None = typer.Option(None, help="Use at most this many images each."),
    seed: int = typer.Option(0, help="Seed of the split and of the SN key."),
    output: Path = typer.Option(Path("runs/screen"), help="Where screen.json and samples.png go."),
    config: Path | None = ConfigOption,
) -> None:
    """Instant screen of a fresh SN key, no training: raw-pixel nearest-neighbour accuracy and
    adjacent-pixel correlation, original vs scrambled faces, on a per-identity held-out split."""
    from rllfpr.models.scrambler import ScramblerConfig
    from trainer.screen import ScreenSpec, run_screen, write_screen

    settings = load_settings(config)
    root = Path(dataset) if Path(dataset).is_dir() else settings.data / dataset
    if alignment not in ("mtcnn", "resize"):
        raise _fail(f"unknown alignment {alignment!r}: use mtcnn or resize")
    widths = (16, 32, 64, 64, 64, 64)[:levels]
    spec = ScreenSpec(
        dataset=root,
        cache=settings.cache,
        method=alignment,  # type: ignore[arg-type]
        size=size,
        min_images=min_images,
        max_identities=max_identities,
        max_images=max_images,
        seed=seed,
        scrambler=ScramblerConfig(levels=levels, widths=widths, input_size=size),
    )
    try:
        result, sheet = run_screen(spec)
    except (FileNotFoundError, ValueError) as error:
        raise _fail(str(error)) from error
    write_screen(result, sheet, output)
    _print_screen(result)
    console.print(f"written: {output / 'screen.json'}, {output / 'samples.png'}")


def _print_screen(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        title=f"{result['dataset']}: {result['identities']} people, "
        f"{result['train_images']} train / {result['test_images']} held-out images"
    )
    table.add_column("measure")
    table.add_column("original (grey)", justify="right")
    table.add_column("scrambled", justify="right")
    nn = result["nearest_neighbour_rank1"]
    table.add_row(
        "raw-pixel 1-NN rank-1", f"{nn['original_grayscale']:.1%}", f"{nn['scrambled']:.1%}"
    )
    for direction in ("horizontal", "vertical", "diagonal"):
        corr = result["adjacent_correlation"]
        table.add_row(
            f"adjacent-pixel correlation, {direction}",
            f"{corr['original_grayscale'][direction]:.3f}",
            f"{corr['scrambled'][direction]:.3f}",
        )
    table.add_row("chance (majority class)", f"{result['chance']['majority_class']:.1%}", "")
    console.print(table)


if __name__ == "__main__":
    app()
