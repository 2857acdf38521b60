"""``rllfpr train``, ``rllfpr eval`` and ``rllfpr recognizer calibrate``: the trainer's commands
(``rllfpr.cli`` puts ``calibrate`` beside the recognizer's own commands)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from rllfpr.cli_support import ConfigOption, console, fail, settings_or_fail

eval_app = typer.Typer(help="Measure accuracy and privacy.", no_args_is_help=True)

RunsOption = typer.Option(Path("runs"), help="Checkpoints and logs go to RUNS/<name>/.")


def _experiment(path: Path) -> Any:
    from pydantic import ValidationError

    from trainer.config import ExperimentConfig

    try:
        return ExperimentConfig.from_yaml(path)
    except (OSError, ValidationError) as error:
        raise fail(f"invalid experiment config {path}:\n{error}") from error


def train(
    experiment: Path = typer.Argument(..., exists=True, dir_okay=False, help="Experiment YAML."),
    view: str = typer.Option("scrambled", help="original or scrambled (with key A)."),
    runs: Path = RunsOption,
    config: Path | None = ConfigOption,
) -> None:
    """Train one recognizer (resumes from RUNS/<name>/<view>/checkpoint.pt when present): the
    model ``rllfpr eval accuracy`` trains for that view, so the two views can train in two
    processes at once and ``eval accuracy`` then finds them finished."""
    from trainer.data import split_per_identity
    from trainer.experiment import load_dataset, load_view1_for, make_key
    from trainer.train import train as run_training

    if view not in ("original", "scrambled"):
        raise fail(f"unknown view {view!r}: use original or scrambled")
    settings = settings_or_fail(config)
    spec = _experiment(experiment)
    if spec.protocol == "verification_view1":
        train_data = load_view1_for(spec, settings.data, settings.cache).train
    else:
        data = load_dataset(spec, settings.data, settings.cache)
        train_index, _ = split_per_identity(
            data.labels, spec.data.test_fraction, spec.data.split_seed
        )
        train_data = data.subset(train_index)
    key = make_key(spec, spec.key_seeds[0], train_data.faces) if view == "scrambled" else None
    teacher = None
    if view == "scrambled" and spec.loss.distill_weight:
        console.print("distillation: training (or loading) the original-face teacher first")
        original = run_training(spec, train_data, "original", None, runs / spec.name / "original")
        teacher = original.recognizer
    run_dir = runs / spec.name / ("original" if view == "original" else "scrambled-key-a")
    result = run_training(
        spec,
        train_data,
        view,  # type: ignore[arg-type]
        key,
        run_dir,
        teacher=teacher,
    )
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

    settings = settings_or_fail(config)
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
    table = Table(title=result["protocol"])
    if "verification_view1" in result:
        columns = ("faces", "accuracy", "10-fold accuracy", "ROC AUC", "TAR@FAR 1%", "TAR@FAR 0.1%")
        for column in columns:
            table.add_column(column)
        view1 = result["verification_view1"]
        rows = {"original": view1["original"], "scrambled (key A)": view1["scrambled"]}
        if "plain_photo_pairs" in view1:  # runs before the row existed lack it
            rows["key-A model's scrambled face, original model's plain photo"] = view1[
                "plain_photo_pairs"
            ]["key_a_recognizer_scrambled_first_original_recognizer_plain_second"]
        for name, row in rows.items():
            table.add_row(
                name,
                f"{row['accuracy']:.1%}",
                f"{row['accuracy_10fold']:.1%}" if "accuracy_10fold" in row else "-",
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
    if "key_a_templates_key_b_recognizer_probes" in closed["cross_key"]:  # added later
        rows["key-A templates, key-B model's probes"] = closed["cross_key"][
            "key_a_templates_key_b_recognizer_probes"
        ]
    if "plain_photo_gallery" in closed:  # runs before the row existed lack it
        rows["key-A model's probes, original model's plain-photo gallery"] = closed[
            "plain_photo_gallery"
        ]["key_a_recognizer_probes_original_recognizer_gallery"]
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


@eval_app.command("teacher")
def eval_teacher(
    output: Path = typer.Option(Path("docs/results/teacher/lfw-pairs.json"), help="Result JSON."),
    whiten: float = typer.Option(0.0, min=0.0, max=1.0, help="Whitening of the targets."),
    config: Path | None = ConfigOption,
) -> None:
    """The face teacher's own 10-fold accuracy on LFW pairs.txt with the trainer's pipeline
    (the ceiling of every student); photos it has not described yet are described and cached
    (about 7 per second on two busy cores)."""
    from trainer import hardware
    from trainer.benchmarks import teacher_lfw_pairs
    from trainer.teacher import TEACHER_PIPELINE

    settings = settings_or_fail(config)
    result = teacher_lfw_pairs(settings.data / "lfw", settings.cache, whiten) | {
        "pipeline": TEACHER_PIPELINE,
        "command": f"rllfpr eval teacher --whiten {whiten} --output {output}",
        "hardware": hardware.describe(None),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("raw", "centered"):
        row = result[name]
        console.print(
            f"{name}: {row['all_pairs_10fold']:.2%} of all {result['pairs']} pairs, "
            f"{row['pairs_with_faces_10fold']:.2%} of those with faces; "
            f"AUC {row['roc_auc_pairs_with_faces']:.4f}"
        )
    console.print(f"written: {output}")


@eval_app.command("privacy")
def eval_privacy(
    experiment: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Privacy config YAML (configs/privacy-*.yaml)."
    ),
    runs: Path = RunsOption,
    output: Path = typer.Option(
        Path("docs/results"), help="Writes privacy.json, privacy.md and privacy/*.png here."
    ),
    config: Path | None = ConfigOption,
) -> None:
    """The paper's privacy metrics and baselines side by side, plus inversion, linkage and
    revocation attacks; writes the report, its JSON and its figures."""
    from pydantic import ValidationError

    from trainer.studies.privacy.config import PrivacyConfig
    from trainer.studies.privacy.evaluation import run_privacy
    from trainer.studies.privacy.goals import check
    from trainer.studies.privacy.report import write

    settings = settings_or_fail(config)
    try:
        spec = PrivacyConfig.from_yaml(experiment)
    except (OSError, ValidationError) as error:
        raise fail(f"invalid privacy config {experiment}:\n{error}") from error
    command = f"rllfpr eval privacy {experiment}"
    try:
        result, figures = run_privacy(spec, settings.data, settings.cache, runs, command)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from error
    markdown = write(result, figures, output)
    for goal in check(result):
        status = "met" if goal.met else f"missed by {goal.shortfall:.3f}"
        console.print(f"{goal.name}: {goal.measured:.3f} ({status})")
    console.print(f"written: {markdown}, {markdown.with_suffix('.json')}")


@eval_app.command("screen")
def eval_screen(
    dataset: str = typer.Option("att_orl", help="Folder under the data root, or a path."),
    alignment: str = typer.Option("resize", help="mtcnn (detect + 5-point align) or resize."),
    size: int = typer.Option(64, help="Side of the aligned face, pixels."),
    levels: int = typer.Option(5, min=1, max=6, help="SN pool/unpool levels."),
    width: int = typer.Option(
        16, min=1, help="Channels of the first level (doubling, capped at 4x)."
    ),
    convs_per_level: int = typer.Option(1, min=1, max=3, help="conv+BN+ReLU blocks per level."),
    kernels: str = typer.Option("normal", help="Kernel distribution: normal or uniform."),
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
    from trainer.data import dataset_root
    from trainer.screen import ScreenSpec, run_screen, write_screen

    settings = settings_or_fail(config)
    root = dataset_root(dataset, settings.data)
    if alignment not in ("mtcnn", "resize"):
        raise fail(f"unknown alignment {alignment!r}: use mtcnn or resize")
    if kernels not in ("normal", "uniform"):
        raise fail(f"unknown kernel distribution {kernels!r}: use normal or uniform")
    widths = tuple(width * min(2**level, 4) for level in range(levels))
    spec = ScreenSpec(
        dataset=root,
        cache=settings.cache,
        method=alignment,  # type: ignore[arg-type]
        size=size,
        min_images=min_images,
        max_identities=max_identities,
        max_images=max_images,
        seed=seed,
        scrambler=ScramblerConfig(
            levels=levels,
            widths=widths,
            convs_per_level=convs_per_level,
            kernel_distribution=kernels,
            input_size=size,
        ),
    )
    try:
        result, sheet = run_screen(spec)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from error
    write_screen(result, sheet, output)
    _print_screen(result)
    console.print(f"written: {output / 'screen.json'}, {output / 'samples.png'}")


def _print_screen(result: dict[str, Any]) -> None:
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


def recognizer_calibrate(
    experiment: Path = typer.Argument(..., exists=True, dir_okay=False, help="Experiment YAML."),
    runs: Path = typer.Option(Path("runs"), help="Where the experiment's runs are (or go)."),
    output: Path = typer.Option(
        Path("docs/results/openset-lfw.json"), help="Results JSON (a .md is written beside)."
    ),
    target_fpir: float = typer.Option(0.1, min=0.0, max=1.0, help="FPIR to calibrate for."),
    seed: int = typer.Option(0, help="Seed of the split of people."),
    publish_epoch: int | None = typer.Option(
        None, help="Also publish the scrambled recognizer with its calibration as this epoch."
    ),
    scope: str = typer.Option("fleet", help="Key scope when publishing."),
    config: Path | None = ConfigOption,
) -> None:
    """Open-set identification on LFW people never seen in training: calibrate the threshold on
    some people, report FNIR/FPIR on others (original and scrambled faces)."""
    from trainer.studies.openset import markdown, run_study

    settings = settings_or_fail(config)
    command = f"rllfpr recognizer calibrate {experiment} --target-fpir {target_fpir} --seed {seed}"
    result = run_study(experiment, settings, runs, target_fpir, seed, command, publish_epoch, scope)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(result))
    console.print_json(json.dumps(result["test"]))
    console.print(f"written: {output} and {output.with_suffix('.md')}")
