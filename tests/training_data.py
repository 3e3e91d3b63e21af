"""Synthetic scans and dataset folders for the training tool's tests.

"COVID" images carry soft round opacities, "NonCOVID" images thin straight streaks, both
inside a dark oval "lung" on noise: a small CNN tells them apart, a threshold on mean
brightness alone does not do it perfectly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_scan(covid: bool, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One 8-bit grey image of ``size`` x ``size``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    image = 0.25 + 0.08 * rng.standard_normal((size, size))
    lung = ((xx - 0.5) / 0.38) ** 2 + ((yy - 0.5) / 0.42) ** 2 < 1.0
    image[lung] -= 0.12
    for _ in range(rng.integers(2, 5)):
        cx, cy = rng.uniform(0.25, 0.75, 2)
        if covid:
            radius = rng.uniform(0.06, 0.11)
            image += 0.45 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius ** 2))
        else:
            angle = rng.uniform(0, np.pi)
            distance = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle))
            image += 0.45 * (distance < 0.03)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_images(folder: Path, count: int, covid: bool, seed: int, prefix: str = "img",
                 size: int = 64, suffix: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(1, count + 1):
        path = folder / f"{prefix}-{i}{suffix}"
        Image.fromarray(synthetic_scan(covid, rng, size)).save(path)
        paths.append(path)
    return paths


def ct_dataset(root: Path, per_class: int = 6, size: int = 64) -> Path:
    """The SARS-CoV-2 CT-scan dataset's layout: ``COVID/``, ``non-COVID/``."""
    write_images(root / "COVID", per_class, True, seed=1, prefix="Covid", size=size)
    write_images(root / "non-COVID", per_class, False, seed=2, prefix="Non-Covid", size=size)
    return root


def radiography_dataset(root: Path, per_class: int = 4, size: int = 64) -> Path:
    """The COVID-19 Radiography Database's layout: class folders with ``images`` and
    ``masks``, inside the archive's own wrapper folder."""
    top = root / "COVID-19_Radiography_Dataset"
    for folder, covid, seed in (("COVID", True, 3), ("Normal", False, 4),
                                ("Lung_Opacity", False, 5), ("Viral Pneumonia", False, 6)):
        write_images(top / folder / "images", per_class, covid, seed, prefix=folder, size=size)
        write_images(top / folder / "masks", per_class, False, seed + 10, prefix=folder,
                     size=size)
    (top / "COVID.metadata.xlsx").write_bytes(b"not an image")
    return root


def tiny_base(input_shape, weights):
    """A two-convolution base standing in for an ImageNet CNN: trains in seconds."""
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="tiny_conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="tiny_pool1")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="tiny_conv2")(x)
    x = keras.layers.MaxPooling2D(name="tiny_pool2")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="tiny_conv3")(x)
    return keras.Model(inputs, x), "tiny_pool1"


def train_in_fresh_process(argv: list[str], base: str = "tests.training_data:tiny_base"
                           ) -> None:
    """``run_training`` on a small stand-in base (``module:function``), in its own
    process: ``--deterministic`` turns on op determinism for the whole process, and
    the tests' own process must stay as the app runs."""
    module, name = base.split(":")
    code = ("import importlib, sys; from training.__main__ import build_parser; "
            "from training.train import run_training; "
            f"base = getattr(importlib.import_module({module!r}), {name!r}); "
            "run_training(build_parser().parse_args(sys.argv[1:]), base_builder=base)")
    subprocess.run([sys.executable, "-c", code, *argv], cwd=Path(__file__).resolve().parents[1],
                   check=True, stdout=subprocess.DEVNULL)
