"""The ``sphere-edge`` command (also ``python -m edge_client``).

Subcommands:

- ``enroll``: register this device with the server; writes the device token (mode 600) and,
  when it does not exist yet, a config file naming the server.
- ``run``: the device loop. Inference on a sample stream, with the sync client in a background
  thread; SIGTERM or SIGINT stop it cleanly with a last heartbeat saying ``shutting_down``.
- ``simulate``: the pipeline offline on a seeded datagen scenario; prints accuracy, drift
  detections (with the sample index) and latency. No server, no store.
- ``status``: what this device holds: config summary, outbox counts, serving bundle, last sync.
- ``config``: ``--describe`` prints every config key; ``--check`` validates a config file.

Exit codes (``EXIT_*`` below): 0 success; 1 a runtime failure (the server refused enrollment,
the pipeline could not be built); 2 a usage or config error (the message names the key);
3 the server refused the device token, so ``run`` stopped syncing; 130 interrupted before
anything could be cleaned up. User errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from edge_client import __version__
from edge_client import config as config_module
from edge_client.config import ConfigError
from edge_client.serving import ServingPipeline, ShuttingDownTelemetry

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CREDENTIALS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
SCENARIOS = ("stationary", "brightness", "novel")
DEFAULT_CONFIG = "sphere-edge.json"
LAST_SYNC = "last_sync"

log = logging.getLogger("edge_client.cli")


class UserError(Exception):
    """A problem the user can fix; printed as one line, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit code is 2 as well; keep its usage line
        self.print_usage(sys.stderr)
        raise UserError(f"{self.prog}: {message}", EXIT_USAGE)


# --- entry point --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.handler(args)
    except UserError as exc:
        print(f"sphere-edge: {exc}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print(f"sphere-edge: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sphere-edge", description="Sphere edge client: inference, drift detection, sync.")
    parser.add_argument("--version", action="version", version=f"sphere-edge {__version__}")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _enroll_parser(commands)
    _run_parser(commands)
    _simulate_parser(commands)
    _status_parser(commands)
    _config_parser(commands)
    return parser


def _config_argument(parser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"JSON config file (default {DEFAULT_CONFIG})")


def _enroll_parser(commands) -> None:
    parser = commands.add_parser("enroll", help="register this device with the server")
    parser.add_argument("--server", required=True, help="base URL of the Sphere server")
    parser.add_argument("--token", required=True, help="enrollment token from an operator")
    parser.add_argument("--name", default="", help="device name (default: device_name, else the host name)")
    _config_argument(parser)
    parser.set_defaults(handler=cmd_enroll)


def _source_arguments(parser, default_limit: int | None) -> None:
    parser.add_argument("--source", default="simulate:stationary", help=f"simulate:<{'|'.join(SCENARIOS)}>")
    parser.add_argument("--limit", type=_non_negative_int, default=default_limit, help="stop after N samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated stream")


def _run_parser(commands) -> None:
    parser = commands.add_parser("run", help="run inference and sync until stopped")
    _config_argument(parser)
    _source_arguments(parser, None)
    parser.add_argument("--rate", type=float, default=10.0, help="samples per second; 0: as fast as possible")
    parser.add_argument(
        "--pipeline",
        choices=["adaptive", "inference"],
        default="adaptive",
        help="adaptive (default): quarantine, adaptation and saved state; inference: monitors only",
    )
    parser.set_defaults(handler=cmd_run)


def _simulate_parser(commands) -> None:
    parser = commands.add_parser("simulate", help="run the pipeline offline on a simulated scenario")
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--config", default=None, help="config file (default: all defaults)")
    parser.add_argument("--limit", type=_non_negative_int, default=1000, help="samples (default 1000)")
    parser.add_argument("--onset", type=_non_negative_int, default=None, help="drift onset (default: half way)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(handler=cmd_simulate)


def _status_parser(commands) -> None:
    parser = commands.add_parser("status", help="print what this device holds")
    _config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the status as one JSON object")
    parser.set_defaults(handler=cmd_status)


def _config_parser(commands) -> None:
    parser = commands.add_parser("config", help="describe the config keys, or check a config file")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--describe", action="store_true", help="print every key, its type, default and meaning")
    group.add_argument("--check", metavar="PATH", help="validate a config file")
    parser.set_defaults(handler=cmd_config)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


# --- config -------------------------------------------------------------------------------------


def cmd_config(args) -> int:
    if args.describe:
        print(config_module.describe())
        return EXIT_OK
    config_module.load(args.check)
    print(f"{args.check}: OK")
    return EXIT_OK


def load_config(path: str | None) -> config_module.Config:
    return config_module.load(path) if path else config_module.Config()


# --- enroll -------------------------------------------------------------------------------------


def cmd_enroll(args) -> int:
    from edge_client import http, sync

    config_path = Path(args.config)
    config = _config_for_enrollment(config_path, args.server)
    name = args.name or config.device_name or _hostname()
    try:
        enrollment = sync.enroll(
            args.server,
            args.token,
            name,
            token_file=config.path(config.token_file),
            timeout_s=config.sync.request_timeout_s,
        )
    except sync.EnrollmentError as exc:
        raise UserError(str(exc), EXIT_FAILURE) from None
    except http.TransportError as exc:
        raise UserError(f"cannot reach {args.server}: {exc}", EXIT_FAILURE) from None
    _write_config_if_absent(config_path, args.server, name)
    print(f"enrolled as {name} (device {enrollment.device_id}); token in {config.path(config.token_file)}")
    return EXIT_OK


def _config_for_enrollment(path: Path, server: str) -> config_module.Config:
    if path.exists():
        return config_module.load(path)
    config = config_module.from_dict({"server_url": server})
    return dataclasses.replace(config, data_dir=str(path.parent / config.data_dir))


def _write_config_if_absent(path: Path, server: str, name: str) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"server_url": server, "device_name": name}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def _hostname() -> str:
    import socket

    return socket.gethostname()[:100] or "edge-device"


# --- sample sources -----------------------------------------------------------------------------


def scenario_stream(scenario: str, n: int, *, onset: int | None = None, seed: int = 0) -> Iterator:
    """``(image, label, meta)`` of a datagen scenario; drift (if any) begins at ``onset``."""
    from edge_client import datagen

    if scenario not in SCENARIOS:
        raise UserError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}", EXIT_USAGE)
    schedule = datagen.DriftSchedule("abrupt", onset=n // 2 if onset is None else onset)
    if scenario == "brightness":
        return datagen.image_stream(n, "brightness", 8.0, schedule, seed=seed)
    if scenario == "novel":
        return datagen.novel_class_stream(n, schedule, source="synthetic", seed=seed)
    return datagen.image_stream(n, seed=seed)


def open_source(source: str, limit: int | None, seed: int) -> Iterator:
    kind, _, scenario = source.partition(":")
    if kind != "simulate":
        raise UserError(f"--source {source!r}: only simulate:<{'|'.join(SCENARIOS)}> is supported", EXIT_USAGE)
    if limit is None:
        return _endless(scenario, seed)
    return scenario_stream(scenario, limit, seed=seed)


def _endless(scenario: str, seed: int, chunk: int = 10_000) -> Iterator:
    for round_ in range(sys.maxsize):
        yield from scenario_stream(scenario, chunk, seed=seed + round_)


# --- the pipeline -------------------------------------------------------------------------------


def build_pipeline(config, *, store=None, telemetry=None, adaptive: bool = False):
    try:
        from edge_client import pipeline
    except ImportError as exc:
        raise UserError(f"cannot load the inference pipeline: {exc}") from None
    cls = pipeline.AdaptivePipeline if adaptive else pipeline.InferencePipeline
    try:
        return cls.from_config(config, store=store, telemetry=telemetry)
    except ConfigError:
        raise
    except (ImportError, ValueError, OSError) as exc:  # a missing runtime, a bad model or bundle
        raise UserError(f"cannot build the inference pipeline: {exc}") from None


# --- simulate -----------------------------------------------------------------------------------


def cmd_simulate(args) -> int:
    config = load_config(args.config)
    pipeline = build_pipeline(config)
    onset = args.limit // 2 if args.onset is None else args.onset
    summary = simulate(pipeline, scenario_stream(args.scenario, args.limit, onset=onset, seed=args.seed))
    summary.update(scenario=args.scenario, onset=None if args.scenario == "stationary" else onset)
    print(json.dumps(summary) if args.json else _simulation_report(summary))
    return EXIT_OK


def simulate(pipeline, stream) -> dict:
    correct, latencies, detections = 0, [], []
    for index, (image, label, _meta) in enumerate(stream):
        started = time.perf_counter()
        result = pipeline.process(image)
        latencies.append(time.perf_counter() - started)
        correct += str(result.label) == str(label)
        detections += [{"sample": index, "detector": name} for name in result.drift]
    return {
        "samples": len(latencies),
        "accuracy": correct / len(latencies) if latencies else None,
        "detections": detections,
        "latency_ms": _latency_summary(latencies),
    }


def _latency_summary(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    if not ordered:
        return {"mean": None, "p50": None, "p95": None}
    pick = lambda q: ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]  # noqa: E731
    return {"mean": 1000 * sum(ordered) / len(ordered), "p50": 1000 * pick(0.5), "p95": 1000 * pick(0.95)}


def _simulation_report(summary: dict) -> str:
    latency = summary["latency_ms"]
    lines = [
        f"scenario: {summary['scenario']} (drift onset: {_or_none(summary['onset'])})",
        f"samples: {summary['samples']}",
        f"accuracy: {summary['accuracy']:.3f}" if summary["accuracy"] is not None else "accuracy: n/a",
        f"drift detections: {len(summary['detections'])}",
        *(f"  sample {d['sample']}: {d['detector']}" for d in summary["detections"]),
    ]
    if latency["mean"] is not None:
        lines.append(f"latency ms: mean {latency['mean']:.3f}  p50 {latency['p50']:.3f}  p95 {latency['p95']:.3f}")
    return "\n".join(lines)


# --- run ----------------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from edge_client.bundles import BundleManager
    from edge_client.store import Store
    from edge_client.telemetry import Telemetry

    config = config_module.load(args.config)
    source = open_source(args.source, args.limit, args.seed)
    stop = threading.Event()
    _stop_on_signals(stop)
    with Store.from_config(config) as store:
        telemetry = Telemetry.from_config(config)
        pipeline = build_pipeline(config, store=store, telemetry=telemetry, adaptive=args.pipeline == "adaptive")
        serving = ServingPipeline(pipeline)
        bundles = BundleManager.from_config(config, loader=serving.load)
        serving.bundles = bundles
        log.info("bundle at start-up: %s", bundles.load_current())
        return _run_loop(config, args, store, telemetry, bundles, serving, source, stop)


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum, frame):
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def _run_loop(config, args, store, telemetry, bundles, pipeline, source, stop) -> int:
    sync = _sync_client(config, store, telemetry, bundles, pipeline)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=sync.run(stop)), name="sync", daemon=True)
    if config.server_url:
        thread.start()
    processed = _process_stream(pipeline, source, args.rate, stop)
    stop.set()
    if thread.is_alive():
        thread.join(timeout=config.sync.request_timeout_s + 5)
    _last_heartbeat(sync, telemetry)
    print(f"processed {processed} samples; outbox: {_pending_summary(store)}")
    if outcome.get("result") == "credentials":
        print(f"sphere-edge: sync stopped: {sync.problem}", file=sys.stderr)
        return EXIT_CREDENTIALS
    return EXIT_OK


def _sync_client(config, store, telemetry, bundles, pipeline):
    from edge_client.sync import SyncClient

    def synced(state: dict) -> None:
        store.set_meta(LAST_SYNC, {"at": time.time(), "device_id": state.get("device_id", "")})

    # Only the adaptive pipeline holds state a verdict changes (its quarantine).
    on_verdict = getattr(pipeline.pipeline, "apply_verdict", None)
    return SyncClient.from_config(
        config, store, telemetry=telemetry, bundles=bundles, on_verdict=on_verdict, on_desired_state=synced
    )


def _process_stream(pipeline, source, rate: float, stop: threading.Event) -> int:
    period = 1.0 / rate if rate > 0 else 0.0
    processed, next_at = 0, time.monotonic()
    for image, _label, _meta in source:
        if stop.is_set():
            break
        pipeline.process(image)
        processed += 1
        next_at += period
        if period and stop.wait(max(0.0, next_at - time.monotonic())):
            break
    return processed


def _last_heartbeat(sync, telemetry) -> None:
    """One last cycle: heartbeat with ``shutting_down`` (the server marks the device offline at
    once instead of waiting for missed heartbeats), then whatever backlog fits the budget."""
    if not sync.server_url or sync.problem:
        return
    sync.telemetry = ShuttingDownTelemetry(telemetry)
    try:
        report = sync.sync_once(heartbeat=True)
    except Exception as exc:  # the outbox keeps everything; the next start ships it
        log.warning("last heartbeat failed: %s", exc)
        return
    if report.error:
        log.warning("last heartbeat not delivered: %s", report.error)


def _pending_summary(store) -> str:
    counts = store.counts()
    pending = {kind: statuses.get("pending", 0) for kind, statuses in counts.items()}
    return ", ".join(f"{kind} {n} pending" for kind, n in sorted(pending.items())) or "empty"


# --- status -------------------------------------------------------------------------------------


def cmd_status(args) -> int:
    config = config_module.load(args.config)
    status = device_status(config)
    print(json.dumps(status, indent=2) if args.json else _status_report(status))
    return EXIT_OK


def device_status(config) -> dict:
    """Read-only: never creates the outbox or the bundle folders of a device that has none yet."""
    bundle_dir = config.path(config.model.bundle_dir)
    return {
        "config": {
            "server_url": config.server_url or "(offline)",
            "data_dir": str(config.data_dir),
            "device_name": config.device_name or _hostname(),
            "enrolled": config.path(config.token_file).exists(),
        },
        **_store_status(config.path(config.store.path)),
        "bundle": _read_json(bundle_dir / "current.json"),
        "previous_bundle": _read_json(bundle_dir / "previous.json"),
        "last_outcome": _read_json(bundle_dir / "last_outcome.json"),
    }


def _store_status(path: Path) -> dict:
    if not path.exists():
        return {"store": None, "last_sync": None}
    from edge_client.store import Store

    with Store(path) as store:
        return {
            "store": {"path": str(path), "counts": store.counts(), "totals": store.totals()},
            "last_sync": store.get_meta(LAST_SYNC),
        }


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _status_report(status: dict) -> str:
    config, store = status["config"], status["store"]
    lines = [f"{key}: {value}" for key, value in config.items()]
    if store is None:
        lines.append("store: none yet (nothing recorded)")
    else:
        lines.append(f"store: {store['path']} ({store['totals']['rows']} records, {store['totals']['bytes']} bytes)")
        lines += [f"  {kind}: {statuses}" for kind, statuses in sorted(store["counts"].items())]
    bundle = status["bundle"]
    lines.append(f"bundle: {bundle['version']} ({bundle['sha256'][:12]})" if bundle else "bundle: none")
    outcome = status["last_outcome"]
    lines.append(
        f"last outcome: {outcome['status']} {_or_none(outcome.get('version'))}" if outcome else "last outcome: none"
    )
    last_sync = status["last_sync"]
    lines.append(f"last sync: {_ago(last_sync['at'])}" if last_sync else "last sync: never")
    return "\n".join(lines)


def _or_none(value) -> str:
    return "none" if value is None or value == "" else str(value)


def _ago(at: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    return f"{stamp} ({max(0, int(time.time() - at))} s ago)"


if __name__ == "__main__":
    sys.exit(main())
