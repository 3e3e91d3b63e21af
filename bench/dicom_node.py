"""Time from the last C-STORE of a study sent to the DICOM node to its report arriving at
the result destination.

    python -m bench.dicom_node [--slices 100] [--arch inceptionv3] [--stable 2] [--runs 2]

Real parts on loopback: ``flask dicom listen`` (the node), a gunicorn server whose
embedded worker starts stable studies and runs them, a full-size CT model (random
weights, converted for ONNX Runtime beforehand), dcmtk's storescu as the modality
sending 512 x 512 slices and dcmtk's storescp as the PACS the report goes to by
C-STORE. Each run clocks, from storescu's exit: the study complete and started
(``DICOM_STABLE_S`` plus the loop's look), analysed, and the report received. Medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import requests  # noqa: E402

from bench.studies import DEFAULT_MODEL_DIR, prepare_models  # noqa: E402
from bench.study_workload import ct_slice  # noqa: E402
from tests.dicom_factory import hu_phantom  # noqa: E402
from tests.redis_server import free_port  # noqa: E402
from tests.server import start_server  # noqa: E402
from tests.waiting import listening, wait_until_up  # noqa: E402


def write_series(folder: Path, slices: int, seed: int) -> list[str]:
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    base, study_uid, series_uid = hu_phantom(512), generate_uid(), generate_uid()
    for number in range(1, slices + 1):
        (folder / f"{number:04d}.dcm").write_bytes(
            ct_slice(base + rng.normal(0, 20, base.shape), number, study_uid, series_uid))
    return sorted(str(path) for path in folder.iterdir())


def one_run(root: Path, node_port: int, received: Path, slices: int, seed: int) -> dict:
    paths = write_series(root / f"series-{seed}", slices, seed)
    before = set(received.iterdir())
    started = time.monotonic()
    sent = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "LUNGSCAN", "127.0.0.1",
                           str(node_port), *paths], capture_output=True, text=True,
                          timeout=600)
    if sent.returncode != 0:
        raise RuntimeError(f"storescu failed: {sent.stderr[-500:]}")
    last_store = time.monotonic()
    while not any(path.name.startswith("SR") for path in set(received.iterdir()) - before):
        if time.monotonic() - last_store > 1800:
            raise RuntimeError("no report after 30 minutes")
        time.sleep(0.1)
    return {"slices": slices, "send_s": round(last_store - started, 1),
            "last_store_to_report_s": round(time.monotonic() - last_store, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--arch", default="inceptionv3")
    parser.add_argument("--stable", type=float, default=2.0, help="DICOM_STABLE_S")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--models", default=DEFAULT_MODEL_DIR)
    args = parser.parse_args()
    prepare_models(Path(args.models), [args.arch])
    root = Path(tempfile.mkdtemp(prefix="bench-node-"))
    received, node_port, results_port = root / "received", free_port(), free_port()
    received.mkdir()
    env = {"FLASK_DICOM_ALLOWED_CALLERS": "MODALITY", "FLASK_DICOM_BIND": "127.0.0.1",
           "FLASK_DICOM_PORT": str(node_port), "FLASK_DICOM_STABLE_S": str(args.stable),
           "FLASK_DICOM_ANALYSE": f"ct:{args.arch}", "FLASK_PREPARE_MODELS": "false",
           "FLASK_DICOM_RESULT_DESTINATION": f"RESULTS@127.0.0.1:{results_port}"}
    destination = subprocess.Popen(["storescp", "-aet", "RESULTS", "-od", str(received),
                                    str(results_port)])
    server = start_server(root / "web", Path(args.models), workers=1, startup_timeout=180,
                          env=env)
    node_env = {**os.environ, **env, "FLASK_INSTANCE_PATH": str(root / "web" / "instance"),
                "FLASK_MODEL_DIR": args.models}
    node = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "dicom",
                             "listen"], cwd=ROOT, env=node_env)
    try:
        wait_until_up(lambda: listening(node_port), node, "flask dicom listen", timeout=60)
        requests.get(server.url + "/healthz", timeout=10)  # starts the embedded worker
        warm = one_run(root, node_port, received, 4, seed=99)
        runs = [one_run(root, node_port, received, args.slices, seed=i)
                for i in range(args.runs)]
    finally:
        node.terminate()
        server.stop()
        destination.terminate()
    print(json.dumps({"warm_up": warm, "runs": runs}, indent=2))
    median = statistics.median(r["last_store_to_report_s"] for r in runs)
    print(f"\n{args.slices}-slice CT study, {args.arch}, DICOM_STABLE_S={args.stable:g}: "
          f"last C-STORE -> report received by C-STORE, median {median:.1f} s over "
          f"{len(runs)} runs")


if __name__ == "__main__":
    main()
