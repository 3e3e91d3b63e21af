"""Audit trail and de-identification figures, measured here on this machine's CPU.

1. Audit rows per second the database sustains: ``--writers`` threads each record
   and commit events (``record_now``, as a study view does) for ``--seconds``, first
   alone, then while the app's embedded worker analyses a CT study (tiny real Keras
   models, built with ``weights=None``), on the app's SQLite database or on the
   ``--database`` URL given (PostgreSQL). Each writer's events are one transaction.
2. The cost of de-identification per image: ``minimum_dicom`` on 512x512 CT slices that
   carry patient, physician and institution attributes (median of ``--repeats``).
3. With ``--export``: how fast the trail reaches an Audit Record Repository, a real
   rsyslog with TLS on loopback (Debian's rsyslog and rsyslog-gnutls): ``--events``
   rows recorded, then sent by the outbox in batches of 200, DICOM audit messages in
   RFC 5425 frames; and the size of one message.

    python bench/audit.py [--postgres | --database postgresql+psycopg://...] [--seconds 5]
                          [--export [--events 2000]]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit import actions, trail  # noqa: E402
from audit.query import check_trail  # noqa: E402
from studies.deidentify import minimum_dicom  # noqa: E402
from tests.conftest import TINY_CARD, run_queued_jobs, testing_config  # noqa: E402
from tests.model_factory import install, tiny_model  # noqa: E402
from tests.study_helpers import ct_series, image_fields, submit  # noqa: E402
from tests.dicom_factory import hu_phantom, to_bytes  # noqa: E402
from tests.test_deidentify import identifying_slice  # noqa: E402


def rows_per_second(app, writers: int, seconds: float) -> float:
    counts = [0] * writers
    stop = time.monotonic() + seconds

    def write(n: int) -> None:
        actor = trail.Actor(n, f"bench-{n}", "reader", "token", "127.0.0.1")
        with app.app_context():
            while time.monotonic() < stop:
                trail.record_now(actions.STUDY_VIEWED, actor, study_id="benchmark-study",
                                 part="bench")
                counts[n] += 1

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


def audit_figures(args, folder: Path) -> None:
    from app import create_app

    models = folder / "models"
    install(tiny_model(seed=0), models, "vgg16", "ct", TINY_CARD)
    settings = dict(MODEL_DIR=str(models))
    if args.database:
        settings["SQLALCHEMY_DATABASE_URI"] = args.database
    app = create_app(testing_config(folder, **settings))
    alone = rows_per_second(app, args.writers, args.seconds)
    client = app.test_client()
    answer = submit(client, modality="ct", model="vgg16",
                    images=image_fields(ct_series(args.images, size=128)))
    spent = []

    def run_study() -> None:
        started = time.monotonic()
        run_queued_jobs(app)
        spent.append(time.monotonic() - started)

    study = threading.Thread(target=run_study)
    study.start()
    busy = rows_per_second(app, args.writers, args.seconds)
    study.join()
    done = client.get(answer.get_json()["url"]).get_json()
    with app.app_context():
        verdict = check_trail()
    database = "PostgreSQL" if args.database else "SQLite"
    print(f"audit rows per second on {database}, {args.writers} writers: "
          f"{alone:.0f} alone, {busy:.0f} while a {args.images}-image study ran "
          f"(study {done['status']}, {done['progress']['done']} images in {spent[0]:.1f} s "
          f"of the {args.seconds:.0f} s window); "
          f"chain intact over {verdict.checked} rows: {verdict.intact}")


def export_figures(folder: Path, events: int) -> None:
    from app import create_app
    from audit.outbox import backlog, deliver
    from extensions import db
    from settings import settings_of
    from tests.syslog_server import Rsyslog, body_of

    (folder / "export").mkdir()
    with Rsyslog(folder / "rsyslog") as repository:
        app = create_app(testing_config(folder / "export", AUDIT_SYSLOG_URL=repository.url,
                                        AUDIT_SYSLOG_CA_FILE=str(repository.cert)))
        actor = trail.Actor(3, "reader1", "reader", "token", "10.0.0.7")
        with app.app_context():
            for n in range(events):
                trail.record(actions.STUDY_VIEWED, actor, study_id=f"{n:032x}",
                             pacs_study_uid=f"1.2.826.0.1.3680043.8.498.{n}")
            db.session.commit()
            started = time.monotonic()
            sent = deliver(settings_of(app).audit, rounds=1_000_000)
            spent = time.monotonic() - started
            waiting = backlog().waiting
        received = repository.wait_for(events)
    sizes = sorted(len(body_of(line)[1]) for line in received)
    print(f"audit export to rsyslog over TLS: {sent} events in {spent:.2f} s = "
          f"{sent / spent:.0f} events/s ({len(received)} received, {waiting} waiting); "
          f"a message is {statistics.median(sizes)} bytes of XML (median)")


def deidentify_figures(repeats: int) -> None:
    big = []
    for n in range(1, 4):
        dataset = pydicom.dcmread(io.BytesIO(identifying_slice(n, "1.2.826.0.1.3680043.8.1",
                                                               "1.2.826.0.1.3680043.8.2")))
        dataset.set_pixel_data(np.rint(hu_phantom(512) + 1024).astype(np.int16),
                               "MONOCHROME2", 16)
        big.append(to_bytes(dataset))
    times = []
    for _ in range(repeats):
        for data in big:
            started = time.perf_counter()
            minimum_dicom(data)
            times.append((time.perf_counter() - started) * 1000)
    print(f"de-identification of a 512x512 CT slice ({len(big[0]) // 1024} KiB): median "
          f"{statistics.median(times):.2f} ms, p90 "
          f"{statistics.quantiles(times, n=10)[-1]:.2f} ms over {len(times)} runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", help="a PostgreSQL URL (default: SQLite)")
    parser.add_argument("--postgres", action="store_true",
                        help="start a throw-away PostgreSQL from Debian's and use it")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--export", action="store_true",
                        help="also time the export to a throw-away rsyslog over TLS")
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    deidentify_figures(args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        if args.export:
            export_figures(Path(folder), args.events)
        if args.postgres:
            from tests.postgres_server import postgres_server

            with postgres_server() as make_database:
                args.database = make_database()
                audit_figures(args, Path(folder))
        else:
            audit_figures(args, Path(folder))


if __name__ == "__main__":
    main()
