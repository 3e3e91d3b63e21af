"""Start-up cost: import the app, create it and render the first page, in a fresh process.

    python bench/startup.py [--repeat 5]

Prints the median of each step over fresh interpreters and whether TensorFlow was
imported (it must not be: it is imported on the first model load).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys, time
started = time.perf_counter()
import app
imported = time.perf_counter()
application = app.create_app({"TESTING": True, "SECRET_KEY": "bench-only", "MODEL_DIR": %r,
                              "SQLALCHEMY_DATABASE_URI": "sqlite:///%s/bench.sqlite3"})
created = time.perf_counter()
status = application.test_client().get("/").status_code
served = time.perf_counter()
print(json.dumps({"import_ms": (imported - started) * 1000,
                  "create_ms": (created - imported) * 1000,
                  "first_page_ms": (served - created) * 1000,
                  "total_ms": (served - started) * 1000, "status": status,
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="covid-bench-startup-")
    runs = []
    for _ in range(args.repeat):
        done = subprocess.run([sys.executable, "-c", PROBE % (folder, folder)], cwd=ROOT,
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    for key in ("import_ms", "create_ms", "first_page_ms", "total_ms"):
        print(f"{key:14} median {statistics.median(r[key] for r in runs):7.0f} ms")
    print(f"first page status {runs[0]['status']}, TensorFlow imported: "
          f"{any(r['tensorflow'] for r in runs)}")


if __name__ == "__main__":
    main()
