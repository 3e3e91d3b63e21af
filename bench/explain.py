"""What a heatmap, a DICOM decode and the sanity checks cost per request, on this machine.

    python -m bench.explain [--repeat 7] [--size 224] [--arch vgg16 ...] [--json out.json]

Heatmaps are measured warm, through the inference service as requests use it, on the
published full-size shape (ImageNet base without top, Flatten, softmax over two
classes, built with ``weights=None``) served by ONNX Runtime: ``explain_ms`` (the
head's gradient from the prediction's own feature map, the overlay, PNG encoding)
against the same requests' ``inference_ms``, next to the whole-model Grad-CAM pass a
heatmap cost before, and how far apart the two maps are. DICOM files are written with pydicom the way
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.timing import samples_ms  # noqa: E402
from inference.dicom import decode_dicom  # noqa: E402
from inference.image import DecodedImage  # noqa: E402
from inference.sanity import sanity_warnings  # noqa: E402
from tests import dicom_factory as make  # noqa: E402
from tests.model_factory import APPLICATIONS, full_size_model, install  # noqa: E402


def timed_ms(call, repeat: int) -> dict:
    """Median and spread of ``repeat`` calls after one warm-up call."""
    samples = samples_ms(call, repeat)
    return {"median_ms": round(statistics.median(samples), 1),
            "min_ms": round(min(samples), 1), "max_ms": round(max(samples), 1)}


def served_model(arch: str, size: int, folder: str):
    """The published full-size shape, installed, converted and loaded by the service."""
    from inference.preparation import convert_entry
    from inference.service import InferenceService

    install(full_size_model(arch, input_size=(size, size)), folder, arch, "ct",
            {"input_size": [size, size]})
    service = InferenceService(folder)
    entry = next(e for e in service.entries() if e.key == ("ct", arch))
    convert_entry(entry)
    return service, entry


def bench_gradcam(archs, size: int, repeat: int) -> list[dict]:
    """Per architecture, through the service: the prediction's ``inference_ms`` and the
    heatmap's ``explain_ms`` on the same requests, and the whole-model Grad-CAM pass
    that a heatmap cost before it reused the prediction's feature map."""
    import tempfile

    from inference.explain import gradcam_for, head_gradcam_for
    from inference.preprocess import model_input

    rng = np.random.default_rng(0)
    upload = DecodedImage(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8), "PNG")
    data = encode_png(upload.pixels)
    rows = []
    for arch in archs:
        with tempfile.TemporaryDirectory() as folder:
            service, entry = served_model(arch, size, folder)
            for _ in range(2):  # load, trace the head, warm both
                service.analyse(data, "ct", arch, explain=True)
            inference, explain_ms = [], []
            for _ in range(repeat):
                (result,) = service.analyse(data, "ct", arch, explain=True)[1].results
                inference.append(result.inference_ms)
                explain_ms.append(result.explain_ms)
            loaded = service.load(entry)
            card = loaded.card
            batch = model_input(upload.pixels, card)[None]
            whole = gradcam_for(loaded.keras_model, card.covid_index, card.input_size)
            _, features = loaded.run_with_features(batch)
            head = head_gradcam_for(loaded.keras_model, card.covid_index, card.input_size)
            full_map = whole.run(batch)[0][0]
            head_map = head(features)[0]
            rows.append({
                "architecture": APPLICATIONS[arch], "backend": loaded.backend_name,
                "inference_ms": round(statistics.median(inference), 1),
                "explain_ms": round(statistics.median(explain_ms), 1),
                "ratio": round(statistics.median(explain_ms) / statistics.median(inference), 3),
                "whole_model_gradcam": timed_ms(lambda: whole.run(batch), repeat),
                "map_difference_of_peak": float(np.max(np.abs(head_map - full_map))
                                                / max(float(full_map.max()), 1e-12)),
            })
            print(json.dumps(rows[-1]), flush=True)
            service.cache.clear()
    return rows


def encode_png(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


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
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--arch", action="append", choices=sorted(APPLICATIONS))
    parser.add_argument("--skip-gradcam", action="store_true")
    parser.add_argument("--skip-dicom", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "processor": platform.processor() or platform.machine()},
               "dicom": [] if args.skip_dicom else bench_dicom(args.repeat)}
    if not args.skip_gradcam:
        archs = args.arch or ["vgg16", "vgg19", "inceptionv3", "resnet50"]
        results["gradcam"] = bench_gradcam(archs, args.size, args.repeat)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
