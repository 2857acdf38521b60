"""The design study (issue 4): SN variants x recognizers x training recipes, run on a GPU.

Two steps, because the GPU machine has neither the datasets nor MTCNN's dependencies:

1. ``python -m trainer.studies.design pack runs/study-pack/lfw.npz`` (here): aligns the LFW
   closed-set subset and LFW View 1 with MTCNN (cached) and stores every aligned face once, as
   JPEG.
2. ``python -m trainer.studies.design run configs/study/design.yaml runs/study-pack/lfw.npz
   OUT`` (on the GPU): screens each variant on the closed-set protocol at the screen size, then
   confirms the best one that passes the privacy screen at full size (closed set with both keys,
   then View 1). Every result is appended to ``OUT/results.jsonl`` as soon as it exists, so a
   time limit keeps what finished; ``python -m trainer.studies.design report`` turns it into the
   table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import cv2
import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rllfpr.faces.pixels import pick_device
from trainer import hardware
from trainer.config import DataConfig, ExperimentConfig, TTAConfig, identity
from trainer.data import (
    AlignedFaces,
    Aligner,
    list_identities,
    load_other_people,
    pick_unlabeled,
    split_per_identity,
)
from trainer.experiment import (
    closed_set_protocol,
    identity_screen,
    make_key,
    output_correlation,
    tta_mean_correlation,
    verification_protocol,
)
from trainer.train import comparable_config
from trainer.verification import Pair, View1Data, load_view1

log = logging.getLogger(__name__)
JPEG_QUALITY = 92
_T = TypeVar("_T")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ConfirmProtocol = Literal["closed_set", "verification_view1"]
_CONFIRM_BUDGET = "confirm_closed_set_budget_s"  # the reason recorded when that budget skips
PLAIN_STAGE_SUFFIX = "-plain"  # an entry recorded before its test-time evaluation


class Variant(Strict):
    name: str = Field(description="Short label of the variant, unique in the study.")
    change: str = Field(description="The one factor changed from the baseline, in words.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Nested ExperimentConfig fields set by this variant."
    )
    models_of: str | None = Field(
        None,
        description="Use the trained models of this variant (same training config; only "
        "evaluation settings such as `tta` may differ) instead of its own run folder.",
    )


class StudyConfig(Strict):
    base: dict[str, Any] = Field(description="The baseline ExperimentConfig (without `name`).")
    variants: list[Variant] = Field(description="Screened in order; the first is the baseline.")
    screen_size: int = Field(64, description="Face size of the screen (aligned faces resized).")
    full_size: int = Field(112, description="Face size of the confirmation runs.")
    view1_size: int | None = Field(
        None, description="Face size of the View 1 confirmation (default: full_size)."
    )
    max_abs_correlation: float = Field(
        0.1, description="Privacy screen: largest |adjacent-pixel correlation| a winner may have."
    )
    screen_budget_s: float = Field(240, description="Stop starting screen variants after this.")
    combine_min_gain: float = Field(
        0.01,
        description="Changes that each raise scrambled accuracy by this much are also screened "
        "together (the `combined` variant).",
    )
    confirm_closed_set_budget_s: float = Field(
        380, description="Skip the full-size closed-set run if it cannot start before this."
    )
    view1_overrides: dict[str, Any] = Field(
        default_factory=dict, description="Extra fields of the full-size View 1 run."
    )
    confirm: bool = Field(
        True,
        description="Confirm the winner at full size (closed set with both keys, then View 1) "
        "after the screen; false for a screen alone (the CPU screen).",
    )
    screen: bool = Field(
        True,
        description="Screen the variants first; false confirms the first variant directly (a "
        "GPU round split into studies that run side by side, one stage each).",
    )
    confirm_protocols: list[ConfirmProtocol] = Field(
        default_factory=lambda: list(get_args(ConfirmProtocol)),
        description="The confirmation's protocols, run in this order.",
    )

    @model_validator(mode="after")
    def _unique_variant_names(self) -> StudyConfig:
        names = [variant.name for variant in self.variants]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"variant names must be unique: {repeated}")
        return self

    @classmethod
    def from_yaml(cls, path: Path) -> StudyConfig:
        return cls.model_validate(yaml.safe_load(path.read_text()))

    def experiment(
        self, variant: Variant, size: int, protocol: str, extra: dict[str, Any] | None = None
    ) -> ExperimentConfig:
        document = _merge(self.base, variant.overrides)
        document = _merge(document, extra or {})
        sizes = {"data": {"size": size}, "recognizer": {"input_size": size}}
        document = _merge(document, sizes | {"protocol": protocol})
        if protocol == "verification_view1":  # View 1's people are all labelled or all probes
            document = _merge(document, {"data": {"unlabeled_faces": 0}})
        run = variant.models_of or variant.name
        return ExperimentConfig.model_validate(document | {"name": f"{run}-{protocol}-{size}"})


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ----------------------------------------------------------------------------- the pack


@dataclass
class Pack:
    """Aligned faces stored once each as JPEG, plus which faces each protocol uses."""

    faces: dict[str, bytes]  # source ("<identity>/<file>") -> JPEG of the aligned RGB face
    parts: dict[str, Any]

    def save(self, path: Path) -> None:
        sources = sorted(self.faces)
        blobs = [self.faces[source] for source in sources]
        offsets = np.cumsum([0] + [len(blob) for blob in blobs])
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            sources=np.array(sources, dtype=str),
            offsets=offsets,
            jpeg=np.frombuffer(b"".join(blobs), np.uint8),
            parts=np.array(json.dumps(self.parts)),
        )

    @classmethod
    def load(cls, path: Path) -> Pack:
        with np.load(path, allow_pickle=False) as archive:
            data, offsets = archive["jpeg"].tobytes(), archive["offsets"]
            faces = {
                str(source): data[offsets[i] : offsets[i + 1]]
                for i, source in enumerate(archive["sources"])
            }
            return cls(faces, json.loads(str(archive["parts"])))

    def aligned(self, sources: list[str], size: int) -> AlignedFaces:
        """Decoded faces of ``sources`` resized to ``size``, labelled by identity."""
        names = sorted({source.split("/")[0] for source in sources})
        label_of = {name: label for label, name in enumerate(names)}
        faces = np.stack([self._decode(source, size) for source in sources])
        labels = np.array([label_of[source.split("/")[0]] for source in sources], np.int64)
        return AlignedFaces(faces, labels, names, list(sources))

    def _decode(self, source: str, size: int) -> np.ndarray:
        bgr = cv2.imdecode(np.frombuffer(self.faces[source], np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"the pack's JPEG of {source} does not decode")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if rgb.shape[0] < size:
            raise ValueError(f"{source} is packed at {rgb.shape[0]} px; {size} px was asked")
        if rgb.shape[0] != size:
            rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(rgb)

    def closed_set(self, size: int, spec: DataConfig | None = None) -> AlignedFaces:
        """The closed-set faces, optionally narrowed as ``spec`` says (people with at least
        ``min_images`` faces in the pack, their first ``max_images``, the first
        ``max_identities`` people), the same selection ``list_identities`` makes of files."""
        sources = self.parts["closed_set"]
        if spec is not None:
            sources = _narrow(sources, spec)
            if not sources:
                raise ValueError(f"no one in the pack has {spec.min_images} closed-set faces")
        return self.aligned(sources, size)

    def unlabeled(self, size: int, spec: DataConfig, people: list[str]) -> AlignedFaces | None:
        """``spec.unlabeled_faces`` faces of people outside ``people``, from the faces packed at
        ``size`` px or more: View 1's training faces (packed at the View 1 size) and the extra
        faces of ``pack --unlabeled N`` (packed at the closed-set size). None when none are
        asked for."""
        if not spec.unlabeled_faces:
            return None
        pool = set()
        if self.parts.get("view1_size", 0) >= size:
            pool |= set(self.parts["view1"]["train"])
        if self.parts.get("closed_set_size", 0) >= size:
            pool |= set(self.parts.get("unlabeled", []))
        chosen = pick_unlabeled(pool, set(people), spec.unlabeled_faces, spec.split_seed)
        if not chosen:
            raise ValueError(
                f"the pack holds no unlabeled faces at {size} px: pack with --unlabeled N"
            )
        return self.aligned(chosen, size)

    def view1(self, size: int) -> View1Data:
        part = self.parts["view1"]

        def pairs(rows: list[list[Any]]) -> list[Pair]:
            return [Pair(first, second, bool(same)) for first, second, same in rows]

        return View1Data(
            self.aligned(part["train"], size),
            self.aligned(part["pair_faces"], size),
            pairs(part["train_pairs"]),
            pairs(part["test_pairs"]),
            part["missing_pairs"],
        )


def _narrow(sources: list[str], spec: DataConfig) -> list[str]:
    by_person: dict[str, list[str]] = {}
    for source in sorted(sources):
        by_person.setdefault(source.split("/")[0], []).append(source)
    kept = [faces for _, faces in sorted(by_person.items()) if len(faces) >= spec.min_images]
    return [source for faces in kept[: spec.max_identities] for source in faces[: spec.max_images]]


def encode_face(face: np.ndarray) -> bytes:
    """An aligned RGB face as the pack's JPEG bytes."""
    bgr = cv2.cvtColor(face, cv2.COLOR_RGB2BGR)
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("cannot encode the face as JPEG")
    return jpeg.tobytes()


def build_pack(
    lfw: Path,
    cache: Path,
    size: int,
    min_images: int,
    view1_size: int | None = None,
    unlabeled: int = 0,
) -> Pack:
    """``view1_size`` (default ``size``) may be smaller: View 1 needs about 11k alignments.
    ``unlabeled``: also this many faces of people outside the closed set, at ``size``, for
    ``data.unlabeled_faces`` at full size."""
    view1_size = view1_size or size
    aligner = Aligner(lfw, cache, size, "mtcnn")
    closed = aligner.load(list_identities(lfw, min_images))
    others = load_other_people(lfw, aligner, set(closed.names), unlabeled, seed=0)
    view1 = load_view1(lfw, Aligner(lfw, cache, view1_size, "mtcnn"))
    pair_sources = sorted(
        {s for p in view1.train_pairs + view1.test_pairs for s in (p.first, p.second)}
    )
    faces: dict[str, bytes] = {}
    for data in (closed, *([others] if others else []), view1.train, view1.pair_faces):
        for source, face in zip(data.sources, data.faces, strict=True):
            if source in faces or (data is view1.pair_faces and source not in pair_sources):
                continue
            faces[source] = encode_face(face)

    def rows(pairs: list[Pair]) -> list[list[Any]]:
        return [[p.first, p.second, p.same] for p in pairs]

    parts = {
        "alignment": f"MTCNN + 5-point similarity alignment, JPEG q{JPEG_QUALITY}",
        "closed_set_size": size,
        "view1_size": view1_size,
        "closed_set": closed.sources,
        "closed_set_min_images": min_images,
        "closed_set_without_face": closed.failures,
        "unlabeled": others.sources if others else [],
        "view1": {
            "train": view1.train.sources,
            "pair_faces": pair_sources,
            "train_pairs": rows(view1.train_pairs),
            "test_pairs": rows(view1.test_pairs),
            "missing_pairs": view1.missing_pairs,
        },
    }
    return Pack(faces, parts)


# ----------------------------------------------------------------------------- the run


def _recipe_key(config: ExperimentConfig) -> str:
    """Identifies an original-face model: experiments with the same key can share it."""
    document = comparable_config(identity(config.model_dump(mode="json")), "original")
    document["optim"]["epochs"] = config.optim.epochs
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:12]


def privacy_screen(config: ExperimentConfig, data: AlignedFaces) -> dict[str, Any]:
    """Adjacent-pixel correlation of key A's output on up to 200 held-out faces; with test-time
    augmentation, also that of the mean of each face's copies, each moved back."""
    train_index, test_index = split_per_identity(
        data.labels, config.data.test_fraction, config.data.split_seed
    )
    key = make_key(config, config.key_seeds[0], data.faces[train_index])
    held_out = data.faces[test_index]
    screen = {"adjacent_correlation": output_correlation(key, held_out)}
    if config.tta.views > 1:
        screen["tta_mean_adjacent_correlation"] = tta_mean_correlation(key, held_out, config.tta)
    return screen


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    if "closed_set" in result:
        closed = result["closed_set"]
        cross = closed["cross_key"]
        return {
            "original": closed["original"]["accuracy"],
            "scrambled": closed["scrambled"]["accuracy"],
            "cross_key": {name: value["accuracy"] for name, value in cross.items()},
            "chance": closed["original"]["chance"],
        }
    view1 = result["verification_view1"]
    return {view: view1[view]["accuracy"] for view in ("original", "scrambled")}


class StudyRun:
    def __init__(
        self, study: StudyConfig, pack: Pack, output: Path, work: Path | None = None
    ) -> None:
        """Results go to ``output``/results.jsonl; checkpoints under ``work`` (default: output)."""
        self.study, self.pack, self.output = study, pack, output
        self.work = work or output
        self.started = time.monotonic()
        self.results_path = output / "results.jsonl"
        output.mkdir(parents=True, exist_ok=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def record(self, entry: dict[str, Any]) -> None:
        entry = entry | {"elapsed_s": round(self.elapsed, 1)}
        with self.results_path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        log.info("%s", json.dumps({k: v for k, v in entry.items() if k != "result"}))

    def closed_set(
        self, variant: Variant, size: int, stage: str, with_key_b: bool
    ) -> dict[str, Any]:
        config = self.study.experiment(variant, size, "closed_set")
        data = self.pack.closed_set(size, config.data)

        def evaluate(spec: ExperimentConfig) -> dict[str, Any]:
            return closed_set_protocol(
                spec,
                data,
                self.work / "runs" / spec.name,
                with_key_b=with_key_b,
                original_dir=self.work / "originals" / _recipe_key(spec),
                unlabeled=self.pack.unlabeled(size, spec.data, data.names),
            )

        return self._evaluated(variant, size, stage, config, evaluate, privacy_screen(config, data))

    def view1(self, variant: Variant, size: int) -> None:
        config = self.study.experiment(
            variant, size, "verification_view1", self.study.view1_overrides
        )

        def evaluate(spec: ExperimentConfig) -> dict[str, Any]:
            return verification_protocol(
                spec,
                self.pack.view1(size),
                self.work / "runs" / spec.name,
                original_dir=self.work / "originals" / _recipe_key(spec),
            )

        self._evaluated(variant, size, "confirm", config, evaluate, screen={})

    def _evaluated(
        self,
        variant: Variant,
        size: int,
        stage: str,
        config: ExperimentConfig,
        evaluate: Callable[[ExperimentConfig], dict[str, Any]],
        screen: dict[str, Any],
    ) -> dict[str, Any]:
        """Train and evaluate ``config`` and record the result. With test-time augmentation the
        plain evaluation is recorded first, as stage ``<stage>-plain``: the 18-copy evaluation
        takes longest, and when a GPU round's time limit stops it the headline is already kept
        (the second GPU round lost three studies' results that way)."""
        started = time.monotonic()

        def record(spec: ExperimentConfig, label: str) -> dict[str, Any]:
            result = evaluate(spec)
            entry = {
                "stage": label,
                "variant": variant.name,
                "change": variant.change,
                "size": size,
                "seconds": round(time.monotonic() - started, 1),  # training included
                "headline": _headline(result),
                **screen,
                "result": result,
            }
            self.record(entry)
            return entry

        if config.tta.views > 1:
            record(config.model_copy(update={"tta": TTAConfig()}), stage + PLAIN_STAGE_SUFFIX)
        return record(config, stage)

    def run(self) -> None:
        self.record({"stage": "start", "hardware": hardware.describe(pick_device("auto"))})
        if not self.study.screen:
            self.confirm(self.study.variants[0])
            return
        screened = []
        for variant in self.study.variants:
            if self.elapsed > self.study.screen_budget_s:
                self.record({"stage": "skipped", "variant": variant.name, "reason": "budget"})
                continue
            entry = self._screen(variant)
            if entry is not None:
                screened.append((variant, entry))
        combined = self.combine(screened)
        if combined is not None and self.elapsed >= self.study.screen_budget_s + 60:
            self.record({"stage": "skipped", "variant": "combined", "reason": combined.change})
        elif combined is not None:
            entry = self._screen(combined)
            if entry is not None:
                screened.append((combined, entry))
        if not screened:
            return
        winner = self.choose(screened)
        self.record({"stage": "chosen", "variant": winner.name})
        if self.study.confirm:
            self.confirm(winner)

    def confirm(self, winner: Variant) -> None:
        full, view1_size = self.study.full_size, self.study.view1_size or self.study.full_size
        for protocol in self.study.confirm_protocols:
            if protocol == "verification_view1":
                self._attempt(winner, lambda: self.view1(winner, view1_size))
            elif self.elapsed < self.study.confirm_closed_set_budget_s:
                self._attempt(winner, lambda: self.closed_set(winner, full, "confirm", True))
            else:
                skip = {"stage": "skipped", "variant": winner.name, "reason": _CONFIRM_BUDGET}
                self.record(skip)

    def _screen(self, variant: Variant) -> dict[str, Any] | None:
        size = self.study.screen_size
        return self._attempt(variant, lambda: self.closed_set(variant, size, "screen", False))

    def _attempt(self, variant: Variant, stage: Callable[[], _T]) -> _T | None:
        """Run one stage; a failure is recorded and the study goes on with the next one (a
        time-limited GPU run should not lose its remaining stages to one variant's error)."""
        try:
            return stage()
        except (ValueError, RuntimeError) as error:
            log.exception("variant %s failed", variant.name)
            self.record({"stage": "failed", "variant": variant.name, "error": str(error)})
            return None

    def combine(self, screened: list[tuple[Variant, dict[str, Any]]]) -> Variant | None:
        """All single changes that beat the baseline's scrambled accuracy by at least
        ``combine_min_gain`` and pass the privacy screen, merged (larger gains win conflicts)."""
        if len(screened) < 2:
            return None
        baseline = screened[0][1]["headline"]["scrambled"]
        gains = [
            (entry["headline"]["scrambled"] - baseline, variant)
            for variant, entry in screened[1:]
            if self._private(entry)
        ]
        helpful = sorted(
            (item for item in gains if item[0] >= self.study.combine_min_gain),
            key=lambda item: item[0],
        )
        if len(helpful) < 2:
            return None
        overrides: dict[str, Any] = {}
        for _, variant in helpful:
            overrides = _merge(overrides, variant.overrides)
        names = [variant.name for _, variant in reversed(helpful)]
        return Variant(name="combined", change=" + ".join(names), overrides=overrides)

    def _private(self, entry: dict[str, Any]) -> bool:
        limit = self.study.max_abs_correlation
        return all(abs(r) <= limit for r in entry["adjacent_correlation"].values())

    def choose(self, screened: list[tuple[Variant, dict[str, Any]]]) -> Variant:
        """Best scrambled accuracy among variants whose output passes the privacy screen."""
        eligible = [(v, e) for v, e in screened if self._private(e)] or screened
        return max(eligible, key=lambda item: item[1]["headline"]["scrambled"])[0]


def accuracy_run(
    study: StudyConfig, entries: list[dict[str, Any]], variant: str, command: str
) -> dict[str, Any]:
    """A study's last recorded result of ``variant`` as an ``rllfpr eval accuracy`` file (for
    ``python -m trainer.report``): the protocol's result, its hardware, the command and the
    experiment config it ran."""
    recorded = [e for e in entries if e.get("variant") == variant and "result" in e]
    if not recorded:
        raise ValueError(f"no recorded result of variant {variant!r}")
    entry = recorded[-1]
    protocol = "verification_view1" if "verification_view1" in entry["result"] else "closed_set"
    extra = study.view1_overrides if protocol == "verification_view1" else None
    spec = next(v for v in study.variants if v.name == variant)
    config = study.experiment(spec, entry["size"], protocol, extra)
    hardware_name = next(e["hardware"] for e in entries if e["stage"] == "start")
    return entry["result"] | {
        "hardware": hardware_name,
        "command": command,
        "config": config.model_dump(mode="json"),
    }


def key_spread(study: StudyConfig, pack: Pack, seeds: int, names: list[str] | None = None) -> str:
    """Markdown: the two instant screens of keys 1..``seeds`` of each variant's SN (or of the
    ``names`` variants) at the screen size, no training: privacy (largest |adjacent r| on
    held-out faces) and identity (raw-pixel nearest-neighbour rank-1 of held-out scrambles
    against the training scrambles)."""
    lines = [
        "| variant | keys passing (abs r <= limit) | largest abs r per key seed 1.. | "
        "raw-pixel NN rank-1 per key seed 1.. |",
        "|---|---|---|---|",
    ]
    limit = study.max_abs_correlation
    for variant in study.variants:
        if names and variant.name not in names:
            continue
        config = study.experiment(variant, study.screen_size, "closed_set")
        data = pack.closed_set(study.screen_size, config.data)
        train_index, test_index = split_per_identity(
            data.labels, config.data.test_fraction, config.data.split_seed
        )
        worst, identities = [], []
        for seed in range(1, seeds + 1):
            key = make_key(config, seed, data.faces[train_index])
            correlation = output_correlation(key, data.faces[test_index])
            worst.append(max(abs(r) for r in correlation.values()))
            identities.append(
                identity_screen(
                    key,
                    data.faces[train_index],
                    data.labels[train_index],
                    data.faces[test_index],
                    data.labels[test_index],
                )
            )
        passing = sum(value <= limit for value in worst)
        values = ", ".join(f"{value:.3f}" for value in worst)
        accuracies = ", ".join(_percent(value) for value in identities)
        lines.append(f"| {variant.name} | {passing} of {seeds} | {values} | {accuracies} |")
    return "\n".join(lines) + "\n"


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def report(results: list[dict[str, Any]]) -> str:
    """Markdown tables of a study's results.jsonl (screen, then confirmation)."""
    lines = [
        "| stage | variant | change | size | original | scrambled (95 % CI) | gap | scrambled "
        "macro F1 | scrambled training acc. | cross-key (A gallery, B probes) | max abs adjacent "
        "corr. | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    reported = _reported(results)
    for entry in reported:
        if "cross_key" not in entry["headline"]:
            continue
        head = entry["headline"]
        cross = head["cross_key"]["key_a_recognizer_and_gallery_key_b_probes"]
        correlation = max(abs(r) for r in entry["adjacent_correlation"].values())
        scrambled = entry["result"]["closed_set"]["scrambled"]
        low, high = scrambled["accuracy_ci95"]
        fit = entry["result"]["training"]["scrambled"]["final"]["train_accuracy"]
        lines.append(
            f"| {entry['stage']} | {entry['variant']} | {entry['change']} | {entry['size']} | "
            f"{_percent(head['original'])} | {_percent(head['scrambled'])} "
            f"({100 * low:.1f}-{100 * high:.1f}) | "
            f"{100 * (head['original'] - head['scrambled']):.1f} pt | {scrambled['f1']:.3f} | "
            f"{_percent(fit)} | {_percent(cross)} | {correlation:.3f} | {entry['seconds']} |"
        )
    view1 = [e for e in reported if "cross_key" not in e["headline"]]
    if view1:
        lines += [
            "",
            "| View 1 | size | original | scrambled | gap | 10-fold: original | scrambled | "
            "ROC AUC: original | scrambled |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for entry in view1:
            head, pairs = entry["headline"], entry["result"]["verification_view1"]
            folded = [pairs[v].get("accuracy_10fold") for v in ("original", "scrambled")]
            lines.append(
                f"| {entry['variant']} | {entry['size']} | {_percent(head['original'])} | "
                f"{_percent(head['scrambled'])} | "
                f"{100 * (head['original'] - head['scrambled']):.1f} pt | "
                + " | ".join("-" if f is None else _percent(f) for f in folded)
                + f" | {pairs['original']['roc_auc']:.3f} | {pairs['scrambled']['roc_auc']:.3f} |"
            )
    lines += _tta_report(results)
    failed = [f"{e['variant']} ({e['error']})" for e in results if e["stage"] == "failed"]
    if failed:
        lines += ["", f"Failed: {'; '.join(failed)}."]
    skipped = [
        e["variant"] + (" (closed-set confirmation)" if e["reason"] == _CONFIRM_BUDGET else "")
        for e in results
        if e["stage"] == "skipped"
    ]
    if skipped:
        lines += ["", f"Not run (time budget): {', '.join(skipped)}."]
    return "\n".join(lines) + "\n"


def read_results(path: Path) -> list[dict[str, Any]]:
    """The entries of a study's results.jsonl, in the order they were recorded."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def _reported(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Screen and confirmation entries; one recorded before its test-time evaluation only
    where the full entry never came (the time limit stopped it)."""
    done = {(e["variant"], e["size"], e["stage"]) for e in results if "result" in e}
    return [
        e
        for e in results
        if e["stage"] in ("screen", "confirm")
        or (
            e["stage"].endswith(PLAIN_STAGE_SUFFIX)
            and (e["variant"], e["size"], e["stage"].removesuffix(PLAIN_STAGE_SUFFIX)) not in done
        )
    ]


def _max_abs(correlation: dict[str, float] | None) -> str:
    return f"{max(abs(r) for r in correlation.values()):.3f}" if correlation else "-"


def _tta_report(results: list[dict[str, Any]]) -> list[str]:
    """The evaluations with test-time augmentation (same models), when the study asked."""
    lines = [
        "",
        "With test-time augmentation (the same models; each face embedded as the mean over its "
        "moved and mirrored copies, each scrambled on its own):",
        "",
        "| stage | variant | protocol | size | views | original | scrambled (95 % CI) | gap | "
        "cross-key (A gallery, B probes) | max abs adjacent corr. of the mean of the copies |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = 0
    for entry in results:
        if entry["stage"] not in ("screen", "confirm"):
            continue
        protocol = "closed_set" if "closed_set" in entry["result"] else "verification_view1"
        both = entry["result"][protocol].get("tta")
        if both is None:
            continue
        rows += 1
        original, scrambled = both["original"]["accuracy"], both["scrambled"]["accuracy"]
        interval = both["scrambled"].get("accuracy_ci95")
        cross = both.get("cross_key", {}).get("key_a_recognizer_and_gallery_key_b_probes")
        lines.append(
            f"| {entry['stage']} | {entry['variant']} | {protocol} | {entry['size']} | "
            f"{both['copies']['views']} | {_percent(original)} | {_percent(scrambled)}"
            + (f" ({100 * interval[0]:.1f}-{100 * interval[1]:.1f})" if interval else "")
            + f" | {100 * (original - scrambled):.1f} pt | "
            + (_percent(cross["accuracy"]) if cross else "-")
            + f" | {_max_abs(entry.get('tta_mean_adjacent_correlation'))} |"
        )
    return lines if rows else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("pack", help="Align LFW here and pack it for the GPU run.")
    pack.add_argument("output", type=Path)
    pack.add_argument("--data", type=Path, default=None, help="Data root (default: settings).")
    pack.add_argument("--size", type=int, default=112)
    pack.add_argument("--min-images", type=int, default=10)
    pack.add_argument("--view1-size", type=int, default=None, help="Default: --size.")
    pack.add_argument(
        "--unlabeled", type=int, default=0, help="Faces of other people, at --size (default 0)."
    )
    run = commands.add_parser("run", help="Run the study (on a GPU).")
    run.add_argument("study", type=Path)
    run.add_argument("pack", type=Path)
    run.add_argument("output", type=Path, help="Where results.jsonl goes.")
    run.add_argument("--work", type=Path, default=None, help="Checkpoints (default: output).")
    keys = commands.add_parser("keys", help="Privacy screen of many keys per SN (no training).")
    keys.add_argument("study", type=Path)
    keys.add_argument("pack", type=Path)
    keys.add_argument("--seeds", type=int, default=12)
    keys.add_argument("--variants", nargs="*", default=None, help="Default: every variant.")
    table = commands.add_parser("report", help="Print the markdown tables of a results.jsonl.")
    table.add_argument("results", type=Path)
    export = commands.add_parser(
        "export", help="One variant's result as an accuracy file for python -m trainer.report."
    )
    export.add_argument("study", type=Path)
    export.add_argument("results", type=Path)
    export.add_argument("variant")
    export.add_argument("--produced-by", required=True, help="The command that ran the study.")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if arguments.command == "pack":
        from rllfpr.config import load_settings

        settings = load_settings()
        data_root = arguments.data or settings.data
        built = build_pack(
            data_root / "lfw",
            settings.cache,
            arguments.size,
            arguments.min_images,
            arguments.view1_size,
            arguments.unlabeled,
        )
        built.save(arguments.output)
        size = arguments.output.stat().st_size / 2**20
        print(f"{len(built.faces)} faces, {size:.1f} MiB -> {arguments.output}")
    elif arguments.command == "keys":
        study = StudyConfig.from_yaml(arguments.study)
        faces = Pack.load(arguments.pack)
        print(key_spread(study, faces, arguments.seeds, arguments.variants), end="")
    elif arguments.command == "report":
        print(report(read_results(arguments.results)), end="")
    elif arguments.command == "export":
        study = StudyConfig.from_yaml(arguments.study)
        entries = read_results(arguments.results)
        exported = accuracy_run(study, entries, arguments.variant, arguments.produced_by)
        print(json.dumps(exported, indent=2))
    else:
        torch.backends.cudnn.benchmark = True
        study = StudyConfig.from_yaml(arguments.study)
        StudyRun(study, Pack.load(arguments.pack), arguments.output, arguments.work).run()


if __name__ == "__main__":
    main()
