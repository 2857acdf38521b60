"""Writes the privacy report: ``privacy.json``, ``privacy.md`` and the figures.

``python -m trainer.studies.privacy.report docs/results/privacy.json`` re-renders the Markdown from
the JSON alone (no recomputation); ``rllfpr eval privacy`` does everything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from trainer.studies.privacy import figures as drawing
from trainer.studies.privacy.evaluation import Figures
from trainer.studies.privacy.goals import check

# samples.png and inversion.png show faces of the evaluation's people (LFW's in the published
# report): the Markdown links them, embeds none, and the repository keeps neither.
LOCAL_ONLY = (
    "written beside this report by `rllfpr eval privacy`, for local inspection only: it shows "
    "faces of the evaluated dataset's people (LFW in the published report), so it is not kept in "
    "the repository (docs/licensing.md)"
)

# The paper's LFW numbers (Huang et al. 2024, Tables 1-5), for side-by-side columns.
PAPER: dict[str, dict[str, Any]] = {
    "original": {"accuracy": 99.98, "corr": (0.9923, 0.9916, 0.9829)},
    "rllfpr": {
        "accuracy": 99.93,
        "corr": (-0.0929, 0.0326, -0.0795),
        "psnr": 11.80,
        "uaci": 50.61,
        "f2": "0.80-0.95",
        "f3": 0.997,
        "match": 20.90,
        "dissimilarity": 3.51,
    },
    "aes_ecb": {"accuracy": 0.0, "corr": (-0.0039, -0.0032, -0.0007), "psnr": 8.77},
    "arnold": {"accuracy": 99.82, "corr": (0.8608, 0.7548, 0.9279), "psnr": 11.53, "f3": 0.996},
    "eigenfaces": {"accuracy": 98.93},
    "dp_eigenfaces": {"accuracy": 83.73},
    "noise": {"psnr": 14.16, "uaci": 36.24, "f3": 0.992},
    "partialface": {"accuracy": 99.80},
}
PAPER["aes_ecb"] |= {"uaci": 75.27, "f2": "0.6-0.9", "f3": 0.999, "match": 25.35}
PAPER["aes_ecb"]["dissimilarity"] = 3.55


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _paper(method: str, key: str, fmt: str = "{}") -> str:
    value = PAPER.get(method, {}).get(key)
    return "" if value is None else fmt.format(value)


def _label(result: dict[str, Any], method: str) -> str:
    return str(result["properties"][method]["label"])


def _ci(row: dict[str, Any], key: str = "accuracy") -> str:
    low, high = row[f"{key}_ci95"]
    return f"{_pct(row[key])} ({100 * low:.1f}-{100 * high:.1f})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _training_minutes(result: dict[str, Any]) -> float:
    seconds = [row.get("training_seconds", 0.0) for row in result["recognition"].values()]
    return sum(s or 0.0 for s in seconds) / 60


def _setup(result: dict[str, Any]) -> list[str]:
    config = result["config"]
    data, experiment = config["experiment"]["data"], config["experiment"]
    base, inversion = config["baselines"], config["inversion"]
    inversion_runs = result["inversion"]["decoders"]
    images = result["images"]
    return [
        "## Set-up (all from the config recorded in `privacy.json`)",
        "",
        f"- **Data**: `{data['dataset']}`, {data['alignment']} alignment to {data['size']} px; "
        f"victims = {images['people']} people with >= {data['min_images']} images"
        + (f" (at most {data['max_images']} each)" if data["max_images"] else "")
        + f", {images['train']} train / {images['test']} held-out test images "
        f"(split seed {data['split_seed']}). Every image measurement uses the same "
        f"{images['test']} test images; originals are BT.601 grey, protected images are each "
        "method's fixed 8-bit output.",
        f"- **SN**: `{json.dumps(experiment['scrambler'] | {'input_size': data['size']})}`, "
        f"key A seed "
        f"{experiment['key_seeds'][0]}, key B seed {experiment['key_seeds'][1]}, BatchNorm "
        "self-learned on the victims' training faces.",
        f"- **Recognizers**: `{experiment['recognizer']['backbone']}`, "
        f"{experiment['optim']['epochs']} epochs, CosFace s = {experiment['loss']['scale']}, "
        f"m = {experiment['loss']['margin']}; one per image method, same recipe "
        "(augmentation on the original face, then the method).",
        f"- **Baselines**: noise sigma {base['noise_sigma']} grey levels; Arnold "
        f"{base['arnold_iterations']} iterations; AES-256 with one key, ECB and CTR (random "
        f"IV per image); eigenfaces {base['eigen_components']} components; DP eigenfaces "
        f"epsilon {base['dp_epsilon']} (coefficients clipped to +-{base['dp_clip_sigmas']} "
        f"sigma); PartialFace {base['partialface_block']}x{base['partialface_block']} DCT, "
        f"{base['partialface_drop_low']} lowest channels dropped, "
        f"{base['partialface_keep']} random high-frequency channels kept per image.",
        f"- **Inversion**: U-Net widths {inversion['widths']}, {inversion['epochs']} epochs, "
        f"{result['inversion']['attacker_images']} attacker pairs from "
        f"{result['inversion']['attacker_people']} people who are not victims.",
        f"- **Hardware**: {result['hardware']}; this invocation {result['seconds'] / 60:.1f} "
        f"min, of which recognizer training {_training_minutes(result):.1f} min (cumulative "
        "over resumed checkpoints) and inversion decoders "
        f"{sum(d['seconds'] for d in inversion_runs.values()) / 60:.1f} min.",
        f"- **Command**: `{result['command']}`",
        "",
    ]


def _table1(result: dict[str, Any]) -> list[str]:
    rows = []
    for method, row in result["recognition"].items():
        if method == "dp_eigenfaces_sweep":
            continue
        privacy = "yes" if result["properties"][method]["privacy"] else "no"
        rows.append(
            [
                _label(result, method),
                privacy,
                _ci(row),
                f"{100 * row['misidentification']:.2f} %",
                f"{row['f1']:.3f}",
                _paper(method, "accuracy", "{:.2f} %"),
            ]
        )
    not_trained = [m for m in result["properties"] if m not in result["recognition"]]
    rows += [
        [_label(result, m), "yes", "not trained (ciphertext is uniformly random)", "", "", ""]
        for m in not_trained
    ]
    chance = next(iter(result["recognition"].values()))["chance"]
    sweep = [
        [eps, _ci(row), f"{row['laplace_scale']:.0f}", f"{row['mean_component_std']:.0f}"]
        for eps, row in result["recognition"]["dp_eigenfaces_sweep"].items()
    ]
    return [
        "## Table 1 — recognition accuracy (closed set, rank-1)",
        "",
        f"Same protocol as [accuracy.md](accuracy.md); chance = {_pct(chance)}. Eigenfaces "
        "and DP eigenfaces are matched on their projections (no training).",
        "",
        *_table(
            ["method", "protects", "accuracy (95 % CI)", "misidentification", "macro F1", "paper"],
            rows,
        ),
        "",
        "DP eigenfaces across epsilon (Laplace scale = L1 sensitivity / epsilon, against the "
        "mean std of one projection coefficient):",
        "",
        *_table(["epsilon", "accuracy (95 % CI)", "Laplace scale", "mean coefficient std"], sweep),
        "",
    ]


def _table2_3(result: dict[str, Any]) -> list[str]:
    corr_rows, quality_rows = [], []
    for method, row in result["image_metrics"].items():
        corr = row["adjacent_correlation"]
        paper = PAPER.get(method, {}).get("corr")
        corr_rows.append(
            [_label(result, method)]
            + [f"{corr[d]:.4f}" for d in ("horizontal", "vertical", "diagonal")]
            + ["" if paper is None else " / ".join(f"{v:.4f}" for v in paper)]
        )
        quality_rows.append(
            [
                _label(result, method),
                _num(row["psnr_db"], 2),
                f"{row['uaci_percent']:.2f}",
                f"{row['histogram_entropy_bits']:.2f}",
                _paper(method, "psnr")
                + (" / " + _paper(method, "uaci") if _paper(method, "uaci") else ""),
            ]
        )
    pairs = result["config"]["metrics"]["correlation_pairs"]
    return [
        "## Table 2 — adjacent-pixel correlation",
        "",
        f"Pearson r of {pairs} random adjacent pixel pairs per image, averaged over the test "
        "images (one channel). Figure: [correlation.png](privacy/correlation.png).",
        "",
        *_table(["method", "horizontal", "vertical", "diagonal", "paper (h / v / d)"], corr_rows),
        "",
        "## Table 3 — PSNR and UACI against the original grey face",
        "",
        "Lower PSNR and higher UACI = further from the original. Entropy of the grey-level "
        "histogram (8 bits = flat) summarizes Fig. 8 "
        "([histograms.png](privacy/histograms.png)).",
        "",
        *_table(
            ["method", "PSNR (dB)", "UACI (%)", "histogram entropy (bits)", "paper PSNR / UACI"],
            quality_rows,
        ),
        "",
    ]


def _table4(result: dict[str, Any]) -> list[str]:
    rows = [
        [
            _label(result, method),
            _ci(row, "match_accuracy"),
            f"{row['auc']:.3f}",
            f"{row['dissimilarity_0_4']:.2f}",
            _paper(method, "match", "{} %")
            + (" / " + _paper(method, "dissimilarity") if _paper(method, "dissimilarity") else ""),
        ]
        for method, row in result["questionnaire"].items()
    ]
    questions = next(iter(result["questionnaire"].values()))["questions"]
    return [
        "## Table 4, machine version — can a face recognizer match protected faces?",
        "",
        f"{questions} questions: the recognizer trained on original faces sees one original "
        "test face and 4 protected faces (that photo protected, and protected photos of 3 "
        "other people) and picks the most similar; chance 25 %. Dissimilarity (0 = clearly "
        "the same, 4 = no similarity) = 4 min(1, 2 (1 - AUC)), AUC = how often the true "
        "protected face outscores a distractor. The paper asked 98 people instead.",
        "",
        *_table(
            ["method", "4-choice match (95 % CI)", "AUC", "dissimilarity 0-4", "paper (humans)"],
            rows,
        ),
        "",
    ]


def _table5(result: dict[str, Any]) -> list[str]:
    blocks = result["config"]["metrics"]["fuzziness_blocks"]
    rows = []
    for method, row in result["image_metrics"].items():
        props = result["properties"][method]
        rows.append(
            [_label(result, method)]
            + [f"{row[f'fuzziness2_s{b}']:.3f}" for b in blocks]
            + [f"{row['fuzziness3']:.4f}", f"{row['fuzziness3_data_range_2040']:.3f}"]
            + [props["key"], props["reversible"], props["revocable"]]
            + [
                _paper(method, "f2")
                + (" / " + _paper(method, "f3") if _paper(method, "f3") else "")
            ]
        )
    arnold = result["arnold_key_search"]
    return [
        "## Table 5 — fuzziness, key, reversibility, revocability",
        "",
        "Fuzziness2 = 1 - V(protected)/V(original), V = variance of the s x s local means. "
        "Fuzziness3 = 1 - SSIM(Laplacian(original), Laplacian(protected)), 4-neighbour "
        "Laplacian, mirrored borders, scikit-image SSIM (Gaussian window sigma 1.5, K1 0.01, "
        "K2 0.03) with data_range 255; SSIM's constants scale with data_range, so the column "
        "with data_range 2040 (the Laplacian's full range) shows how much the choice matters.",
        "",
        *_table(
            ["method"]
            + [f"Fuzziness2 s = {b}" for b in blocks]
            + [
                "Fuzziness3",
                "Fuzziness3 (range 2040)",
                "key",
                "reversible",
                "revocable",
                "paper F2 / F3",
            ],
            rows,
        ),
        "",
        f"Arnold's key space is its period, {arnold['period']} iteration counts: a brute-force "
        f"search (the count whose inverse gives the smoothest image) recovered the key of "
        f"{_pct(arnold['key_recovered'])} of {arnold['images']} test images.",
        "",
    ]


def _attacks(result: dict[str, Any]) -> list[str]:
    inversion = result["inversion"]
    names = {
        "a_victim_key": "(a) victim's key leaked",
        "b_own_key": "(b) attacker's own random key",
        "b_own_key_on_own_key_scrambles": "(b') same decoder on its own key's scrambles",
        "mean_attacker_face": "reference: mean attacker face, no decoder",
    }
    rows = [
        [
            label,
            _num(inversion[name]["psnr_db"], 2),
            f"{inversion[name]['ssim']:.3f}",
            _ci(inversion[name]["identity_leakage"]),
        ]
        for name, label in names.items()
    ]
    plain = inversion["plain_recognizer_on_originals"]
    rows.append(["reference: the original faces themselves", "", "1.000", _ci(plain)])
    link, revocation = result["unlinkability"], result["revocation"]
    cross, same = revocation["old_key_gallery_new_key_probes"], revocation["same_key_reference"]
    return [
        "## Attack 1 — inversion by a U-Net decoder",
        "",
        f"The attacker trains on {inversion['attacker_images']} (original, scrambled) pairs of "
        "people who are not victims, then reconstructs the victims' test faces scrambled with "
        "key A. Identity leakage = rank-1 of the plain-face recognizer (original-face gallery of "
        f"the victims) on the reconstructions; chance {_pct(plain['chance'])}. Figure: "
        f"[inversion.png](privacy/inversion.png), {LOCAL_ONLY}.",
        "",
        *_table(["attack", "PSNR (dB)", "SSIM", "identity leakage, rank-1 (95 % CI)"], rows),
        "",
        "## Attack 2 — linking a person across keys",
        "",
        "Scores: cosine similarity of one test photo under key A and another photo under key "
        "B (or under key A again, the within-epoch case), compared by the key-A system "
        "recognizer's embeddings or by raw pixels (mean-removed; what a passive observer of "
        f"the wire can do); {link['mated_pairs']} mated pairs (same person, "
        f"different photos), {link['non_mated_pairs']} non-mated. D<->sys after Gomez-Barrero et "
        "al. 2018 (0 = unlinkable, 1 = fully linkable), 100-bin densities. Figure: "
        "[unlinkability.png](privacy/unlinkability.png).",
        "",
        *_table(
            ["comparison", "D<->sys"],
            [
                ["system recognizer, key A vs key B", f"{link['keys_a_b']['d_sys']:.3f}"],
                ["system recognizer, same key A vs A", f"{link['same_key_a_a']['d_sys']:.3f}"],
                ["raw pixels, key A vs key B", f"{link['raw_pixels_keys_a_b']['d_sys']:.3f}"],
                ["raw pixels, same key A vs A", f"{link['raw_pixels_same_key_a_a']['d_sys']:.3f}"],
                [
                    "estimator floor: two samples of one distribution",
                    f"{link['estimator_floor']['d_sys']:.3f}",
                ],
            ],
        ),
        "",
        "## Attack 3 — revocation",
        "",
        "The key-A recognizer and its key-A gallery, probed with the test faces scrambled "
        "by the new key B.",
        "",
        *_table(
            ["probes", "rank-1 (95 % CI)", "EER", "chance"],
            [
                [
                    "new key B (revoked gallery)",
                    _ci(cross),
                    _pct(cross["eer"]),
                    _pct(cross["chance"]),
                ],
                ["same key A (reference)", _ci(same), _pct(same["eer"]), _pct(same["chance"])],
            ],
        ),
        "",
    ]


def _goals(result: dict[str, Any]) -> list[str]:
    rows = [
        [
            goal.name,
            f"{goal.measured:.3f}",
            ("<= " if goal.at_most else ">= ") + f"{goal.target:g}",
            "met" if goal.met else f"missed by {goal.shortfall:.3f}",
        ]
        for goal in check(result)
    ]
    return [
        "## Goals of issue 5 (SN, key A)",
        "",
        *_table(["goal", "measured", "target", "status"], rows),
        "",
    ]


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Privacy and security evaluation",
        "",
        "Generated by `rllfpr eval privacy` from the config in `privacy.json`; every number below "
        "is in that file. Re-render the text alone with `python -m trainer.studies.privacy.report "
        "docs/results/privacy.json`.",
        "",
        "The privacy side of other SN settings (no training needed): "
        "[privacy-sn-variants.md](privacy-sn-variants.md) "
        "(`python -m trainer.studies.privacy.sn_variants CONFIG`).",
        "",
        "Each method's output beside the original faces: [samples.png](privacy/samples.png), "
        f"{LOCAL_ONLY}.",
        "",
        *_setup(result),
        *_goals(result),
        *_table1(result),
        *_table2_3(result),
        *_table4(result),
        *_table5(result),
        *_attacks(result),
    ]
    return "\n".join(lines)


def write(result: dict[str, Any], figures: Figures, folder: Path, stem: str = "privacy") -> Path:
    """``folder/stem.json``, ``folder/stem.md`` and ``folder/stem/*.png``."""
    result = result | {"goals": [goal.as_dict() for goal in check(result)]}
    labels = {method: props["label"] for method, props in result["properties"].items()}
    labels["original"] = "original (grey)"
    result["figures"] = drawing.draw_all(figures, labels, folder / stem)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = folder / f"{stem}.md"
    markdown.write_text(render(result) + "\n")
    return markdown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Re-render a privacy report's Markdown from its JSON."
    )
    parser.add_argument("document", type=Path, help="privacy.json written by rllfpr eval privacy")
    document = parser.parse_args().document
    document.with_suffix(".md").write_text(render(json.loads(document.read_text())) + "\n")
