"""Images unlike any chest scan, drawn procedurally, for the out-of-distribution check.

Six kinds of what people upload by mistake: photo-like natural textures, text pages,
hand or limb radiograph-like shapes, colourful graphics, noise, and a chest X-ray-like
thorax (the other modality, for a model trained on CT slices). Each comes as PNG bytes,
so it takes the path an upload takes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

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
    """An image of floats in [0, 1] (grey or RGB) as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def ood_images(per_kind: int, seed: int, size: int = 64) -> dict[str, list[bytes]]:
    """``per_kind`` PNGs of every kind, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return {name: [png_bytes(draw(rng, size)) for _ in range(per_kind)]
            for name, draw in KINDS.items()}
