"""Studies end to end: throughput, worker memory and latency of a CT series job.

    python -m bench.studies [--arch vgg16 ...] [--quick] [--runs 2] [--json PATH]

Each architecture's full-size CT model (published shape, ``weights=None``) is built
once in a scratch folder (``--model-dir``) and converted with the app's
``convert_entry`` before anything is timed. A real gunicorn server (no embedded
worker) and a real ``flask worker`` process share a SQLite queue
(``FLASK_BROKER_URL=sqlite:///...``) and database; the worker, restarted for each
architecture, is the only process that runs studies.

Per architecture: a single model's footprint (a fresh process that loads the model
through ``InferenceService`` and answers one slice), then, interleaved, a bare session
of the runner ``INFERENCE_PRECISION=auto`` chose on this CPU at preparation (random
preprocessed batches of 8, the worker's threads) before and after every study. Each
study is a .zip of 512 x 512 DICOM CT slices sent to ``POST /api/v1/studies`` and
polled as the study page polls, ``GET /api/v1/studies/<id>?images=0`` (progress only;
every 50 ms until the first progress and during the last batch, every 0.5 s in
between: each GET runs on the same cores). The first 64-slice study of a worker is the cold one (it loads the model);
the warm ones give the figures. Reported per architecture and study size: images per
second from the first progress to done and from the POST to done, against the bare
session's batch-8 rate (the target: study >= 0.85 x bare); the worker's peak
memory (VmHWM, and RSS sampled every 0.2 s) against 1.5 x the single-model footprint
+ 200 MB; the 64-slice study's time from the 202 answer to running and to the first
progress; and the one-time costs (worker start, model load). The machine may be
shared: figures are medians of runs measured in the same minutes, each study and bare
block also records the cores every other process used meanwhile (``/proc/stat``), and
a CPU-time ratio (bare CPU seconds per image / the worker's CPU seconds per image over
the whole study) compares the work done, whatever share of the cores others took.

``--quick``: ResNet50 only, 64 slices only (a cold and two warm studies), a few
minutes. Raw figures go to ``test-artifacts/bench-studies.json`` unless ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import requests  # noqa: E402

from bench.study_worker import CpuShare, Worker, proc_status_mb  # noqa: E402
from bench.study_workload import ct_series_zip, delete, follow, submit, view_ms  # noqa: E402

ARCHES = ("vgg16", "vgg19", "inceptionv3", "resnet50")
DEFAULT_MODEL_DIR = str(Path(tempfile.gettempdir()) / "lungscan-bench-models")
DEFAULT_JSON = ROOT / "test-artifacts" / "bench-studies.json"
TARGET_RATIO = 0.85  # a study against the chosen runner's own batch-8 rate
MEMORY_FACTOR, MEMORY_SLACK_MB = 1.5, 200


def ct_entry(folder: str, arch: str):
    from inference.registry import discover

    return next(e for e in discover(folder) if e.key == ("ct", arch))


def prepare_models(folder: Path, arches) -> dict:
    """Each full-size CT model saved once and converted (the app's converter)."""
    from inference.candidates import measure, read_choice
    from inference.precision import PRECISION_TOLERANCE
    from inference.preparation import convert_entry
    from tests.model_factory import full_size_model, install

    info = {}
    for arch in arches:
        if ct_entry(folder, arch).path is None:
            install(full_size_model(arch), folder, arch, "ct")
        started = time.perf_counter()
        path, report, converted = convert_entry(ct_entry(folder, arch))
        choice = (read_choice(path, PRECISION_TOLERANCE)
                  or measure(path, ct_entry(folder, arch).card))  # as preparation does
        info[arch] = {"onnx": path.name, "converted_now": converted,
                      "served_by": choice["chosen"],
                      "prepare_s": round(time.perf_counter() - started, 1),
                      "check_keras_ms": report.keras_ms, "check_onnx_ms": report.onnx_ms}
    return info


def footprint(folder: str, arch: str) -> dict:
    """This process's memory after loading one model as the service does and
    answering one 512 x 512 CT slice with it; then after batches of 8 through the
    same model (what a study's batches add: the runtime's buffers for 8 images)."""
    from bench.study_workload import ct_slice
    from inference.runtime import resident_memory_mb
    from inference.service import InferenceService
    from tests.dicom_factory import hu_phantom

    start = resident_memory_mb()
    service = InferenceService(folder, precision="auto")
    loaded = service.load(ct_entry(folder, arch))
    service.analyse(ct_slice(hu_phantom(512), 1, "1.2.3", "1.2.3.4"), "ct", arch)
    status = proc_status_mb(os.getpid())
    for _ in range(2):  # the second run of a shape allocates its planned memory block
        loaded.run_batch(np.zeros((8, *loaded.card.input_size, 3), dtype=np.float32))
    return {"rss_mb": status["VmRSS"], "hwm_mb": status["VmHWM"], "start_mb": start,
            "batch8_rss_mb": proc_status_mb(os.getpid())["VmRSS"],
            "backend": loaded.backend_name}


def in_fresh_process(args, *worker_args: str) -> dict:
    """A step in a child process (building and converting import TensorFlow, and a
    footprint must be a process's own)."""
    command = [sys.executable, "-m", "bench.studies", "--model-dir", args.model_dir,
               *worker_args]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{' '.join(worker_args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bare_session(folder: str, arch: str):
    """(call, threads): one batch of 8 random preprocessed images through a bare
    session of the runner this CPU's measurement chose (what the worker serves with
    ``INFERENCE_PRECISION=auto``), with the intra-op threads the worker gets."""
    from inference.candidates import chosen_candidate, read_choice
    from inference.conversion import file_sha256, find_verified_onnx
    from inference.precision import PRECISION_TOLERANCE
    from inference.runtime import intra_op_threads

    entry = ct_entry(folder, arch)
    path = find_verified_onnx(entry.path, file_sha256(entry.path))
    runner = chosen_candidate(path, read_choice(path, PRECISION_TOLERANCE)).open()
    batch = np.random.default_rng(0).random((8, *entry.card.input_size, 3), dtype=np.float32)
    runner.run(batch)
    return (lambda: runner.run(batch)), intra_op_threads()


def bare_rate(call, batches: int) -> dict:
    """Images per second of the bare session (8 / the median batch time), and the
    cores the rest of the machine used meanwhile."""
    times, cpu = [], CpuShare({"client": os.getpid()})
    for _ in range(batches):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    cores = cpu.cores()
    return {"img_s": 8 / statistics.median(times), "other_cores": cores["other_cores"],
            "cpu_s_per_img": cores["client_cpu_s"] / (8 * batches)}


def run_study(server, archive: bytes, arch: str, total: int, worker: Worker) -> dict:
    """One study through the API and the worker: its timeline, the worker's memory and
    the cores each process used meanwhile."""
    url, (web,) = server.url, server.worker_pids()
    cpu = CpuShare({"worker": worker.process.pid, "server": web, "client": os.getpid()})
    timeline = follow(url, submit(url, archive, arch, total))
    cores = cpu.cores()
    if timeline.status != "done":
        raise RuntimeError(f"{arch} study of {total} ended {timeline.status}: "
                           f"{timeline.error}")
    result = timeline.to_json()
    curve = worker.sampler.between(timeline.posted, timeline.finished)
    result.update(cpu=cores, cpu_s_per_img=cores["worker_cpu_s"] / total,
                  peak_rss_mb=max((rss for _, rss in curve), default=None),
                  hwm_mb=worker.memory()["VmHWM"],
                  rss_curve=[(round(t - timeline.posted, 2), round(rss, 1))
                             for t, rss in curve])
    if total >= 300:
        result["view_ms"] = view_ms(url, timeline.study_id)
    delete(url, timeline.study_id)
    return result


def schedule(args) -> list[tuple[int, str]]:
    """(slices, kind) in order: a cold 64-slice study, then the warm runs per size."""
    plan = [(64, "cold")]
    for size in args.sizes:
        plan += [(size, "warm")] * args.runs
    return plan


def measure_arch(args, server, archives: dict, arch: str) -> dict:
    """Footprint, then a fresh worker: bare, study, bare, study ... bare."""
    single = in_fresh_process(args, "--footprint", arch)
    call, threads = bare_session(args.model_dir, arch)
    worker = Worker(worker_env(server), Path(server.instance.parent) / f"worker-{arch}.log")
    worker.start()
    idle = worker.memory()
    bare, studies = [bare_rate(call, args.bare_batches)], []
    try:
        for size, kind in schedule(args):
            studies.append(dict(run_study(server, archives[size], arch, size, worker),
                                slices=size, kind=kind, bare_before=bare[-1]["img_s"],
                                bare_cpu_before=bare[-1]["cpu_s_per_img"]))
            bare.append(bare_rate(call, args.bare_batches))
            studies[-1].update(bare_after=bare[-1]["img_s"],
                               bare_cpu_after=bare[-1]["cpu_s_per_img"])
            print(progress_line(arch, studies[-1]), flush=True)
    finally:
        worker.stop()
    return {"arch": arch, "single": single, "bare_threads": threads, "bare_rates": bare,
            "studies": studies, "worker_start_s": worker.ready - worker.started,
            "worker_idle_mb": idle["VmRSS"], "worker_loads": worker.loads(),
            "served_by": served_preparation(server.url, arch)}


def worker_env(server) -> dict:
    env = {k: v for k, v in server.env.items() if k != "WEB_CONCURRENCY"}
    env.pop("FLASK_INFERENCE_THREADS", None)  # as a deployed worker: its own cores
    return env


def served_preparation(url: str, arch: str) -> str | None:
    models = requests.get(url + "/api/v1/models", timeout=60).json()["models"]
    return next(m["preparation"] for m in models if (m["modality"], m["architecture"])
                == ("ct", arch))


def progress_line(arch: str, study: dict) -> str:
    rates, cpu = study["rates"], study["cpu"]
    return (f"{arch:12} {study['slices']:4d} slices {study['kind']:5}  "
            f"{rates['first_progress_to_done']:6.2f} img/s (first progress->done)  "
            f"{rates['submission_to_done']:6.2f} img/s (POST->done)  bare "
            f"{study['bare_before']:6.2f}/{study['bare_after']:6.2f}  peak RSS "
            f"{study['peak_rss_mb']:.0f} MiB  polls {study['polls']}  cores: worker "
            f"{cpu['worker_cores']:.2f} server {cpu['server_cores']:.2f} client "
            f"{cpu['client_cores']:.2f} others {cpu['other_cores']:.2f}  CPU s/img study "
            f"{study['cpu_s_per_img']:.3f} bare {study['bare_cpu_before']:.3f}/"
            f"{study['bare_cpu_after']:.3f}")


def summary_row(result: dict, size: int) -> dict | None:
    """One table row: warm runs of one size, against the bare blocks around them."""
    runs = [s for s in result["studies"] if s["slices"] == size and s["kind"] == "warm"]
    if not runs:
        return None
    study = statistics.median(s["rates"]["first_progress_to_done"] for s in runs)
    posted = statistics.median(s["rates"]["submission_to_done"] for s in runs)
    bare = statistics.median([r for s in runs for r in (s["bare_before"], s["bare_after"])])
    ratio = statistics.median(s["rates"]["first_progress_to_done"]
                              / statistics.median((s["bare_before"], s["bare_after"]))
                              for s in runs)
    cpu_ratio = statistics.median(
        statistics.median((s["bare_cpu_before"], s["bare_cpu_after"])) / s["cpu_s_per_img"]
        for s in runs)
    single = result["single"]["rss_mb"]
    peak = max(s["hwm_mb"] for s in runs)
    limit = MEMORY_FACTOR * single + MEMORY_SLACK_MB
    return {"arch": result["arch"], "slices": size, "runs": len(runs), "study_img_s": study,
            "submission_img_s": posted, "bare_img_s": bare, "ratio": ratio,
            "cpu_ratio": cpu_ratio,
            "submission_ratio": posted / bare,
            "sampled_peak_mb": max(s["peak_rss_mb"] for s in runs), "hwm_mb": peak,
            "single_mb": single, "memory_limit_mb": limit, "memory_ok": peak < limit,
            "worker_cores": statistics.median(s["cpu"]["worker_cores"] for s in runs),
            "other_cores": statistics.median(s["cpu"]["other_cores"] for s in runs)}


def print_table(rows: list[dict]) -> None:
    print("\n| architecture | study size | study img/s (first progress→done) | "
          "submission→done img/s | bare batch-8 img/s (chosen runner) | ratio (target ≥ 0.85) | "
          "submission→done / bare | peak worker RSS (VmHWM; sampled) | single-model RSS | "
          "1.5x+200 MB target met? | worker / other processes' cores | CPU-time ratio "
          "(bare CPU-s/img ÷ study CPU-s/img) |")
    print("|" + " --- |" * 12)
    for r in rows:
        print(f"| {r['arch']} | {r['slices']} | {r['study_img_s']:.2f} | "
              f"{r['submission_img_s']:.2f} | {r['bare_img_s']:.2f} | {r['ratio']:.2f} "
              f"{'✓' if r['ratio'] >= TARGET_RATIO else '✗'} | {r['submission_ratio']:.2f} | "
              f"{r['hwm_mb']:.0f} MiB; {r['sampled_peak_mb']:.0f} MiB | "
              f"{r['single_mb']:.0f} MiB | {'yes' if r['memory_ok'] else 'no'} "
              f"(limit {r['memory_limit_mb']:.0f} MiB) | {r['worker_cores']:.2f} / "
              f"{r['other_cores']:.2f} | {r['cpu_ratio']:.2f} |")


def latency_figures(result: dict) -> dict:
    """The 64-slice study's latencies: the cold one, and the median of the warm ones."""
    figures = {}
    for kind in ("cold", "warm"):
        runs = [s["latencies"] for s in result["studies"]
                if s["slices"] == 64 and s["kind"] == kind]
        if runs:
            figures[kind] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return figures


def print_latencies(results: list[dict]) -> None:
    print("\n64-slice study, seconds from the 202 answer (polled every 50 ms; warm = "
          "median of warm runs):\n")
    print("| architecture | run | POST→202 (upload, intake) | 202→running | "
          "202→first progress | running→first progress |")
    print("|" + " --- |" * 6)
    for result in results:
        for kind, f in latency_figures(result).items():
            print(f"| {result['arch']} | {kind} | {f['upload_to_202_s']:.2f} | "
                  f"{f['accepted_to_running_s']:.2f} | "
                  f"{f['accepted_to_first_progress_s']:.2f} | "
                  f"{f['running_to_first_progress_s']:.2f} |")


def one_time_costs(result: dict) -> dict:
    figures = latency_figures(result)
    load = next(iter(result["worker_loads"]), {})
    extra = (figures["cold"]["running_to_first_progress_s"]
             - figures["warm"]["running_to_first_progress_s"]) if "warm" in figures else None
    return {"worker_start_s": result["worker_start_s"], "worker_idle_mb": result["worker_idle_mb"],
            "model_load_ms": load.get("load_ms"), "model_load_mib": load.get("load_mib"),
            "backend": load.get("backend"), "cold_first_batch_extra_s": extra}


def print_one_time(results: list[dict]) -> None:
    print("\nOne-time costs per worker (restarted per architecture):\n")
    print("| architecture | worker start → taking jobs s | worker idle RSS | model load at "
          "first study (worker log) | served by | cold - warm (running→first progress) s "
          "| preparation |")
    print("|" + " --- |" * 7)
    for result in results:
        c = one_time_costs(result)
        extra = c["cold_first_batch_extra_s"]
        print(f"| {result['arch']} | {c['worker_start_s']:.1f} | {c['worker_idle_mb']:.0f} MiB | "
              f"{c['model_load_ms']} ms (+{c['model_load_mib']} MiB) | {c['backend']} | "
              f"{'-' if extra is None else f'{extra:.2f}'} | {result['served_by']} |")


def print_memory(results: list[dict]) -> None:
    print("\nSingle-model footprint (fresh process: InferenceService.load + one slice) and "
          "worker memory:\n")
    for result in results:
        single, peaks = result["single"], [s["peak_rss_mb"] for s in result["studies"]]
        print(f"{result['arch']:12} single model: RSS {single['rss_mb']:.0f} MiB (VmHWM "
              f"{single['hwm_mb']:.0f}, {single['backend']}), after batches of 8 "
              f"{single['batch8_rss_mb']:.0f} MiB; worker idle "
              f"{result['worker_idle_mb']:.0f} MiB, sampled peaks per study "
              f"{', '.join(f'{p:.0f}' for p in peaks)} MiB")


def start_services(root: Path, model_dir: str):
    from tests.server import start_server

    broker = f"sqlite:///{root / 'queue.sqlite3'}"
    return start_server(root, Path(model_dir), workers=1, startup_timeout=180, env={
        "FLASK_BROKER_URL": broker, "FLASK_EMBEDDED_WORKER": "false",
        "FLASK_PREPARE_MODELS": "false"})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=ARCHES)
    parser.add_argument("--quick", action="store_true", help="resnet50, 64 slices, 2 runs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 300])
    parser.add_argument("--runs", type=int, default=3, help="warm studies per size")
    parser.add_argument("--bare-batches", type=int, default=4,
                        help="bare batches of 8 timed before and after each study")
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    parser.add_argument("--profile", action="store_true",
                        help="instead: time the runner's steps in process (study_profile)")
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--footprint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.sizes, args.runs = args.arch or ["resnet50"], [64], 2
    args.arch = args.arch or list(ARCHES)
    return args


def child_step(args) -> bool:
    """The steps run in a fresh process: print one JSON line."""
    if args.prepare:
        print(json.dumps(prepare_models(Path(args.model_dir), args.arch)))
    elif args.footprint:
        print(json.dumps(footprint(args.model_dir, args.footprint)))
    else:
        return False
    return True


def main(argv=None) -> None:
    args = parse_args(argv)
    if child_step(args):
        return
    # Stopped by a signal (even started in the background), the server and worker stop too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    began = time.monotonic()
    Path(args.model_dir).mkdir(parents=True, exist_ok=True)
    print(f"models in {args.model_dir}: building and converting what is missing", flush=True)
    prepared = in_fresh_process(args, "--prepare", *(f"--arch={a}" for a in args.arch))
    print(json.dumps(prepared), flush=True)
    archives = {size: ct_series_zip(size, seed=size) for size in {64, *args.sizes}}
    print("study archives: " + ", ".join(f"{size} slices {len(data) / 2**20:.0f} MiB zipped"
                                         for size, data in sorted(archives.items())), flush=True)
    if args.profile:
        from bench.study_profile import run_profiles

        run_profiles(args.model_dir, args.arch, args.sizes, archives)
        return
    root = Path(tempfile.mkdtemp(prefix="lungscan-bench-studies-"))
    server = start_services(root, args.model_dir)
    try:
        results = [measure_arch(args, server, archives, arch) for arch in args.arch]
    finally:
        server.stop()
    shutil.rmtree(root, ignore_errors=True)  # kept after a failure: logs and database
    report(args, results, prepared, time.monotonic() - began)


def report(args, results: list[dict], prepared: dict, elapsed: float) -> None:
    rows = [row for result in results for size in args.sizes
            if (row := summary_row(result, size))]
    print_table(rows)
    print_latencies(results)
    print_one_time(results)
    print_memory(results)
    print(f"\n{len(os.sched_getaffinity(0))} cores; bare sessions: intra-op threads "
          f"{sorted({r['bare_threads'] for r in results})}; total {elapsed / 60:.1f} min")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "results": results,
                                           "prepared": prepared, "elapsed_s": elapsed},
                                          indent=1))
    print(f"raw figures: {args.json}")


if __name__ == "__main__":
    main()
