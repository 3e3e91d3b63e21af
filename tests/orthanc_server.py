"""A real Orthanc with its DICOMweb plugin on loopback: own storage, free port.

The fixtures (tests/conftest.py imports them): ``module_orthanc`` is one Orthanc for a
test module, started once; ``orthanc`` is that server for one test, running and
holding no study, and started again after a test that stopped it.
``orthanc_credentials`` (module scope) gives its user and password; a module
overrides it to test authentication.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from .redis_server import free_port
from .waiting import answering, wait_until_up

ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
needs_orthanc = [pytest.mark.services,
                 pytest.mark.skipif(ORTHANC is None or not Path(DICOMWEB_PLUGIN).exists(),
                                    reason="Orthanc is missing: install Debian's orthanc and "
                                           "orthanc-dicomweb (.ci/run does)")]


class OrthancServer:
    """One Orthanc process; ``stop()`` and ``start()`` keep its storage, for restart tests."""

    def __init__(self, folder: Path, username: str | None, password: str | None):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.auth = (username, password or "") if username else None
        self.config_path = folder / "orthanc.json"
        self.log_path = folder / "orthanc.log"
        self.process: subprocess.Popen | None = None
        self.config_path.write_text(json.dumps(self._config(username, password), indent=2))

    def _config(self, username: str | None, password: str | None) -> dict:
        storage = str(self.folder / "storage")
        return {
            "Name": "LungScanTest",
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,  # refuses any client that is not on loopback
            "DicomServerEnabled": False,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "SaveJobs": False,
            "AuthenticationEnabled": username is not None,
            "RegisteredUsers": {username: password or ""} if username else {},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }

    def start(self) -> None:
        """Start Orthanc and wait (up to 30 s) until its REST API answers."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([ORTHANC, str(self.config_path)], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            cwd=self.folder)
        try:
            wait_until_up(lambda: answering(f"{self.url}/system", auth=self.auth),
                          self.process, "Orthanc", self.log_text)
        except RuntimeError:
            self.stop()
            raise

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ensure_running(self) -> None:
        """Start it again if a test stopped it (or it died); its storage is kept."""
        if not self.running:
            self.stop()  # reaps a process that died
            self.start()

    def delete_studies(self) -> None:
        """Remove every study (Orthanc's REST API), so a test starts on an empty PACS."""
        listed = requests.get(f"{self.url}/studies", auth=self.auth, timeout=30)
        listed.raise_for_status()
        for study in listed.json():
            requests.delete(f"{self.url}/studies/{study}", auth=self.auth,
                            timeout=30).raise_for_status()
        left = requests.get(f"{self.url}/studies", auth=self.auth, timeout=30)
        left.raise_for_status()
        if left.json():
            raise RuntimeError(f"Orthanc kept studies after deleting them: {left.json()}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def upload(self, dicom_bytes: bytes) -> dict:
        """Store one Part-10 file through Orthanc's own REST API (not DICOMweb)."""
        response = requests.post(f"{self.url}/instances", data=dicom_bytes, auth=self.auth,
                                 headers={"Content-Type": "application/dicom"}, timeout=30)
        response.raise_for_status()
        return response.json()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def orthanc_server(folder: Path, username: str | None = None, password: str | None = None):
    """Yield a started :class:`OrthancServer` storing under ``folder``; stopped after."""
    folder.mkdir(parents=True, exist_ok=True)
    server = OrthancServer(folder, username, password)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def orthanc_credentials() -> tuple[str | None, str | None]:
    """(user, password) of the module's Orthanc; (None, None): no authentication."""
    return None, None


@pytest.fixture(scope="module")
def module_orthanc(tmp_path_factory, orthanc_credentials):
    """One Orthanc for the whole test module: started once, stopped after its tests."""
    with orthanc_server(tmp_path_factory.mktemp("orthanc"), *orthanc_credentials) as server:
        yield server


@pytest.fixture
def orthanc(module_orthanc):
    """The module's Orthanc for one test: running, with no study left by an earlier test;
    a test that stops it gets it started again afterwards (the others never restart it)."""
    module_orthanc.ensure_running()
    module_orthanc.delete_studies()
    yield module_orthanc
    module_orthanc.ensure_running()
