"""Sphere's per-feature drift tests side by side with Evidently's data drift preset on the same data.

Run: ``.venv/bin/python benchmarks/drift_report.py`` (Evidently is a benchmark-only dependency in its
own venv, see requirements/evidently-bench.txt; ``--evidently-python`` points at it). For each size
(10k, 100k, 1M rows in both reference and current, × 20 and 100 features) it writes seeded synthetic
columns once as one ``.npy`` file per column and window, then runs, each in a fresh child process:

- ``sphere-exact``: every column loaded whole, ``drift.stats.compare_frames`` (automatic test choice);
- ``sphere-sketch``: each column read in chunks (``--chunk-rows``) from ``np.load(mmap_mode="r")`` and
  folded into one ``drift/stats/sketch.py`` ColumnSketch per window (per-value counts while a numeric
  column has at most 20 distinct values, past that a NumericSketch on 1000 bins over the reference's
  range, so a many-valued reference is read twice), then ``compare_sketches``, which chooses kind and
  test by exact mode's rule; one column is mapped at a time, so the table is never whole in memory;
- ``evidently``: the same files into two pandas frames, ``Report([DataDriftPreset()]).run(current,
  reference)`` with default settings (``include_tests=True`` only exposes Evidently's per-column
  verdict); per column the method, score and verdict are read from the snapshot.

Time is the compute only (``compute_s``; loading the files is ``load_s``, the sketch mode reads while
it folds so its compute includes reading); peak memory is the child's peak RSS from ``os.wait4``
(interpreter and imports included; ``base_mb`` is the RSS after imports). Per column the chosen test
and the drift decision of each Sphere mode are compared with Evidently's, and sketch mode's with exact
mode's. Targets: Evidently compute / Sphere exact compute >= 25 at 100k rows, and the bounded-memory
(sketch) 1M x 100 report under 30 s. Evidently is skipped at 1M rows unless ``--full``. The last line
is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES_ROWS = (10_000, 100_000, 1_000_000)
SIZES_FEATURES = (20, 100)
SEED = 20240611
SPEEDUP_TARGET = 25.0
LARGE_TARGET_S = 30.0
# Ten column shapes, repeated: 20 features = 2 of each, 100 features = 10 of each.
SHAPES = (
    "continuous",
    "continuous",
    "continuous_nan",
    "continuous_scale",
    "few_float",
    "few_int",
    "int_8_values",
    "binary_int",
    "binary_str",
    "categorical",
)
CATEGORIES = np.array([f"c{i:02d}" for i in range(12)])
EVIDENTLY_NAMES = {
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensenshannon",
    "K-S p_value": "ks",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
    "PSI": "psi",
}


# --- data ----------------------------------------------------------------------------------


def column_pair(shape: str, rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current values of one column; the drift strength is drawn per column."""
    strength = rng.choice([0.0, 0.0, 0.05, 0.09, 0.11, 0.2, 0.5])
    if shape.startswith("continuous"):
        reference = rng.normal(0.0, 1.0, rows)
        scale = 1.0 + 2 * strength if shape == "continuous_scale" else 1.0
        current = rng.normal(strength, scale, rows)
        if shape == "continuous_nan":
            reference[rng.random(rows) < 0.01] = np.nan
            current[rng.random(rows) < 0.02] = np.nan
        return reference, current
    if shape == "categorical":
        return _categorical(CATEGORIES, rows, strength, rng)
    if shape == "binary_str":
        return _categorical(np.array(["no", "yes"]), rows, strength, rng)
    values = {"few_float": np.array([0.0, 0.5, 1.0, 1.5]), "few_int": np.arange(4), "binary_int": np.arange(2)}
    return _categorical(values.get(shape, np.arange(8)), rows, strength, rng)


def _categorical(values: np.ndarray, rows: int, strength: float, rng) -> tuple[np.ndarray, np.ndarray]:
    reference_p = rng.dirichlet(np.full(values.size, 5.0))
    current_p = (1 - strength) * reference_p + strength * rng.dirichlet(np.full(values.size, 1.0))
    return values[rng.choice(values.size, rows, p=reference_p)], values[rng.choice(values.size, rows, p=current_p)]


def write_data(directory: Path, rows: int, features: int) -> dict:
    """One .npy per column and window; reused when a manifest for the same data is already there."""
    manifest_path = directory / "manifest.json"
    wanted = {"rows": rows, "features": features, "seed": SEED}
    if manifest_path.exists() and json.loads(manifest_path.read_text())["key"] == wanted:
        return json.loads(manifest_path.read_text())
    for side in ("reference", "current"):
        (directory / side).mkdir(parents=True, exist_ok=True)
    columns = {}
    for index in range(features):
        shape = SHAPES[index % len(SHAPES)]
        name = f"f{index:03d}_{shape}"
        reference, current = column_pair(shape, rows, np.random.default_rng([SEED, rows, index]))
        np.save(directory / "reference" / f"{name}.npy", reference)
        np.save(directory / "current" / f"{name}.npy", current)
        columns[name] = shape
    manifest = {"key": wanted, "columns": columns}
    manifest_path.write_text(json.dumps(manifest))
    return manifest


# --- workers (each runs alone in a child process) --------------------------------------------


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_window(directory: Path, side: str, names: list[str]) -> dict[str, np.ndarray]:
    return {name: np.load(directory / side / f"{name}.npy") for name in names}


def worker_sphere_exact(directory: Path, names: list[str], chunk_rows: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from drift.stats import compare_frames

    base = rss_mb()
    started = time.perf_counter()
    reference, current = load_window(directory, "reference", names), load_window(directory, "current", names)
    loaded = time.perf_counter()
    result = compare_frames(reference, current)
    done = time.perf_counter()
    columns = {
        name: {"test": r.test, "score": r.drift_score, "drifted": r.drift_detected}
        for name, r in result.columns.items()
    }
    return {"base_mb": base, "load_s": loaded - started, "compute_s": done - loaded, "columns": columns}


def chunks(path: Path, chunk_rows: int):
    array = np.load(path, mmap_mode="r")
    for start in range(0, array.shape[0], chunk_rows):
        yield np.array(array[start : start + chunk_rows])
    del array  # unmaps the file: only the current column's pages are ever resident


def sketch_column(directory: Path, name: str, chunk_rows: int):
    from drift.stats.sketch import ColumnSketch

    reference_path, current_path = (directory / side / f"{name}.npy" for side in ("reference", "current"))
    reference = ColumnSketch.of_reference(lambda: chunks(reference_path, chunk_rows))
    current = reference.empty_copy()
    for chunk in chunks(current_path, chunk_rows):
        current.update(chunk)
    return reference, current


def worker_sphere_sketch(directory: Path, names: list[str], chunk_rows: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from drift.stats.sketch import compare_sketches

    base = rss_mb()
    started = time.perf_counter()
    columns = {}
    for name in names:
        result = compare_sketches(*sketch_column(directory, name, chunk_rows))
        columns[name] = {"test": result.test, "score": result.drift_score, "drifted": result.drift_detected}
    return {"base_mb": base, "load_s": 0.0, "compute_s": time.perf_counter() - started, "columns": columns}


def worker_evidently(directory: Path, names: list[str], chunk_rows: int) -> dict:
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    base = rss_mb()
    started = time.perf_counter()
    reference = pd.DataFrame(load_window(directory, "reference", names))
    current = pd.DataFrame(load_window(directory, "current", names))
    loaded = time.perf_counter()
    snapshot = Report([DataDriftPreset()], include_tests=True).run(current, reference)
    done = time.perf_counter()
    return {
        "base_mb": base,
        "load_s": loaded - started,
        "compute_s": done - loaded,
        "columns": _evidently_columns(snapshot),
    }


def _evidently_columns(snapshot) -> dict:
    data = snapshot.dict()
    columns = {}
    for metric in data["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("ValueDrift"):
            method = config["method"]
            columns[config["column"]] = {"test": EVIDENTLY_NAMES.get(method, method), "score": metric["value"]}
    for test in data["tests"]:
        column = test["metric_config"]["params"].get("column")
        if test["id"] == "drift" and column in columns:
            columns[column]["drifted"] = test["status"] == "FAIL"
    return columns


WORKERS = {"sphere-exact": worker_sphere_exact, "sphere-sketch": worker_sphere_sketch, "evidently": worker_evidently}


def worker_main(args) -> None:
    names = list(json.loads((args.data / "manifest.json").read_text())["columns"])
    figures = WORKERS[args.worker](args.data, names, args.chunk_rows)
    args.out.write_text(json.dumps(figures))


# --- driver ----------------------------------------------------------------------------------


def run_child(python: str, worker: str, data: Path, chunk_rows: int, timeout: float) -> dict:
    """One child per measurement; its own peak RSS comes from wait4, not from all children together."""
    out = data / f"result-{worker}.json"
    out.unlink(missing_ok=True)
    command = [python, __file__, "--worker", worker, "--data", str(data), "--out", str(out)]
    command += ["--chunk-rows", str(chunk_rows)]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            child.kill()
            os.wait4(child.pid, 0)
            return {"error": f"timed out after {timeout:.0f} s"}
        time.sleep(0.05)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        return {"error": child.stderr.read().decode()[-2000:]}
    figures = json.loads(out.read_text())
    figures["wall_s"] = time.perf_counter() - started
    figures["peak_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return figures


def compare(ours: dict, theirs: dict) -> list[dict]:
    mismatches = []
    for name, mine in ours["columns"].items():
        other = theirs["columns"].get(name, {})
        if mine["test"] != other.get("test") or mine["drifted"] != other.get("drifted"):
            mismatches.append({"column": name, "ours": mine, "theirs": other})
    return mismatches


def print_mismatches(label: str, mismatches: list[dict], total: int) -> None:
    decisions = sum(m["ours"]["drifted"] != m["theirs"].get("drifted") for m in mismatches)
    tests = sum(m["ours"]["test"] != m["theirs"].get("test") for m in mismatches)
    print(f"    {label}: {decisions}/{total} decisions differ, {tests}/{total} tests differ")
    for m in mismatches:
        mine, other = m["ours"], m["theirs"]
        print(
            f"      {m['column']:<24} ours {mine['test']:<13} {mine['score']:<10.4g} {_flag(mine['drifted']):<8}"
            f" reference {other.get('test', '-'):<13} {other.get('score', float('nan')):<10.4g}"
            f" {_flag(other.get('drifted'))}"
        )


def _flag(drifted) -> str:
    return {True: "drift", False: "no drift"}.get(drifted, "-")


def _line(side: str, figures: dict) -> str:
    if "error" in figures:
        return f"    {side:<14} ERROR {figures['error'].strip().splitlines()[-1] if figures['error'].strip() else ''}"
    return (
        f"    {side:<14} compute {figures['compute_s']:8.2f} s   load {figures['load_s']:6.2f} s   "
        f"child wall {figures['wall_s']:7.2f} s   peak RSS {figures['peak_mb']:7.0f} MB (after imports "
        f"{figures['base_mb']:.0f} MB)   drifted {sum(c['drifted'] for c in figures['columns'].values())}"
    )


def measure_size(args, rows: int, features: int, evidently_ok: bool) -> dict:
    data = args.tmp_dir / f"drift_{rows}x{features}"
    data.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifest = write_data(data, rows, features)
    print(f"\n{rows:,} rows x {features} features (data ready in {time.perf_counter() - started:.1f} s, {data})")
    size = {"rows": rows, "features": features}
    for worker in ("sphere-exact", "sphere-sketch"):
        size[worker] = run_child(sys.executable, worker, data, args.chunk_rows, args.timeout)
        print(_line(worker, size[worker]))
    run_evidently = evidently_ok and (rows < 1_000_000 or args.full)
    if run_evidently:
        size["evidently"] = run_child(args.evidently_python, "evidently", data, args.chunk_rows, args.timeout)
        print(_line("evidently", size["evidently"]))
    else:
        print("    evidently      skipped" + ("" if evidently_ok else " (no Evidently venv)") + _why(rows, args))
    _compare_size(size, len(manifest["columns"]))
    if not args.keep_data:
        for path in sorted(data.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        data.rmdir()
    return size


def _why(rows: int, args) -> str:
    return " (1M rows: pass --full to run Evidently there)" if rows >= 1_000_000 and not args.full else ""


def _compare_size(size: dict, total: int) -> None:
    # Each Sphere mode against Evidently when it ran, and sketch mode against exact mode always.
    pairs = [("sphere-exact", "evidently"), ("sphere-sketch", "evidently"), ("sphere-sketch", "sphere-exact")]
    for worker, reference_name in pairs:
        if "columns" not in size.get(worker, {}) or "columns" not in size.get(reference_name, {}):
            continue
        mismatches = compare(size[worker], size[reference_name])
        size[worker]["mismatches_vs_" + reference_name] = mismatches
        print_mismatches(f"{worker} vs {reference_name}", mismatches, total)


def summary(sizes: list[dict]) -> dict:
    verdicts = {}
    for size in sizes:
        if size["rows"] == 100_000 and "compute_s" in size.get("evidently", {}):
            ratio = size["evidently"]["compute_s"] / size["sphere-exact"]["compute_s"]
            verdicts[f"speedup_100k_x{size['features']}"] = round(ratio, 1)
        if size["rows"] == 1_000_000 and size["features"] == 100 and "compute_s" in size["sphere-sketch"]:
            verdicts["sketch_1m_x100_s"] = round(size["sphere-sketch"]["compute_s"], 2)
            verdicts["exact_1m_x100_s"] = round(size["sphere-exact"].get("compute_s", float("nan")), 2)
    print("\ntargets")
    speedups = [value for key, value in verdicts.items() if key.startswith("speedup")]
    for key in sorted(verdicts):
        if key.startswith("speedup"):
            print(f"  {key}: Evidently compute / Sphere exact compute = {verdicts[key]}x")
    if speedups:
        verdicts["speedup_pass"] = min(speedups) >= SPEEDUP_TARGET
        print(f"  speedup >= {SPEEDUP_TARGET:g}x at 100k rows: {'PASS' if verdicts['speedup_pass'] else 'FAIL'}")
    else:
        print("  speedup at 100k rows: not measured (comparison skipped)")
    if "sketch_1m_x100_s" in verdicts:
        verdicts["large_pass"] = verdicts["sketch_1m_x100_s"] < LARGE_TARGET_S
        print(
            f"  1M x 100 bounded-memory (sketch) report: {verdicts['sketch_1m_x100_s']} s "
            f"(exact {verdicts['exact_1m_x100_s']} s), target < {LARGE_TARGET_S:g} s: "
            f"{'PASS' if verdicts['large_pass'] else 'FAIL'}"
        )
    return verdicts


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evidently-python", default="/tmp/evvenv/bin/python")
    parser.add_argument("--full", action="store_true", help="also run Evidently at 1M rows")
    parser.add_argument("--rows", type=int, nargs="+", default=list(SIZES_ROWS))
    parser.add_argument("--features", type=int, nargs="+", default=list(SIZES_FEATURES))
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per child before it is killed")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the data files go (a temp dir)")
    parser.add_argument("--keep-data", action="store_true", help="keep (and reuse) the data files")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker:
        worker_main(args)
        return
    args.tmp_dir = args.tmp_dir or Path(tempfile.mkdtemp(prefix="sphere_drift_bench_"))
    evidently_ok = Path(args.evidently_python).exists()
    if not evidently_ok:
        print(f"{args.evidently_python} not found: the comparison with Evidently is SKIPPED. Create the venv with")
        print("  python3 -m venv /tmp/evvenv && /tmp/evvenv/bin/pip install -r requirements/evidently-bench.txt")
    started = time.perf_counter()
    sizes = [measure_size(args, rows, features, evidently_ok) for rows in args.rows for features in args.features]
    if not args.keep_data and args.tmp_dir.name.startswith("sphere_drift_bench_"):
        args.tmp_dir.rmdir()
    verdicts = summary(sizes)
    for size in sizes:
        for side in ("sphere-exact", "sphere-sketch", "evidently"):
            if "columns" in size.get(side, {}):
                size[side]["drifted"] = sum(c["drifted"] for c in size[side].pop("columns").values())
    print(json.dumps({"sizes": sizes, "verdicts": verdicts, "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
