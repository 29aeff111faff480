"""Builders and personas shared by the labeling tests."""

from __future__ import annotations

import itertools
import uuid

import numpy as np
from django.contrib.auth.models import Permission

from labeling.models import ClassSet, LabelTask, TaskSource
from labeling.queue import Candidate, enqueue

_keys = itertools.count()


DIGITS = [str(n) for n in range(10)]


def digits() -> ClassSet:
    # Created by labeling's data migration; a transactional test's flush deletes it for the tests after.
    return ClassSet.objects.get_or_create(name="digits", defaults={"classes": DIGITS})[0]


def candidate(*, confidence=0.5, probabilities=None, features=None, model_version="digits@1", **fields) -> Candidate:
    return Candidate(
        key=fields.pop("key", f"test:{next(_keys)}:{uuid.uuid4()}"),
        source=fields.pop("source", TaskSource.UNCERTAIN),
        model_version=model_version,
        predicted_label=fields.pop("predicted_label", "7"),
        confidence=confidence,
        probabilities=probabilities,
        features=None if features is None else np.asarray(features, dtype="<f4").tobytes(),
        **fields,
    )


def tasks(n: int, **fields) -> list[LabelTask]:
    digits()
    return enqueue([candidate(**fields) for _ in range(n)])


def user_with(django_user_model, name: str, *codenames: str):
    user = django_user_model.objects.create_user(name, password=f"pw-{name}-123")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="labeling", codename__in=codenames))
    return django_user_model.objects.get(pk=user.pk)  # fresh: permission cache empty
