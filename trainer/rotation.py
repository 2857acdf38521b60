"""Key rotation on the trainer: build and gate a key epoch, then stage, activate or revoke it.

Building epoch e+1 uses only the trainer's training corpus (a public or licensed face corpus;
never the faces of enrolled people):

1. a fresh SN key (seed from the OS's CSPRNG), BN self-learned on the corpus's training faces;
2. the recognizer trained with the experiment's recipe (augmentation before the SN; with
   ``teacher.weight``, regression of the pretrained face teacher's descriptor of each original
   photo, centred on the corpus and turned by the epoch's own secret orthogonal map ``Q_e``;
   with ``loss.distill_weight``, distillation from an original-face recognizer trained with the
   epoch) from a fresh secret initialization seed, so that no two epochs share an embedding
   space and no one can rebuild the epoch's teacher or map from the public recipe
   (``fine_tune_epochs`` > 0 fine-tunes from epoch e's instead). ``Q_e`` is drawn from its own
   fresh seed, never the SN key's, and neither seed is written anywhere: not in the bundle, the
   model store, the gate report or a log;
3. gates, measured on corpus faces the recognizer never saw: closed-set accuracy on held-out
   images of the training people at least ``accuracy_floor``; cross-key accuracy (the new
   recognizer and gallery probed with the previous key's scrambles) and template linkage (the
   previous epoch's gallery probed with the new recognizer's embeddings of new-key scrambles)
   no better than the majority-class rate plus ``cross_key_margin``; an ONNX export that
   TensorRT can parse; and, measured (a gate with ``aligned_linkage_limit``), what an attacker
   holding both epochs' galleries gains by aligning them without labels
   (``trainer.alignment``);
4. with ``score_norm``, the epoch's cohort: training faces embedded by the new recognizer
   through the new SN (``rllfpr.scorenorm``), so that scores are S-norm scores;
5. the open-set operating point calibrated on corpus people held out of training entirely, in
   the scores the service will use;
6. the recognizer (and cohort) published to the model store, the bundle sealed (Ed25519
   signature, AES-256-GCM for the fleet key) with the recognizer's id, and kept with the gate
   report.

Nothing is staged when a gate fails. Staging, activation and revocation are signed messages on
retained topics (``docs/protocol.md``, "Key rotation").
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rllfpr.faces.pixels import pick_device
from rllfpr.files import write_private
from rllfpr.keys import bundle, envelope, material
from rllfpr.keys.material import FleetKey
from rllfpr.models.export import export_onnx, unsupported_operators
from rllfpr.models.recognizer import Recognizer
from rllfpr.models.scrambler import ScramblerNetwork, random_key_seed
from rllfpr.models.store import ModelStore, OpenSetCalibration
from rllfpr.mqtt import MqttError
from rllfpr.scorenorm import CohortNorm
from rllfpr.wire import topics
from rllfpr.wire.messages import KeyAnnouncement, KeyState, Revocation
from trainer.config import ExperimentConfig
from trainer.data import AlignedFaces, split_per_identity
from trainer.evaluate import closed_set
from trainer.experiment import identity_screen, make_key, output_correlation
from trainer.metrics import majority_rate
from trainer.train import FaceView, embed, train

log = logging.getLogger(__name__)


class ScoreNormConfig(BaseModel):
    """Cohort score normalization of an epoch's scores (``rllfpr.scorenorm``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cohort_faces: int = Field(
        3000,
        ge=2,
        description="Training faces of the corpus in the cohort (all of them when fewer), "
        "embedded by the epoch's recognizer through the epoch's SN and shipped with the "
        "recognizer: D float32 numbers each.",
    )
    top_k: int | None = Field(
        50,
        ge=2,
        description="A face's statistics use its top_k highest cohort cosines (AS-norm); null: "
        "the whole cohort (S-norm). At most cohort_faces.",
    )

    @model_validator(mode="after")
    def _top_k_fits(self) -> ScoreNormConfig:
        if self.top_k is not None and self.top_k > self.cohort_faces:
            raise ValueError(f"top_k {self.top_k} exceeds cohort_faces {self.cohort_faces}")
        return self


class RotationConfig(BaseModel):
    """How the trainer builds and gates each key epoch (one YAML file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: ExperimentConfig = Field(description="Corpus and training recipe of each epoch.")
    fine_tune_epochs: int = Field(
        0,
        ge=0,
        description="0: each epoch's recognizer trains from scratch. > 0: it starts from the "
        "previous epoch's weights and trains this many epochs, cheaper. Either way its "
        "teacher, shuffling and new head start from the epoch's fresh secret seed: recognizers "
        "that start from the same seed, or share a teacher, put an old epoch's templates where "
        "the new epoch's embeddings are; the template-linkage gate checks every epoch. Why 0 "
        "by default: docs/results/defaults.md.",
    )
    calibration_people: float = Field(
        0.25, gt=0, lt=1, description="Share of corpus people kept out of training to calibrate."
    )
    accuracy_floor: float = Field(
        0.5, ge=0, le=1, description="Gate: least closed-set accuracy on held-out corpus images."
    )
    cross_key_margin: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Gate: cross-key accuracy and template linkage may exceed the majority "
        "rate by this.",
    )
    max_abs_correlation: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Key screen: largest |adjacent-pixel correlation| of a new key's output on "
        "held-out corpus faces; keys above it are redrawn before any training "
        "(docs/results/defaults.md).",
    )
    key_draws: int = Field(
        50, ge=1, description="Keys drawn at most per epoch to find those that pass the screen."
    )
    key_candidates: int = Field(
        3,
        ge=1,
        le=20,
        description="Keys that pass the screen to collect per epoch; the one whose wire pixels "
        "keep the most identity (raw-pixel nearest-neighbour rank-1 of held-out corpus faces "
        "against the training faces, no training) is kept. Trained accuracy spread 11-17 "
        "points between keys of the plain SN; this screen ranked twelve trained models with "
        "Spearman 0.80, though not the four low-pass keys, which trained within 5 points of "
        "each other (docs/results/design-study.md).",
    )
    target_rotation: bool = Field(
        True,
        description="With the face teacher (experiment.teacher.weight > 0): each epoch's targets "
        "are turned by a random orthogonal map Q_e drawn from a fresh secret seed of that epoch "
        "(the experiment's teacher.rotation_seeds are ignored). false: every epoch regresses "
        "the same target space, so their templates link; for measuring that only (the "
        "template-linkage gate refuses such epochs).",
    )
    aligned_linkage_limit: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Gate: at most this share of held-out probes of corpus people absent from "
        "the aligned galleries identified against the previous epoch's templates, once an "
        "attacker has aligned the two epochs' galleries of the other corpus people without "
        "labels. null: measured and reported, not enforced.",
    )
    score_norm: ScoreNormConfig | None = Field(
        None,
        description="Cohort score normalization: each epoch ships a cohort with its recognizer, "
        "and the service and the calibration score by S-norm instead of raw cosine. null: raw "
        "cosine scores.",
    )
    target_fpir: float = Field(
        0.01, gt=0, lt=1, description="False-positive identification rate the threshold aims at."
    )
    grace_s: int = Field(
        600, ge=0, description="After activation, how long recognizers accept the previous epoch."
    )

    @classmethod
    def from_yaml(cls, path: Path) -> RotationConfig:
        return cls.model_validate(yaml.safe_load(path.read_text()))


class GateError(RuntimeError):
    """A built epoch failed a gate; nothing was published or staged."""


@dataclass(frozen=True)
class CorpusSplit:
    fit: AlignedFaces  # training people, training images
    held_out: AlignedFaces  # training people, held-out images (gates)
    calibration: AlignedFaces  # people never trained on (open-set calibration)


def split_indices(
    corpus: AlignedFaces, config: RotationConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into ``corpus`` of the fit, held-out and calibration faces."""
    spec = config.experiment.data
    people = np.random.default_rng(spec.split_seed).permutation(len(corpus.names))
    held_people = set(people[: max(2, round(config.calibration_people * len(people)))].tolist())
    in_calibration = np.isin(corpus.labels, list(held_people))
    training = np.flatnonzero(~in_calibration)
    relabeled = corpus.subset(training).relabeled()
    fit, held_out = split_per_identity(relabeled.labels, spec.test_fraction, spec.split_seed)
    return training[fit], training[held_out], np.flatnonzero(in_calibration)


def split_corpus(
    corpus: AlignedFaces, config: RotationConfig, descriptors: np.ndarray | None = None
) -> CorpusSplit:
    """With ``descriptors`` (the teacher's, one row per corpus face, NaN where it found no
    face), the fit faces carry their targets: centred on the fit faces' mean (the target space
    is fitted on training faces only) and renormalized, not yet turned by an epoch's ``Q_e``;
    fit faces without a descriptor are left out."""
    fit, held_out, calibration = split_indices(corpus, config)
    training = corpus.subset(np.concatenate([fit, held_out])).relabeled()
    split = CorpusSplit(
        training.subset(np.arange(len(fit))),
        training.subset(np.arange(len(fit), len(training))),
        corpus.subset(calibration).relabeled(),
    )
    if descriptors is None:
        return split
    if len(descriptors) != len(corpus):
        raise ValueError(f"{len(descriptors)} teacher descriptors for {len(corpus)} faces")
    from trainer.corpus import with_targets
    from trainer.targets import TargetSpace

    described = descriptors[fit][~np.isnan(descriptors[fit]).any(axis=1)]
    if len(described) < 2:
        raise ValueError("the teacher described fewer than 2 of the corpus' training faces")
    space = TargetSpace.fit(described, config.experiment.teacher.whiten)
    fit_faces, _ = with_targets(split.fit, descriptors[fit], space)
    return CorpusSplit(fit_faces, split.held_out, split.calibration)


def teacher_descriptors(
    experiment: ExperimentConfig, corpus: AlignedFaces, data_root: Path, cache: Path
) -> np.ndarray | None:
    """The face teacher's descriptor of every corpus face (computed once per photo and cached,
    ``trainer.teacher``); None when the recipe has no teacher."""
    if not experiment.teacher.weight:
        return None
    from trainer.corpus import describe_faces
    from trainer.data import dataset_root, list_identities

    spec = experiment.data
    root = dataset_root(spec.dataset, data_root)
    identities = list_identities(root, spec.min_images, spec.max_images, spec.max_identities)
    return describe_faces(
        corpus.sources, root, identities, cache, workers=experiment.teacher.workers
    )


class Report(BaseModel):
    """A part of an epoch's build report (written as JSON; fields not measured are left out)."""

    model_config = ConfigDict(extra="forbid")

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class KeyScreen(Report):
    draws: int = Field(description="Keys drawn.")
    max_abs_correlation: list[float] = Field(description="Each drawn key's worst |r|.")
    identity_screen: list[float] = Field(description="Raw-pixel rank-1 of the keys that passed.")
    chosen: int = Field(description="Index of the kept key among those that passed.")


class GateChecks(Report):
    accuracy: bool
    cross_key: bool
    tensorrt_operators: bool
    template_linkage: bool | None = None  # a scope's first epoch has no previous templates
    aligned_linkage: bool | None = None  # only with aligned_linkage_limit


class AlignedLinkage(Report):
    """The gallery-alignment attack between the previous and the new epoch (trainer.alignment):
    the corpus' training people split in two; one half's templates of both epochs aligned
    without labels; the other half's held-out new-epoch probes identified against their
    previous-epoch templates carried by the attacker's rotation (people erased from the new
    gallery, whose old templates a backup kept)."""

    aligned_people: int
    pairing_accuracy: float = Field(description="Share of aligned people paired right.")
    pairing_chance: float
    linked_people: int
    linkage_accuracy: float = Field(description="Rank-1 of the other half's probes.")
    linkage_chance: float


class GateReport(Report):
    closed_set_accuracy: float
    accuracy_floor: float
    cross_key_accuracy: float
    majority_class_rate: float
    cross_key_limit: float
    unsupported_onnx_operators: list[str]
    template_linkage_accuracy: float | None = None
    aligned_linkage: AlignedLinkage | None = None
    aligned_linkage_limit: float | None = None
    checks: GateChecks
    passed: bool


class OpenSetReport(Report):
    calibration: OpenSetCalibration
    other_half: dict[str, float] = Field(description="FNIR/FPIR on the other half of people.")
    raw_cosine: OpenSetReport | None = Field(
        None,
        description="With score normalization: the same calibration and rates from raw "
        "cosines, to see what normalizing gained for this epoch.",
    )


class EpochReport(Report):
    scope: str
    epoch: int
    fine_tuned: bool
    key_screen: KeyScreen
    gates: GateReport | None = None
    open_set: OpenSetReport | None = None
    recognizer_id: str | None = None


@dataclass(frozen=True)
class BuiltEpoch:
    scope: str
    epoch: int
    recognizer_id: str
    bundle: bytes
    report: EpochReport


def _gates(
    config: RotationConfig,
    recognizer: Recognizer,
    key: ScramblerNetwork,
    other_key: ScramblerNetwork,
    split: CorpusSplit,
    previous: tuple[Recognizer, ScramblerNetwork] | None = None,
) -> GateReport:
    """``previous``: the last epoch's recognizer and key, for the template-linkage gate."""
    device = pick_device(config.experiment.device)
    view, other = FaceView("scrambled", key, device), FaceView("scrambled", other_key, device)
    gallery = embed(recognizer, view, split.fit.faces)
    probes = embed(recognizer, view, split.held_out.faces)
    accuracy = closed_set(gallery, split.fit.labels, probes, split.held_out.labels)
    cross = closed_set(
        gallery,
        split.fit.labels,
        embed(recognizer, other, split.held_out.faces),
        split.held_out.labels,
    )
    majority = majority_rate(split.fit.labels, split.held_out.labels)
    unsupported = sorted(unsupported_operators(export_onnx(key.cpu())))
    key.to(device)
    limit = majority + config.cross_key_margin
    linkage, aligned = None, None
    if previous is not None:
        old_recognizer, old_key = previous
        old_gallery = embed(old_recognizer, FaceView("scrambled", old_key, device), split.fit.faces)
        linkage = closed_set(old_gallery, split.fit.labels, probes, split.held_out.labels)
        seed = config.experiment.data.split_seed
        aligned = aligned_linkage(
            old_gallery, gallery, split.fit.labels, probes, split.held_out.labels, seed
        )
    aligned_limit = config.aligned_linkage_limit
    checks = GateChecks(
        accuracy=accuracy["accuracy"] >= config.accuracy_floor,
        cross_key=cross["accuracy"] <= limit,
        tensorrt_operators=not unsupported,
        template_linkage=None if linkage is None else linkage["accuracy"] <= limit,
        aligned_linkage=(
            None
            if aligned is None or aligned_limit is None
            else aligned.linkage_accuracy <= aligned_limit
        ),
    )
    return GateReport(
        closed_set_accuracy=accuracy["accuracy"],
        accuracy_floor=config.accuracy_floor,
        cross_key_accuracy=cross["accuracy"],
        majority_class_rate=majority,
        cross_key_limit=limit,
        unsupported_onnx_operators=unsupported,
        template_linkage_accuracy=None if linkage is None else linkage["accuracy"],
        aligned_linkage=aligned,
        aligned_linkage_limit=aligned_limit,
        checks=checks,
        passed=all(value for value in checks.model_dump().values() if value is not None),
    )


def aligned_linkage(
    old_gallery: np.ndarray,
    new_gallery: np.ndarray,
    labels: np.ndarray,
    new_probes: np.ndarray,
    probe_labels: np.ndarray,
    seed: int,
) -> AlignedLinkage | None:
    """``AlignedLinkage`` from two epochs' embeddings of the same gallery faces (``labels``)
    and the new epoch's probes; None with fewer than 6 people."""
    from trainer.alignment import align_galleries, correspondence_accuracy
    from trainer.evaluate import class_templates

    people = int(labels.max()) + 1
    if people < 6:
        return None
    rng = np.random.default_rng(seed)
    order = rng.permutation(people)
    aligned, linked = order[: people // 2], order[people // 2 :]
    old = class_templates(old_gallery, labels, people)
    new = class_templates(new_gallery, labels, people)
    shuffle = rng.permutation(len(aligned))  # the attacker's order of the new gallery
    attack = align_galleries(old[aligned], new[aligned][shuffle], seed=seed)
    truth = np.argsort(shuffle)
    mask = np.isin(probe_labels, linked)
    renumber = np.full(people, -1)
    renumber[linked] = np.arange(len(linked))
    carried = attack.carry(old[linked])
    probes = attack.second.apply(new_probes[mask])
    found = closed_set(carried, np.arange(len(linked)), probes, renumber[probe_labels[mask]])
    return AlignedLinkage(
        aligned_people=len(aligned),
        pairing_accuracy=correspondence_accuracy(attack.matching, truth),
        pairing_chance=1 / len(aligned),
        linked_people=len(linked),
        linkage_accuracy=found["accuracy"],
        linkage_chance=1 / len(linked),
    )


def calibrate_open_set(
    config: RotationConfig,
    recognizer: Recognizer,
    key: ScramblerNetwork,
    people: AlignedFaces,
    norm: CohortNorm | None = None,
) -> OpenSetReport:
    """Threshold and margin from one half of the held-out people, rates on the other half; in
    S-norm scores with ``norm`` (and then in raw cosines beside them)."""
    from rllfpr.openset import calibrate, rates, searches_of, split_people

    view = FaceView("scrambled", key, pick_device(config.experiment.device))
    embeddings = embed(recognizer, view, people.faces)
    halves = split_people(people.labels, config.experiment.data.split_seed)

    def operating_point(norm: CohortNorm | None) -> OpenSetReport:
        calibration = calibrate(
            searches_of(embeddings, halves["calibration"], norm),
            config.target_fpir,
            protocol=f"{len(people.names)} corpus people never trained on, half of them; "
            f"target FPIR {config.target_fpir}",
            scores="cosine" if norm is None else "s_norm",
        )
        point = (calibration.threshold, calibration.min_margin)
        return OpenSetReport(
            calibration=calibration,
            other_half=rates(searches_of(embeddings, halves["test"], norm), *point),
        )

    report = operating_point(norm)
    if norm is not None:
        report.raw_cosine = operating_point(None)
    return report


def epoch_cohort(
    config: RotationConfig, recognizer: Recognizer, key: ScramblerNetwork, fit: AlignedFaces
) -> CohortNorm | None:
    """The epoch's cohort (``config.score_norm``): a sample of its training faces (chosen with
    the corpus' split seed) embedded by its recognizer through its SN; None without."""
    spec = config.score_norm
    if spec is None:
        return None
    rng = np.random.default_rng(config.experiment.data.split_seed)
    size = min(spec.cohort_faces, len(fit))
    sample = np.sort(rng.choice(len(fit), size, replace=False))
    view = FaceView("scrambled", key, pick_device(config.experiment.device))
    top_k = None if spec.top_k is None else min(spec.top_k, size)
    return CohortNorm(embed(recognizer, view, fit.faces[sample]), top_k)


def open_own_bundle(
    data: bytes, signing_public: Ed25519PublicKey, fleet_key: FleetKey
) -> ScramblerNetwork:
    """The SN of a bundle this trainer sealed (verified with its own signing key). Format 1 is
    read too: the trainer needs its last epoch's key to gate the rotation that replaces it."""
    opened = bundle.open_bundle(
        data,
        {material.signer_id(signing_public): signing_public},
        {fleet_key.key_id: fleet_key},
        accept_format_1=True,
    )
    return ScramblerNetwork.from_key_state(opened.architecture, opened.state)


class EpochBuilder:
    """Builds epochs of one scope from the trainer's corpus; keeps bundles and gate reports."""

    def __init__(
        self,
        config: RotationConfig,
        corpus: AlignedFaces,
        store: ModelStore,
        signing_key: Ed25519PrivateKey,
        fleet_key: FleetKey,
        work: Path,
        descriptors: np.ndarray | None = None,
    ) -> None:
        """``descriptors``: the face teacher's, one row per corpus face
        (``teacher_descriptors``), when the recipe regresses the teacher."""
        if config.experiment.teacher.weight and descriptors is None:
            raise ValueError(
                "the recipe regresses the face teacher (experiment.teacher.weight): pass the "
                "corpus' teacher descriptors (trainer.rotation.teacher_descriptors)"
            )
        self.config, self.store, self.work = config, store, work
        self.signing_key, self.fleet_key = signing_key, fleet_key
        self.split = split_corpus(
            corpus, config, descriptors if config.experiment.teacher.weight else None
        )

    def bundle_path(self, scope: str, epoch: int) -> Path:
        return self.work / scope / f"epoch-{epoch:08d}.rlkb"

    def draw_key(self) -> tuple[ScramblerNetwork, KeyScreen]:
        """Of up to ``key_candidates`` fresh keys that pass the privacy screen (drawing at most
        ``key_draws``), the one that keeps the most identity."""
        limit, fit, held_out = self.config.max_abs_correlation, self.split.fit, self.split.held_out
        correlations: list[float] = []
        candidates: list[tuple[float, ScramblerNetwork]] = []
        for _ in range(self.config.key_draws):
            key = make_key(self.config.experiment, random_key_seed(), fit.faces)
            worst = max(abs(r) for r in output_correlation(key, held_out.faces).values())
            correlations.append(round(worst, 4))
            if worst <= limit:
                screen = identity_screen(
                    key, fit.faces, fit.labels, held_out.faces, held_out.labels
                )
                candidates.append((screen, key))
                if len(candidates) == self.config.key_candidates:
                    break
        if not candidates:
            raise GateError(
                f"none of {len(correlations)} keys passed the key screen (|r| <= {limit}): "
                f"{correlations}; check the SN architecture"
            )
        scores = [round(score, 4) for score, _ in candidates]
        best = scores.index(max(scores))
        summary = KeyScreen(
            draws=len(correlations),
            max_abs_correlation=correlations,
            identity_screen=scores,
            chosen=best,
        )
        return candidates[best][1], summary

    def build(self, scope: str, epoch: int, previous_key: ScramblerNetwork | None) -> BuiltEpoch:
        experiment = self.config.experiment
        key, key_screen = self.draw_key()
        previous = self._previous_recognizer(scope, epoch)
        # Never kept: whoever knows the seed can rebuild this epoch's teacher from the public
        # recipe and corpus, and match scrambled faces against plain photos with it; whoever
        # knows Q_e's seed can put the public face teacher's descriptors of plain photos where
        # this epoch's recognizer puts scrambled faces. The checkpoints that record them are
        # removed once trained (the store keeps the recognizer, never a seed).
        teacher_spec = experiment.teacher.model_copy(update={"rotation_seeds": None})
        fresh = experiment.model_copy(update={"seed": random_key_seed(), "teacher": teacher_spec})
        rotation_seed = None
        if experiment.teacher.weight and self.config.target_rotation:
            rotation_seed = random_key_seed()
        recipe, initial = fresh, None
        if previous is not None and self.config.fine_tune_epochs:
            optim = experiment.optim.model_copy(update={"epochs": self.config.fine_tune_epochs})
            recipe, initial = fresh.model_copy(update={"optim": optim}), previous
        run_dir = self.work / scope / f"epoch-{epoch:08d}-run"
        teacher_dir = self.work / scope / f"epoch-{epoch:08d}-teacher"
        for stale in (run_dir, teacher_dir):  # an interrupted build drew another seed
            shutil.rmtree(stale, ignore_errors=True)
        try:
            teacher = None
            if experiment.loss.distill_weight:
                teacher = train(fresh, self.split.fit, "original", None, teacher_dir).recognizer
            trained = train(
                recipe,
                self.split.fit,
                "scrambled",
                key,
                run_dir,
                teacher=teacher,
                initial=initial,
                rotation_seed=rotation_seed,
            )
        finally:  # the teacher also maps plain photos into this epoch's space
            for done in (run_dir, teacher_dir):
                shutil.rmtree(done, ignore_errors=True)
        other = previous_key or make_key(experiment, random_key_seed(), self.split.fit.faces)
        report = EpochReport(
            scope=scope, epoch=epoch, fine_tuned=initial is not None, key_screen=key_screen
        )
        linked = None
        if previous is not None and previous_key is not None:
            linked = (previous, previous_key)
        gates = _gates(self.config, trained.recognizer, key, other, self.split, linked)
        report.gates = gates
        if not gates.passed:
            self._write_report(scope, epoch, report)
            raise GateError(f"epoch {epoch} failed its gates: {gates.checks.document()}")
        norm = epoch_cohort(self.config, trained.recognizer, key, self.split.fit)
        report.open_set = calibrate_open_set(
            self.config, trained.recognizer, key, self.split.calibration, norm
        )
        info = self.store.publish(
            scope,
            epoch,
            trained.recognizer,
            report.open_set.calibration,
            source="rotation",
            norm=norm,
        )
        state = key.key_state()
        sealed = bundle.seal(
            epoch=epoch,
            scope=scope,
            recognizer_id=info.recognizer_id,
            architecture=state["architecture"],
            state=state["state"],
            signing_key=self.signing_key,
            fleet_key=self.fleet_key,
        )
        write_private(self.bundle_path(scope, epoch), sealed)
        report.recognizer_id = info.recognizer_id
        self._write_report(scope, epoch, report)
        return BuiltEpoch(scope, epoch, info.recognizer_id, sealed, report)

    def _previous_recognizer(self, scope: str, epoch: int) -> Recognizer | None:
        earlier = [e for e in self.store.epochs(scope) if e < epoch]
        if not earlier:
            return None
        return self.store.load(scope, max(earlier)).recognizer

    def _write_report(self, scope: str, epoch: int, report: EpochReport) -> None:
        path = self.work / scope / f"epoch-{epoch:08d}.json"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(json.dumps(report.document(), indent=2) + "\n")


class KeyPublisher:
    """Signed key-state changes on the retained key topics of a scope (trainer side).

    Each epoch has its own retained topics (bundle, announcement, revocation), so a process that
    connects late still learns the state of every live epoch, not only the latest change.
    """

    def __init__(self, client: mqtt.Client, signing_key: Ed25519PrivateKey) -> None:
        self.client, self.signing_key = client, signing_key

    def _retain(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout=30)
        if not info.is_published():
            raise MqttError(f"the broker did not acknowledge {topic}")

    def _announce(self, sealed: bytes, state: KeyState, grace_s: int = 0) -> KeyAnnouncement:
        header = bundle.read_header(sealed)
        announcement = KeyAnnouncement(
            scope=header.scope,
            epoch=header.epoch,
            state=state,
            bundle_id=header.bundle_id,
            bundle_sha256=hashlib.sha256(sealed).hexdigest(),
            grace_s=grace_s,
        )
        topic = topics.key_announcements(header.scope, header.epoch)
        self._retain(topic, envelope.sign(announcement, self.signing_key))
        return announcement

    def stage(self, sealed: bytes) -> KeyAnnouncement:
        """Bundle out first, then the announcement that names it. A format-1 bundle is never
        published again: its header holds its key's seed in clear (issue 21)."""
        header = bundle.read_header(sealed)
        if header.format_version != bundle.FORMAT_VERSION:
            raise bundle.BundleError(bundle.FORMAT_1_REFUSED)
        self._retain(topics.key_bundle(header.scope, header.epoch), sealed)
        return self._announce(sealed, KeyState.STAGED)

    def activate(self, sealed: bytes, grace_s: int) -> KeyAnnouncement:
        return self._announce(sealed, KeyState.ACTIVE, grace_s)

    def revoke(self, scope: str, epoch: int, reason: str = "rotation") -> Revocation:
        """Signed revocation (retained), then the epoch's bundle and announcement cleared."""
        revocation = Revocation(scope=scope, epoch=epoch, reason=reason)
        self._retain(
            topics.key_revocation(scope, epoch), envelope.sign(revocation, self.signing_key)
        )
        self._retain(topics.key_bundle(scope, epoch), b"")  # an empty retained message clears it
        self._retain(topics.key_announcements(scope, epoch), b"")
        return revocation
