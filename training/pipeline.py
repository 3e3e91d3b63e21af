"""tf.data input pipelines that feed models exactly what the app feeds them.

Every image goes through the app's own ``decode_image`` and ``model_input`` (inside
``tf.numpy_function``, decoded in parallel), so a model trained here sees the inputs it
will see when served. Prepared images are cached once; augmentation runs after the
cache on whole batches, so each epoch gets fresh variations without decoding again.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from inference.runtime import import_tensorflow
from inference.preprocess import decode_image, model_input
from inference.cards import ModelCard

SHUFFLE_BUFFER = 512


def load_prepared(path: str | bytes, card: ModelCard) -> np.ndarray:
    """One file -> the float32 model input, through the app's decode and model_input."""
    name = path.decode() if isinstance(path, bytes) else str(path)
    data = Path(name).read_bytes()
    try:
        decoded = decode_image(data, filename=name)
    except Exception as exc:  # noqa: BLE001 - name the file whatever went wrong
        raise ValueError(f"{name}: {getattr(exc, 'message', exc)}") from exc
    return model_input(decoded.pixels, card).astype(np.float32, copy=False)


def augmentation(modality: str, seed: int = 0):
    """Random changes that keep a scan plausible for its modality.

    CT slices may be mirrored (both lungs look alike, COVID findings are bilateral);
    chest X-rays are not, since a mirrored heart is an image no one will upload.
    Geometric changes only: they are valid for any preprocessing mode, and
    ``nearest`` filling repeats the dark border instead of inventing a grey one.
    """
    import keras

    layers = keras.layers
    steps = []
    if modality == "ct":
        steps.append(layers.RandomFlip("horizontal", seed=seed))
        steps.append(layers.RandomRotation(0.03, fill_mode="nearest", seed=seed + 1))
    else:
        steps.append(layers.RandomRotation(0.02, fill_mode="nearest", seed=seed + 1))
    steps.append(layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 2))
    steps.append(layers.RandomTranslation(0.05, 0.05, fill_mode="nearest", seed=seed + 3))
    return keras.Sequential(steps, name=f"augment_{modality}")


def describe_augmentation(modality: str) -> list[str]:
    """The augmentation as words, for the model card."""
    return [layer.__class__.__name__ for layer in augmentation(modality).layers]


def make_dataset(paths: list[str], labels, card: ModelCard, batch_size: int,
                 training: bool = False, augment=None, cache: str | None = "",
                 seed: int = 0):
    """Batches of (prepared images, labels).

    ``training`` shuffles (once globally, then per epoch within a buffer) and applies
    ``augment``; ``cache`` is "" for memory, a file path for disk, or None for none.
    """
    tf = import_tensorflow()
    labels = np.asarray(labels, dtype=np.int32)
    paths = np.asarray([str(p) for p in paths])
    if training:
        # Class folders come sorted: mix them before the cache fixes the order.
        order = np.random.default_rng(seed).permutation(len(paths))
        paths, labels = paths[order], labels[order]
    height, width = card.input_size

    def load(path):
        image = tf.numpy_function(functools.partial(load_prepared, card=card), [path],
                                  tf.float32, stateful=False)
        image.set_shape((height, width, 3))
        return image

    def load_pair(path, label):
        return load(path), label

    def augment_batch(images, batch_labels):
        return augment(images, training=True), batch_labels

    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    dataset = dataset.map(load_pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache is not None:
        dataset = dataset.cache(cache)
    if training:
        dataset = dataset.shuffle(min(SHUFFLE_BUFFER, max(1, len(paths))), seed=seed,
                                  reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if training and augment is not None:
        dataset = dataset.map(augment_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
