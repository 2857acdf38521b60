"""CFP (Celebrities in Frontal-Profile; Sengupta et al., WACV 2016): the CFP-FF and CFP-FP
verification protocol. Ten identity-disjoint splits of 350 same-person and 350 different-person
pairs; each split is scored at the threshold that is best on the other nine, and the protocol's
figure is the mean (and standard deviation) of the ten split accuracies. Faces are aligned like
LFW's (MTCNN's central face); pairs with a face MTCNN cannot find are dropped and counted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.metrics import roc_auc_score

from trainer.data import AlignedFaces, Aligner, list_identities
from trainer.evaluate import best_threshold

Kind = Literal["FF", "FP"]
KINDS: tuple[Kind, ...] = ("FF", "FP")
SPLITS = 10


@dataclass(frozen=True)
class CFPPairs:
    """Pairs of one protocol as sources (``<person>/frontal/01.jpg``), with their split."""

    first: list[str]
    second: list[str]
    same: np.ndarray  # (P,) bool
    split: np.ndarray  # (P,) 0..9


def images_root(cfp: Path) -> Path:
    return cfp / "Data" / "Images"


def _image_list(path: Path) -> dict[int, str]:
    """``image_list_{F,P}.txt``: number -> source below Data/Images/."""
    images = {}
    for line in path.read_text().splitlines():
        if line.strip():
            number, relative = line.split()
            images[int(number)] = relative.split("Data/Images/", 1)[1]
    return images


def read_pairs(cfp: Path, kind: Kind) -> CFPPairs:
    protocol = cfp / "Protocol"
    frontal = _image_list(protocol / "image_list_F.txt")
    second_list = frontal if kind == "FF" else _image_list(protocol / "image_list_P.txt")
    first, second, same, split = [], [], [], []
    for index in range(SPLITS):
        for name, is_same in (("same", True), ("diff", False)):
            path = protocol / "Split" / kind / f"{index + 1:02d}" / f"{name}.txt"
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                a, b = (int(number) for number in line.split(","))
                first.append(frontal[a])
                second.append(second_list[b])
                same.append(is_same)
                split.append(index)
    return CFPPairs(first, second, np.array(same), np.array(split))


def load_faces(cfp: Path, cache: Path, size: int) -> tuple[AlignedFaces, dict[str, list[Path]]]:
    """Every CFP photo aligned at ``size`` (cached as dataset ``cfp``), and the identities."""
    root = images_root(cfp)
    identities = list_identities(root)
    return Aligner(root, cache, size, "mtcnn", name="cfp").load(identities), identities


def evaluate(embeddings: np.ndarray, sources: list[str], pairs: CFPPairs) -> dict[str, Any]:
    """The protocol's mean and standard deviation of split accuracies (threshold from the
    other nine splits), plus ROC AUC over all pairs; ``embeddings`` are unit rows."""
    index = {source: i for i, source in enumerate(sources)}
    usable = np.array(
        [a in index and b in index for a, b in zip(pairs.first, pairs.second, strict=True)]
    )
    first = embeddings[[index[a] for a, ok in zip(pairs.first, usable, strict=True) if ok]]
    second = embeddings[[index[b] for b, ok in zip(pairs.second, usable, strict=True) if ok]]
    scores = (first * second).sum(axis=1)
    same, split = pairs.same[usable], pairs.split[usable]
    accuracies = []
    for held_out in range(SPLITS):
        test = split == held_out
        threshold = best_threshold(scores[~test], same[~test])
        accuracies.append(float(((scores[test] >= threshold) == same[test]).mean()))
    return {
        "accuracy_10fold": float(np.mean(accuracies)),
        "accuracy_10fold_std": float(np.std(accuracies)),
        "roc_auc": float(roc_auc_score(same, scores)),
        "pairs": int(usable.sum()),
        "pairs_dropped_without_face": int((~usable).sum()),
    }
