"""Time from a study's arrival in the PACS to the tool's report written back into it.

    python -m bench.pacs_arrival [--slices 100] [--arch resnet50] [--stable 5] [--runs 2]

A real Orthanc (Debian's, DICOMweb plugin) and a real gunicorn server on loopback, with
auto-analysis on (``PACS_AUTO_ANALYSE=ct:<arch>``, polled every second) and the
embedded queue and worker, serving a full-size model (random weights, converted for
ONNX Runtime beforehand). A warm-up study loads the model; then each run uploads a
series of 512 x 512 CT slices to Orthanc and clocks, from the last slice stored:
the study seen and started (poll plus ``PACS_STABLE_S``), its images fetched, analysed,
and the Structured Report readable in Orthanc. The machine may be shared: medians.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import requests  # noqa: E402

from bench.studies import DEFAULT_MODEL_DIR, prepare_models  # noqa: E402
from bench.study_workload import ct_slice  # noqa: E402
from tests.dicom_factory import hu_phantom  # noqa: E402
from tests.orthanc_server import orthanc_server  # noqa: E402
from tests.server import start_server  # noqa: E402


def upload_series(orthanc, slices: int, seed: int) -> tuple[str, float]:
    """Store a new CT series in Orthanc; its StudyInstanceUID and upload seconds."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    base, study_uid, series_uid = hu_phantom(512), generate_uid(), generate_uid()
    started = time.monotonic()
    for number in range(1, slices + 1):
        orthanc.upload(ct_slice(base + rng.normal(0, 20, base.shape), number, study_uid,
                                series_uid))
    return study_uid, time.monotonic() - started


def report_written(orthanc, study_uid: str) -> bool:
    found = requests.get(f"{orthanc.dicomweb_url}/studies/{study_uid}/series",
                         params={"Modality": "SR"}, timeout=10)
    return found.status_code == 200 and bool(found.content.strip()) and found.json() != []


def study_row(database: Path, study_uid: str) -> dict | None:
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        row = connection.execute(
            "SELECT created_at, started_at, finished_at, total, status FROM studies "
            "WHERE pacs_study_uid = ? ORDER BY created_at DESC", (study_uid,)).fetchone()
    return dict(row) if row else None


def seconds(moment: str | None) -> float | None:
    """A stored naive UTC moment as epoch seconds."""
    if not moment:
        return None
    return datetime.fromisoformat(moment).replace(tzinfo=timezone.utc).timestamp()


def one_run(orthanc, server, database: Path, slices: int, seed: int) -> dict:
    study_uid, upload_s = upload_series(orthanc, slices, seed)
    arrived, wall_arrived = time.monotonic(), time.time()
    deadline = arrived + 1800
    while not report_written(orthanc, study_uid):
        if time.monotonic() > deadline:
            raise RuntimeError("no report after 30 minutes")
        time.sleep(0.2)
    written = time.monotonic() - arrived
    row = study_row(database, study_uid)
    created, finished = seconds(row["created_at"]), seconds(row["finished_at"])
    return {"slices": slices, "upload_s": round(upload_s, 1), "arrival_to_report_s":
            round(written, 1), "arrival_to_started_s": round(created - wall_arrived, 1),
            "started_to_analysed_s": round(finished - created, 1),
            "analysed_to_report_s": round(written - (finished - wall_arrived), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--stable", type=float, default=5.0, help="PACS_STABLE_S")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--models", default=DEFAULT_MODEL_DIR)
    args = parser.parse_args()
    prepare_models(Path(args.models), [args.arch])
    root = Path(tempfile.mkdtemp(prefix="bench-pacs-"))
    with orthanc_server(root / "orthanc") as orthanc:
        server = start_server(root / "web", Path(args.models), workers=1, startup_timeout=180,
                              env={"FLASK_DICOMWEB_URL": orthanc.dicomweb_url,
                                   "FLASK_PACS_AUTO_ANALYSE": f"ct:{args.arch}",
                                   "FLASK_PACS_POLL_S": "1",
                                   "FLASK_PACS_STABLE_S": str(args.stable),
                                   "FLASK_PREPARE_MODELS": "false"})
        try:
            database = root / "web" / "instance" / "lungscan.sqlite3"
            requests.get(server.url + "/healthz", timeout=10)  # starts the worker
            warm = one_run(orthanc, server, database, 8, seed=99)
            runs = [one_run(orthanc, server, database, args.slices, seed=i)
                    for i in range(args.runs)]
        finally:
            server.stop()
    print(json.dumps({"warm_up": warm, "runs": runs}, indent=2))
    median = statistics.median(r["arrival_to_report_s"] for r in runs)
    print(f"\n{args.slices}-slice CT study, {args.arch}, PACS_STABLE_S={args.stable:g}, "
          f"poll 1 s: arrival -> report in Orthanc, median {median:.1f} s over "
          f"{len(runs)} runs")


if __name__ == "__main__":
    main()
