"""``preview``: how many images each class has, and a grid of samples to look at.

Looking at the images before training catches the usual mistakes: a class folder with
masks instead of scans, inverted or cropped images, or one class all from one scanner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.preprocess import decode_image

from .datasets import CLASSES, load_dataset, parse_class_map


def sample_indices(labels: np.ndarray, label: int, count: int, seed: int) -> list[int]:
    """Up to ``count`` images of one class, drawn at random but the same for one seed."""
    candidates = np.flatnonzero(labels == label)
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(candidates, size=min(count, candidates.size), replace=False))


def write_grid(dataset, path: Path, per_class: int = 8, seed: int = 0) -> Path:
    """One row per class, images as the app decodes them (8-bit RGB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = dataset.labels
    figure, axes = plt.subplots(len(CLASSES), per_class, squeeze=False,
                                figsize=(1.6 * per_class, 1.9 * len(CLASSES)))
    for row, name in enumerate(CLASSES):
        chosen = sample_indices(labels, row, per_class, seed)
        for column in range(per_class):
            ax = axes[row][column]
            ax.axis("off")
            if column < len(chosen):
                sample = dataset.samples[chosen[column]]
                pixels = decode_image(sample.path.read_bytes(),
                                      filename=sample.path.name).pixels
                ax.imshow(pixels)
                ax.set_title(sample.path.name[:18], fontsize=6)
        axes[row][0].text(-0.1, 0.5, f"{name}\n({int((labels == row).sum())})",
                          transform=axes[row][0].transAxes, ha="right", va="center",
                          fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def run_preview(args) -> dict:
    dataset = load_dataset(args.data, args.limit_per_class, parse_class_map(args.map_class))
    counts = dataset.counts()
    print(f"Dataset {dataset.root}")
    for folder, count in dataset.source_counts().items():
        print(f"  {folder:<24} {count:>7}")
    for name, count in counts.items():
        print(f"  -> {name:<21} {count:>7}")
    if dataset.ignored_folders:
        print(f"  ignored folders (map them with --map-class): "
              f"{', '.join(dataset.ignored_folders)}")
    grid = write_grid(dataset, Path(args.output), args.samples, args.seed)
    print(f"Sample grid: {grid}")
    return {"counts": counts, "sources": dataset.source_counts(), "grid": str(grid)}
