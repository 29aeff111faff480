"""Operational metrics from /proc and /sys, plus inference latency and throughput.

``Telemetry.sample()`` returns exactly the metric fields of the server's heartbeat
(``METRIC_FIELDS``, the names of ``HeartbeatSerializer`` in ``devices/api/serializers.py``).
A source that is missing or unreadable (no thermal zone, a container without /proc/net/dev)
gives ``None``; so does a value outside the range the server accepts, so one odd reading
never gets a whole heartbeat refused.

- ``cpu_percent``: busy share of all cores (0-100) between two samples, from /proc/stat.
- ``memory_percent``, ``memory_used_mb``: MemTotal - MemAvailable, from /proc/meminfo (MiB).
- ``temperature_c``: the hottest /sys/class/thermal/thermal_zone*/temp.
- ``disk_percent``: used share of the file system holding the data folder, as ``df`` counts it.
- ``net_rx_bytes``, ``net_tx_bytes``: byte counters since boot, all interfaces but loopback.
- ``uptime_s``: from /proc/uptime.
- ``latency_p50_ms``, ``latency_p95_ms``: over the inferences recorded since the previous
  sample (at most the last ``window`` of them); ``throughput_ips``: inferences per second since
  the previous sample. The pipeline feeds them with ``record_inference(seconds)``.
- ``error_rate``: failed inferences / all inferences since the previous sample (``record_error()``
  counts a failure); None when there were none.

>>> telemetry = Telemetry(clock=iter([0.0, 10.0]).__next__)
>>> for latency_s in (0.010, 0.020, 0.030):
...     telemetry.record_inference(latency_s)
>>> metrics = telemetry.sample()
>>> metrics["latency_p50_ms"], metrics["latency_p95_ms"], metrics["throughput_ips"]
(20.0, 30.0, 0.3)

``runtime_info()`` is the heartbeat's ``runtime`` object, what a rollout's preflight checks a
model version's needs against: ``memory_total_mb`` (MemTotal), the ``python``, ``numpy`` and
``litert`` versions (ai-edge-litert, else tflite-runtime; absent when neither is installed) and
the edge ``client`` version. A value the server would refuse is left out.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import platform
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from edge_client import __version__

METRIC_FIELDS = (
    "cpu_percent",
    "memory_percent",
    "memory_used_mb",
    "temperature_c",
    "disk_percent",
    "net_rx_bytes",
    "net_tx_bytes",
    "latency_p50_ms",
    "latency_p95_ms",
    "throughput_ips",
    "error_rate",
    "uptime_s",
)
# The ranges HeartbeatSerializer accepts; a value outside is reported as None.
BOUNDS = {
    "cpu_percent": (0, 100 * 64),
    "memory_percent": (0, 100),
    "memory_used_mb": (0, 10**7),
    "temperature_c": (-100, 200),
    "disk_percent": (0, 100),
    "net_rx_bytes": (0, 2**62),
    "net_tx_bytes": (0, 2**62),
    "latency_p50_ms": (0, 3.6e6),
    "latency_p95_ms": (0, 3.6e6),
    "throughput_ips": (0, 1e7),
    "error_rate": (0, 1),
    "uptime_s": (0, 1e10),
    "memory_total_mb": (0, 10**7),  # runtime.memory_total_mb
}
INTEGER_FIELDS = ("net_rx_bytes", "net_tx_bytes")
# The versions RuntimeSerializer accepts.
VERSION = re.compile(r"^[0-9A-Za-z.+_-]{1,40}$")
# LiteRT's distributions in the order the extractor tries them.
LITERT_DISTRIBUTIONS = ("ai-edge-litert", "tflite-runtime")


class Telemetry:
    def __init__(
        self,
        *,
        disk_path: str | Path = ".",
        proc: str | Path = "/proc",
        sys: str | Path = "/sys",
        window: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.disk_path, self.proc, self.sys, self.window = Path(disk_path), Path(proc), Path(sys), window
        self.clock = clock
        # The pipeline thread records while the sync thread samples.
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)
        self._count = self._errors = 0
        self._last_sample_at = clock()
        self._cpu = _safe(self._read_cpu)

    @classmethod
    def from_config(cls, config) -> Telemetry:
        return cls(disk_path=config.data_dir, window=config.inference.latency_window)

    def record_inference(self, latency_s: float) -> None:
        with self._lock:
            self._latencies.append(latency_s * 1000.0)
            self._count += 1

    def record_error(self) -> None:
        """One inference that raised instead of answering."""
        with self._lock:
            self._errors += 1

    def sample(self) -> dict:
        values = {
            "cpu_percent": self._cpu_percent(),
            **self._memory(),
            "temperature_c": self._temperature(),
            "disk_percent": self._disk_percent(),
            **self._network(),
            **self._inference(),
            "uptime_s": self._uptime(),
        }
        return {name: _checked(name, values.get(name)) for name in METRIC_FIELDS}

    # --- sources (each returns None when it cannot read) ----------------------------------------

    def _read_cpu(self) -> tuple[int, int] | None:
        line = _first_line(self.proc / "stat")
        if not line or not line.startswith("cpu "):
            return None
        # user nice system idle iowait irq softirq steal; guest time is already inside user.
        ticks = [int(value) for value in line.split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]

    def _cpu_percent(self) -> float | None:
        previous, self._cpu = self._cpu, _safe(self._read_cpu)
        if previous is None or self._cpu is None or self._cpu[0] <= previous[0]:
            return None
        total, idle = self._cpu[0] - previous[0], self._cpu[1] - previous[1]
        return round(100.0 * (total - idle) / total, 1)

    def _memory(self) -> dict:
        info = _safe(lambda: _meminfo(self.proc / "meminfo")) or {}
        if "MemTotal" not in info or "MemAvailable" not in info or not info["MemTotal"]:
            return {}
        used_kib = info["MemTotal"] - info["MemAvailable"]
        return {
            "memory_percent": round(100.0 * used_kib / info["MemTotal"], 1),
            "memory_used_mb": round(used_kib / 1024.0, 1),
        }

    def _temperature(self) -> float | None:
        readings = [_safe(lambda zone=zone: int(_first_line(zone / "temp"))) for zone in self._zones()]
        readings = [value for value in readings if value is not None]
        return round(max(readings) / 1000.0, 1) if readings else None

    def _zones(self) -> list[Path]:
        return sorted((self.sys / "class" / "thermal").glob("thermal_zone*"))

    def _disk_percent(self) -> float | None:
        stats = _safe(lambda: os.statvfs(self.disk_path))
        if stats is None:
            return None
        used = stats.f_blocks - stats.f_bfree
        usable = used + stats.f_bavail  # df's denominator: root-reserved blocks excluded
        return round(100.0 * used / usable, 1) if usable else None

    def _network(self) -> dict:
        counters = _safe(lambda: _net_dev(self.proc / "net" / "dev"))
        if counters is None:
            return {}
        return {"net_rx_bytes": counters[0], "net_tx_bytes": counters[1]}

    def _uptime(self) -> float | None:
        return _safe(lambda: round(float(_first_line(self.proc / "uptime").split()[0]), 1))

    def _inference(self) -> dict:
        now = self.clock()
        with self._lock:
            latencies = sorted(self._latencies)
            count, errors, elapsed = self._count, self._errors, now - self._last_sample_at
            self._latencies.clear()
            self._count, self._errors, self._last_sample_at = 0, 0, now
        return {
            "error_rate": round(errors / (count + errors), 4) if count + errors else None,
            "latency_p50_ms": _percentile(latencies, 50),
            "latency_p95_ms": _percentile(latencies, 95),
            "throughput_ips": round(count / elapsed, 3) if elapsed > 0 else None,
        }


def runtime_info(proc: str | Path = "/proc") -> dict:
    """What this device can run (see the module docstring); read once per process."""
    return dict(_runtime_info(Path(proc)))


@functools.cache
def _runtime_info(proc: Path) -> dict:
    import numpy  # the edge client's one dependency, loaded anyway by the pipeline

    info = {"memory_total_mb": _memory_total_mb(proc)}
    versions = {"python": platform.python_version(), "numpy": numpy.__version__}
    versions.update(litert=_litert_version(), client=__version__)
    info.update({name: value for name, value in versions.items() if value and VERSION.match(value)})
    return {name: value for name, value in info.items() if value is not None}


def _memory_total_mb(proc: Path) -> float | None:
    total_kib = (_safe(lambda: _meminfo(proc / "meminfo")) or {}).get("MemTotal")
    if not total_kib:
        return None
    return _checked("memory_total_mb", round(total_kib / 1024.0, 1))


def _litert_version() -> str | None:
    # Package metadata only: importing the runtime costs seconds and memory on a small board.
    for name in LITERT_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _percentile(ordered: list[float], percent: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return None
    rank = max(1, math.ceil(percent / 100.0 * len(ordered)))
    return round(ordered[rank - 1], 3)


def _checked(name: str, value):
    if value is None or isinstance(value, bool) or not math.isfinite(value):
        return None
    low, high = BOUNDS[name]
    if not low <= value <= high:
        return None
    return int(value) if name in INTEGER_FIELDS else float(value)


def _safe(read):
    # /proc and /sys differ between kernels and containers: any failure means "unknown".
    try:
        return read()
    except (OSError, ValueError, IndexError, TypeError):
        return None


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.readline().strip()
    except OSError:
        return ""


def _meminfo(path: Path) -> dict[str, int]:
    values = {}
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        name, _, rest = line.partition(":")
        if rest.split():
            values[name] = int(rest.split()[0])  # kB
    return values


def _net_dev(path: Path) -> tuple[int, int]:
    rx = tx = 0
    for line in path.read_text(encoding="ascii", errors="replace").splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() != "lo" and len(fields) >= 9:
            rx, tx = rx + int(fields[0]), tx + int(fields[8])
    return rx, tx
