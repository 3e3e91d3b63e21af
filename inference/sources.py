"""Where model files come from: a file, a folder, a zip, a URL or Google Drive.

``gather()`` brings whatever SOURCE names into a scratch folder (or leaves a local
file where it is) and returns the ``.h5`` files found, each with the name it had in
the source. Zips are checked entry by entry before anything is extracted, and no path
is ever taken from an entry name. An interrupted URL download stays as a ``.part``
file in the downloads folder, so the same command resumes it with an HTTP Range
request; anything else fetched lives only in the scratch folder.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from .download import DownloadFailed, fetch_url, partial_path
from .conversion import file_sha256

PUBLISHED = {
    "published-ct": ("ct", "https://drive.google.com/drive/folders/"
                           "1L9NXbpr_ya6T29J6YGvIyVIl15ZZwBEn"),
    "published-cxr": ("xray", "https://drive.google.com/drive/folders/"
                              "1MJuHUZGhgL6rv8_TViR3XKbrm2BZ4bmW"),
}
PUBLISHED["published-xray"] = PUBLISHED["published-cxr"]
METRICS_SOURCE = "reported by the original authors, not measured here"
PUBLISHED_TRAINING = {
    "ct": {"dataset": "SARS-CoV-2 CT-scan dataset (1252 COVID, 1230 non-COVID slices)",
           "split": "image-level", "vgg16_precision_over": 0.92},
    "xray": {"dataset": "COVID-19 Radiography Database (first 1200 images per class)",
             "split": "image-level", "vgg16_precision_over": 0.96},
}

MAX_MEMBER_BYTES = 2 << 30  # the largest .h5 taken from a zip
MAX_TOTAL_BYTES = 8 << 30  # all .h5 and .json members of one zip together
MAX_CARD_BYTES = 1 << 20
CHUNK = 1 << 20
ZIP_MAGIC = b"PK\x03\x04"
DRIVE_HOSTS = ("drive.google.com", "docs.google.com")


class InstallError(Exception):
    """Installing stopped; the message says why and what to do."""


@dataclass(frozen=True)
class Candidate:
    """One ``.h5`` found in the source."""

    path: Path  # where it lies now
    label: str  # its path inside the source, for messages and name hints
    modality_hint: str | None = None  # from a published folder
    published: bool = False


def published_metrics(arch: str, modality: str) -> dict:
    """What the original authors reported for a published file: a precision for VGG16,
    the training facts for all; never presented as measured here."""
    facts = dict(PUBLISHED_TRAINING[modality])
    precision = facts.pop("vgg16_precision_over")
    metrics = {"metrics_source": METRICS_SOURCE, **facts, "epochs": 20, "batch_size": 32}
    if arch == "vgg16":
        metrics["precision_over"] = precision
    return metrics


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def public_source(source: str | None) -> str | None:
    """Where a model came from, fit to show anyone: a URL without credentials, query
    or fragment (a signed link's token lives there), a local path as its last name
    only (the server's folders are nobody's business)."""
    if not source:
        return None
    if is_url(source):
        parts = urlparse(source)
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"
    return Path(source).name


def is_drive(source: str) -> bool:
    return urlparse(source).hostname in DRIVE_HOSTS


def gather(source: str, workdir: Path, download_dir: Path, sha256: str | None = None,
           echo=print) -> list[Candidate]:
    """The ``.h5`` files SOURCE holds, fetched or extracted under ``workdir``."""
    published = PUBLISHED.get(source.strip().lower())
    if published is not None:
        if sha256:
            raise InstallError("--sha256 pins one file; a published folder holds several.")
        modality, url = published
        echo(f"Downloading the published {modality} models from {url}")
        folder = drive_folder(url, workdir)
        return [Candidate(c.path, c.label, modality, True) for c in walk(folder, "")]
    if is_drive(source):
        if "/folders/" in urlparse(source).path:
            if sha256:
                raise InstallError("--sha256 pins one file, not a Google Drive folder.")
            return walk(drive_folder(source, workdir), "")
        return from_file(drive_file(source, workdir), workdir, sha256, echo)
    if is_url(source):
        return from_file(download(source, download_dir, workdir, sha256, echo),
                         workdir, sha256=None, echo=echo)
    path = Path(source).expanduser()
    if path.is_dir():
        if sha256:
            raise InstallError("--sha256 pins one file: give the file, not a folder.")
        echo(f"Looking for .h5 files in {path}")
        return walk(path)
    if path.is_file():
        return from_file(path, workdir, sha256, echo)
    raise InstallError(f"{source} is not a file, a folder, an http(s) URL, a Google Drive "
                       f"link or one of {', '.join(sorted(PUBLISHED))}.")


def from_file(path: Path, workdir: Path, sha256: str | None, echo) -> list[Candidate]:
    """A zip (judged by its bytes, not its name) is extracted; anything else is a model."""
    if sha256:
        check_sha256(path, sha256)
        echo(f"SHA-256 of {path.name} matches the pin")
    with open(path, "rb") as handle:
        is_zip = handle.read(4) == ZIP_MAGIC
    if not is_zip:
        return [Candidate(path, path.name)]
    echo(f"Extracting the .h5 and .json files of {path.name}")
    extracted = extract_models(path, workdir / "extracted")
    return [Candidate(p, f"{path.name}/{name}") for p, name in extracted
            if p.suffix.lower() == ".h5"]


def walk(folder: Path, label: str | None = None) -> list[Candidate]:
    """Every ``.h5`` under ``folder``, in a stable order, labelled by its path there
    (under ``label``, the folder's own name by default: it may say CT or X-ray)."""
    found = sorted(p for p in Path(folder).rglob("*") if p.is_file()
                   and p.suffix.lower() == ".h5")
    prefix = Path(folder).name if label is None else label
    return [Candidate(p, f"{prefix}/{p.relative_to(folder).as_posix()}".lstrip("/"))
            for p in found]


def check_sha256(path: Path, expected: str) -> None:
    actual = file_sha256(path)
    if actual != expected.strip().lower():
        raise InstallError(f"SHA-256 mismatch for {path.name}: expected {expected.strip()}, "
                           f"got {actual}. Nothing was installed; check the source and "
                           f"the pin.")


def _hostile_name(name: str) -> str | None:
    """Why a zip entry's name cannot be trusted, or None."""
    parts = re.split(r"[\\/]", name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in parts:
        return "a '..' component"
    if "\x00" in name:
        return "a NUL character"
    return None


def _wanted(info: zipfile.ZipInfo) -> bool:
    return not info.is_dir() and PurePosixPath(info.filename).suffix.lower() in (".h5", ".json")


def check_zip(archive: zipfile.ZipFile, max_member: int, max_total: int
              ) -> list[zipfile.ZipInfo]:
    """The members to extract, after checking every entry; raise on anything hostile."""
    total, wanted = 0, []
    for info in archive.infolist():
        why = _hostile_name(info.filename)
        if why:
            raise InstallError(f"refused: the zip has an entry with {why} "
                               f"({info.filename[:80]!r}); nothing was extracted.")
        if not _wanted(info):
            continue
        limit = MAX_CARD_BYTES if info.filename.lower().endswith(".json") else max_member
        total += info.file_size
        if info.file_size > limit or total > max_total:
            raise InstallError(f"refused: {info.filename[:80]} in the zip is "
                               f"{info.file_size} bytes, over the limit; nothing was "
                               f"extracted.")
        wanted.append(info)
    return wanted


def extract_models(path: Path, target: Path, max_member: int = MAX_MEMBER_BYTES,
                   max_total: int = MAX_TOTAL_BYTES) -> list[tuple[Path, str]]:
    """Extract the ``.h5`` and ``.json`` members into numbered folders (one per folder
    of the zip, so a card stays beside its model), checked before and while copying.
    Returns (extracted file, its name in the zip)."""
    extracted = []
    try:
        with zipfile.ZipFile(path) as archive:
            folders: dict[str, Path] = {}
            for info in check_zip(archive, max_member, max_total):
                member = info.filename.replace("\\", "/")
                parent, name = os.path.split(member)
                folder = folders.setdefault(parent, target / f"{len(folders):03d}")
                folder.mkdir(parents=True, exist_ok=True)
                _copy_member(archive, info, folder / name)
                extracted.append((folder / name, member))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, EOFError) as exc:
        raise InstallError(f"{path.name} is not a usable zip ({exc}); download it again."
                           ) from exc
    return extracted


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Copy one member, stopping as soon as it grows past its declared size."""
    written = 0
    with archive.open(info) as source, open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise InstallError(f"refused: {info.filename[:80]} is larger than the zip "
                                   f"declares; nothing was installed.")
            out.write(chunk)


def download(url: str, download_dir: Path, workdir: Path, sha256: str | None,
             echo) -> Path:
    """Fetch ``url`` (resuming a ``.part`` file), check the pin, move it into ``workdir``."""
    part = partial_path(download_dir, url)
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        fetch_url(url, part, echo)
    except DownloadFailed as exc:
        raise InstallError(str(exc)) from exc
    if sha256:
        try:
            check_sha256(part, sha256)
        except InstallError:
            part.unlink(missing_ok=True)
            raise
        echo("SHA-256 matches the pin")
    done = workdir / part.name.removesuffix(".part").split("-", 1)[1]
    shutil.move(part, done)
    return done


def _drive_error(url: str, exc: Exception) -> InstallError:
    return InstallError(
        f"could not download from Google Drive ({type(exc).__name__}: {str(exc)[:200]}). "
        f"No internet, or Drive refused: download the folder as a zip in a browser "
        f"({url}), then run `flask models install that.zip`.")


def drive_folder(url: str, workdir: Path) -> Path:
    """A Google Drive folder, downloaded by gdown into ``workdir/drive``."""
    import gdown

    target = workdir / "drive"
    try:
        files = gdown.download_folder(url=url, output=str(target), quiet=False)
    except Exception as exc:  # noqa: BLE001 - network, Drive quota or page changes
        raise _drive_error(url, exc) from exc
    if not files:
        raise _drive_error(url, RuntimeError("no file was downloaded"))
    return target


def drive_file(url: str, workdir: Path) -> Path:
    """One Google Drive file, downloaded by gdown into ``workdir``."""
    import gdown

    try:
        path = gdown.download(url=url, output=str(workdir) + os.sep, quiet=False)
    except Exception as exc:  # noqa: BLE001 - network, Drive quota or page changes
        raise _drive_error(url, exc) from exc
    if not path:
        raise _drive_error(url, RuntimeError("no file was downloaded"))
    return Path(path)
