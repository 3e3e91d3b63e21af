"""HTTP(S) downloads that survive a dropped connection.

Bytes go to a ``.part`` file; when one is already there the request asks for the rest
(``Range: bytes=N-``) and appends if the server answers 206 with that range, else it
starts again from zero. A failure leaves the ``.part`` file for the next try.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

CHUNK = 64 << 10  # what a dropped connection can cost: the chunk being read
TIMEOUT = (15, 60)  # connect, and between bytes


class DownloadFailed(Exception):
    """The download did not complete; the message says what to do."""


def partial_path(download_dir: Path, url: str) -> Path:
    """Where an interrupted download of ``url`` waits to be resumed."""
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", PurePosixPath(urlparse(url).path).name)
    return Path(download_dir) / f"{key}-{name or 'download'}.part"


def _resumes(response, offset: int) -> bool:
    """Whether the server sent exactly the rest of the file from ``offset``."""
    content_range = response.headers.get("Content-Range", "")
    return response.status_code == 206 and content_range.startswith(f"bytes {offset}-")


def _open_response(url: str, part: Path, echo):
    """(response, offset): a resumed response and the bytes already kept, or a fresh one."""
    import requests

    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    response = requests.get(url, stream=True, headers=headers, timeout=TIMEOUT)
    if offset and _resumes(response, offset):
        echo(f"Resuming the download at {offset} bytes")
        return response, offset
    if offset:
        echo("The server cannot resume this download: starting again")
        if response.status_code in (206, 416):  # another range, or none left: ask anew
            response.close()
            part.unlink()
            return _open_response(url, part, echo)
    response.raise_for_status()
    return response, 0


def fetch_url(url: str, part: Path, echo=print) -> Path:
    """Download ``url`` into ``part`` with a progress bar; returns ``part``, complete."""
    import requests
    from tqdm import tqdm

    host = urlparse(url).hostname
    try:
        response, offset = _open_response(url, part, echo)
        with response:
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            with open(part, "ab" if offset else "wb") as out, tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True,
                    unit_divisor=1024, desc=part.name.split("-", 1)[-1][:40]) as bar:
                for chunk in response.iter_content(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except requests.HTTPError as exc:
        raise DownloadFailed(f"{host} answered {exc.response.status_code} for {url}: "
                             f"check the URL.") from exc
    except (requests.ConnectionError, requests.Timeout,
            requests.exceptions.ChunkedEncodingError) as exc:
        kept = part.stat().st_size if part.is_file() else 0
        raise DownloadFailed(
            f"the download from {host} failed ({type(exc).__name__}). No internet? "
            f"Download {url} in a browser, then run `flask models install` on that file"
            + (f"; or run the same command again to resume ({kept} bytes kept in "
               f"{part})." if kept else ".")) from exc
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadFailed(f"the download from {host} stopped at {size} of {total} "
                             f"bytes: run the same command again to resume.")
    return part
