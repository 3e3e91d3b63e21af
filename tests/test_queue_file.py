"""The embedded queue's SQLite file, created by several processes starting at once.

gunicorn starts its workers together and each builds the queue; on a new file each
would switch it to WAL, which SQLite grants to one and refuses to the others while it
happens ("database is locked"), and the refused worker failed to boot.
"""

from __future__ import annotations

import multiprocessing
import sqlite3

from jobs.queue import make_huey

PROCESSES, ROUNDS = 4, 20  # without the lock about 1 start in 25 failed here


def build_queue(instance: str, barrier, results) -> None:
    barrier.wait()
    try:
        make_huey(None, instance).pending_count()  # built, then read as a worker would
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


def start_together(instance: str) -> list[str]:
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=build_queue, args=(instance, barrier, results))
                 for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(60)
    return outcomes


def test_processes_starting_at_once_all_get_the_queue(tmp_path):
    failures = []
    for number in range(ROUNDS):
        instance = tmp_path / f"round{number}"
        instance.mkdir()
        failures += [o for o in start_together(str(instance)) if o != "ok"]
        with sqlite3.connect(instance / "queue.sqlite3") as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert failures == []
