"""OHIF's built viewer (tests/ohif/dist) served by Debian's nginx on loopback, in front
of a test Orthanc: what a reader opens to see this tool's write-back in a real viewer.

nginx serves the viewer, its single-page routes (every unknown path is index.html) and
an app-config.js written here, whose one data source is DICOMweb at the same origin:
``/dicom-web`` is proxied to Orthanc, with Orthanc's basic-auth header added when the
test Orthanc has users, so the browser needs neither CORS nor credentials.
tests/ohif/fetch.sh puts the viewer in place; without it the tests skip and say so.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from .redis_server import free_port
from .waiting import answering, wait_until_up

OHIF_VERSION = "3.12.10"
DIST = Path(__file__).resolve().parent / "ohif" / "dist"
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
DATA_SOURCE = "lungscan-pacs"


def missing_reason() -> str | None:
    """Why the viewer cannot be served here, or None when it can."""
    if NGINX is None:
        return "nginx is missing: install Debian's nginx (.ci/run does)"
    version = DIST / ".ohif-version"
    if not (DIST / "index.html").exists() or not version.exists():
        return f"OHIF's viewer is missing from {DIST}: run tests/ohif/fetch.sh (.ci/run does)"
    if version.read_text().strip() != OHIF_VERSION:
        return f"{DIST} holds another OHIF than {OHIF_VERSION}: run tests/ohif/fetch.sh"
    return None


needs_ohif = [pytest.mark.e2e, pytest.mark.services,
              pytest.mark.skipif(missing_reason() is not None,
                                 reason=missing_reason() or "")]


def app_config(origin: str) -> str:
    """OHIF 3.x's window.config (the format of dist/app-config.js): one DICOMweb data
    source, WADO-RS for images and thumbnails, the study metadata loaded lazily."""
    root = f"{origin}/dicom-web"
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": DATA_SOURCE,
        "configuration": {
            "friendlyName": "LungScan test Orthanc", "name": "orthanc",
            "wadoUriRoot": root, "qidoRoot": root, "wadoRoot": root,
            "qidoSupportsIncludeField": True, "supportsReject": False,
            "imageRendering": "wadors", "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True, "supportsFuzzyMatching": True,
            "supportsWildcard": True, "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/", "extensions": [], "modes": [], "customizationService": {},
        "showStudyList": True, "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False, "showCPUFallbackMessage": False,
        "showLoadingIndicator": True, "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 75, "prefetch": 25},
        "showErrorDetails": "always",
        "defaultDataSourceName": DATA_SOURCE, "dataSources": [source],
    }
    return f"/** @type {{AppTypes.Config}} */\nwindow.config = {json.dumps(config, indent=2)};\n"


def nginx_config(folder: Path, port: int, orthanc) -> str:
    """A configuration for an unprivileged nginx in ``folder``: own pid, logs and temp
    paths; as root the workers stay this user, so they can read the test's folder."""
    auth = ""
    if orthanc.auth:
        token = base64.b64encode(":".join(orthanc.auth).encode()).decode()
        auth = f'proxy_set_header Authorization "Basic {token}";'
    user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {folder / 'temp' / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}
daemon off;
worker_processes 1;
pid {folder / 'nginx.pid'};
error_log {folder / 'error.log'} info;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    types {{ application/wasm wasm; }}
    default_type application/octet-stream;
    access_log {folder / 'access.log'};
{temp}
    server {{
        listen 127.0.0.1:{port};
        root {DIST};
        location = /app-config.js {{ alias {folder / 'app-config.js'}; }}
        location /dicom-web/ {{
            proxy_pass {orthanc.url}/dicom-web/;
            proxy_set_header Host $http_host;
            {auth}
            proxy_read_timeout 120s;
        }}
        location / {{ try_files $uri /index.html; }}
    }}
}}
"""


class OhifViewer:
    """One nginx process serving OHIF at ``url`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, folder: Path, orthanc):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = folder / "nginx.conf"
        self.error_log = folder / "error.log"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (folder / "temp" / kind).mkdir(parents=True, exist_ok=True)
        (folder / "app-config.js").write_text(app_config(self.url))
        self.config_path.write_text(nginx_config(folder, self.port, orthanc))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start nginx and wait (up to 30 s) until it serves the viewer's page."""
        with open(self.folder / "nginx.out", "ab") as out:
            self.process = subprocess.Popen(
                [NGINX, "-p", str(self.folder), "-e", str(self.error_log),
                 "-c", str(self.config_path)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_up(lambda: answering(f"{self.url}/"), self.process, "nginx",
                          self.log_text)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()  # nginx's fast shutdown
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def log_text(self) -> str:
        parts = [self.folder / "nginx.out", self.error_log]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())

    def study_url(self, study_uid: str) -> str:
        return f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"


@contextmanager
def ohif_viewer(folder: Path, orthanc):
    """Yield a started :class:`OhifViewer` in front of ``orthanc``; stopped after."""
    folder.mkdir(parents=True, exist_ok=True)
    viewer = OhifViewer(folder, orthanc)
    viewer.start()
    try:
        yield viewer
    finally:
        viewer.stop()
