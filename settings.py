"""Typed settings, read once from the app's configuration when the app is created.

``config.py`` declares every setting and its default; this module turns them into
frozen dataclasses that the code is handed, so no module parses ``app.config`` itself
and a bad value is said once, at start. ``settings_of(app)`` returns them; a test that
changes ``app.config`` afterwards calls ``load_settings`` again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from audit.outbox import ExportSettings, default_source
from audit.syslog import SyslogTarget
from auth.settings import AuthSettings, auth_settings
from pacs.node.settings import Destination, NodeSettings, ae_titles
from inference.precision import normalize_precision, normalize_tolerance
from inference.registry import ModelChoice, parse_model_choices, per_modality
from inference.runners import DEVICES
from jobs.queue import QueueSettings
from pacs.client import PacsClient, PacsNotConfigured, PacsSettings
from studies.intake import Limits
from studies.verdict import StudyRule


@dataclass(frozen=True)
class InferenceSettings:
    model_dir: str
    max_loaded: int
    threads: int
    max_pixels: int
    backend: str
    onnx_cache_dir: str | None
    jit_compile: bool
    concurrency: int
    device: str
    precision: str
    fp16_tolerance: float
    precision_tolerance: float  # bf16, int8 and auto against fp32
    prepare: bool  # convert models in the background as soon as they are seen
    warm: str  # WARM_MODELS: loaded when a worker starts


@dataclass(frozen=True)
class StudySettings:
    limits: Limits
    retention_hours: float
    lease_s: float  # a worker's hold on a study, renewed by every batch
    requeue_after_s: float  # queued this long with no taker: queue it again
    max_attempts: int  # workers a study may outlive before it fails
    rule: StudyRule
    batch: int  # images per forward pass
    rate_limit: str
    write_max_attempts: int  # automatic write-back tries, shown in a PACS study's view


HEATMAP_FORMATS = ("pmap", "seg", "sc", "none")  # how heatmaps are written into a PACS
DEFAULT_HEATMAP_FORMAT = "pmap"  # as config.py's PACS_HEATMAP_FORMAT


@dataclass(frozen=True)
class PacsConfig:
    """The PACS connection (None when no ``DICOMWEB_URL``) and what the tool does with it."""

    connection: PacsSettings | None
    connection_error: str | None  # why the connection settings are unusable
    write_back: bool
    write_lease_s: float
    write_retry_s: float
    write_retry_max_s: float
    write_max_attempts: int
    auto_rules: tuple[ModelChoice, ...]  # PACS_AUTO_ANALYSE, one per modality
    explain: bool
    poll_s: float
    stable_s: float
    arrival_retry_s: float
    arrival_retry_max_s: float
    heatmap_format: str = DEFAULT_HEATMAP_FORMAT  # PACS_HEATMAP_FORMAT

    @property
    def configured(self) -> bool:
        return self.connection is not None or self.connection_error is not None

    @property
    def writes_back(self) -> bool:
        """The one rule for writing results into the PACS: a PACS, and write-back on."""
        return self.configured and self.write_back

    def client(self) -> PacsClient:
        """A client for the configured PACS, or ``PacsNotConfigured`` saying why not."""
        if self.connection_error:
            raise PacsNotConfigured(self.connection_error)
        if self.connection is None:
            raise PacsNotConfigured("No PACS is configured: set DICOMWEB_URL.")
        return PacsClient(self.connection)


@dataclass(frozen=True)
class MailSettings:
    server: str | None
    port: int
    use_tls: bool
    tls_ca_file: str | None  # the CA that signed the server's certificate; None: the system's
    username: str | None
    password: str | None = field(repr=False)
    sender: str
    recipient: str | None
    lease_s: float  # a sender's hold on a message while it sends it
    retry_s: float
    retry_max_s: float
    max_attempts: int  # automatic tries; `flask contact forward` retries beyond them
    rate_limit: str

    @property
    def configured(self) -> bool:
        return bool(self.server and self.recipient)


@dataclass(frozen=True)
class Settings:
    inference: InferenceSettings
    studies: StudySettings
    pacs: PacsConfig
    mail: MailSettings
    queue: QueueSettings
    log_level: str
    auth: AuthSettings
    audit: ExportSettings
    node: NodeSettings


def one_of(name: str, value, choices, default: str = "") -> str:
    """A setting that names one of a few choices, checked at start (a typo would
    otherwise be silently something else)."""
    key = str(value or default).strip().lower()
    if key not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, "
                         f"not {str(value)[:20]!r}")
    return key


def inference_settings(config: Mapping) -> InferenceSettings:
    return InferenceSettings(
        model_dir=config["MODEL_DIR"], max_loaded=int(config["MAX_LOADED_MODELS"]),
        threads=int(config["INFERENCE_THREADS"]), max_pixels=int(config["MAX_IMAGE_PIXELS"]),
        backend=config["INFERENCE_BACKEND"], onnx_cache_dir=config["ONNX_CACHE_DIR"],
        jit_compile=bool(config["INFERENCE_JIT_COMPILE"]),
        concurrency=int(config["INFERENCE_CONCURRENCY"]),
        device=one_of("INFERENCE_DEVICE", config["INFERENCE_DEVICE"], DEVICES, "cpu"),
        precision=normalize_precision(config["INFERENCE_PRECISION"]),
        fp16_tolerance=normalize_tolerance(config["FP16_TOLERANCE"]),
        precision_tolerance=normalize_tolerance(config["PRECISION_TOLERANCE"],
                                                "PRECISION_TOLERANCE"),
        prepare=bool(config["PREPARE_MODELS"]), warm=str(config["WARM_MODELS"] or ""))


def study_settings(config: Mapping) -> StudySettings:
    return StudySettings(
        limits=Limits(max_images=int(config["MAX_STUDY_IMAGES"]),
                      max_bytes=int(config["MAX_STUDY_BYTES"])),
        retention_hours=float(config["STUDY_RETENTION_HOURS"]),
        lease_s=float(config["STUDY_LEASE_S"]),
        requeue_after_s=float(config["STUDY_REQUEUE_AFTER_S"]),
        max_attempts=int(config["STUDY_MAX_ATTEMPTS"]),
        rule=StudyRule(min_run=int(config["STUDY_MIN_RUN"]),
                       min_share=float(config["STUDY_MIN_SHARE"])),
        batch=max(1, int(config["STUDY_BATCH"])), rate_limit=config["STUDY_RATE_LIMIT"],
        write_max_attempts=int(config["PACS_WRITE_MAX_ATTEMPTS"]))


def pacs_settings(config: Mapping, environ: Mapping) -> PacsConfig:
    try:
        connection, problem = PacsSettings.from_config(config, environ), None
    except PacsNotConfigured as exc:  # said when the PACS is used, as a 503
        connection, problem = None, exc.message
    return PacsConfig(
        connection=connection, connection_error=problem,
        write_back=bool(config["PACS_WRITE_BACK"]),
        write_lease_s=float(config["PACS_WRITE_LEASE_S"]),
        write_retry_s=float(config["PACS_WRITE_RETRY_S"]),
        write_retry_max_s=float(config["PACS_WRITE_RETRY_MAX_S"]),
        write_max_attempts=int(config["PACS_WRITE_MAX_ATTEMPTS"]),
        auto_rules=tuple(per_modality(parse_model_choices(config["PACS_AUTO_ANALYSE"]))),
        explain=bool(config["PACS_EXPLAIN"]), poll_s=float(config["PACS_POLL_S"]),
        stable_s=float(config["PACS_STABLE_S"]),
        arrival_retry_s=float(config["PACS_ARRIVAL_RETRY_S"]),
        arrival_retry_max_s=float(config["PACS_ARRIVAL_RETRY_MAX_S"]),
        heatmap_format=one_of("PACS_HEATMAP_FORMAT", config["PACS_HEATMAP_FORMAT"],
                              HEATMAP_FORMATS))


def mail_settings(config: Mapping) -> MailSettings:
    return MailSettings(
        server=config["MAIL_SERVER"] or None, port=int(config["MAIL_PORT"]),
        use_tls=bool(config["MAIL_USE_TLS"]), tls_ca_file=config["MAIL_TLS_CA_FILE"] or None,
        username=config["MAIL_USERNAME"] or None,
        password=config["MAIL_PASSWORD"] or None, sender=config["MAIL_SENDER"],
        recipient=config["CONTACT_RECIPIENT"] or None,
        lease_s=float(config["CONTACT_FORWARD_LEASE_S"]),
        retry_s=float(config["CONTACT_FORWARD_RETRY_S"]),
        retry_max_s=float(config["CONTACT_FORWARD_RETRY_MAX_S"]),
        max_attempts=int(config["CONTACT_FORWARD_MAX_ATTEMPTS"]),
        rate_limit=config["CONTACT_RATE_LIMIT"])


def queue_settings(config: Mapping) -> QueueSettings:
    broker = (config["BROKER_URL"] or "").strip() or None
    return QueueSettings(broker_url=broker,
                         embedded=broker is None and bool(config["EMBEDDED_WORKER"]),
                         poll_s=float(config["EMBEDDED_POLL_S"]),
                         sweep_s=float(config["WORKER_SWEEP_S"]),
                         backoff_max_s=float(config["WORKER_BACKOFF_MAX_S"]))


def audit_settings(config: Mapping) -> ExportSettings:
    url = (config["AUDIT_SYSLOG_URL"] or "").strip()
    timeout_s = float(config["AUDIT_SYSLOG_TIMEOUT_S"])
    target = SyslogTarget.from_url(
        url, ca_file=config["AUDIT_SYSLOG_CA_FILE"] or None,
        cert_file=config["AUDIT_SYSLOG_CERT_FILE"] or None,
        key_file=config["AUDIT_SYSLOG_KEY_FILE"] or None, timeout_s=timeout_s) if url else None
    return ExportSettings(
        target=target,
        source=default_source(str(config["AUDIT_SOURCE_ID"]),
                              config["AUDIT_ENTERPRISE_SITE_ID"] or None),
        interval_s=float(config["AUDIT_EXPORT_S"]), batch=int(config["AUDIT_EXPORT_BATCH"]),
        lease_s=max(60.0, 6 * timeout_s), retry_s=float(config["AUDIT_EXPORT_RETRY_S"]),
        retry_max_s=float(config["AUDIT_EXPORT_RETRY_MAX_S"]))


def node_settings(config: Mapping) -> NodeSettings:
    destination = str(config["DICOM_RESULT_DESTINATION"] or "").strip()
    title = str(config["DICOM_AE_TITLE"]).strip()
    if not ae_titles(title):
        raise ValueError("DICOM_AE_TITLE must be an AE title")
    return NodeSettings(
        ae_title=title, bind=str(config["DICOM_BIND"]), port=int(config["DICOM_PORT"]),
        allowed_callers=ae_titles(config["DICOM_ALLOWED_CALLERS"]),
        max_associations=max(1, int(config["DICOM_MAX_ASSOCIATIONS"])),
        stable_s=float(config["DICOM_STABLE_S"]),
        rules=tuple(per_modality(parse_model_choices(config["DICOM_ANALYSE"]))),
        explain=bool(config["DICOM_EXPLAIN"]),
        destination=Destination.parse(destination) if destination else None,
        timeout_s=float(config["DICOM_TIMEOUT_S"]))


def load_settings(config: Mapping, environ: Mapping = os.environ) -> Settings:
    """Every typed setting from the app's config (credentials from ``environ``)."""
    return Settings(inference=inference_settings(config), studies=study_settings(config),
                    pacs=pacs_settings(config, environ), mail=mail_settings(config),
                    queue=queue_settings(config), log_level=str(config["LOG_LEVEL"]),
                    auth=auth_settings(config, environ), audit=audit_settings(config),
                    node=node_settings(config))


def settings_of(app) -> Settings:
    """The settings ``create_app`` read for this app."""
    return app.extensions["settings"]
