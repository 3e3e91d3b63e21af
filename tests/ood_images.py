"""Images unlike any chest scan, drawn procedurally, and the measure of how well the
out-of-distribution check tells them from held-out scans (shared by test and benchmark).

Six kinds of what people upload by mistake: photo-like natural textures, text pages,
hand or limb radiograph-like shapes, colourful graphics, noise, and a chest X-ray-like
thorax (the other modality, for a model trained on CT slices). Each comes as PNG bytes,
so it takes the path an upload takes.
"""

from __future__ import annotations

import io

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .training_data import synthetic_scan

WORDS = ("patient report chest image results normal findings lungs clear heart size "
         "within limits no acute disease follow up advised signed doctor hospital").split()


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    return yy, xx


def _pink_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random field with the 1/f amplitude spectrum of natural photographs, in [0, 1]."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    radius = np.hypot(fx, fy)
    radius[0, 0] = 1.0 / size
    spectrum = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size)))
    field = np.real(np.fft.ifft2(spectrum / radius))
    return (field - field.min()) / (np.ptp(field) + 1e-12)


def natural_texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A photo-like image: a 1/f luminance field (the spectrum of natural scenes) in a
    random colour cast, with a weaker 1/f field in each channel for chroma."""
    luminance = _pink_field(rng, size)
    cast = rng.uniform(0.4, 1.0, 3)
    chroma = np.stack([_pink_field(rng, size) for _ in range(3)], axis=-1)
    return np.clip(0.75 * luminance[..., None] * cast + 0.25 * chroma, 0, 1)


def text_page(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Black words in lines on a white page."""
    page = Image.new("L", (size * 2, size * 2), 255)
    draw = ImageDraw.Draw(page)
    for y in range(int(rng.integers(2, 8)), size * 2 - 10, int(rng.integers(11, 15))):
        line = " ".join(rng.choice(WORDS, 6))
        draw.text((int(rng.integers(2, 10)), y), line, fill=int(rng.integers(0, 60)))
    return np.asarray(page.resize((size, size), Image.BILINEAR), dtype=np.float64) / 255


def limb(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Bright elongated bone-like blobs, roughly parallel, on black: a hand or forearm."""
    yy, xx = _grid(size)
    image = 0.03 * rng.random((size, size))
    base_angle = rng.uniform(0, np.pi)
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0.2, 0.8, 2)
        angle = base_angle + rng.normal(0, 0.25)
        along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        length, width = rng.uniform(0.2, 0.45), rng.uniform(0.025, 0.06)
        image += rng.uniform(0.6, 0.95) * ((along / length) ** 2 + (across / width) ** 2 < 1)
    return np.clip(image, 0, 1)


def colour_graphic(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Saturated shapes on a coloured background: a logo, a chart, a screenshot."""
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
        x1, y1 = x0 + int(rng.integers(8, size // 2)), y0 + int(rng.integers(8, size // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=colour)
    return np.asarray(image, dtype=np.float64) / 255


def noise(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Uniform noise, grey or in colour."""
    if rng.random() < 0.5:
        return rng.random((size, size))
    return rng.random((size, size, 3))


def chest_xray(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A frontal chest X-ray-like thorax: a bright wide silhouette, dark lungs, a bright
    spine and heart, on a dark background."""
    yy, xx = _grid(size)
    image = 0.05 + 0.02 * rng.standard_normal((size, size))
    width, top = rng.uniform(0.42, 0.48), rng.uniform(0.05, 0.15)
    body = (((xx - 0.5) / width) ** 2 + ((yy - 1.0) / (1.0 - top)) ** 2) < 1
    image[body] = 0.75 + 0.05 * rng.standard_normal(body.sum())
    for side in (-1, 1):
        cx = 0.5 + side * rng.uniform(0.17, 0.21)
        lung = (((xx - cx) / 0.13) ** 2 + ((yy - 0.55) / 0.3) ** 2) < 1
        image[lung] = 0.25 + 0.05 * rng.standard_normal(lung.sum())
    image[(np.abs(xx - 0.5) < 0.03) & body] = 0.9
    heart = (((xx - 0.55) / 0.1) ** 2 + ((yy - 0.7) / 0.12) ** 2) < 1
    image[heart] = 0.8
    return np.clip(image, 0, 1)


KINDS = {
    "natural texture": natural_texture,
    "text page": text_page,
    "limb": limb,
    "colour graphic": colour_graphic,
    "noise": noise,
    "chest X-ray (other modality)": chest_xray,
}


def png_bytes(pixels: np.ndarray) -> bytes:
    """An image (grey or RGB; floats in [0, 1] or 8-bit) as PNG bytes."""
    if pixels.dtype != np.uint8:
        pixels = np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def ood_images(per_kind: int, seed: int, size: int = 64) -> dict[str, list[bytes]]:
    """``per_kind`` PNGs of every kind, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return {name: [png_bytes(draw(rng, size)) for _ in range(per_kind)]
            for name, draw in KINDS.items()}


def held_out_scans(per_class: int, seed: int) -> list[bytes]:
    """Fresh synthetic scans of both classes: the training distribution, never trained on."""
    rng = np.random.default_rng(seed)
    return [png_bytes(synthetic_scan(covid, rng))
            for _ in range(per_class) for covid in (True, False)]


def small_base(input_shape, weights):
    """Three convolutions, 64 feature channels: a small stand-in for an ImageNet CNN
    whose pooled last map says more than the 16 channels of the training tests' base."""
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="small_conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="small_pool1")(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", name="small_conv2")(x)
    x = keras.layers.MaxPooling2D(name="small_pool2")(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", name="small_conv3")(x)
    return keras.Model(inputs, x), "small_pool1"


PER_CLASS = 200  # synthetic images per class, split 60 / 30 / 10


def training_arguments(data: Path, output: Path, seed: int = 42) -> list[str]:
    """``python -m training train`` for the small base on the synthetic dataset. 30 %
    is held out for validation: the threshold is a 99th percentile of those images'
    distances, and of a few dozen images that is little more than their largest."""
    return ["train", "--data", str(data), "--modality", "ct", "--arch", "vgg16",
            "--weights", "none", "--input-size", "48", "--epochs", "24",
            "--head-epochs", "2", "--batch-size", "16", "--learning-rate", "3e-3",
            "--fine-tune-learning-rate", "3e-3", "--fine-tune", "all", "--patience", "8",
            "--val-fraction", "0.3", "--test-fraction", "0.1", "--seed", str(seed),
            "--deterministic", "--output", str(output), "--verbose", "0", "--no-quantize"]


def served_distances(model_path: Path, images: list[bytes]) -> np.ndarray:
    """Distances as the app computes them: the served graph's last feature map of each
    decoded and prepared upload, pooled, against the profile beside the model."""
    from inference.ood import load_profile, pool_features, profile_path
    from inference.preprocess import decode_image, model_input
    from inference.cards import ModelCard
    from inference.runners import KerasGraphBackend, load_keras_model

    model, _ = load_keras_model(model_path)
    card = ModelCard.load(model_path.with_suffix(".json"), "vgg16", "ct")
    backend = KerasGraphBackend(model, card.input_size)
    batch = np.stack([model_input(decode_image(data).pixels, card) for data in images])
    return load_profile(profile_path(model_path)).distances(pool_features(backend.run(batch)[1]))


def detector_figures(in_distances: np.ndarray, ood_distances: dict[str, np.ndarray],
                     threshold: float) -> dict:
    """AUROC of the distance (out-of-distribution as positive), overall and per kind,
    and the share of held-out scans warned about at ``threshold``."""
    from sklearn.metrics import roc_auc_score

    def auroc(outside: np.ndarray) -> float:
        labels = np.r_[np.zeros(len(in_distances)), np.ones(len(outside))]
        return float(roc_auc_score(labels, np.r_[in_distances, outside]))

    every = np.concatenate(list(ood_distances.values()))
    return {"auroc": auroc(every),
            "auroc_by_kind": {kind: auroc(d) for kind, d in ood_distances.items()},
            "warned_by_kind": {kind: float(np.mean(d > threshold))
                               for kind, d in ood_distances.items()},
            "false_warning_rate": float(np.mean(in_distances > threshold)),
            "held_out": len(in_distances), "unlike": len(every)}
