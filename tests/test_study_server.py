"""A 300-slice CT series through a real gunicorn server with `curl`, as a user would."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from .server import start_server
from .study_helpers import ct_series, zip_of

CURL = shutil.which("curl")
pytestmark = [pytest.mark.services,
              pytest.mark.skipif(CURL is None, reason="curl is missing: install Debian's curl")]


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CURL, "--silent", "--show-error", *args], capture_output=True,
                          text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """Production settings (embedded queue and worker, no broker): what `make serve` runs."""
    root = tmp_path_factory.mktemp("study_server")
    models = root / "models"
    shutil.copytree(tiny_model_dir, models)
    live = start_server(root, models, workers=2)
    yield live
    live.stop()


def test_a_300_slice_series_through_curl(server, tmp_path):
    archive = tmp_path / "series.zip"
    archive.write_bytes(zip_of(ct_series(300, size=128)))
    submitted = curl("-w", "\\n%{http_code}", "-F", f"archive=@{archive}", "-F", "modality=ct",
                     "-F", "model=all", f"{server.url}/api/v1/studies")
    body, status = submitted.stdout.rsplit("\n", 1)
    assert status == "202", body
    url = server.url + json.loads(body)["url"]

    seen, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        view = json.loads(curl(url).stdout)
        seen.append((view["status"], view["progress"]["done"]))
        if view["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert view["status"] == "done", seen[-3:]
    assert view["progress"] == {"done": 300, "total": 300}
    assert [i["instance_number"] for i in view["images"]] == list(range(1, 301))
    assert {len(i["results"]) for i in view["images"]} == {3}  # every CT model answered
    assert view["verdict"]["total_images"] == 300
    assert any(done < 300 for state, done in seen if state in ("queued", "running"))

    csv = curl(url + "/results.csv").stdout.strip().splitlines()
    assert len(csv) == 1 + 300 * 3
    deleted = curl("-X", "DELETE", "-w", "%{http_code}", url)
    assert deleted.stdout == "204"
    assert curl("-w", "%{http_code}", "-o", "/dev/null", url).stdout == "404"
    assert "Traceback" not in server.log_text()


def test_the_access_log_never_holds_a_study_id_a_uid_or_a_file_name(server, tmp_path):
    archive = tmp_path / "one.zip"
    archive.write_bytes(zip_of(ct_series(2)))
    body = curl("-F", f"archive=@{archive}", "-F", "modality=ct", "-F", "model=vgg16",
                f"{server.url}/api/v1/studies").stdout
    study_id = json.loads(body)["id"]
    curl(f"{server.url}/api/v1/studies/{study_id}")
    curl("-o", "/dev/null", f"{server.url}/studies/{study_id}")
    uid = "1.2.840.113619.2.55.3.604688119"
    curl("-X", "POST", "-o", "/dev/null", f"{server.url}/api/v1/pacs/studies/{uid}/analyses")
    curl("-o", "/dev/null", f"{server.url}/studies/{study_id}/images/0/heatmap/DOE_JANE.png")
    deadline = time.monotonic() + 30  # a worker writes its access line after answering
    while "heatmap/" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = server.log_text()
    assert "/api/v1/studies/<study>" in log and "/studies/<study>" in log
    assert "/api/v1/pacs/studies/<uid>/analyses" in log and "heatmap/<file>" in log
    assert study_id not in log and uid not in log and "DOE_JANE" not in log
