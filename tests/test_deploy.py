"""deploy/: the Dockerfile, Compose file, HAProxy config and Kubernetes manifests,
checked without Docker or a cluster.

Structure (every role present, probes on the right paths and ports, the autoscaler on
the worker), secrets (no literal value anywhere, the Secret example never applied),
and the settings the manifests pass (every ``FLASK_<KEY>`` is one the app reads), so
the deployment cannot drift from the app unnoticed. ``haproxy -c`` runs where HAProxy
is installed (CI installs it); ``docker compose config`` and ``kubectl kustomize``
where those tools exist, and CI fails when either cannot run.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

import config

from .redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
HAPROXY_CFG = DEPLOY / "haproxy" / "haproxy.cfg"
SECRET_EXAMPLE = K8S / "secret.example.yaml"

APP_SERVICES = ("web", "worker", "migrate")
SHARED_ENV = ("FLASK_SQLALCHEMY_DATABASE_URI", "FLASK_BROKER_URL",
              "FLASK_RATELIMIT_STORAGE_URI", "FLASK_SECRET_KEY", "FLASK_AUTO_MIGRATE",
              "FLASK_MODEL_DIR")
MIGRATE_COMMAND = ["flask", "--app", "app", "db", "upgrade"]
WORKER_COMMAND = ["flask", "--app", "app", "worker"]
# Read by Flask itself or by create_app() from the environment, not app settings.
ENV_ONLY = {"FLASK_INSTANCE_PATH", "FLASK_APP"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY$", re.IGNORECASE)
COMPOSE_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}$")
URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^:/@]*:([^@]*)@", re.IGNORECASE)


# --- helpers ---------------------------------------------------------------------------

def load_all(path: Path) -> list:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def compose() -> dict:
    (document,) = load_all(COMPOSE_FILE)
    return document


def k8s_documents() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml"))
            if path.name not in ("kustomization.yaml", SECRET_EXAMPLE.name)
            for doc in load_all(path)]


def k8s_kind(kind: str) -> list[dict]:
    return [doc for doc in k8s_documents() if doc["kind"] == kind]


def k8s_one(kind: str, name: str) -> dict:
    (document,) = [doc for doc in k8s_kind(kind) if doc["metadata"]["name"] == name]
    return document


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict) -> dict:
    (only,) = pod_spec(workload)["containers"]
    return only


def env_of(service: dict) -> dict:
    """A Compose service's environment as a mapping (list form too)."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: ("" if value is None else str(value)) for key, value in environment.items()}


def literal_secrets(environment: dict) -> list[str]:
    """Names whose value is a secret written into the file instead of a ``${...}``
    reference: a secret-looking name with a literal value, or a URL with a literal
    password."""
    found = []
    for name, value in environment.items():
        if SECRET_NAME.search(name) and value and not COMPOSE_REFERENCE.match(value):
            found.append(name)
        match = URL_PASSWORD.match(value)
        if match and not COMPOSE_REFERENCE.match(match.group(1)):
            found.append(name)
    return found


def app_setting_names() -> set[str]:
    """Settings the app knows: ``config.Config``'s, plus any the app's code reads with
    ``config.get("KEY"`` or ``config["KEY"]`` (e.g. one read with a default)."""
    names = {name for name in dir(config.Config) if name.isupper()}
    read = re.compile(r"config(?:\.get\(|\[)\s*[\"']([A-Z][A-Z0-9_]*)[\"']")
    skip = {".venv", "tests", "bench", "deploy", ".git"}
    for path in ROOT.rglob("*.py"):
        if not skip.intersection(path.relative_to(ROOT).parts):
            names.update(read.findall(path.read_text(encoding="utf-8", errors="replace")))
    return names


def unknown_flask_settings(names, known: set[str]) -> list[str]:
    return sorted(name for name in names if name.startswith("FLASK_")
                  and name not in ENV_ONLY and name.removeprefix("FLASK_") not in known)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins, ``!`` re-includes,
    and a pattern that matches a folder covers everything under it."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        candidates = [pattern, pattern.replace("**/", "")]
        if any(fnmatch.fnmatchcase(prefix, candidate) or
               (candidate != pattern and fnmatch.fnmatchcase(parts[-1], candidate))
               for prefix in prefixes for candidate in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def haproxy_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for raw in HAPROXY_CFG.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not raw[0].isspace():
            current = line.strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(" ".join(line.split()))
    return sections


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match, value
    number, unit = int(match.group(1)), match.group(2) or "ms"
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


# --- every file ------------------------------------------------------------------------

def test_every_yaml_file_parses_and_holds_something():
    paths = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert COMPOSE_FILE in paths and K8S / "kustomization.yaml" in paths
    for path in paths:
        documents = load_all(path)
        assert documents and all(isinstance(doc, dict) for doc in documents), path


# --- image -----------------------------------------------------------------------------

def test_dockerfile_builds_one_non_root_image_for_every_role():
    rows = dockerfile_instructions()
    assert rows[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(rest for keyword, rest in rows if keyword == "RUN")
    assert "pip install -r requirements.txt" in runs
    copies = [rest for keyword, rest in rows if keyword == "COPY"]
    assert any(rest.split()[0] == "." for rest in copies), "the app is copied in"
    users = [rest for keyword, rest in rows if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # The user comes after the installs: the service user cannot change the code.
    assert [keyword for keyword, _ in rows].index("USER") > max(
        i for i, (keyword, _) in enumerate(rows) if keyword in ("RUN", "COPY"))
    (healthcheck,) = [rest for keyword, rest in rows if keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and ":8000" in healthcheck
    (cmd,) = [rest for keyword, rest in rows if keyword == "CMD"]
    assert yaml.safe_load(cmd) == ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
    env = " ".join(rest for keyword, rest in rows if keyword == "ENV")
    assert "GUNICORN_BIND=0.0.0.0:8000" in env  # gunicorn.conf.py binds to loopback


def test_dockerignore_keeps_secrets_state_and_models_out_of_the_image():
    patterns = dockerignore_patterns()
    for path in (".git/config", ".venv/bin/python", "instance/secret_key",
                 "instance/lungscan.sqlite3", "instance/contact.sqlite3", "models/vgg16/VGG16_CT_model.h5",
                 "models/vgg16/VGG16_CT_model.0123456789abcdef.v2.onnx", "deploy/.env",
                 "tests/test_api.py", "web/__pycache__/api.cpython-311.pyc"):
        assert dockerignored(path, patterns), path
    for path in ("app.py", "config.py", "gunicorn.conf.py", "requirements.txt",
                 "web/health.py", "templates/base.html", "models/README.md",
                 "migrations/env.py"):
        assert not dockerignored(path, patterns), path


def test_every_file_the_dockerfile_copies_is_in_the_build_context():
    patterns = dockerignore_patterns()
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY":
            sources = [word for word in rest.split() if not word.startswith("--")][:-1]
            for source in sources:
                if source != ".":
                    assert (ROOT / source).is_file(), source
                    assert not dockerignored(source, patterns), source


def test_dockerignore_rule_is_not_vacuous():
    assert dockerignored("instance/x", ["instance"])
    assert not dockerignored("models/README.md", ["models/*", "!models/README.md"])
    assert dockerignored("a/b/__pycache__/c.pyc", ["**/__pycache__"])
    assert not dockerignored("app.py", ["instance"])


# --- Compose ---------------------------------------------------------------------------

def test_compose_has_every_role_and_each_one_an_image():
    services = compose()["services"]
    assert {"web", "worker", "migrate", "postgres", "redis", "haproxy"} <= set(services)
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1, "web, worker and migrate run one image"
    assert services["web"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / services["web"]["build"]["context"] / "deploy" / "Dockerfile").is_file()
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["haproxy"]["image"].startswith("haproxy:")


def test_compose_roles_commands_and_replicas():
    services = compose()["services"]
    assert "command" not in services["web"], "web runs the image's gunicorn CMD"
    assert services["worker"]["command"] == WORKER_COMMAND
    assert services["migrate"]["command"] == MIGRATE_COMMAND
    assert services["migrate"].get("restart") == "no"
    assert services["web"]["deploy"]["replicas"] == 3
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in ("web", "worker"):
        limits = services[name]["deploy"]["resources"]["limits"]
        cores = float(limits["cpus"])
        assert cores >= 1 and limits["memory"]
        env = env_of(services[name])
        # gunicorn counts the host's cores, not the quota: threads follow the limit.
        assert int(env["FLASK_INFERENCE_THREADS"]) * int(env.get("WEB_CONCURRENCY", 1)) \
            <= cores


def test_web_worker_and_migrate_share_database_broker_and_key():
    services = compose()["services"]
    envs = {name: env_of(services[name]) for name in APP_SERVICES}
    for key in SHARED_ENV:
        values = {name: env.get(key) for name, env in envs.items()}
        assert len(set(values.values())) == 1 and None not in values.values(), (key, values)
    web = envs["web"]
    assert web["FLASK_SQLALCHEMY_DATABASE_URI"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in web["FLASK_SQLALCHEMY_DATABASE_URI"]
    password = "${LUNGSCAN_REDIS_PASSWORD:?"
    assert web["FLASK_BROKER_URL"].startswith(f"redis://:{password}")
    assert web["FLASK_BROKER_URL"].endswith("@redis:6379/0")
    assert web["FLASK_RATELIMIT_STORAGE_URI"].startswith(f"redis://:{password}")
    assert web["FLASK_RATELIMIT_STORAGE_URI"].endswith("@redis:6379/1")
    redis = services["redis"]
    assert "--requirepass" in redis["command"] and password in " ".join(redis["command"])
    assert web["FLASK_AUTO_MIGRATE"] == "false"
    assert re.fullmatch(r"\$\{LUNGSCAN_SECRET_KEY:\?[^}]+\}", web["FLASK_SECRET_KEY"])


def test_compose_has_no_literal_secret():
    for name, service in compose()["services"].items():
        assert literal_secrets(env_of(service)) == [], name


def test_secret_detector_catches_literals():
    assert literal_secrets({"FLASK_SECRET_KEY": "s3cr3t"}) == ["FLASK_SECRET_KEY"]
    assert literal_secrets({"POSTGRES_PASSWORD": "hunter2"}) == ["POSTGRES_PASSWORD"]
    assert literal_secrets({"DB": "postgresql://u:hunter2@db/x"}) == ["DB"]
    assert literal_secrets({"FLASK_SECRET_KEY": "${K:?set it}", "DB":
                            "postgresql://u:${P:?set it}@db/x", "X": "redis://r:6379/0"}) == []


def test_compose_healthchecks_and_start_order():
    services = compose()["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    # Web keeps the image's /healthz HEALTHCHECK; roles without a server turn it off.
    assert not services["web"].get("healthcheck", {}).get("disable")
    for name in ("worker", "migrate"):
        assert services[name]["healthcheck"]["disable"] is True
    for name in ("web", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_volumes_models_read_only_and_state_on_volumes():
    document = compose()
    services, volumes = document["services"], document["volumes"]
    assert services["postgres"]["volumes"][0].split(":")[0] in volumes
    for name in ("web", "worker"):
        mounts = {mount.split(":")[1]: mount for mount in services[name]["volumes"]}
        env = env_of(services[name])
        assert mounts[env["FLASK_MODEL_DIR"]].endswith(":ro")
        assert env["FLASK_INSTANCE_PATH"] in mounts
        # A read-only model folder needs a writable place for the ONNX conversions.
        assert not mounts[env["FLASK_ONNX_CACHE_DIR"]].endswith(":ro")
        for mount in mounts.values():
            assert mount.split(":")[0] in volumes
    tool = services["models"]
    assert tool["profiles"] == ["tools"]
    assert "models:/models" in tool["volumes"]  # the one writer of the model volume


def test_compose_haproxy_and_orthanc():
    services = compose()["services"]
    haproxy = services["haproxy"]
    assert "./haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    assert (DEPLOY / "haproxy" / "haproxy.cfg").is_file()
    assert [port for port in haproxy["ports"] if str(port).endswith("8080:8080")]
    published = [name for name, service in services.items() if service.get("ports")]
    assert set(published) <= {"haproxy", "orthanc"}, "replicas are reached through haproxy"
    orthanc = services["orthanc"]
    assert orthanc["image"].startswith("orthancteam/orthanc:")
    assert orthanc["profiles"] == ["pacs"]
    assert env_of(orthanc)["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    assert all(str(port).startswith("127.0.0.1:") for port in orthanc["ports"])


# --- HAProxy ---------------------------------------------------------------------------

def test_haproxy_balances_web_replicas_on_readyz():
    sections = haproxy_sections()
    defaults = sections["defaults"]
    assert "mode http" in defaults and "option forwardfor" in defaults
    timeouts = {line.split()[1]: seconds(line.split()[2])
                for line in defaults if line.startswith("timeout ")}
    assert timeouts["client"] >= 120 and timeouts["server"] >= 120  # 512 MiB uploads
    assert not any("http-buffer-request" in line for lines in sections.values()
                   for line in lines), "bodies stream to the app, which sets the limits"
    backend = sections["backend web"]
    assert "balance roundrobin" in backend
    assert "option httpchk GET /readyz" in backend
    (template,) = [line for line in backend if line.startswith("server-template ")]
    words = template.split()
    assert words[1:4] == ["web", str(compose()["services"]["web"]["deploy"]["replicas"]),
                          "web:8000"]
    assert "check" in words and words[words.index("resolvers") + 1] == "docker"
    assert words[words.index("init-addr") + 1] == "none"
    assert "nameserver dns 127.0.0.11:53" in sections["resolvers docker"]
    assert "bind :8080" in sections["frontend public"]
    assert any(line.startswith("bind :8443 ssl crt ") for line in sections["frontend public"])
    (stats_bind,) = [line for line in sections["frontend stats"] if line.startswith("bind")]
    assert stats_bind.split()[1].startswith("127.0.0.1:")
    assert "stats enable" in sections["frontend stats"]


needs_haproxy = [pytest.mark.services,
                 pytest.mark.skipif(shutil.which("haproxy") is None or shutil.which("openssl")
                                    is None, reason="haproxy or openssl is not installed")]


def local_haproxy_config(folder: Path) -> tuple[Path, Path, int, int]:
    """deploy/haproxy/haproxy.cfg as it is, but with a certificate made by the command it
    documents and loopback ports: (config, certificate, https port, http port)."""
    key, cert, site = folder / "key.pem", folder / "cert.pem", folder / "site.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    site.write_bytes(cert.read_bytes() + key.read_bytes())
    tls_port, http_port, stats_port = free_port(), free_port(), free_port()
    text = HAPROXY_CFG.read_text()
    for old, new in (("/usr/local/etc/haproxy/certs/site.pem", str(site)),
                     ("bind :8443", f"bind 127.0.0.1:{tls_port}"),
                     ("bind :8080", f"bind 127.0.0.1:{http_port}"),
                     ("]:8443%", f"]:{tls_port}%"),
                     ("bind 127.0.0.1:8404", f"bind 127.0.0.1:{stats_port}")):
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "haproxy.cfg"
    path.write_text(text)
    return path, cert, tls_port, http_port


class TestHaproxyRuns:
    pytestmark = needs_haproxy

    def test_it_accepts_the_configuration(self, tmp_path):
        path, *_ports = local_haproxy_config(tmp_path)
        result = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "[WARNING]" not in result.stdout + result.stderr

    def test_it_ends_tls_sends_plain_http_there_and_says_hsts(self, tmp_path):
        path, cert, tls_port, http_port = local_haproxy_config(tmp_path)
        process = subprocess.Popen(["haproxy", "-f", str(path), "-db"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            check_tls_front(process, cert, tls_port, http_port)
        finally:
            process.terminate()
            process.wait(10)


def first_answer(process, url: str, cert: Path):
    for _ in range(100):
        try:
            return requests.get(url, verify=str(cert), timeout=2)
        except requests.ConnectionError:
            assert process.poll() is None, "haproxy exited"
            time.sleep(0.1)
    raise AssertionError("haproxy never answered")


def check_tls_front(process, cert: Path, tls_port: int, http_port: int) -> None:
    answer = first_answer(process, f"https://localhost:{tls_port}/readyz", cert)
    # No replica here: HAProxy's own 503, over TLS, with HSTS all the same.
    assert answer.status_code == 503
    assert answer.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    plain = requests.get(f"http://127.0.0.1:{http_port}/studies/x?y=1",
                         allow_redirects=False, timeout=5)
    assert plain.status_code == 301
    assert plain.headers["Location"] == f"https://127.0.0.1:{tls_port}/studies/x?y=1"
    assert "Strict-Transport-Security" not in plain.headers


# --- Kubernetes ------------------------------------------------------------------------

def test_k8s_documents_are_named_and_namespace_free():
    documents = k8s_documents()
    assert documents
    for doc in [*documents, *load_all(SECRET_EXAMPLE)]:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]


def test_kustomization_lists_every_manifest_and_not_the_secret_example():
    (kustomization,) = load_all(K8S / "kustomization.yaml")
    resources = kustomization["resources"]
    for resource in resources:
        assert (K8S / resource).is_file(), resource
    assert SECRET_EXAMPLE.name not in resources
    expected = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml",
                                                             SECRET_EXAMPLE.name}
    assert set(resources) == expected
    assert not [doc for doc in k8s_documents() if doc["kind"] == "Secret"]


def test_deployments_select_their_own_pods():
    deployments = k8s_kind("Deployment")
    assert {doc["metadata"]["name"] for doc in deployments} == {"lungscan-web",
                                                               "lungscan-worker"}
    for doc in [*deployments, *k8s_kind("Job")]:
        labels = doc["spec"]["template"]["metadata"]["labels"]
        selector = doc["spec"].get("selector", {}).get("matchLabels", {})
        assert selector.items() <= labels.items(), doc["metadata"]["name"]
        if doc["kind"] == "Deployment":
            assert selector, doc["metadata"]["name"]
    web_pods = k8s_one("Deployment", "lungscan-web")["spec"]["template"]["metadata"]["labels"]
    worker_pods = k8s_one("Deployment", "lungscan-worker")["spec"]["selector"]["matchLabels"]
    assert not worker_pods.items() <= web_pods.items(), "the selectors do not overlap"


def test_web_probes_and_service_point_at_the_container_port():
    web = k8s_one("Deployment", "lungscan-web")
    assert web["spec"]["replicas"] == 3
    box = container(web)
    ports = {port.get("name"): port["containerPort"] for port in box["ports"]}

    def port_number(port):
        return ports[port] if isinstance(port, str) else port

    assert box["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert box["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert port_number(box[probe]["httpGet"]["port"]) == 8000
    service = k8s_one("Service", "lungscan-web")
    assert service["spec"]["selector"].items() <= web["spec"]["template"]["metadata"][
        "labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert port_number(service_port["targetPort"]) == 8000
    assert "command" not in box, "web runs the image's gunicorn CMD"


def test_worker_migrate_and_autoscaler():
    worker = k8s_one("Deployment", "lungscan-worker")
    assert container(worker)["command"] == WORKER_COMMAND
    hpa = k8s_one("HorizontalPodAutoscaler", "lungscan-worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1", "Deployment", worker["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] == 2 <= hpa["spec"]["maxReplicas"]
    assert worker["spec"].get("replicas", 2) == 2
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    job = k8s_one("Job", "lungscan-migrate")
    assert container(job)["command"] == MIGRATE_COMMAND
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")


def test_k8s_resources_threads_security_and_volumes():
    config_map = k8s_one("ConfigMap", "lungscan-config")
    assert config_map["data"]["FLASK_AUTO_MIGRATE"] == "false"
    (claim,) = k8s_kind("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    for doc in [*k8s_kind("Deployment"), *k8s_kind("Job")]:
        spec, box = pod_spec(doc), container(doc)
        name = doc["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        requests, limits = box["resources"]["requests"], box["resources"]["limits"]
        assert requests["cpu"] and requests["memory"] and limits["cpu"] and limits["memory"]
        refs = [(ref.get("configMapRef") or ref.get("secretRef"))["name"]
                for ref in box["envFrom"]]
        assert refs == ["lungscan-config", "lungscan-secrets"], name
        if doc["kind"] != "Deployment":
            continue
        assert requests["cpu"] == limits["cpu"], "threads are sized to exactly these cores"
        env = {item["name"]: item for item in box["env"]}
        threads = env["FLASK_INFERENCE_THREADS"]["valueFrom"]["resourceFieldRef"]
        assert (threads["resource"], threads["containerName"]) == ("limits.cpu", box["name"])
        assert env.get("WEB_CONCURRENCY", {"value": "1"})["value"] == "1"
        claims = {volume["name"]: volume["persistentVolumeClaim"]
                  for volume in spec["volumes"] if "persistentVolumeClaim" in volume}
        (models,) = [mount for mount in box["volumeMounts"]
                     if mount["mountPath"] == config_map["data"]["FLASK_MODEL_DIR"]]
        assert models["readOnly"] is True
        assert claims[models["name"]] == {"claimName": claim["metadata"]["name"],
                                          "readOnly": True}


def test_k8s_has_no_literal_secret_and_the_example_only_placeholders():
    secret_keys = set()
    for doc in k8s_documents():
        if doc["kind"] == "ConfigMap":
            assert not [key for key in doc["data"] if SECRET_NAME.search(key)
                        or URL_PASSWORD.match(str(doc["data"][key]))], doc["metadata"]["name"]
        if doc["kind"] in ("Deployment", "Job"):
            for item in container(doc).get("env", []):
                if SECRET_NAME.search(item["name"]):
                    assert "secretKeyRef" in item.get("valueFrom", {}), item["name"]
    (example,) = load_all(SECRET_EXAMPLE)
    assert example["kind"] == "Secret" and example["metadata"]["name"] == "lungscan-secrets"
    for key, value in example["stringData"].items():
        secret_keys.add(key)
        assert re.fullmatch(r"<[^<>]+>", value), f"{key} must be a <placeholder>"
    assert {"FLASK_SECRET_KEY", "FLASK_SQLALCHEMY_DATABASE_URI", "FLASK_BROKER_URL",
            "FLASK_RATELIMIT_STORAGE_URI"} <= secret_keys
    assert "EXAMPLE" in SECRET_EXAMPLE.read_text(encoding="utf-8").splitlines()[0]


def test_k8s_databases_are_external():
    names = {doc["metadata"]["name"]: doc for doc in k8s_kind("Service")}
    for name in ("lungscan-postgres", "lungscan-redis"):
        assert names[name]["spec"]["type"] == "ExternalName"
    assert not [doc for doc in k8s_kind("StatefulSet")], "use a managed service or operator"


# --- drift: the settings the manifests pass are settings the app reads ------------------

def deployment_setting_names() -> set[str]:
    names = set()
    for service in compose()["services"].values():
        names.update(env_of(service))
    for doc in k8s_documents():
        if doc["kind"] == "ConfigMap":
            names.update(doc["data"])
        if doc["kind"] in ("Deployment", "Job"):
            names.update(item["name"] for item in container(doc).get("env", []))
    (example,) = load_all(SECRET_EXAMPLE)
    names.update(example["stringData"])
    return names


def test_every_flask_setting_in_the_manifests_is_one_the_app_reads():
    names = deployment_setting_names()
    assert {"FLASK_SECRET_KEY", "FLASK_BROKER_URL", "FLASK_AUTO_MIGRATE",
            "FLASK_INFERENCE_THREADS"} <= names
    assert unknown_flask_settings(names, app_setting_names()) == []


def test_drift_check_catches_an_unknown_setting():
    known = app_setting_names()
    assert "SECRET_KEY" in known and "BROKER_URL" in known
    assert unknown_flask_settings({"FLASK_BROKER_URI", "FLASK_INSTANCE_PATH",
                                   "FLASK_BROKER_URL", "WEB_CONCURRENCY"}, known) \
        == ["FLASK_BROKER_URI"]


# --- the real tools, where present -----------------------------------------------------

def docker_compose_command() -> list[str] | None:
    """Compose v2 (the docker plugin) where installed, else Debian's docker-compose."""
    if shutil.which("docker") is not None:
        try:
            if subprocess.run(["docker", "compose", "version"], capture_output=True,
                              timeout=30).returncode == 0:
                return ["docker", "compose"]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.services
@pytest.mark.skipif(docker_compose_command() is None,
                    reason="neither docker compose nor docker-compose is installed here")
def test_docker_compose_accepts_the_file_and_demands_the_secrets(tmp_path):
    base = {key: value for key, value in os.environ.items()
            if not key.startswith("LUNGSCAN_")}
    empty_env_file = tmp_path / "empty.env"  # not deploy/.env, whatever it holds here
    empty_env_file.write_text("")
    command = [*docker_compose_command(), "--env-file", str(empty_env_file),
               "-f", str(COMPOSE_FILE), "config", "--quiet"]
    missing = subprocess.run(command, capture_output=True, text=True, timeout=60, env=base)
    assert missing.returncode != 0 and "LUNGSCAN_" in missing.stderr
    ok = subprocess.run(command, capture_output=True, text=True, timeout=60,
                        env={**base, "LUNGSCAN_SECRET_KEY": "x" * 48,
                             "LUNGSCAN_DB_PASSWORD": "y" * 24,
                             "LUNGSCAN_REDIS_PASSWORD": "z" * 24})
    assert ok.returncode == 0, ok.stderr


@pytest.mark.services  # CI fails instead of skipping it (tests/conftest.py)
@pytest.mark.skipif(shutil.which("kubectl") is None,
                    reason="kubectl is not installed here (1.21 or newer: the kustomize of "
                           "Debian's kubernetes-client 1.20 cannot read deploy/k8s)")
def test_kustomize_builds_the_manifests():
    result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted(doc["kind"] for doc in built) == sorted(doc["kind"]
                                                          for doc in k8s_documents())
    (kustomization,) = load_all(K8S / "kustomization.yaml")
    (image,) = kustomization["images"]
    expected = f"{image['newName']}:{image['newTag']}"
    for doc in built:
        if doc["kind"] in ("Deployment", "Job"):
            assert container(doc)["image"] == expected
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "lungscan"
