"""Settings helpers: bad values stop start-up with the variable's name; *_FILE secrets work."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from sphere import env


@pytest.mark.parametrize(
    ("helper", "value", "message"),
    [
        (lambda: env.env_bool("X_FLAG"), "maybe", "X_FLAG='maybe' is not a boolean"),
        (lambda: env.env_int("X_FLAG", 1), "ten", "X_FLAG='ten' is not an integer"),
        (lambda: env.env_int("X_FLAG", 1, minimum=5), "2", "below the minimum 5"),
        (lambda: env.env_float("X_FLAG", 1.0), "nan", "must be a finite number"),
        (lambda: env.env_choice("X_FLAG", "a", ("a", "b")), "c", "must be one of: a, b"),
    ],
)
def test_bad_values_raise_naming_the_variable(monkeypatch, helper, value, message):
    monkeypatch.setenv("X_FLAG", value)
    with pytest.raises(ImproperlyConfigured, match=message):
        helper()


def test_values_parse(monkeypatch):
    monkeypatch.setenv("X_BOOL", "Yes")
    monkeypatch.setenv("X_LIST", "a, b,,c")
    monkeypatch.setenv("X_INT", "42")
    assert env.env_bool("X_BOOL") is True
    assert env.env_list("X_LIST") == ["a", "b", "c"]
    assert env.env_int("X_INT", 0, maximum=42) == 42
    assert env.env_str("X_MISSING", "fallback") == "fallback"


def test_a_file_variable_takes_the_secret_from_the_file(monkeypatch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    monkeypatch.setenv("X_SECRET", "ignored")
    monkeypatch.setenv("X_SECRET_FILE", str(secret))
    assert env.env_str("X_SECRET") == "s3cr3t"


def test_an_unreadable_secret_file_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("X_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="X_SECRET_FILE"):
        env.env_str("X_SECRET")


def run_check(extra_env, tmp_path, *args):
    environment = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "S3_BUCKET")}
    environment.update({"DATA_DIR": str(tmp_path), **extra_env})
    return subprocess.run(
        [sys.executable, "manage.py", "check", *args],
        cwd=Path(__file__).resolve().parents[2],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_a_bad_setting_stops_manage_py_with_a_clear_message(tmp_path):
    result = run_check({"DEVICE_HEARTBEAT_PERIOD_S": "soon"}, tmp_path)
    assert result.returncode != 0
    assert "DEVICE_HEARTBEAT_PERIOD_S='soon' is not an integer" in result.stderr


@pytest.mark.slow
def test_a_bad_database_url_is_named(tmp_path):
    result = run_check({"DATABASE_URL": "nosuchdb://x"}, tmp_path)
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


@pytest.mark.slow
def test_the_production_topology_without_a_secret_key_fails_the_deploy_check(tmp_path):
    result = run_check(
        {"REDIS_URL": "redis://127.0.0.1:6379/15", "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/test"},
        tmp_path,
        "--deploy",
    )
    assert result.returncode != 0
    assert "sphere.E001" in result.stderr
    assert "sphere.W003" in result.stderr  # local media with external workers


@pytest.mark.slow
def test_the_embedded_topology_passes_the_system_checks(tmp_path):
    result = run_check({}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout
