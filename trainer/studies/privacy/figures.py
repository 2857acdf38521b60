"""The report's figures (matplotlib, Agg backend), drawn from ``evaluation.Figures``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from trainer.studies.privacy.attacks.unlinkability import Linkability
from trainer.studies.privacy.evaluation import Figures


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")  # tight: long tick labels
    plt.close(figure)
    return path


def _mosaic(
    columns: dict[str, np.ndarray], labels: dict[str, str], path: Path, rows: int, side: str
) -> Path:
    """One image per cell (rows x columns, 2-pixel gaps) drawn as a single picture; labels on
    the chosen side (top: a column per method; left: a row per name)."""
    size = next(iter(columns.values())).shape[-1]
    step = size + 2
    names = list(columns)
    shape = (rows, len(names)) if side == "top" else (len(names), rows)
    canvas = np.full((shape[0] * step, shape[1] * step), 255, np.uint8)
    for index, name in enumerate(names):
        for k in range(rows):
            r, c = (k, index) if side == "top" else (index, k)
            canvas[r * step : r * step + size, c * step : c * step + size] = columns[name][k]
    figure, axis = plt.subplots(figsize=(shape[1] * 0.9 + 1.2, shape[0] * 0.9 + 0.3))
    axis.imshow(canvas, cmap="gray", vmin=0, vmax=255)
    centres = [i * step + size / 2 for i in range(len(names))]
    texts = [labels.get(name, name.replace("_", " ")) for name in names]
    if side == "top":
        axis.set_xticks(centres, texts, fontsize=6, rotation=30, ha="left")
        axis.xaxis.tick_top()
        axis.set_yticks([])
    else:
        axis.set_yticks(centres, texts, fontsize=6)
        axis.set_xticks([])
    return _save(figure, path)


def samples(figures: Figures, labels: dict[str, str], path: Path, faces: int = 4) -> Path:
    columns = {"original": figures.originals} | figures.protected
    return _mosaic(columns, labels, path, min(faces, len(figures.originals)), "top")


def histograms(figures: Figures, labels: dict[str, str], path: Path) -> Path:
    """Paper Fig. 8: grey-level histograms of two faces under each method."""
    columns = {"original": figures.originals} | figures.protected
    figure, axes = plt.subplots(2, len(columns), figsize=(1.9 * len(columns), 3.4), sharex=True)
    for col, (method, images) in enumerate(columns.items()):
        for row, face in enumerate((0, len(images) // 2)):
            axis = axes[row, col]
            counts, edges = np.histogram(images[face], bins=64, range=(0, 256))
            axis.stairs(counts, edges, fill=True, color="0.3")
            axis.set_yticks([])
            axis.tick_params(labelsize=6)
        axes[0, col].set_title(labels.get(method, method), fontsize=7)
    axes[1, 0].set_xlabel("grey level", fontsize=7)
    return _save(figure, path)


def correlation(figures: Figures, labels: dict[str, str], path: Path) -> Path:
    """Paper Fig. 9: each pixel against its right-hand neighbour, one face per method."""
    columns = {"original": figures.originals} | figures.protected
    figure, axes = plt.subplots(1, len(columns), figsize=(1.9 * len(columns), 2.0))
    for axis, (method, images) in zip(axes, columns.items(), strict=True):
        image = images[0].astype(np.float64)
        axis.scatter(image[:, :-1].ravel(), image[:, 1:].ravel(), s=0.3, color="0.2")
        axis.set_xlim(0, 255)
        axis.set_ylim(0, 255)
        axis.set_axis_off()
        axis.set_title(labels.get(method, method), fontsize=7)
    return _save(figure, path)


def inversion(figures: Figures, path: Path) -> Path:
    rows = figures.inversion
    return _mosaic(rows, {}, path, len(next(iter(rows.values()))), "left")


def _linkage_panel(axis: plt.Axes, title: str, result: Linkability) -> None:
    edges = result.edges
    axis.stairs(result.mated_density, edges, fill=True, alpha=0.6, label="mated (same person)")
    axis.stairs(result.non_mated_density, edges, fill=True, alpha=0.6, label="non-mated")
    twin = axis.twinx()
    twin.stairs(result.local, edges, color="black", linewidth=1, label="D<->(s)")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("D<->(s)", fontsize=7)
    axis.set_xlabel("cosine score", fontsize=7)
    axis.set_title(f"{title}: D<->sys = {result.d_sys:.3f}", fontsize=8)
    axis.legend(fontsize=6, loc="upper left")


def linkage(figures: Figures, path: Path) -> Path:
    panels = len(figures.linkage)
    columns = 2
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.2 * rows), squeeze=False)
    for axis, (name, result) in zip(axes.ravel(), figures.linkage.items(), strict=False):
        _linkage_panel(axis, name.replace("_", " "), result)
    for axis in axes.ravel()[panels:]:
        axis.set_axis_off()
    figure.tight_layout()
    return _save(figure, path)


def draw_all(figures: Figures, labels: dict[str, str], folder: Path) -> dict[str, str]:
    """Every figure into ``folder``; returns name -> file name."""
    paths = {
        "samples": samples(figures, labels, folder / "samples.png"),
        "histograms": histograms(figures, labels, folder / "histograms.png"),
        "correlation": correlation(figures, labels, folder / "correlation.png"),
        "inversion": inversion(figures, folder / "inversion.png"),
        "unlinkability": linkage(figures, folder / "unlinkability.png"),
    }
    return {name: path.name for name, path in paths.items()}
