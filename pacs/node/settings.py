"""The node's settings, read once at start (``settings.py`` builds them from config)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from inference.registry import ModelChoice

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE: 16 chars, no backslash


@dataclass(frozen=True)
class Destination:
    """Where reports go by C-STORE: ``AET@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> Destination:
        match = re.fullmatch(r"([^@]+)@([^:@]+):(\d{1,5})", value.strip())
        if not match or not AE_TITLE.match(match.group(1).strip()):
            raise ValueError("DICOM_RESULT_DESTINATION must be AET@host:port, e.g. "
                             "PACS@pacs.example.org:104")
        return cls(match.group(1).strip(), match.group(2), int(match.group(3)))


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str
    bind: str
    port: int
    allowed_callers: tuple[str, ...]  # calling AE titles let in; nobody else
    max_associations: int
    stable_s: float  # a study is analysed once nothing arrived for this long
    rules: tuple[ModelChoice, ...]  # which models for which modality
    explain: bool  # heatmaps with each analysis
    destination: Destination | None  # None: reports over DICOMweb (DICOMWEB_URL), if any
    timeout_s: float

    @property
    def configured(self) -> bool:
        return bool(self.allowed_callers)


def ae_titles(value: str) -> tuple[str, ...]:
    titles = tuple(part.strip() for part in (value or "").split(",") if part.strip())
    bad = [title for title in titles if not AE_TITLE.match(title)]
    if bad:
        raise ValueError(f"DICOM_ALLOWED_CALLERS: {bad[0][:20]!r} is not an AE title "
                         "(1 to 16 characters, no backslash)")
    return titles
