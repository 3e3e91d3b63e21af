"""ONNX Runtime's memory pattern at batch 8: peak memory and speed, on and off.

    python -m bench.onnx_memory [--arch vgg16] [--rounds 2]

Each setting runs in a fresh process (so VmHWM is its own) on the converted full-size
model that ``bench.studies`` prepares, a batch of 8 random 224 x 224 images, the
served session's options otherwise; rounds alternate the two settings. The pattern
pre-plans one block for every activation of a batch: for VGG at batch 8 that block is
what the study worker's peak memory is made of.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(path: str, pattern: bool) -> dict:
    """In this process: median seconds per batch of 8, and the peak RSS."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_pattern = pattern
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name:
            np.random.default_rng(0).random((8, 224, 224, 3), dtype=np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return {"pattern": pattern, "s_per_batch": statistics.median(times),
            "vmhwm_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1] == "on")))
        return
    from bench.studies import DEFAULT_MODEL_DIR, prepare_models

    info = prepare_models(Path(DEFAULT_MODEL_DIR), [args.arch])
    path = str(next(Path(DEFAULT_MODEL_DIR).rglob(info[args.arch]["onnx"])))
    runs = {"on": [], "off": []}
    for _ in range(args.rounds):
        for setting in ("off", "on"):
            out = subprocess.run([sys.executable, "-m", "bench.onnx_memory", "--child", path,
                                  setting], capture_output=True, text=True, check=True,
                                 cwd=ROOT).stdout
            runs[setting].append(json.loads(out.strip().splitlines()[-1]))
    for setting, results in runs.items():
        print(f"{args.arch} batch 8, memory pattern {setting:3}: "
              f"{statistics.median(r['s_per_batch'] for r in results):.2f} s/batch, "
              f"peak {statistics.median(r['vmhwm_mib'] for r in results):.0f} MiB "
              f"({len(results)} fresh processes)")


if __name__ == "__main__":
    main()
