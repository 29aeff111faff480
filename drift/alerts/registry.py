"""The alert rule kinds: drift's built-in ones and those other apps register (see
drift.alerts.evaluate for how). Pure Python at import time, since drift.models reads
``choices`` from here for AlertRule.kind.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured

# The width of AlertRule.kind's column: a registered name must fit in it.
NAME_MAX_LENGTH = 40
BUILTIN_MODULE = "drift.alerts.evaluate"


@dataclass(frozen=True)
class Finding:
    """What a kind finds true right now about one subject ("device:<id>", "incident:<id>" ...)."""

    subject: str
    message: str
    details: dict = field(default_factory=dict)


Validate = Callable[[dict], dict]
Evaluate = Callable[[Any, dict, datetime], list[Finding]]


@dataclass(frozen=True)
class Kind:
    name: str
    label: str
    validate: Validate
    evaluate: Evaluate


_kinds: dict[str, Kind] = {}


def register_kind(name: str, label: str, validate: Validate, evaluate: Evaluate) -> Kind:
    """Make ``name`` a rule kind. ``validate(parameters) -> parameters`` raises ValueError on bad
    ones; ``evaluate(rule, parameters, now) -> list[Finding]`` is read-only."""
    if not name.isidentifier() or len(name) > NAME_MAX_LENGTH:
        raise ImproperlyConfigured(
            f"Alert kind {name!r} must be an identifier of at most {NAME_MAX_LENGTH} characters."
        )
    previous = _kinds.get(name)
    # The same function registered again (a module reloaded) is fine; another app's is a clash.
    if previous and _origin(previous.evaluate) != _origin(evaluate):
        raise ImproperlyConfigured(f"Alert kind {name!r} is already registered by {_origin(previous.evaluate)}.")
    kind = _kinds[name] = Kind(name, label, validate, evaluate)
    return kind


def _origin(function: Callable) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def get_kind(name: str) -> Kind:
    """The registered kind; ValueError (naming the known ones) for any other name."""
    _load_builtins()
    if name not in _kinds:
        raise ValueError(f"Unknown alert kind {name!r}; registered kinds: {', '.join(sorted(_kinds))}.")
    return _kinds[name]


def is_registered(name: str) -> bool:
    _load_builtins()
    return name in _kinds


def choices() -> list[tuple[str, str]]:
    """AlertRule.kind's choices (a callable, so kinds registered later are offered too)."""
    _load_builtins()
    return [(kind.name, kind.label) for kind in _kinds.values()]


def _load_builtins() -> None:
    # drift's built-in kinds register when their module is imported. drift.models cannot import
    # it (it imports drift.models), so the first lookup does; lookups only happen once apps are ready.
    importlib.import_module(BUILTIN_MODULE)
