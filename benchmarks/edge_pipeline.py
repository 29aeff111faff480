"""Edge pipeline cost and footprint: per-sample latency and peak RSS of `edge_client run`.

Run: ``.venv/bin/python benchmarks/edge_pipeline.py [--samples 5000]``. It starts and stops all
it measures and needs no server. Three figures, each with its target:

(a) the pipeline without the extractor (``process_features``: fused scaler transform, KNN over a
    200 x 256 reference set, all six label-free monitors), per sample; compared, in the same
    run and on the same data, with a pure-Python brute-force KNN like the original TinyLCM's
    (lists, math.sqrt, sorted). Target: p50 and mean under 200 us.
(b) the whole pipeline including the shipped TFLite model (``process(image)``), per sample.
(c) peak RSS (VmHWM) of ``python -m edge_client run --source simulate:brightness --limit N``,
    offline: its server_url is a closed loopback port, so sync only backs off. Target: < 60 MB.

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_client import datagen  # noqa: E402
from edge_client.extractors import TFLiteExtractor, image_statistics  # noqa: E402
from edge_client.knn import KNN  # noqa: E402
from edge_client.pipeline import SIGNALS, InferencePipeline, bootstrap, monitors_from_config  # noqa: E402
from edge_client.transforms import FeatureTransform, StandardScaler  # noqa: E402

REFERENCE_SIZE, DIM, N_CLASSES, K = 200, 256, 10, 5
TARGET_US = 200.0
TARGET_RSS_MB = 60.0


# --- timing helpers -----------------------------------------------------------------------------


def summary_us(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    pick = lambda q: ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]  # noqa: E731
    return {
        "n": len(ordered),
        "mean_us": round(1e6 * sum(ordered) / len(ordered), 2),
        "p50_us": round(1e6 * pick(0.50), 2),
        "p95_us": round(1e6 * pick(0.95), 2),
    }


def timed(function, inputs) -> list[float]:
    costs = []
    for item in inputs:
        started = time.perf_counter()
        function(item)
        costs.append(time.perf_counter() - started)
    return costs


# --- (a) without the extractor ------------------------------------------------------------------


def vector_data(samples: int, seed: int = 0):
    """Reference (200 x 256, 10 classes) and a query stream drawn from the same clusters."""
    stream = datagen.vector_stream(REFERENCE_SIZE + samples, dim=DIM, n_classes=N_CLASSES, seed=seed)
    x, y, _ = datagen.collect(stream)
    return x[:REFERENCE_SIZE], y[:REFERENCE_SIZE], x[REFERENCE_SIZE:]


def image_stats(samples: int) -> list[dict]:
    images, _, _ = datagen.collect(datagen.image_stream(samples, seed=1))
    return [image_statistics(image) for image in images]


def all_monitors_pipeline(reference_x, reference_y) -> InferencePipeline:
    transform = FeatureTransform([StandardScaler.fit(reference_x)])
    knn = KNN(k=K, max_size=REFERENCE_SIZE).fit(transform.transform(reference_x), reference_y)
    monitors, statistics = monitors_from_config({name: {} for name in SIGNALS}, n_classes=N_CLASSES)
    return InferencePipeline(None, transform, knn, monitors, image_statistic=statistics)


def pure_python_knn(reference_x, reference_y):
    """The original's classifier: Python lists, a distance per reference, sorted, majority vote."""
    references = [(list(map(float, row)), int(label)) for row, label in zip(reference_x, reference_y, strict=True)]

    def predict(query):
        query = list(map(float, query))
        distances = [
            (math.sqrt(sum((a - b) ** 2 for a, b in zip(query, row, strict=True))), label) for row, label in references
        ]
        nearest = sorted(distances, key=lambda pair: pair[0])[:K]
        votes = {}
        for _, label in nearest:
            votes[label] = votes.get(label, 0) + 1
        return max(votes, key=votes.get)

    return predict


def measure_without_extractor(samples: int) -> dict:
    reference_x, reference_y, queries = vector_data(samples)
    stats = image_stats(samples)
    pipeline = all_monitors_pipeline(reference_x, reference_y)
    for query, statistic in zip(queries[:200], stats[:200], strict=True):  # warm-up
        pipeline.process_features(query, statistics=statistic)
    pairs = list(zip(queries, stats, strict=True))
    ours = timed(lambda pair: pipeline.process_features(pair[0], statistics=pair[1]), pairs)
    knn_only = timed(pipeline.knn.predict, pipeline.transform.transform(queries))
    baseline = timed(pure_python_knn(reference_x, reference_y), queries[: min(samples, 500)])
    return {
        "pipeline_without_extractor": summary_us(ours),
        "numpy_knn_only": summary_us(knn_only),
        "pure_python_knn": summary_us(baseline),
        "monitors": sorted(pipeline.monitors),
    }


# --- (b) with the shipped model -----------------------------------------------------------------


def measure_with_model(samples: int) -> dict:
    extractor = TFLiteExtractor.shipped()
    transform, knn = bootstrap(extractor)
    monitors, statistics = monitors_from_config({name: {} for name in SIGNALS}, n_classes=knn.n_classes)
    pipeline = InferencePipeline(extractor, transform, knn, monitors, image_statistic=statistics)
    images, _, _ = datagen.collect(datagen.image_stream(samples, seed=2))
    for image in images[:100]:
        pipeline.process(image)
    return {
        "pipeline_with_model": summary_us(timed(pipeline.process, images)),
        "extractor_only": summary_us(timed(extractor.extract, images)),
        "backend": extractor.backend,
        "reference": list(knn.reference[0].shape),
    }


# --- (c) peak RSS of `edge_client run` ----------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_device(root: Path) -> Path:
    """A config whose server is a closed port, with a token, so sync tries, fails and backs off."""
    data = root / "data"
    data.mkdir(parents=True)
    token = data / "token"
    token.write_text("benchmark-token\n")
    token.chmod(0o600)
    config = root / "sphere-edge.json"
    config.write_text(json.dumps({"server_url": f"http://127.0.0.1:{closed_port()}"}))
    return config


def poll_peak(launcher: subprocess.Popen) -> int:
    """Highest VmHWM seen of the launcher's child (the `run` process), polled every 10 ms."""
    peak_kb = 0
    while launcher.poll() is None:
        for child in _children(launcher.pid):
            peak_kb = max(peak_kb, vm_hwm_kb(child) or 0)
        time.sleep(0.01)
    return peak_kb


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def vm_hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# A small launcher reports its child's ru_maxrss: measured from this (large) process instead,
# rusage would count the pre-exec copy of the benchmark itself made by fork.
LAUNCHER = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


def measure_runs(limit: int) -> dict:
    """The default (adaptive) run, the same with one sample (start-up alone), and monitors only."""
    return {
        "adaptive": measure_run_rss(limit),
        "adaptive_one_sample": measure_run_rss(1),
        "inference_only": measure_run_rss(limit, "inference"),
    }


def measure_run_rss(limit: int, pipeline: str = "adaptive") -> dict:
    with tempfile.TemporaryDirectory() as folder:
        config = offline_device(Path(folder))
        command = [
            sys.executable,
            "-m",
            "edge_client",
            "run",
            "--config",
            str(config),
            "--source",
            "simulate:brightness",
            "--limit",
            str(limit),
            "--rate",
            "0",
            "--pipeline",
            pipeline,
        ]
        started = time.perf_counter()
        launched = [sys.executable, "-c", LAUNCHER, *command]
        process = subprocess.Popen(launched, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak_kb = poll_peak(process)
        stdout, stderr = process.communicate()
        elapsed = time.perf_counter() - started
    children_kb = int(stderr.rsplit("MAXRSS_KB", 1)[-1].split()[0]) if "MAXRSS_KB" in stderr else 0
    return {
        "limit": limit,
        "pipeline": pipeline,
        "exit_code": process.returncode,
        "peak_rss_mb_polled": round(peak_kb / 1024, 1),
        "peak_rss_mb_rusage": round(children_kb / 1024, 1),
        "wall_s": round(elapsed, 2),
        "output": stdout.strip().splitlines()[-1:] or stderr.strip().splitlines()[-3:],
    }


# --- report -------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(a: dict, b: dict, runs: dict) -> dict:
    c = runs["adaptive"]
    ours, knn_only, baseline = a["pipeline_without_extractor"], a["numpy_knn_only"], a["pure_python_knn"]
    speedup = baseline["mean_us"] / ours["mean_us"]
    rss = max(c["peak_rss_mb_polled"], c["peak_rss_mb_rusage"])
    checks = {
        "pipeline_without_extractor_under_200us": ours["mean_us"] < TARGET_US and ours["p50_us"] < TARGET_US,
        "run_peak_rss_under_60mb": rss < TARGET_RSS_MB and c["exit_code"] == 0,
    }
    print(
        f"(a) without the extractor, {ours['n']} samples, reference {REFERENCE_SIZE} x {DIM}, monitors: "
        f"{', '.join(a['monitors'])}"
    )
    print(f"    pipeline (transform + KNN + monitors): {_line(ours)}")
    print(f"    numpy KNN alone:                       {_line(knn_only)}")
    print(f"    pure-Python KNN (TinyLCM-style):       {_line(baseline)}  ({baseline['n']} samples)")
    print(f"    whole pipeline vs pure-Python KNN alone: {speedup:.0f}x faster")
    print(f"    target mean and p50 < {TARGET_US:.0f} us: {verdict(checks['pipeline_without_extractor_under_200us'])}")
    print(f"(b) with the shipped TFLite model ({b['backend']}), reference {b['reference']}")
    print(f"    pipeline.process(image): {_line(b['pipeline_with_model'])}")
    print(f"    extractor alone:          {_line(b['extractor_only'])}")
    print(
        f"(c) `edge_client run --source simulate:brightness --limit {c['limit']}` offline: exit {c['exit_code']}, "
        f"{c['wall_s']} s; peak RSS {c['peak_rss_mb_polled']} MB (VmHWM polled), "
        f"{c['peak_rss_mb_rusage']} MB (rusage)"
    )
    print(f"    {c['output']}")
    for name in ("adaptive_one_sample", "inference_only"):
        other = runs[name]
        print(
            f"    for comparison, --pipeline {other['pipeline']} --limit {other['limit']}: "
            f"peak RSS {other['peak_rss_mb_polled']} MB (VmHWM), {other['peak_rss_mb_rusage']} MB (rusage)"
        )
    print(f"    target < {TARGET_RSS_MB:.0f} MB: {verdict(checks['run_peak_rss_under_60mb'])}")
    return {"speedup_vs_pure_python": round(speedup, 1), "checks": checks}


def _line(figures: dict) -> str:
    return f"mean {figures['mean_us']:9.1f} us  p50 {figures['p50_us']:9.1f} us  p95 {figures['p95_us']:9.1f} us"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--run-limit", type=int, default=2000)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, {os.cpu_count()} CPUs")
    a, b, c = measure_without_extractor(args.samples), measure_with_model(args.samples), measure_runs(args.run_limit)
    verdicts = report(a, b, c)
    print(json.dumps({"benchmark": "edge_pipeline", **a, **b, "runs": c, **verdicts}))
    return 0 if all(verdicts["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
