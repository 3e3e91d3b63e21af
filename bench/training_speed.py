"""Training speed per architecture on this machine, in images per second.

Builds each network as ``python -m training train`` does (``--weights none``, new head)
and times a few optimizer steps on random batches in both phases: the head alone on a
frozen base, then with the top blocks thawed. The first two steps of each phase (graph
tracing) are not timed. Also times the input pipeline (decode + ``prepare``) on
synthetic 512 x 512 PNGs, to show whether it can keep up.

    python bench/training_speed.py [--arch vgg16 ...] [--steps 3] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from inference.runtime import import_tensorflow  # noqa: E402
from inference.cards import ModelCard  # noqa: E402
from training.models import BASES, build_model, freeze_base, unfreeze_top  # noqa: E402


def time_steps(model, images, labels, learning_rate: float, steps: int) -> float:
    """Images per second over ``steps`` timed optimizer steps, after two untimed."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy")
    for _ in range(2):  # trace, then let allocations settle
        model.train_on_batch(images, labels)
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    return steps * len(images) / (time.perf_counter() - started)


def pipeline_speed(count: int, size: int, batch_size: int) -> float:
    """Images per second through the tf.data pipeline (parallel decode + prepare)."""
    from PIL import Image

    from training.pipeline import make_dataset

    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"scan-{i}.png"
        Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8)).save(path)
        paths.append(str(path))
    card = ModelCard("vgg16", "ct", input_size=(size, size))
    batches = make_dataset(paths, np.zeros(count), card, batch_size, cache=None)
    started = time.perf_counter()
    seen = sum(int(x.shape[0]) for x, _ in batches)
    return seen / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=sorted(BASES), default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--pipeline-images", type=int, default=64)
    args = parser.parse_args(argv)
    tf = import_tensorflow()
    size = args.input_size
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (args.batch_size, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, 2, args.batch_size)
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, "
          f"GPU: {bool(tf.config.list_physical_devices('GPU'))}; batch {args.batch_size}, "
          f"{size} x {size}, {args.steps} timed steps, --weights none")
    print(f"{'architecture':<14}{'head phase':>14}{'fine-tune phase':>18}   (images/s)")
    for arch in args.arch or ["vgg16", "vgg19", "inceptionv3", "resnet50"]:
        model, after = build_model(arch, (size, size), "none")
        freeze_base(model)
        head = time_steps(model, images, labels, 1e-3, args.steps)
        unfreeze_top(model, after)
        fine = time_steps(model, images, labels, 1e-5, args.steps)
        print(f"{arch:<14}{head:>14.1f}{fine:>18.1f}", flush=True)
        del model
    if args.pipeline_images:
        speed = pipeline_speed(args.pipeline_images, size, args.batch_size)
        print(f"input pipeline (512 x 512 PNG -> {size} x {size}): {speed:.0f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
