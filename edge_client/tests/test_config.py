"""The device config file: documented, typed, and loud about mistakes."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from edge_client import config
from edge_client.config import Config, ConfigError


def write(tmp_path, data) -> str:
    path = tmp_path / "edge.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_an_empty_file_gives_the_documented_defaults(tmp_path):
    loaded = config.load(write(tmp_path, {}))
    assert loaded.inference.confidence_band == [0.4, 0.7]
    assert loaded.sync.heartbeat_period_s == 60.0
    assert loaded.detectors == {}
    assert loaded.data_dir == str(tmp_path / "data")


def test_it_loads_nested_sections_and_detector_settings(tmp_path):
    loaded = config.load(
        write(
            tmp_path,
            {
                "server_url": "https://sphere.example.org",
                "data_dir": "/var/lib/sphere-edge",
                "sync": {"prediction_batch_size": 50, "backoff_max_s": 120},
                "store": {"max_bytes": 1000000},
                "inference": {"confidence_band": [0.3, 0.8]},
                "detectors": {"knn_distance": {"delta": 0.005, "threshold": 50, "enabled": True}},
            },
        )
    )
    assert loaded.sync.prediction_batch_size == 50
    assert loaded.sync.backoff_max_s == 120.0 and isinstance(loaded.sync.backoff_max_s, float)
    assert loaded.detectors["knn_distance"]["threshold"] == 50
    assert loaded.path(loaded.token_file) == config.Path("/var/lib/sphere-edge/token")
    assert loaded.path("/etc/sphere/token") == config.Path("/etc/sphere/token")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sever_url": "http://x"}, "sever_url: unknown key (did you mean 'server_url'?)"),
        ({"sync": {"batch": 1}}, "sync.batch: unknown key"),
        ({"sync": {"prediction_batch_size": "50"}}, "sync.prediction_batch_size: expected an integer, got '50'"),
        ({"sync": {"prediction_batch_size": 2.5}}, "sync.prediction_batch_size: expected an integer, got 2.5"),
        ({"sync": {"prediction_batch_size": True}}, "sync.prediction_batch_size: expected an integer, got true"),
        ({"sync": {"prediction_batch_size": 0}}, "sync.prediction_batch_size: must be greater than 0"),
        ({"sync": {"backoff_base_s": "2"}}, "sync.backoff_base_s: expected a number"),
        ({"sync": 5}, "sync: expected a JSON object, got 5 (int)"),
        ({"quarantine": {"keep_images": "yes"}}, "quarantine.keep_images: expected true or false"),
        ({"inference": {"confidence_band": [0.7, 0.4]}}, "inference.confidence_band: must be [low, high]"),
        ({"inference": {"confidence_band": [0.4, "0.7"]}}, "inference.confidence_band[1]: expected a number"),
        ({"inference": {"confidence_band": 0.5}}, "inference.confidence_band: expected a list of numbers"),
        ({"detectors": {"adwin": 3}}, "detectors.adwin: expected a JSON object"),
        ({"server_url": "sphere.local"}, "server_url: must start with http:// or https://"),
        ({"token_file": None}, "token_file: expected a string, got null"),
    ],
)
def test_it_names_the_key_and_the_expected_type_of_a_bad_value(tmp_path, data, message):
    with pytest.raises(ConfigError) as error:
        config.load(write(tmp_path, data))
    assert message in str(error.value)


def test_it_refuses_a_file_that_is_not_a_json_object(tmp_path):
    with pytest.raises(ConfigError, match="not valid JSON"):
        config.load(write(tmp_path, '{"server_url": '))
    with pytest.raises(ConfigError, match="expected a JSON object"):
        config.load(write(tmp_path, "[1, 2]"))
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.json")


def test_every_key_is_documented_and_described():
    text = config.describe()
    for key, spec in _all_fields(Config, ""):
        assert spec.metadata.get("doc"), f"{key} has no doc"
        assert f"\n{key}  " in f"\n{text}", f"{key} missing from describe()"


def test_the_defaults_round_trip_through_a_file(tmp_path):
    defaults = config.to_dict(Config())
    loaded = config.load(write(tmp_path, defaults))
    assert config.to_dict(loaded) == {**defaults, "data_dir": str(tmp_path / "data")}


def _all_fields(cls, prefix):
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        yield f"{prefix}{spec.name}", spec
        if dataclasses.is_dataclass(hints[spec.name]):
            yield from _all_fields(hints[spec.name], f"{prefix}{spec.name}.")
