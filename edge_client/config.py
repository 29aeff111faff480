"""Device configuration: one JSON file, every key documented, typed and validated.

The schema is the dataclasses below: each field carries its type, its default and a ``doc``
string. ``load(path)`` reads the file and refuses unknown keys and ill-typed values with a
``ConfigError`` naming the key (``sync.prediction_batch_size``) and the expected type, so a typo
on a device fails at start-up instead of being silently ignored. Every key is optional.

Paths: a relative ``data_dir`` is taken from the config file's folder; every other relative
path (``token_file``, ``store.path``, ``model.bundle_dir`` ...) from ``data_dir``
(``Config.path``).

``describe()`` (or ``python -m edge_client.config``) prints every key with its type, default
and meaning.

>>> config = from_dict({"sync": {"prediction_batch_size": 50}})
>>> config.sync.prediction_batch_size, config.inference.confidence_band
(50, [0.4, 0.7])
>>> from_dict({"sync": {"prediction_batch_size": "50"}})
Traceback (most recent call last):
...
edge_client.config.ConfigError: sync.prediction_batch_size: expected an integer, got '50' (str)
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


class ConfigError(ValueError):
    """The config file is unreadable, or a key is unknown, ill-typed or out of range."""


# --- value checks (run after the type check) ----------------------------------------------------


def _positive(value):
    return None if value > 0 else "must be greater than 0"


def _non_negative(value):
    return None if value >= 0 else "must be 0 or more"


def _band(value):
    if len(value) != 2 or not 0 <= value[0] < value[1] <= 1:
        return "must be [low, high] with 0 <= low < high <= 1"
    return None


def _url(value):
    if value and not value.startswith(("http://", "https://")):
        return "must start with http:// or https:// (or be empty to run offline)"
    return None


def setting(default, doc: str, check=None):
    """A documented field; mutable defaults are copied per instance."""
    metadata = {"doc": doc, "check": check}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls, doc: str):
    return field(default_factory=cls, metadata={"doc": doc, "check": None})


# --- the schema ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncSection:
    heartbeat_period_s: float = setting(
        60.0, "Seconds between heartbeats, until the server's desired state sets the period.", _positive
    )
    request_timeout_s: float = setting(
        10.0, "Socket timeout of one HTTP request (connecting, and each read), in seconds.", _positive
    )
    prediction_batch_size: int = setting(200, "Prediction logs per POST /api/v1/device/predictions.", _positive)
    max_batch_bytes: int = setting(
        1 * MiB, "Upper bound of one prediction batch's JSON body (the server refuses bodies over 2 MiB).", _positive
    )
    package_batch_size: int = setting(
        100, "Records (quarantine samples, backlog metrics) per package at most.", _positive
    )
    max_package_bytes: int = setting(
        8 * MiB, "Upper bound of the records packed into one package archive, in bytes.", _positive
    )
    backoff_base_s: float = setting(
        2.0, "First retry delay after a failed upload; it doubles per attempt (full jitter).", _positive
    )
    backoff_max_s: float = setting(600.0, "Longest retry delay, in seconds.", _positive)
    cycle_budget_s: float = setting(
        30.0, "Stop shipping backlog after this long in one sync cycle, so heartbeats stay on time.", _positive
    )


@dataclass(frozen=True)
class StoreSection:
    path: str = setting("outbox.sqlite3", "SQLite outbox and local log file.")
    max_bytes: int = setting(
        64 * MiB,
        "Bound on stored records (payloads and attachments). Over it, the oldest records are evicted: "
        "sent and failed ones, then pending prediction logs and metrics, then drift events and "
        "quarantine samples.",
        _positive,
    )
    max_rows: int = setting(200_000, "Bound on the number of stored records; same eviction order.", _positive)


@dataclass(frozen=True)
class ModelSection:
    bundle_dir: str = setting(
        "bundles", "Folder of model bundles: the current one, the previous one (rollback slot) and downloads."
    )
    max_bundle_bytes: int = setting(64 * MiB, "Largest bundle download accepted, in bytes.", _positive)
    max_extracted_bytes: int = setting(
        256 * MiB, "Largest total size of the files extracted from one bundle archive.", _positive
    )
    extractor_path: str = setting("", "TFLite feature extractor; empty: the model shipped with the client.")


@dataclass(frozen=True)
class InferenceSection:
    confidence_band: list[float] = setting(
        [0.4, 0.7], "Predictions with confidence in [low, high) are logged as uncertain, for labeling.", _band
    )
    latency_window: int = setting(256, "Recent inference latencies kept for the heartbeat's p50/p95.", _positive)


@dataclass(frozen=True)
class QuarantineSection:
    max_samples: int = setting(500, "Samples kept in quarantine at most; the oldest leave first.", _positive)
    max_bytes: int = setting(16 * MiB, "Bytes of quarantined samples (images, features) at most.", _positive)
    keep_images: bool = setting(True, "Keep the input image of a quarantined sample (else features only).")
    far_factor: float = setting(
        1.5,
        "A sample is quarantined as far from the reference when its mean neighbour distance exceeds this times "
        "the 99th percentile of the reference set's own; lower sends more of a shifted stream for labeling.",
        _positive,
    )


@dataclass(frozen=True)
class Config:
    server_url: str = setting("", "Base URL of the Sphere server; empty: run offline (the outbox keeps all).", _url)
    data_dir: str = setting("data", "Folder for all device state; relative to the config file's folder.")
    token_file: str = setting("token", "File holding the device token (written by `enroll`, mode 600).")
    device_name: str = setting("", "Name sent when enrolling; empty: the host name.")
    sync: SyncSection = section(SyncSection, "Talking to the server.")
    store: StoreSection = section(StoreSection, "The durable outbox.")
    model: ModelSection = section(ModelSection, "Model bundles and the extractor.")
    inference: InferenceSection = section(InferenceSection, "The inference pipeline.")
    quarantine: QuarantineSection = section(QuarantineSection, "Samples flagged by the drift monitors.")
    detectors: dict[str, dict[str, Any]] = setting(
        {},
        'Drift detector settings by detector name: its constructor arguments, plus "enabled": false '
        "to switch it off. Names and arguments are those of edge_client.detectors.",
    )

    def path(self, value: str) -> Path:
        """``value`` as a path, relative ones taken from ``data_dir``."""
        return Path(self.data_dir) / value


# --- loading and validation ---------------------------------------------------------------------


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    config = from_dict(data)
    return dataclasses.replace(config, data_dir=str(path.parent / config.data_dir))


def from_dict(data: object) -> Config:
    return _build(Config, data, "")


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def _build(cls, data: object, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config file'}: expected a JSON object, got {_shown(data)}")
    known = {spec.name: spec for spec in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown key{_suggestion(key, known)}")
    hints = typing.get_type_hints(cls)
    values = {key: _value(data[key], hints[key], known[key], f"{prefix}{key}") for key in data}
    return cls(**values)


def _value(value, hint, spec, key: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    converted = _typed(value, hint, key)
    problem = spec.metadata["check"] and spec.metadata["check"](converted)
    if problem:
        raise ConfigError(f"{key}: {problem}, got {_shown(value)}")
    return converted


def _typed(value, hint, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        _require(isinstance(value, list), value, hint, key)
        return [_typed(item, args[0], f"{key}[{index}]") for index, item in enumerate(value)]
    if origin is dict:
        _require(isinstance(value, dict), value, hint, key)
        return {name: _typed(item, args[1], f"{key}.{name}") for name, item in value.items()}
    return _scalar(value, hint, key)


def _scalar(value, hint, key: str):
    if hint is Any:
        return value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        _require(ok, value, hint, key)
        return float(value)
    # bool is a subclass of int: `true` must not pass as an integer.
    _require(isinstance(value, hint) and not (hint is int and isinstance(value, bool)), value, hint, key)
    return value


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return f"a list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a JSON object"
    return _TYPE_NAMES.get(hint, str(hint))


def _require(ok: bool, value, hint, key: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {_shown(value)}")


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} ({type(value).__name__})"


def _suggestion(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"


# --- documentation ------------------------------------------------------------------------------


def describe() -> str:
    """Every key of the config file: dotted name, type, default and meaning."""
    return "\n".join(_describe(Config, ""))


def _describe(cls, prefix: str):
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        key, hint = f"{prefix}{spec.name}", hints[spec.name]
        if dataclasses.is_dataclass(hint):
            yield f"{key}  (section) {spec.metadata['doc']}"
            yield from _describe(hint, f"{key}.")
            continue
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        yield f"{key}  {_type_name(hint)}, default {json.dumps(default)}\n    {spec.metadata['doc']}"


if __name__ == "__main__":
    print(describe())
