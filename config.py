"""Configuration defaults.

Order of precedence (last wins): these classes, ``instance/config.py``, environment
variables prefixed ``FLASK_`` (``FLASK_MODEL_DIR``, ``FLASK_SECRET_KEY``...), then the
``test_config`` passed to ``create_app``.
"""

import os

BASE_DIR = os.path.abspath(os.path.dirname(__file__))
FALSE_VALUES = {"", "0", "false", "no", "off"}


def is_true(value) -> bool:
    """A boolean setting as people mean it: ``FLASK_X=no`` arrives as a string."""
    if isinstance(value, str):
        return value.strip().lower() not in FALSE_VALUES
    return bool(value)


class Config:
    # Secret key: None means "generate one and keep it in the instance folder".
    SECRET_KEY = None
    MODEL_DIR = os.path.join(BASE_DIR, "models")
    MAX_LOADED_MODELS = 4
    INFERENCE_THREADS = 0  # 0: all cores of this process's share
    # Forward passes: auto (ONNX Runtime where its cached conversion measured faster),
    # keras (compiled graph) or onnx (ONNX Runtime whenever a conversion exists).
    INFERENCE_BACKEND = "auto"
    # Convert models for ONNX Runtime as soon as they are seen (a low-priority child
    # process, one at a time across workers); else only `flask models compile` does.
    PREPARE_MODELS = True
    ONNX_CACHE_DIR = None  # None: beside each model file
    # Where ONNX Runtime runs: cpu, or cuda on a machine with an NVIDIA GPU and
    # onnxruntime-gpu installed in place of onnxruntime (falls back to the CPU, logged).
    INFERENCE_DEVICE = "cpu"
    # Precision of the forward pass. auto: the fastest of ONNX Runtime fp32 and OpenVINO
    # fp32/bf16/int8 (int8 after `flask models quantize`) that this CPU runs, measured
    # once per model and CPU in the background, whose answers to a probe set are within
    # PRECISION_TOLERANCE of fp32 with no label flipped. bf16 / int8: that one when it
    # agrees so, else fp32. fp16: an ONNX graph for GPUs' tensor cores (no faster on a
    # CPU), within FP16_TOLERANCE. fp32: ONNX Runtime fp32 always. Refusals are logged.
    INFERENCE_PRECISION = "auto"
    PRECISION_TOLERANCE = 0.02
    FP16_TOLERANCE = 0.01
    INFERENCE_JIT_COMPILE = False  # XLA for the Keras graph
    INFERENCE_CONCURRENCY = 1  # forward passes at once per process (each uses all threads)
    WARM_MODELS = ""  # "all", or e.g. "ct:vgg16,xray:all": loaded when a worker starts
    MAX_CONTENT_LENGTH = 20 * 1024 * 1024  # 20 MiB per request
    MAX_IMAGE_PIXELS = 50_000_000
    # None: sqlite:///<instance>/lungscan.sqlite3 (an existing contact.sqlite3, the name
    # of earlier versions, is used as it is).
    SQLALCHEMY_DATABASE_URI = None
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    # Bring the database to the newest migration at start (under a lock): the embedded
    # default needs no extra step. Clusters set false and run `flask db upgrade` once.
    AUTO_MIGRATE = True

    # Contact forwarding by SMTP: off unless MAIL_SERVER is set.
    MAIL_SERVER = None
    MAIL_PORT = 587
    MAIL_USE_TLS = True  # STARTTLS, the server's certificate and name checked
    MAIL_TLS_CA_FILE = None  # a private CA's certificate (PEM); None: the system's CAs
    MAIL_USERNAME = None
    MAIL_PASSWORD = None
    MAIL_SENDER = "noreply@localhost"
    CONTACT_RECIPIENT = None
    # A sender's hold on a message while it sends it; after a crash, the message is sent
    # again once this expires. Longer than the slowest SMTP exchange (10 s timeouts).
    CONTACT_FORWARD_LEASE_S = 300
    # First retry after a failed send, doubling per failure up to the maximum.
    CONTACT_FORWARD_RETRY_S = 30
    CONTACT_FORWARD_RETRY_MAX_S = 3600
    CONTACT_FORWARD_MAX_ATTEMPTS = 10  # automatic tries; `flask contact forward` goes on

    # Studies: many images as one background job (see studies/ and jobs/).
    MAX_STUDY_IMAGES = 1000
    MAX_STUDY_BYTES = 512 * 1024 * 1024  # uncompressed, all images together
    STUDY_RETENTION_HOURS = 24  # results are purged this long after the study ends
    STUDY_LEASE_S = 120  # a worker's hold on a study, renewed by every batch of images
    STUDY_REQUEUE_AFTER_S = 300  # a study queued this long with no taker is queued again
    STUDY_MAX_ATTEMPTS = 3  # workers a study may outlive before it fails
    STUDY_MIN_RUN = 5  # study verdict: consecutive positive CT slices of one series...
    STUDY_MIN_SHARE = 0.25  # ...or this share of all images positive
    STUDY_RATE_LIMIT = "10 per minute"
    STUDY_BATCH = 8  # images per forward pass (and per stored progress step)
    # Queue: None = a SQLite file in the instance folder, worked by a thread in each web
    # process (EMBEDDED_WORKER); redis://host:6379/0 = Redis, worked by `flask worker`.
    BROKER_URL = None
    EMBEDDED_WORKER = True
    EMBEDDED_POLL_S = 1.0  # an idle worker (embedded or flask worker) looks this often
    WORKER_SWEEP_S = 30  # how often workers look for stalled and expired studies
    WORKER_BACKOFF_MAX_S = 600  # a worker loop failing again and again waits at most this

    # PACS over DICOMweb (pacs/): the server comes from here only, never from a request;
    # credentials only from the environment (DICOMWEB_USERNAME / DICOMWEB_PASSWORD or
    # DICOMWEB_TOKEN).
    DICOMWEB_URL = None  # e.g. http://127.0.0.1:8042/dicom-web
    DICOMWEB_TIMEOUT_S = 30
    # Credentials over plain http:// to another machine are refused unless this is true.
    DICOMWEB_ALLOW_HTTP_CREDENTIALS = False
    PACS_AUTO_ANALYSE = ""  # e.g. "ct:all,xray:resnet50": analyse new studies on arrival
    PACS_EXPLAIN = False  # auto-analysis with heatmaps (written back as captures)
    PACS_WRITE_BACK = True  # store the report (and captures) in the PACS study
    # How heatmaps are written back: "pmap" (Parametric Map of the values, which viewers
    # overlay on the source images), "seg" (fractional Segmentation), "sc" (Secondary
    # Captures with the warning burned in) or "none"
    PACS_HEATMAP_FORMAT = "pmap"
    PACS_WRITE_LEASE_S = 300  # a queued write-back's hold: a lost job is queued again after it
    PACS_WRITE_RETRY_S = 60  # first retry of a failed write-back, doubling...
    PACS_WRITE_RETRY_MAX_S = 3600  # ...up to this
    PACS_WRITE_MAX_ATTEMPTS = 10  # automatic tries; `flask pacs write-back` goes on
    PACS_POLL_S = 30  # how often workers look for new PACS studies
    PACS_STABLE_S = 60  # a study is analysed once its image count held this long
    # An arrival whose analysis failed for want of the PACS is tried again after this,
    # doubling per failure up to the maximum.
    PACS_ARRIVAL_RETRY_S = 60
    PACS_ARRIVAL_RETRY_MAX_S = 3600

    # DICOM node (`flask dicom listen`, pynetdicom): modalities and routers send studies
    # by C-STORE; each is analysed once it stopped growing, its report sent back.
    DICOM_AE_TITLE = "LUNGSCAN"
    DICOM_BIND = "0.0.0.0"
    DICOM_PORT = 11112
    DICOM_ALLOWED_CALLERS = ""  # calling AE titles let in, "CT1,ORTHANC"; none: no node
    DICOM_MAX_ASSOCIATIONS = 4  # at once; more are rejected as busy
    DICOM_TIMEOUT_S = 30  # network, ACSE and DIMSE time-outs
    DICOM_STABLE_S = 10  # a study is analysed once nothing arrived for this long
    DICOM_ANALYSE = "ct:all,xray:all"  # the models for each modality's studies
    DICOM_EXPLAIN = False  # heatmaps with each analysis (and written back)
    # Where reports go by C-STORE, "AET@host:port"; empty: over DICOMweb to DICOMWEB_URL
    # (the PACS that sent the study), or kept here only when neither is set.
    DICOM_RESULT_DESTINATION = ""

    # Behind a load balancer or reverse proxy: how many proxies in front set
    # X-Forwarded-For / -Proto (Werkzeug's ProxyFix), so rate limits and logs see the
    # client, not the proxy. 0 (the default) trusts no such header.
    PROXY_FIX_X_FOR = 0

    # Rate limits (Flask-Limiter).
    RATELIMIT_ENABLED = True
    RATELIMIT_STORAGE_URI = "memory://"
    # Shared counters (Redis) unreachable: count in this process's memory meanwhile
    # rather than refuse every request; the shared store is used again once it answers.
    RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True
    RATELIMIT_SWALLOW_ERRORS = True
    RATELIMIT_HEADERS_ENABLED = True
    PREDICT_RATE_LIMIT = "60 per minute"
    CONTACT_RATE_LIMIT = "10 per minute"

    LOG_LEVEL = "INFO"

    # Who may see and do what (auth/). AUTH_METHODS: "" (no sign-in), local, oidc or
    # local,oidc. PUBLIC_ACCESS keeps the single-image page and API and anonymous studies
    # open to visitors; false closes everything but sign-in, health and static files.
    # PACS pages and API always need a signed-in reader (DICOMWEB_URL needs a method).
    AUTH_METHODS = ""
    PUBLIC_ACCESS = True
    SESSION_IDLE_MINUTES = 30
    SESSION_MAX_HOURS = 12  # a session ends this long after sign-in, however busy
    # Password sign-in: this many wrong passwords in a row are checked at once; after
    # that each try waits LOGIN_DELAY_S, doubling per failure up to LOGIN_DELAY_MAX_S.
    LOGIN_FREE_ATTEMPTS = 3
    LOGIN_DELAY_S = 1.0
    LOGIN_DELAY_MAX_S = 900.0
    LOGIN_RATE_LIMIT = "10 per minute; 100 per hour"  # per client address
    # OpenID Connect: the provider's issuer URL (discovery), this site's client id; the
    # secret only from the environment variable OIDC_CLIENT_SECRET. Roles from the
    # claim OIDC_ROLES_CLAIM, mapped by OIDC_ROLE_MAP ("their-name=reader,...").
    OIDC_ISSUER = None
    OIDC_CLIENT_ID = None
    OIDC_SCOPES = "openid profile email"
    OIDC_ROLES_CLAIM = "roles"
    OIDC_ROLE_MAP = ""
    OIDC_AUDIENCE = None  # the aud of bearer JWTs; None: the client id
    # Host names this site answers to (Flask's TRUSTED_HOSTS; "a.example,b.example" from
    # the environment); None answers any Host header.
    TRUSTED_HOSTS = None
    # Reached over HTTPS: Secure session cookie and HSTS (also when a trusted proxy says
    # X-Forwarded-Proto: https, see PROXY_FIX_X_FOR).
    PREFER_HTTPS = False

    # Audit trail export to the hospital's Audit Record Repository: DICOM audit messages
    # (PS3.15 A.5) as syslog over TLS (RFC 5425) from a durable outbox. Off unless set.
    AUDIT_SYSLOG_URL = None  # tls://arr.hospital.example:6514
    AUDIT_SYSLOG_CA_FILE = None  # the CA of the repository's certificate; None: system's
    AUDIT_SYSLOG_CERT_FILE = None  # this site's certificate and key, where the
    AUDIT_SYSLOG_KEY_FILE = None  # repository asks for one (mutual TLS)
    AUDIT_SYSLOG_TIMEOUT_S = 10
    AUDIT_SOURCE_ID = "lungscan"  # AuditSourceID in every message
    AUDIT_ENTERPRISE_SITE_ID = None  # AuditEnterpriseSiteID: the hospital's name or OID
    AUDIT_EXPORT_S = 10  # how often workers send what the repository has not read
    AUDIT_EXPORT_BATCH = 200  # events per connection
    AUDIT_EXPORT_RETRY_S = 10  # after a failed send, doubling per failure...
    AUDIT_EXPORT_RETRY_MAX_S = 600  # ...up to this

    WTF_CSRF_TIME_LIMIT = None  # token valid for the session's life
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = False  # set FLASK_SESSION_COOKIE_SECURE=true behind HTTPS


class TestingConfig(Config):
    TESTING = True
    WTF_CSRF_ENABLED = False
    RATELIMIT_ENABLED = False
    SECRET_KEY = "test-only-secret"
    PREPARE_MODELS = False  # tests convert explicitly
    INFERENCE_PRECISION = "fp32"  # tests of other precisions ask for them
    EMBEDDED_WORKER = False  # tests that run studies start a worker themselves
