"""Operational metrics from a fake /proc and /sys, and from the real ones of this machine."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path

import numpy as np

from edge_client import __version__, telemetry
from edge_client.telemetry import METRIC_FIELDS, Telemetry, runtime_info

MEMINFO = "MemTotal:         443000 kB\nMemFree:           50000 kB\nMemAvailable:     221500 kB\n"
NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n"
    "    lo:  999999     10    0    0    0     0          0         0   999999     10    0 0 0 0 0 0\n"
    " wlan0:    1000     10    0    0    0     0          0         0     2000     20    0 0 0 0 0 0\n"
    "  eth0:     500      5    0    0    0     0          0         0      700      7    0 0 0 0 0 0\n"
)


def fake_system(root: Path, *, idle: int = 800, busy: int = 200, zones=(48500, 51200)) -> tuple[Path, Path]:
    proc, sys = root / "proc", root / "sys"
    (proc / "net").mkdir(parents=True, exist_ok=True)
    write_stat(proc, busy=busy, idle=idle)
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "net" / "dev").write_text(NET_DEV)
    (proc / "uptime").write_text("3600.57 7000.00\n")
    for index, millidegrees in enumerate(zones):
        zone = sys / "class" / "thermal" / f"thermal_zone{index}"
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "temp").write_text(f"{millidegrees}\n")
    return proc, sys


def write_stat(proc: Path, *, busy: int, idle: int) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    (proc / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 {busy} 0 0 {idle} 0 0 0 0 0 0\n")


def test_it_reads_every_metric_from_proc_and_sys(tmp_path):
    proc, sys = fake_system(tmp_path)
    telemetry = Telemetry(proc=proc, sys=sys, disk_path=tmp_path, clock=iter([0.0, 2.0]).__next__)
    write_stat(proc, busy=200 + 30, idle=800 + 70)  # 100 ticks later, 30 of them busy
    telemetry.record_inference(0.008)
    telemetry.record_inference(0.012)

    metrics = telemetry.sample()

    assert metrics["cpu_percent"] == 30.0
    assert (metrics["memory_percent"], metrics["memory_used_mb"]) == (50.0, 216.3)
    assert metrics["temperature_c"] == 51.2  # the hottest zone
    assert 0 <= metrics["disk_percent"] <= 100
    assert (metrics["net_rx_bytes"], metrics["net_tx_bytes"]) == (1500, 2700)  # loopback left out
    assert metrics["uptime_s"] == 3600.6
    assert (metrics["latency_p50_ms"], metrics["latency_p95_ms"], metrics["throughput_ips"]) == (8.0, 12.0, 1.0)


def test_missing_sources_give_none_and_never_raise(tmp_path):
    telemetry = Telemetry(proc=tmp_path / "no-proc", sys=tmp_path / "no-sys", disk_path=tmp_path / "no-disk")
    metrics = telemetry.sample()
    assert list(metrics) == list(METRIC_FIELDS)
    assert all(value is None for name, value in metrics.items() if name != "throughput_ips")
    assert metrics["throughput_ips"] == 0.0


def test_garbage_and_out_of_range_readings_give_none(tmp_path):
    proc, sys = fake_system(tmp_path, zones=(900000,))  # 900 °C: a broken sensor
    (proc / "meminfo").write_text("MemTotal: lots\n")
    (proc / "uptime").write_text("")
    (proc / "net" / "dev").write_text("nonsense\n\n eth0: x y z\n")
    (proc / "stat").write_text("intr 1 2 3\n")
    metrics = Telemetry(proc=proc, sys=sys, disk_path=tmp_path).sample()
    for name in ("cpu_percent", "memory_percent", "memory_used_mb", "temperature_c", "uptime_s"):
        assert metrics[name] is None, name
    assert (metrics["net_rx_bytes"], metrics["net_tx_bytes"]) == (0, 0)


def test_cpu_percent_needs_two_readings(tmp_path):
    proc, sys = fake_system(tmp_path)
    telemetry = Telemetry(proc=proc, sys=sys, disk_path=tmp_path)
    assert telemetry.sample()["cpu_percent"] is None  # no tick passed since the first reading


def test_latency_covers_the_inferences_since_the_last_sample_within_a_bounded_window(tmp_path):
    times = iter([0.0, 10.0, 20.0])
    telemetry = Telemetry(proc=tmp_path, sys=tmp_path, disk_path=tmp_path, window=100, clock=lambda: next(times))
    for n in range(1000):
        telemetry.record_inference(0.001 * (n % 100 + 1))
    first = telemetry.sample()
    assert len(telemetry._latencies) == 0
    assert (first["latency_p50_ms"], first["latency_p95_ms"], first["throughput_ips"]) == (50.0, 95.0, 100.0)
    second = telemetry.sample()
    assert (second["latency_p50_ms"], second["throughput_ips"]) == (None, 0.0)


def test_the_error_rate_is_the_failed_share_of_the_inferences_since_the_last_sample(tmp_path):
    telemetry = Telemetry(proc=tmp_path, sys=tmp_path, disk_path=tmp_path, clock=iter([0.0, 10.0, 20.0]).__next__)
    for _ in range(9):
        telemetry.record_inference(0.01)
    telemetry.record_error()
    assert telemetry.sample()["error_rate"] == 0.1
    assert telemetry.sample()["error_rate"] is None  # nothing ran since: no rate, not a zero


def test_the_fields_are_the_servers_heartbeat_fields():
    from devices.api import serializers

    server_fields = set(serializers.HeartbeatSerializer().fields)
    assert set(METRIC_FIELDS) <= server_fields
    assert server_fields - set(METRIC_FIELDS) == {
        "id",
        "sent_at",
        "client_version",
        "model_version",
        "shutting_down",
        "runtime",
        "bundle",
    }


def uncached_runtime_info(proc: Path) -> dict:
    # runtime_info() is read once per process: drop what was cached so a patched source shows.
    telemetry._runtime_info.cache_clear()
    try:
        return runtime_info(proc=proc)
    finally:
        telemetry._runtime_info.cache_clear()


def test_runtime_info_reports_memory_and_versions_without_importing_the_runtime(tmp_path):
    proc, _ = fake_system(tmp_path)
    loaded = set(sys.modules)

    info = runtime_info(proc=proc)

    assert info["memory_total_mb"] == 432.6  # MemTotal 443000 kB
    assert (info["python"], info["numpy"], info["client"]) == (platform.python_version(), np.__version__, __version__)
    assert {"ai_edge_litert", "tflite_runtime"} & (set(sys.modules) - loaded) == set()


def test_runtime_info_names_litert_from_package_metadata_and_omits_it_when_absent(tmp_path, monkeypatch):
    installed = {"tflite-runtime": "2.14.0"}

    def version(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert uncached_runtime_info(tmp_path)["litert"] == "2.14.0"
    installed["ai-edge-litert"] = "2.3.0"  # preferred, as the extractor prefers it
    assert uncached_runtime_info(tmp_path)["litert"] == "2.3.0"
    installed.clear()
    assert "litert" not in uncached_runtime_info(tmp_path)


def test_runtime_info_leaves_out_what_the_server_would_refuse(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "python_version", lambda: "3.11.7 (custom build)")
    info = uncached_runtime_info(tmp_path / "no-proc")
    assert "python" not in info and "memory_total_mb" not in info
    assert info["client"] == __version__


def test_runtime_info_is_read_once_per_process(tmp_path):
    proc, _ = fake_system(tmp_path)
    first = runtime_info(proc=proc)
    (proc / "meminfo").write_text("MemTotal: 2048 kB\n")
    first["numpy"] = "mutated by a caller"
    assert runtime_info(proc=proc) == {**first, "numpy": np.__version__}


def test_it_reads_this_machine_without_error(tmp_path):
    metrics = Telemetry(disk_path=tmp_path).sample()
    assert metrics["memory_used_mb"] and metrics["uptime_s"]
