"""Workers that stall or die: leases, take-over, and `flask worker` killed mid-study."""

from __future__ import annotations

import io
import os
import signal
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from extensions import db
from studies import store
from studies.models import FAILED, QUEUED, RUNNING, Study, utcnow_naive
from studies.intake import StudyFile
from studies.ordering import order_files

from .conftest import testing_config
from .model_factory import scan_like_png
from .study_helpers import (image_fields, running_worker, start_worker, submit,
                            wait_for_study, worker_env)


@pytest.fixture
def db_app(tmp_path, tiny_model_dir, instance_path):
    from app import create_app

    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir)))
    with app.app_context():
        yield app


def new_study(count: int = 3) -> str:
    files = [StudyFile(f"{i}.png", scan_like_png(size=(32, 32), seed=i)) for i in range(count)]
    ordered, warnings = order_files(files)
    return store.create_study(store.new_study_id(), "ct", "vgg16", False, ordered, warnings)


def expire_lease(study_id: str) -> None:
    db.session.execute(update(Study).where(Study.id == study_id)
                       .values(claimed_until=utcnow_naive() - timedelta(seconds=1)))
    db.session.commit()


def test_a_held_study_cannot_be_claimed_twice(db_app):
    study_id = new_study()
    assert store.claim(study_id, lease_s=60) is not None
    assert store.claim(study_id, lease_s=60) is None


def test_a_worker_that_lost_its_lease_can_write_nothing(db_app):
    study_id = new_study()
    first = store.claim(study_id, lease_s=60)
    expire_lease(study_id)
    second = store.claim(study_id, lease_s=60)
    assert second not in (None, first)
    stale_answer = store.ImageOutcome(0, results=[{"architecture": "vgg16"}],
                                      covid_probability=0.9, positive=True)
    assert store.save_outcomes(study_id, first, 60, [stale_answer]) is False
    assert store.finish(study_id, first, {"label": "COVID"}) is False
    assert store.images_of(study_id)[0].status == "pending"
    assert store.file_bytes(study_id, [0]) != [None]  # the pixels wait for the new holder
    fresh = store.ImageOutcome(0, results=[{"architecture": "vgg16"}],
                               covid_probability=0.2, positive=False)
    assert store.save_outcomes(study_id, second, 60, [fresh]) is True
    image = store.images_of(study_id)[0]
    assert (image.status, image.covid_probability) == ("done", 0.2)
    assert store.file_bytes(study_id, [0]) == [None]
    # An answer is written once: the same image cannot be answered again.
    assert store.save_outcomes(study_id, second, 60, [stale_answer]) is True
    assert store.images_of(study_id)[0].covid_probability == 0.2


def test_housekeeping_requeues_dead_workers_and_fails_worn_out_studies(db_app):
    dead, worn, waiting, fresh = (new_study(1) for _ in range(4))
    store.claim(dead, 60)
    expire_lease(dead)
    for _ in range(3):
        store.claim(worn, 60)
        expire_lease(worn)
    db.session.execute(update(Study).where(Study.id == waiting)
                       .values(enqueued_at=utcnow_naive() - timedelta(hours=1)))
    db.session.commit()
    again = store.stale_studies(requeue_after_s=300, max_attempts=3)
    assert sorted(again) == sorted([dead, waiting])
    assert db.session.get(Study, worn).status == FAILED
    assert db.session.get(Study, worn).error_code == "worker_lost"
    assert db.session.get(Study, fresh).status == QUEUED
    assert store.stale_studies(requeue_after_s=300, max_attempts=3) == [dead]  # still dead


def wait_until(condition, deadline_s: float, what: str):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def test_a_killed_worker_loses_no_study(tmp_path, tiny_model_dir, instance_path):
    """SIGKILL `flask worker` mid-study: a second worker takes the study over once the
    lease runs out, keeps the answers already stored, and finishes it once."""
    from app import create_app

    database, broker = tmp_path / "studies.sqlite3", tmp_path / "queue.sqlite3"
    settings = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}",
                "BROKER_URL": f"sqlite:///{broker}", "STUDY_BATCH": 1,
                "STUDY_LEASE_S": 3, "WORKER_SWEEP_S": 1}
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir), **settings))
    env = worker_env(settings, tiny_model_dir, instance_path)
    client = app.test_client()
    images = [(f"{i}.png", scan_like_png(size=(96, 96), seed=i)) for i in range(200)]
    url = submit(client, modality="ct", model="vgg16",
                 images=image_fields(images)).get_json()["url"]

    first = start_worker(env, tmp_path / "worker1.log")
    try:
        view = wait_until(lambda: (v := client.get(url).get_json())["progress"]["done"] >= 3
                          and v, 120, "the first worker's progress")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    killed_at = client.get(url).get_json()
    assert killed_at["status"] == RUNNING
    assert 0 < killed_at["progress"]["done"] < 200, "kill the worker mid-study"
    answered = {i["index"]: i["results"] for i in killed_at["images"] if i["status"] == "done"}
    assert view["progress"]["done"] <= len(answered)

    with running_worker(env, tmp_path / "worker2.log"):
        final = wait_for_study(client, url, deadline_s=180)
    assert final["status"] == "done"
    assert final["progress"] == {"done": 200, "total": 200}
    assert all(image["status"] == "done" for image in final["images"])
    for image in final["images"]:  # nothing answered twice with different results
        if image["index"] in answered:
            assert image["results"] == answered[image["index"]]
    with app.app_context():
        assert db.session.get(Study, url.rsplit("/", 1)[1]).attempts == 2
    assert "queued again" in (tmp_path / "worker2.log").read_text()
    single = client.post("/api/v1/predict", data={"modality": "ct", "model": "vgg16", "image": (
        io.BytesIO(images[0][1]), "0.png")}).get_json()["results"][0]["covid_probability"]
    assert final["images"][0]["results"][0]["covid_probability"] == pytest.approx(single,
                                                                                   abs=1e-4)
