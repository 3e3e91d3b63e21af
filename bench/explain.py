"""What a heatmap, a DICOM decode and the sanity checks cost per request, on this machine.

    python -m bench.explain [--repeat 5] [--size 224] [--arch vgg16 ...] [--json out.json]

Grad-CAM is measured warm (the traced function is built once per model, off the
request path) on the published full-size shape (ImageNet base without top, Flatten,
softmax over two classes, built with ``weights=None``): the whole ``explain()`` call
(preprocessing, forward and backward pass, overlay, PNG encoding) next to a plain
graph forward pass of the same model. DICOM files are written with pydicom the way
scanners write them: a 512 x 512 CT slice, raw and compressed, a 2k x 2.5k radiograph,
a 30-frame series.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from inference.dicom import decode_dicom  # noqa: E402
from inference.explain import build_gradcam, explain, overlay, png_base64  # noqa: E402
from inference.image import DecodedImage  # noqa: E402
from inference.registry import ModelCard  # noqa: E402
from inference.sanity import sanity_warnings  # noqa: E402
from tests import dicom_factory as make  # noqa: E402
from tests.model_factory import APPLICATIONS, full_size_model  # noqa: E402


def timed_ms(call, repeat: int) -> dict:
    """Median and spread of ``repeat`` calls after one warm-up call."""
    call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(samples), 1),
            "min_ms": round(min(samples), 1), "max_ms": round(max(samples), 1)}


class LoadedStandIn:
    """What ``explain()`` reads from a loaded model, without the cache around it."""

    def __init__(self, model, card):
        self.keras_model, self.card, self.gate = model, card, None


def bench_gradcam(archs, size: int, repeat: int) -> list[dict]:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    upload = DecodedImage(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8), "PNG")
    rows = []
    for arch in archs:
        model = full_size_model(arch, input_size=(size, size))
        card = ModelCard(arch, "ct", input_size=(size, size))
        started = time.perf_counter()
        gradcam = build_gradcam(model, card.covid_index, (size, size))
        build_ms = (time.perf_counter() - started) * 1000
        forward = tf.function(lambda x, m=model: m(x, training=False),
                              input_signature=[tf.TensorSpec([None, size, size, 3])])
        batch = np.zeros((1, size, size, 3), np.float32)
        cams, _ = gradcam.run(batch)
        stand_in = LoadedStandIn(model, card)
        rows.append({
            "architecture": APPLICATIONS[arch], "target_layer": gradcam.target_layer,
            "map": "x".join(str(v) for v in cams.shape[1:]),
            "build_and_trace_ms": round(build_ms),
            "forward": timed_ms(lambda: forward(batch), repeat),
            "gradcam_pass": timed_ms(lambda: gradcam.run(batch), repeat),
            "explain_total": timed_ms(lambda: explain(stand_in, upload), repeat),
        })
        print(json.dumps(rows[-1]), flush=True)
        del model, gradcam, forward, stand_in
    rows.append({"architecture": "overlay + PNG (512 x 512)", "explain_total": timed_ms(
        lambda: png_base64(overlay(upload.pixels, cams[0])), repeat)})
    return rows


def bench_dicom(repeat: int) -> list[dict]:
    from pydicom.data import get_testdata_file
    from pydicom.uid import JPEG2000Lossless, RLELossless

    rng = np.random.default_rng(1)
    ct = make.hu_phantom(512) + rng.normal(0, 20, (512, 512))
    radiograph = rng.integers(0, 4096, (2500, 2048)).astype(np.uint16)
    series = rng.integers(0, 4096, (30, 512, 512)).astype(np.uint16)
    files = {
        "CT_small.dcm (pydicom sample, 128 x 128)":
            open(get_testdata_file("CT_small.dcm"), "rb").read(),
        "CT 512 x 512, 16-bit, lung window": make.ct_file(ct),
        "CT 512 x 512, file window": make.ct_file(ct, window=(40, 400)),
        "CT 512 x 512, RLE": make.compressed_ct_file(RLELossless, ct),
        "CT 512 x 512, JPEG 2000 lossless": make.compressed_ct_file(JPEG2000Lossless, ct),
        "X-ray 2048 x 2500, 12-bit, MONOCHROME1": make.xray_file(radiograph, "MONOCHROME1"),
        "X-ray 2048 x 2500, JPEG baseline": make.jpeg_baseline_file(
            (radiograph >> 4).astype(np.uint8)),
        "30-frame series 512 x 512 (middle frame)": make.multiframe_file(series),
    }
    rows = []
    for name, data in files.items():
        decoded = decode_dicom(data, 50_000_000)
        rows.append({"file": name, "bytes": len(data),
                     "decode": timed_ms(lambda d=data: decode_dicom(d, 50_000_000), repeat),
                     "sanity_checks": timed_ms(lambda p=decoded: sanity_warnings(p, "ct"),
                                               repeat)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--arch", action="append", choices=sorted(APPLICATIONS))
    parser.add_argument("--skip-gradcam", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "processor": platform.processor() or platform.machine()},
               "dicom": bench_dicom(args.repeat)}
    if not args.skip_gradcam:
        archs = args.arch or ["vgg16", "vgg19", "inceptionv3", "resnet50"]
        results["gradcam"] = bench_gradcam(archs, args.size, args.repeat)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
