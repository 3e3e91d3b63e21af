"""A CT series as a study client sends it, and a study followed through the HTTP API.

``ct_series_zip`` writes one series of 512 x 512 16-bit DICOM CT slices (a chest
phantom with scanner-like noise, one study and series UID, distinct InstanceNumbers)
into a deflated .zip. ``submit`` posts it to ``POST /api/v1/studies``; ``follow``
polls ``GET /api/v1/studies/<id>`` and records when the study was seen running, first
made progress and finished.
"""

from __future__ import annotations

import io
import time
import zipfile
from dataclasses import asdict, dataclass, field

import numpy as np
import requests

from tests.dicom_factory import hu_phantom, new_dataset, to_bytes

BATCH = 8  # the runner's images per forward pass: the last batch is followed closely


def ct_slice(hu: np.ndarray, number: int, study_uid: str, series_uid: str) -> bytes:
    """One slice of the series: stored values ``hu + 1024``, InstanceNumber ``number``."""
    ds = new_dataset("CT")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.InstanceNumber = number
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-250.0, -250.0, -1.25 * number]
    ds.SliceThickness, ds.PixelSpacing = 1.25, [0.98, 0.98]
    ds.set_pixel_data(np.rint(hu + 1024).astype(np.int16), "MONOCHROME2", 16)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
    return to_bytes(ds)


def ct_series_zip(slices: int, size: int = 512, seed: int = 0) -> bytes:
    """A deflated .zip of one CT series, stored in shuffled order (the server sorts)."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    base, study_uid, series_uid = hu_phantom(size), generate_uid(), generate_uid()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for number in rng.permutation(slices) + 1:
            hu = base + rng.normal(0, 20, base.shape)
            archive.writestr(f"series/IM{number:04d}.dcm",
                             ct_slice(hu, int(number), study_uid, series_uid))
    return buffer.getvalue()


@dataclass
class Timeline:
    """One study's moments (``time.monotonic()`` seconds) as the client saw them."""

    total: int
    posted: float  # the POST began (upload included from here)
    accepted: float  # the 202 answer arrived
    running: float | None = None  # first GET that said running (or later)
    first_progress: float | None = None  # first GET with progress.done > 0
    done_at_first: int = 0  # progress.done in that GET
    finished: float | None = None  # first GET that said done
    status: str = "queued"
    polls: int = 0
    error: dict | None = None
    study_id: str = field(default="", repr=False)

    def rates(self) -> dict:
        """Images per second, first progress -> done and submission -> done."""
        after_first = self.total - self.done_at_first
        return {"first_progress_to_done": after_first / (self.finished - self.first_progress),
                "submission_to_done": self.total / (self.finished - self.posted),
                "running_to_done": self.total / (self.finished - self.running)}

    def latencies(self) -> dict:
        """Seconds from the 202 answer to running and to the first progress."""
        return {"upload_to_202_s": self.accepted - self.posted,
                "accepted_to_running_s": self.running - self.accepted,
                "accepted_to_first_progress_s": self.first_progress - self.accepted,
                "running_to_first_progress_s": self.first_progress - self.running,
                "first_progress_to_done_s": self.finished - self.first_progress,
                "submission_to_done_s": self.finished - self.posted}

    def to_json(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "study_id"}
        if self.status == "done":
            data.update(rates=self.rates(), latencies=self.latencies())
        return data


def submit(url: str, archive: bytes, arch: str, total: int) -> Timeline:
    """POST the .zip as a CT study for ``arch`` (explain off); the timeline begun."""
    posted = time.monotonic()
    response = requests.post(url + "/api/v1/studies", timeout=600,
                             files={"archive": ("series.zip", archive, "application/zip")},
                             data={"modality": "ct", "model": arch, "explain": "0"})
    accepted = time.monotonic()
    if response.status_code != 202:
        raise RuntimeError(f"submit answered {response.status_code}: {response.text[:500]}")
    timeline = Timeline(total, posted, accepted)
    timeline.study_id = response.json()["id"]
    return timeline


def poll_interval(timeline: Timeline, done: int, fast: float, slow: float) -> float:
    """Fast until the first progress and during the last batch, slow in between: each
    GET, even a progress-only one, runs in the server on the worker's cores."""
    if timeline.first_progress is None or done >= timeline.total - BATCH:
        return fast
    return slow


def follow(url: str, timeline: Timeline, fast: float = 0.05, slow: float = 0.5,
           limit_s: float = 3600) -> Timeline:
    """Poll until the study is done or failed; fills in the timeline."""
    session = requests.Session()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        body = session.get(f"{url}/api/v1/studies/{timeline.study_id}?images=0",
                           timeout=60).json()  # progress only, as the study page polls
        now, done = time.monotonic(), body["progress"]["done"]
        timeline.polls += 1
        timeline.status = body["status"]
        if timeline.running is None and timeline.status != "queued":
            timeline.running = now
        if timeline.first_progress is None and done > 0:
            timeline.first_progress, timeline.done_at_first = now, done
        if timeline.status in ("done", "failed"):
            timeline.finished, timeline.error = now, body.get("error")
            return timeline
        time.sleep(poll_interval(timeline, done, fast, slow))
    raise RuntimeError(f"study not finished in {limit_s} s (status {timeline.status})")


def view_ms(url: str, study_id: str, runs: int = 5) -> float:
    """Median milliseconds of one GET of the study (its whole view, every image)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        requests.get(f"{url}/api/v1/studies/{study_id}", timeout=60).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)[len(times) // 2]


def delete(url: str, study_id: str) -> None:
    requests.delete(f"{url}/api/v1/studies/{study_id}", timeout=60)
