"""How well the out-of-distribution check works, and what it costs per request.

    python -m bench.ood [--seeds 42 7 1234] [--per-kind 30] [--json out.json]

Accuracy: for each seed, a small CNN (``tests.ood_images.small_base``) is trained with
``python -m training train`` on 200 synthetic scans per class, which writes its
profile; the distance is then computed the serving way on 200 fresh scans
(held out: the training distribution, never seen) and on six kinds of unlike images.
Reported: AUROC of the distance (overall and per kind), the share of held-out scans
warned about at the stored threshold, and the share of each kind warned about.

Cost: ``inference.ood.check`` on one request's feature map (profile lookup by file
stats, pooling, one matrix-vector product), for the trained model and for profiles of
the published architectures' sizes (VGG 7 x 7 x 512, ResNet50 7 x 7 x 2048,
InceptionV3 5 x 5 x 2048), plus the one-off read of such a profile.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.timing import samples_ms  # noqa: E402
from inference import ood  # noqa: E402
from tests.ood_images import (PER_CLASS, detector_figures, held_out_scans,  # noqa: E402
                              ood_images, served_distances, small_base, training_arguments)
from tests.training_data import write_images  # noqa: E402

SHAPES = {"trained small CNN": None, "VGG16/VGG19": (7, 7, 512),
          "ResNet50": (7, 7, 2048), "InceptionV3": (5, 5, 2048)}


def accuracy_row(seed: int, per_kind: int, folder: Path) -> dict:
    """Train on fresh synthetic data with ``seed``, then measure the detector."""
    from training.__main__ import build_parser
    from training.train import run_training

    write_images(folder / "data" / "COVID", PER_CLASS, True, seed=seed + 1)
    write_images(folder / "data" / "non-COVID", PER_CLASS, False, seed=seed + 2)
    args = build_parser().parse_args(training_arguments(folder / "data", folder / "models",
                                                        seed))
    card = run_training(args, base_builder=small_base)
    model_path = folder / "models" / "vgg16" / "VGG16_CT_model.h5"
    profile = ood.load_profile(ood.profile_path(model_path))
    held_out = served_distances(model_path, held_out_scans(100, seed=seed + 100))
    unlike = {kind: served_distances(model_path, images)
              for kind, images in ood_images(per_kind, seed=seed + 200).items()}
    figures = detector_figures(held_out, unlike, profile.threshold)
    return {"seed": seed, "test_accuracy": card["metrics"]["accuracy"],
            "features": profile.feature_size, "threshold": round(profile.threshold, 3),
            "validation_images": profile.held_out, **figures}


def timed_ms(call, repeat: int) -> tuple[float, float]:
    """Median and 95th percentile milliseconds of ``call()`` over ``repeat`` runs,
    after a warm-up."""
    times = samples_ms(call, repeat)
    return statistics.median(times), float(np.percentile(times, 95))


def cost_row(name: str, shape: tuple, folder: Path, repeat: int) -> dict:
    """Per-request cost of the check for one feature-map shape, with a random profile
    saved beside a stand-in model file (the values do not change the arithmetic)."""
    rng = np.random.default_rng(0)
    size = shape[-1]
    model_path = folder / f"{name.replace('/', '_')}.h5"
    model_path.write_bytes(rng.bytes(1024))
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    profile = ood.FeatureProfile(rng.standard_normal(size).astype(np.float32),
                                 rng.standard_normal((size, size)).astype(np.float32),
                                 1e9, 100, 100, digest)
    path = ood.save_profile(profile, ood.profile_path(model_path))
    features = rng.random((1, *shape), dtype=np.float32)
    store = ood.ProfileStore()
    read_ms, _ = timed_ms(lambda: ood.load_profile(path), 5)
    check_ms, check_p95 = timed_ms(lambda: ood.check(model_path, features, name, store),
                                   repeat)
    return {"model": name, "feature_map": list(shape), "profile_mb":
            round(path.stat().st_size / 2**20, 2), "check_ms": round(check_ms, 3),
            "check_p95_ms": round(check_p95, 3), "profile_read_ms": round(read_ms, 2)}


def trained_cost(folder: Path, repeat: int) -> dict:
    """The check on the trained model's own profile and a real feature map's shape."""
    model_path = next(folder.glob("seed-*/models/vgg16/VGG16_CT_model.h5"))
    profile = ood.load_profile(ood.profile_path(model_path))
    features = np.random.default_rng(0).random((1, 8, 8, profile.feature_size),
                                               dtype=np.float32)
    store = ood.ProfileStore()
    check_ms, check_p95 = timed_ms(lambda: ood.check(model_path, features, "VGG16", store),
                                   repeat)
    return {"model": "trained small CNN", "feature_map": [8, 8, profile.feature_size],
            "profile_mb": round(ood.profile_path(model_path).stat().st_size / 2**20, 3),
            "check_ms": round(check_ms, 3), "check_p95_ms": round(check_p95, 3),
            "profile_read_ms": None}


def summary(rows: list[dict]) -> dict:
    """Mean, lowest and highest of the accuracy figures over the seeds."""
    def spread(values):
        return {"mean": round(float(np.mean(values)), 4),
                "min": round(float(np.min(values)), 4), "max": round(float(np.max(values)), 4)}

    kinds = rows[0]["auroc_by_kind"]
    return {"auroc": spread([r["auroc"] for r in rows]),
            "false_warning_rate": spread([r["false_warning_rate"] for r in rows]),
            "auroc_by_kind": {k: spread([r["auroc_by_kind"][k] for r in rows]) for k in kinds},
            "warned_by_kind": {k: spread([r["warned_by_kind"][k] for r in rows])
                               for k in kinds}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[42, 7, 1234],
                        help="one training run each; none: measure the cost only")
    parser.add_argument("--per-kind", type=int, default=30, help="unlike images per kind")
    parser.add_argument("--repeat", type=int, default=500, help="timed checks per shape")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = []
        for seed in args.seeds:
            rows.append(accuracy_row(seed, args.per_kind, folder / f"seed-{seed}"))
            print(json.dumps(rows[-1]), flush=True)
        costs = [trained_cost(folder, args.repeat)] if rows else []
        costs += [cost_row(name, shape, folder, args.repeat)
                  for name, shape in SHAPES.items() if shape is not None]
    for row in costs:
        print(json.dumps(row), flush=True)
    result = {"accuracy": rows, "summary": summary(rows) if rows else None, "cost": costs}
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
