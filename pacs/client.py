"""DICOMweb for the PACS: search studies, list and fetch instances, store results.

Every failure leaves as a :class:`PacsError` whose message names the server by
``scheme://host:port`` only: credentials never appear, and response bodies are never
quoted because they can hold patient data.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import re
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit
from xml.etree.ElementTree import ParseError

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.errors import InvalidDicomError
from requests.auth import HTTPBasicAuth
from urllib3.exceptions import ReadTimeoutError

from config import is_true
from inference.errors import InvalidRequest, ServiceError

from . import dicom_json

# The library logs every study and instance UID it touches at INFO, which the app's
# INFO logging would keep; the UIDs identify a patient's studies.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)

STUDY_FIELDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription",
                "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                "NumberOfStudyRelatedInstances", "AccessionNumber", "PatientName", "PatientID")
INSTANCE_FIELDS = ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
                   "InstanceNumber", "SeriesDescription", "Manufacturer")
INSTANCE_PAGE, MAX_PAGES = 1000, 100  # a study of more than 100000 instances is cut short
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_MODALITY = re.compile(r"[A-Z0-9]{1,16}")
# What a malformed response raises while the library or pydicom parses it.
_GARBAGE = (ValueError, KeyError, IndexError, TypeError, EOFError, OverflowError,
            struct.error, InvalidDicomError, ParseError)


class PacsError(ServiceError):
    """The PACS cannot be reached, refused the request or answered garbage."""

    code = "pacs_unavailable"  # what a study that failed for it records

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code  # the PACS's HTTP status, when it answered one


class PacsTimeout(PacsError):
    """The PACS did not answer within the configured time."""

    code = "pacs_timeout"


class PacsNotConfigured(ServiceError):
    """No PACS is configured (``DICOMWEB_URL`` is empty), or its settings are unusable."""


@dataclass(frozen=True)
class PacsSettings:
    """Where the PACS is and how to log in; secrets stay out of ``repr``."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    allow_http_credentials: bool = False  # DICOMWEB_ALLOW_HTTP_CREDENTIALS

    def __post_init__(self):
        _origin(self.url)
        if self.sends_secrets_in_clear() and not self.allow_http_credentials:
            raise PacsNotConfigured(
                "DICOMWEB_URL is plain http:// to another machine, so the PACS password or "
                "token would cross the network readable: use https://, or set "
                "DICOMWEB_ALLOW_HTTP_CREDENTIALS=true if this network is trusted.")
        if "@" in urlsplit(self.url).netloc:
            raise PacsNotConfigured("DICOMWEB_URL must not hold credentials: set "
                                    "DICOMWEB_USERNAME and DICOMWEB_PASSWORD instead.")
        if self.token and (self.username or self.password):
            raise PacsNotConfigured("Set DICOMWEB_TOKEN or DICOMWEB_USERNAME and "
                                    "DICOMWEB_PASSWORD, not both.")
        if bool(self.username) != bool(self.password):
            raise PacsNotConfigured("DICOMWEB_USERNAME and DICOMWEB_PASSWORD go together.")
        if self.token and not self.token.isprintable():
            raise PacsNotConfigured("DICOMWEB_TOKEN holds characters a header cannot carry.")
        if not self.timeout_s > 0:
            raise PacsNotConfigured("DICOMWEB_TIMEOUT_S must be a positive number of seconds.")

    @classmethod
    def from_config(cls, config: Mapping, environ: Mapping = os.environ) -> PacsSettings | None:
        """The URL and time-out from the app's config, credentials only from ``environ``
        (a config file is easier to leak than the environment); None when unconfigured."""
        url = (config.get("DICOMWEB_URL") or "").strip()
        if not url:
            return None
        try:
            timeout_s = float(config["DICOMWEB_TIMEOUT_S"])
        except (TypeError, ValueError):
            raise PacsNotConfigured("DICOMWEB_TIMEOUT_S must be a number of seconds.") from None
        return cls(url=url, username=environ.get("DICOMWEB_USERNAME") or None,
                   password=environ.get("DICOMWEB_PASSWORD") or None,
                   token=environ.get("DICOMWEB_TOKEN") or None, timeout_s=timeout_s,
                   allow_http_credentials=is_true(config.get("DICOMWEB_ALLOW_HTTP_CREDENTIALS")))

    def sends_secrets_in_clear(self) -> bool:
        """Credentials over http:// to a host other than this machine's loopback."""
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not (self.username or self.token):
            return False
        try:
            return not ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            return parts.hostname != "localhost"

    @property
    def origin(self) -> str:
        """``scheme://host:port``: how messages name the server."""
        return _origin(self.url)


class PacsClient:
    """QIDO-RS, WADO-RS and STOW-RS through dicomweb-client, with errors made plain."""

    def __init__(self, settings: PacsSettings):
        self.settings = settings
        session = requests.Session()
        if settings.token:
            session.headers["Authorization"] = f"Bearer {settings.token}"
        elif settings.username:
            session.auth = HTTPBasicAuth(settings.username, settings.password)
        self._dicomweb = DICOMwebClient(url=settings.url.rstrip("/"), session=session,
                                        timeout=settings.timeout_s)
        # The library retries every failure, time-outs included, up to five times with
        # waits of seconds: one 30 s time-out would become minutes. Jobs retry instead.
        self._dicomweb.set_http_retry_params(retry=False)

    def __repr__(self) -> str:
        return f"PacsClient({self.settings.origin})"

    def studies(self, modality: str | None = None, limit: int = 100,
                offset: int = 0) -> list[dict]:
        """One page of studies, newest first within the page (QIDO has no sort order)."""
        filters = {}
        if modality:
            modality = modality.strip().upper()
            if not _MODALITY.fullmatch(modality):
                raise InvalidRequest("modality must be a DICOM modality such as CT or DX.")
            filters["ModalitiesInStudy"] = modality
        if limit < 1 or offset < 0:
            raise InvalidRequest("limit must be at least 1 and offset at least 0.")
        with self._errors():
            found = self._dicomweb.search_for_studies(
                limit=limit, offset=offset, fields=STUDY_FIELDS, search_filters=filters)
            studies = [dicom_json.study_fields(item) for item in dicom_json.items(found)]
        return sorted(studies, key=lambda s: (s["date"] or "", s["time"] or ""), reverse=True)

    def instances(self, study_uid: str) -> list[dict]:
        """Every instance of the study, in series then instance-number order; pages until
        the server has nothing new, as servers cap a QIDO answer at their own limit."""
        _check_uid(study_uid)
        found: dict[str, dict] = {}
        with self._errors():
            for _ in range(MAX_PAGES):
                page = self._dicomweb.search_for_instances(
                    study_instance_uid=study_uid, fields=INSTANCE_FIELDS,
                    limit=INSTANCE_PAGE, offset=len(found))
                fresh = [i for i in map(dicom_json.instance_fields, dicom_json.items(page))
                         if i["sop_instance_uid"] not in found]
                if not fresh:
                    break
                found.update((i["sop_instance_uid"], i) for i in fresh)
        return sorted(found.values(), key=lambda i: (i["series_uid"], i["instance_number"] or 0,
                                                     i["sop_instance_uid"]))

    def retrieve(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> bytes:
        """One instance as DICOM Part-10 bytes, in the transfer syntax the PACS stores."""
        for uid in (study_uid, series_uid, sop_instance_uid):
            _check_uid(uid)
        with self._errors():
            dataset = self._dicomweb.retrieve_instance(
                study_uid, series_uid, sop_instance_uid,
                media_types=(("application/dicom", "*"),))
            if dataset.get("SOPInstanceUID") != sop_instance_uid:
                raise self._garbage()
            return _part10(dataset)

    def headers(self, study_uid: str) -> dict[str, pydicom.Dataset]:
        """Every instance's attributes without pixel data (WADO-RS metadata, one request),
        by SOPInstanceUID: what a report needs to reference and describe them."""
        _check_uid(study_uid)
        with self._errors():
            found = dicom_json.items(self._dicomweb.retrieve_study_metadata(study_uid))
            datasets = [pydicom.Dataset.from_json(item, bulk_data_uri_handler=lambda *a: b"")
                        for item in found]
        return {str(ds.SOPInstanceUID): ds for ds in datasets if "SOPInstanceUID" in ds}

    def store(self, datasets: list) -> None:
        """STOW-RS the datasets; any instance the PACS refuses raises :class:`PacsError`."""
        if not datasets:
            return
        # As Part-10 files: the library writes datasets as they are, and a dataset made in
        # memory has no preamble or file meta, which a PACS rejects.
        files = [pydicom.dcmread(io.BytesIO(_part10(ds))) for ds in datasets]
        with self._errors():
            failed = self._dicomweb.store_instances(files).get("FailedSOPSequence") or []
            reasons = sorted({int(item.get("FailureReason") or 0) for item in failed})
        if failed:
            codes = ", ".join(f"0x{reason:04X}" for reason in reasons)
            raise PacsError(f"The PACS at {self.settings.origin} refused {len(failed)} of "
                            f"{len(files)} instances (failure reason {codes}).")

    @contextmanager
    def _errors(self):
        """Turn whatever requests, the library or pydicom raise into plain PACS errors."""
        origin = self.settings.origin
        try:
            yield
        except PacsError:
            raise
        except requests.Timeout:
            raise self._timeout() from None
        except requests.HTTPError as error:
            raise self._http_error(error.response) from None
        except requests.ConnectionError as error:
            if error.args and isinstance(error.args[0], ReadTimeoutError):
                raise self._timeout() from None  # a body that stopped arriving
            raise PacsError(f"The PACS at {origin} cannot be reached.") from None
        except requests.JSONDecodeError:
            raise self._garbage() from None
        except requests.RequestException as error:
            raise PacsError(f"The PACS at {origin} failed to answer "
                            f"({type(error).__name__}).") from None
        except _GARBAGE:
            raise self._garbage() from None

    def _timeout(self) -> PacsTimeout:
        return PacsTimeout(f"The PACS at {self.settings.origin} did not answer within "
                           f"{self.settings.timeout_s:g} s.")

    def _garbage(self) -> PacsError:
        return PacsError(f"The PACS at {self.settings.origin} answered with something that "
                         "is not DICOMweb; check DICOMWEB_URL.")

    def _http_error(self, response) -> PacsError:
        origin, status = self.settings.origin, getattr(response, "status_code", None)
        if status in (401, 403):
            return PacsError(f"The PACS at {origin} refused the credentials (HTTP {status}): "
                             "check DICOMWEB_USERNAME and DICOMWEB_PASSWORD, or "
                             "DICOMWEB_TOKEN.", status)
        if status in (408, 504):
            return PacsTimeout(f"The PACS at {origin} timed out (HTTP {status}).", status)
        return PacsError(f"The PACS at {origin} answered HTTP {status}.", status)


def _origin(url: str) -> str:
    """``scheme://host:port`` of an http(s) URL, without any user information."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port that is not a number, or out of range
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise PacsNotConfigured("DICOMWEB_URL must be an http:// or https:// URL.")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


def _check_uid(uid: str) -> None:
    if not isinstance(uid, str) or len(uid) > 64 or not _UID.fullmatch(uid):
        raise InvalidRequest("That is not a DICOM UID.")


def _part10(dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
