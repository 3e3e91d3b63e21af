"""``flask models install`` and ``remove`` against real files, real zips, a real HTTP
server on loopback and real tiny Keras models. Google Drive itself cannot be reached
here: only the mapping of ``published-ct`` to its folder and the call into gdown are
tested, with gdown's download replaced by a copy of a local folder."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import struct
import threading
import zipfile
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app import create_app
from inference.download import partial_path
from inference.recognise import from_name
from inference.runners import conversion_supported
from inference.sources import METRICS_SOURCE, PUBLISHED

from .conftest import testing_config
from .model_factory import tiny_model

LAYER_NAMES = {  # block names keras.applications gives each network
    "vgg16": ("block5_conv3",),
    "vgg19": ("block5_conv3", "block5_conv4"),
    "inceptionv3": ("mixed9", "mixed10"),
    "resnet50": ("conv4_block6_out", "conv5_block3_out"),
}


def named_model(names, outputs: int = 2, nested: bool = False):
    """A tiny CNN whose convolutions carry ``names``; optionally inside a base model."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for name in names:
        x = keras.layers.Conv2D(2, 3, padding="same", name=name)(x)
    if nested:
        base = keras.Model(inputs, x, name="base")
        inputs = keras.Input((32, 32, 3))
        x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(outputs, activation="softmax")(x)
    return keras.Model(inputs, out)


def big_model():
    """About 1 MiB of weights: a download of it spans many chunks."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.Dense(2, activation="softmax")(
        keras.layers.Dense(64)(keras.layers.Flatten()(x)))
    return keras.Model(inputs, x)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Saved models: ``two`` (2 classes), ``three`` (3 outputs), one per architecture's
    layer names, and an InceptionV3-like one nested in a base model."""
    root = tmp_path_factory.mktemp("sources")
    models = {"two": tiny_model(), "three": tiny_model(outputs=3, seed=1),
              "other": tiny_model(seed=2), "big": big_model(),
              "nested-inceptionv3": named_model(LAYER_NAMES["inceptionv3"], nested=True)}
    models.update({arch: named_model(names) for arch, names in LAYER_NAMES.items()})
    paths = {}
    for key, model in models.items():
        paths[key] = root / f"{key}.h5"
        model.save(str(paths[key]))
    return paths


@pytest.fixture
def app(tmp_path, instance_path):
    return create_app(testing_config(tmp_path, INFERENCE_BACKEND="keras"))


def run(app, *args):
    return app.test_cli_runner().invoke(args=["models", *args])


def model_dir(app) -> Path:
    return Path(app.config["MODEL_DIR"])


def tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card(app, relpath: str) -> dict:
    path = model_dir(app) / relpath
    return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


def assert_nothing_written(app):
    folder = model_dir(app)
    assert not folder.exists() or tree(folder) == []
    assert not (Path(app.instance_path) / "downloads").exists()


# -- local files, folders and names ----------------------------------------------------

def test_file_recognised_by_name_is_placed_with_its_card(app, files, tmp_path):
    source = copy(files["two"], tmp_path / "in" / "ResNet50_CXR_model.h5")
    result = run(app, "install", str(source))
    assert result.exit_code == 0, result.output
    placed = model_dir(app) / "resnet50/ResNet50_CXR_model.h5"
    assert placed.read_bytes() == source.read_bytes()
    data = card(app, "resnet50/ResNet50_CXR_model.h5")
    assert data["source"] == str(source.resolve())
    assert data["sha256"] == sha256(source)
    assert data["architecture"] == "resnet50" and data["modality"] == "xray"
    assert data["classes"] == ["NonCOVID", "COVID"] and data["input_size"] == [32, 32]
    assert datetime.fromisoformat(data["installed_at"]).tzinfo is not None
    assert "metrics_source" not in data["metrics"]
    for step in ("checking that it loads", "ResNet50 (from its name)",
                 "installed as resnet50/ResNet50_CXR_model.h5", "served by Keras"):
        assert step in result.output
    assert tree(model_dir(app)) == ["resnet50/ResNet50_CXR_model.h5",
                                    "resnet50/ResNet50_CXR_model.json"]


@pytest.mark.parametrize("label, expected", [
    ("ResNet50_CXR_model.h5", ("resnet50", "xray")),
    ("vgg16_ct.h5", ("vgg16", "ct")),
    ("VGG16CT.H5", ("vgg16", "ct")),
    ("inception_v3-x-ray.h5", ("inceptionv3", "xray")),
    ("CT/InceptionV3.h5", ("inceptionv3", "ct")),
    ("X-ray models/vgg19.h5", ("vgg19", "xray")),
    ("covid_detector_vgg19.h5", ("vgg19", None)),
    ("model.h5", (None, None)),
])
def test_names(label, expected):
    assert from_name(label) == expected


def test_flags_name_what_the_file_name_does_not(app, files, tmp_path):
    source = copy(files["two"], tmp_path / "model.h5")
    result = run(app, "install", str(source), "--modality", "cxr", "--arch", "VGG19")
    assert result.exit_code == 0, result.output
    assert tree(model_dir(app)) == ["vgg19/VGG19_CXR_model.h5", "vgg19/VGG19_CXR_model.json"]


@pytest.mark.parametrize("key, arch", [
    ("vgg16", "vgg16"), ("vgg19", "vgg19"), ("inceptionv3", "inceptionv3"),
    ("resnet50", "resnet50"), ("nested-inceptionv3", "inceptionv3")])
def test_architecture_from_the_layers(app, files, tmp_path, key, arch):
    source = copy(files[key], tmp_path / "model.h5")
    result = run(app, "install", str(source), "--modality", "ct")
    assert result.exit_code == 0, result.output
    assert "(from its layers)" in result.output
    assert [e.architecture for e in app.extensions["inference"].entries()
            if e.available] == [arch]


@pytest.mark.parametrize("name, args, message", [
    ("model.h5", ["--modality", "ct"], "add --arch"),
    ("vgg16.h5", [], "add --modality ct or --modality xray"),
    ("vgg16_ct.h5", ["--arch", "resnet50"], "its name says architecture vgg16"),
])
def test_what_cannot_be_told_is_asked_for(app, files, tmp_path, name, args, message):
    source = copy(files["other"], tmp_path / name)
    result = run(app, "install", str(source), *args)
    assert result.exit_code == 1
    assert message in result.output
    assert_nothing_written(app)


def test_model_with_three_outputs_is_refused(app, files, tmp_path):
    source = copy(files["three"], tmp_path / "VGG16_CT_model.h5")
    result = run(app, "install", str(source))
    assert result.exit_code == 1
    assert "gives 3 outputs" in result.output
    assert_nothing_written(app)


def test_a_refused_file_leaves_the_installed_model_untouched(app, files, tmp_path):
    assert run(app, "install", str(copy(files["two"], tmp_path / "a/vgg16_ct.h5"))
               ).exit_code == 0
    before = {p: (model_dir(app) / p).read_bytes() for p in tree(model_dir(app))}
    result = run(app, "install", str(copy(files["three"], tmp_path / "b/vgg16_ct.h5")))
    assert result.exit_code == 1
    assert {p: (model_dir(app) / p).read_bytes() for p in tree(model_dir(app))} == before


def test_a_second_install_replaces_the_file_and_its_stale_conversions(app, files, tmp_path):
    assert run(app, "install", str(copy(files["two"], tmp_path / "a/vgg16_ct.h5"))
               ).exit_code == 0
    stale = model_dir(app) / "vgg16/VGG16_CT_model.0123456789abcdef.v2.onnx"
    stale.write_bytes(b"old conversion")
    newer = copy(files["other"], tmp_path / "b/vgg16_ct.h5")
    assert run(app, "install", str(newer)).exit_code == 0
    assert (model_dir(app) / "vgg16/VGG16_CT_model.h5").read_bytes() == newer.read_bytes()
    assert card(app, "vgg16/VGG16_CT_model.h5")["sha256"] == sha256(newer)
    assert tree(model_dir(app)) == ["vgg16/VGG16_CT_model.h5", "vgg16/VGG16_CT_model.json"]


def test_folder_is_walked_and_its_name_gives_the_modality(app, files, tmp_path):
    folder = tmp_path / "ct_models"
    copy(files["two"], folder / "vgg16.h5")
    copy(files["other"], folder / "more" / "ResNet50_CXR_model.h5")
    (folder / "notes.txt").write_text("not a model")
    result = run(app, "install", str(folder))
    assert result.exit_code == 0, result.output
    assert "Found 2 model file(s)" in result.output
    assert tree(model_dir(app)) == [
        "resnet50/ResNet50_CXR_model.h5", "resnet50/ResNet50_CXR_model.json",
        "vgg16/VGG16_CT_model.h5", "vgg16/VGG16_CT_model.json"]
    assert card(app, "vgg16/VGG16_CT_model.h5")["source"] == str(folder.resolve())


def test_one_bad_file_in_a_folder_installs_none(app, files, tmp_path):
    folder = tmp_path / "incoming"
    copy(files["two"], folder / "vgg16_ct.h5")
    copy(files["three"], folder / "vgg19_ct.h5")
    result = run(app, "install", str(folder))
    assert result.exit_code == 1 and "vgg19_ct.h5" in result.output
    assert_nothing_written(app)


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


# -- remove, API, pages, conversion -------------------------------------------------------

def test_remove_deletes_the_file_its_card_profile_and_conversions_only(app, files, tmp_path):
    for name in ("vgg16_ct.h5", "vgg16_cxr.h5"):
        assert run(app, "install", str(copy(files["two"], tmp_path / name))).exit_code == 0
    folder = model_dir(app) / "vgg16"
    for suffix in (".0123456789abcdef.v2.onnx", ".0123456789abcdef.v2.failed",
                   ".profile.npz"):
        (folder / f"VGG16_CT_model{suffix}").write_text("x")
        (folder / f"VGG16_CXR_model{suffix}").write_text("x")
    result = run(app, "remove", "ct", "VGG16")
    assert result.exit_code == 0, result.output
    assert tree(model_dir(app)) == [
        "vgg16/VGG16_CXR_model.0123456789abcdef.v2.failed",
        "vgg16/VGG16_CXR_model.0123456789abcdef.v2.onnx",
        "vgg16/VGG16_CXR_model.h5", "vgg16/VGG16_CXR_model.json",
        "vgg16/VGG16_CXR_model.profile.npz"]
    again = run(app, "remove", "ct", "vgg16")
    assert again.exit_code == 1 and "no VGG16 CT scan model is installed" in again.output
    assert run(app, "remove", "mri", "vgg16").exit_code == 1


def test_api_lists_source_and_sha256(app, files, tmp_path):
    source = copy(files["two"], tmp_path / "VGG16_CT_model.h5")
    assert run(app, "install", str(source)).exit_code == 0
    rows = {(r["modality"], r["architecture"]): r
            for r in app.test_client().get("/api/v1/models").get_json()["models"]}
    assert rows["ct", "vgg16"]["source"] == str(source.resolve())
    assert rows["ct", "vgg16"]["sha256"] == sha256(source)
    assert rows["xray", "vgg16"]["source"] is None and rows["xray", "vgg16"]["sha256"] is None


def test_pages_without_models_name_the_install_command(app, files, tmp_path):
    page = app.test_client().get("/").get_data(as_text=True)
    assert "flask models install published-ct" in page
    assert "flask models install published-cxr" in page
    assert run(app, "install", str(copy(files["two"], tmp_path / "vgg16_ct.h5"))
               ).exit_code == 0
    page = app.test_client().get("/").get_data(as_text=True)
    assert "flask models install published-ct" not in page
    assert "flask models install published-cxr" in page
    about = app.test_client().get("/about").get_data(as_text=True)
    assert "flask models install published-ct" in about  # VGG19, InceptionV3 CT missing


@pytest.mark.skipif(not conversion_supported(), reason="needs onnx, onnxruntime and tf2onnx")
def test_install_converts_through_the_service_and_remove_deletes_it(tmp_path, instance_path,
                                                                    files):
    app = create_app(testing_config(tmp_path, INFERENCE_BACKEND="auto"))
    result = run(app, "install", str(copy(files["two"], tmp_path / "vgg16_ct.h5")))
    assert result.exit_code == 0, result.output
    assert "converted for ONNX Runtime" in result.output
    assert [p for p in tree(model_dir(app)) if p.endswith(".onnx")]
    assert run(app, "remove", "ct", "vgg16").exit_code == 0
    assert tree(model_dir(app)) == []


@pytest.mark.skipif(not conversion_supported(), reason="needs onnx, onnxruntime and tf2onnx")
def test_failed_conversion_still_installs(tmp_path, instance_path, files):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the ONNX cache folder should be")
    app = create_app(testing_config(tmp_path, INFERENCE_BACKEND="auto",
                                    ONNX_CACHE_DIR=str(blocker)))
    result = run(app, "install", str(copy(files["two"], tmp_path / "vgg16_ct.h5")))
    assert result.exit_code == 0, result.output
    assert "conversion failed" in result.output and "served by Keras" in result.output
    assert tree(model_dir(app)) == ["vgg16/VGG16_CT_model.h5", "vgg16/VGG16_CT_model.json"]
