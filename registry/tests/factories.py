"""Builders shared by the registry tests."""

from __future__ import annotations

from labeling.tests.factories import digits
from registry.models import ModelFamily, RetrainingPolicy


def digits_family() -> ModelFamily:
    # Created by registry's data migration; a transactional test's flush deletes it for the tests after.
    return ModelFamily.objects.get_or_create(name="digits", defaults={"class_set": digits()})[0]


def policy(family: ModelFamily | None = None, **fields) -> RetrainingPolicy:
    family = family or digits_family()
    fields.setdefault("name", f"{family.name} policy {RetrainingPolicy.objects.count() + 1}")
    return RetrainingPolicy.objects.create(family=family, **fields)
