"""Where ``flask models install`` takes models from: zips (a folder as Google Drive zips
it, hostile names and sizes), downloads from a real HTTP server on loopback (a pinned
SHA-256, resumed and interrupted downloads) and Google Drive. Drive itself cannot be
reached here: only the mapping of ``published-ct`` to its folder and the call into gdown
are tested, with gdown's download replaced by a copy of a local folder."""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from inference.download import partial_path
from inference.sources import METRICS_SOURCE, PUBLISHED

from .install_helpers import app_fixture, files_fixture  # noqa: F401 - fixtures
from .install_helpers import (assert_nothing_written, card, copy, model_dir, run, sha256,
                              tree)


# -- zips --------------------------------------------------------------------------------

def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_zip_flat(app, files, tmp_path):
    source = write_zip(tmp_path / "models.zip", {"vgg16_ct.h5": files["two"].read_bytes()})
    result = run(app, "install", str(source))
    assert result.exit_code == 0, result.output
    assert tree(model_dir(app)) == ["vgg16/VGG16_CT_model.h5", "vgg16/VGG16_CT_model.json"]
    assert card(app, "vgg16/VGG16_CT_model.h5")["sha256"] == sha256(files["two"])


def test_zip_as_drive_downloads_a_folder_with_a_card_beside_the_model(app, files, tmp_path):
    """Drive zips a folder under its own name; a card beside a file comes along."""
    folder = "CT-20240101T000000Z-001/CT"
    own_card = {"classes": ["COVID", "NonCOVID"], "threshold": 0.3, "input_size": [32, 32],
                "training": {"epochs": 3}}
    source = write_zip(tmp_path / "download.zip", {
        f"{folder}/VGG19_model.h5": files["two"].read_bytes(),
        f"{folder}/VGG19_model.json": json.dumps(own_card).encode(),
        f"{folder}/readme.txt": b"ignored",
    })
    result = run(app, "install", str(source))
    assert result.exit_code == 0, result.output
    data = card(app, "vgg19/VGG19_CT_model.h5")
    assert data["classes"] == ["COVID", "NonCOVID"] and data["threshold"] == 0.3
    assert data["training"] == {"epochs": 3}
    assert data["source_file"] == f"download.zip/{folder}/VGG19_model.h5"
    assert tree(model_dir(app)) == ["vgg19/VGG19_CT_model.h5", "vgg19/VGG19_CT_model.json"]


def forge_declared_size(path: Path, size: int) -> None:
    """Make the central directory claim ``size`` bytes for the (only) member."""
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, entry + 24, size)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["../evil.h5", "models/../../evil.h5", "/tmp/evil.h5",
                                  "C:/evil.h5", "..\\evil.h5"])
def test_hostile_zip_names_are_refused(app, files, tmp_path, name):
    source = write_zip(tmp_path / "hostile.zip", {"vgg16_ct.h5": files["two"].read_bytes(),
                                                  name: files["two"].read_bytes()})
    result = run(app, "install", str(source))
    assert result.exit_code == 1
    assert "refused: the zip has an entry with" in result.output
    assert_nothing_written(app)
    assert not list(tmp_path.rglob("evil.h5"))


def test_oversized_zip_member_is_refused(app, files, tmp_path):
    source = write_zip(tmp_path / "big.zip", {"vgg16_ct.h5": files["two"].read_bytes()})
    forge_declared_size(source, 3_000_000_000)
    assert zipfile.ZipFile(source).infolist()[0].file_size == 3_000_000_000
    result = run(app, "install", str(source))
    assert result.exit_code == 1
    assert "over the limit" in result.output
    assert_nothing_written(app)


def test_member_larger_than_declared_is_refused(app, files, tmp_path):
    source = write_zip(tmp_path / "liar.zip", {"vgg16_ct.h5": files["two"].read_bytes()})
    forge_declared_size(source, 100)
    result = run(app, "install", str(source))
    assert result.exit_code == 1
    assert "refused" in result.output or "not a usable zip" in result.output
    assert_nothing_written(app)


# -- http(s) -----------------------------------------------------------------------------

class FileServer(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` when ``server.ranges``; cuts
    the body after ``server.cut_after`` bytes once."""

    def do_GET(self):  # noqa: N802 - the http.server spelling
        server = self.server
        data = server.files.get(self.path)
        requested = self.headers.get("Range")
        server.seen.append((self.path, requested))
        if data is None:
            self.send_error(404)
            return
        match = re.fullmatch(r"bytes=(\d+)-", requested or "")
        start = int(match[1]) if match and server.ranges else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body, cut = data[start:], server.cut_after
        if cut is not None:
            server.cut_after = None
            body = body[:cut]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http(files):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FileServer)
    server.files = {"/m/VGG16_CT_model.h5": files["two"].read_bytes(),
                    "/m/big/ResNet50_CXR_model.h5": files["big"].read_bytes(),
                    "/get?id=7": write_zip(files["two"].parent / "served.zip", {
                        "inceptionv3_cxr.h5": files["two"].read_bytes()}).read_bytes()}
    server.ranges, server.cut_after, server.seen = True, None, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_url_download(app, files, http):
    url = http.url + "/m/VGG16_CT_model.h5"
    result = run(app, "install", url, "--sha256", sha256(files["two"]).upper())
    assert result.exit_code == 0, result.output
    assert "SHA-256 matches the pin" in result.output
    assert card(app, "vgg16/VGG16_CT_model.h5")["source"] == url
    assert (model_dir(app) / "vgg16/VGG16_CT_model.h5").read_bytes() == \
        files["two"].read_bytes()
    assert http.seen == [("/m/VGG16_CT_model.h5", None)]
    assert not (Path(app.instance_path) / "downloads").exists()


def test_url_of_a_zip_is_judged_by_its_bytes(app, http):
    result = run(app, "install", http.url + "/get?id=7")
    assert result.exit_code == 0, result.output
    assert tree(model_dir(app)) == ["inceptionv3/InceptionV3_CXR_model.h5",
                                    "inceptionv3/InceptionV3_CXR_model.json"]


def test_download_resumes_from_a_part_file(app, files, http):
    url = http.url + "/m/VGG16_CT_model.h5"
    data = files["two"].read_bytes()
    part = partial_path(Path(app.instance_path) / "downloads", url)
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    result = run(app, "install", url)
    assert result.exit_code == 0, result.output
    assert http.seen == [("/m/VGG16_CT_model.h5", "bytes=1000-")]
    assert "Resuming the download at 1000 bytes" in result.output
    assert (model_dir(app) / "vgg16/VGG16_CT_model.h5").read_bytes() == data
    assert not part.parent.exists()


def test_server_without_ranges_starts_again(app, files, http):
    http.ranges = False
    url = http.url + "/m/VGG16_CT_model.h5"
    part = partial_path(Path(app.instance_path) / "downloads", url)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)  # not the file's first bytes: must not be kept
    result = run(app, "install", url)
    assert result.exit_code == 0, result.output
    assert "cannot resume" in result.output
    assert (model_dir(app) / "vgg16/VGG16_CT_model.h5").read_bytes() == \
        files["two"].read_bytes()


def test_interrupted_download_is_kept_then_resumed(app, files, http):
    url = http.url + "/m/big/ResNet50_CXR_model.h5"
    data = files["big"].read_bytes()
    assert len(data) > 500_000
    http.cut_after = 300_000
    first = run(app, "install", url)
    assert first.exit_code == 1
    assert "run the same command again to resume" in first.output
    kept = partial_path(Path(app.instance_path) / "downloads", url).read_bytes()
    assert 0 < len(kept) <= 300_000 and data.startswith(kept)
    assert not model_dir(app).exists() or tree(model_dir(app)) == []
    second = run(app, "install", url)
    assert second.exit_code == 0, second.output
    assert http.seen[-1] == ("/m/big/ResNet50_CXR_model.h5", f"bytes={len(kept)}-")
    assert (model_dir(app) / "resnet50/ResNet50_CXR_model.h5").read_bytes() == data
    assert not (Path(app.instance_path) / "downloads").exists()


def test_sha256_mismatch_is_refused_and_nothing_is_left(app, http):
    result = run(app, "install", http.url + "/m/VGG16_CT_model.h5", "--sha256", "0" * 64)
    assert result.exit_code == 1
    assert "SHA-256 mismatch" in result.output
    assert_nothing_written(app)


def test_unreachable_server_says_what_to_do(app):
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run(app, "install", f"http://127.0.0.1:{port}/VGG16_CT_model.h5")
    assert result.exit_code == 1
    assert "No internet? Download" in result.output
    assert_nothing_written(app)


# -- Google Drive (through gdown) -------------------------------------------------------

@pytest.fixture
def drive(files, tmp_path, monkeypatch):
    """gdown's folder and file downloads replaced by copies of local files."""
    import gdown

    folder = tmp_path / "drive-folder"
    copy(files["two"], folder / "VGG16_CT_model.h5")
    copy(files["other"], folder / "VGG19_CT_model.h5")
    calls = []

    def download_folder(url=None, output=None, quiet=False, **kwargs):
        calls.append(url)
        shutil.copytree(folder, output)
        return [str(p) for p in Path(output).rglob("*.h5")]

    def download(url=None, output=None, quiet=False, **kwargs):
        calls.append(url)
        return shutil.copy(files["two"], Path(output) / "VGG16_CXR_model.h5")

    monkeypatch.setattr(gdown, "download_folder", download_folder)
    monkeypatch.setattr(gdown, "download", download)
    return calls


def test_published_ct_downloads_the_ct_folder_and_records_reported_metrics(app, drive):
    result = run(app, "install", "published-ct")
    assert result.exit_code == 0, result.output
    ct_url = "https://drive.google.com/drive/folders/1L9NXbpr_ya6T29J6YGvIyVIl15ZZwBEn"
    assert drive == [ct_url]
    vgg16, vgg19 = (card(app, "vgg16/VGG16_CT_model.h5"), card(app, "vgg19/VGG19_CT_model.h5"))
    assert vgg16["source"] == vgg19["source"] == ct_url
    assert vgg16["metrics"]["metrics_source"] == METRICS_SOURCE
    assert vgg16["metrics"]["precision_over"] == 0.92
    assert vgg16["metrics"]["epochs"] == 20 and vgg16["metrics"]["batch_size"] == 32
    assert "precision_over" not in vgg19["metrics"]
    assert all(e.card_error is None for e in app.extensions["inference"].entries())
    about = app.test_client().get("/about").get_data(as_text=True)
    assert "Precision over 92 %" in about and METRICS_SOURCE in about


def test_drive_file_link_goes_through_gdown(app, drive):
    url = "https://drive.google.com/file/d/1AbCdEfGhIjKlMnOpQrStUvWxYz012345/view"
    result = run(app, "install", url)
    assert result.exit_code == 0, result.output
    assert drive == [url]
    assert card(app, "vgg16/VGG16_CXR_model.h5")["source"] == url


def test_drive_failure_says_to_download_a_zip(app, monkeypatch):
    import gdown
    import requests

    seen = []

    def offline(url=None, **kwargs):
        seen.append(url)
        raise requests.ConnectionError("Failed to resolve 'drive.google.com'")

    monkeypatch.setattr(gdown, "download_folder", offline)
    result = run(app, "install", "published-cxr")
    assert result.exit_code == 1
    assert seen == [PUBLISHED["published-cxr"][1]]
    assert "download the folder as a zip in a browser" in result.output
    assert "flask models install that.zip" in result.output
    assert_nothing_written(app)
