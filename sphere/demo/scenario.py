"""The server side of the demo: what an operator would have set up before the story starts.

- the ``digits`` family and class set (they come with the migrations; a flushed test database
  gets them back here);
- the **initial model**: scaler + PCA + KNN on the shipped extractor's features of the shipped
  digits' training split, restricted to the classes the story says it knows (0–6), registered
  as a version and made champion; the fleet gets it through an immediate rollout (``[1.0]``);
- a **retraining policy** that triggers on confirmed drift and enough new labels (the other
  policies of the family are paused, so one job answers the drift);
- one **device group** per simulated group (a short heartbeat, so the pages move quickly) and
  an **enrollment token** for each, so devices land in their group when they enroll;
- faster **schedules** for the periodic work the loop waits on (policy checks, rollout ticks,
  queueing quarantined samples, incident triage), written to the beat's database schedule;
- the **oracle** user the unattended run acts as.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from devices.models import DeviceGroup
from devices.services import create_enrollment_token
from edge_client.datagen import load_digits_sample
from labeling.models import ClassSet
from registry import rollouts, training, versions
from registry.bundles import build_bundle
from registry.models import CHAMPION, ModelFamily, ModelVersion, RetrainingPolicy, Rollout
from sphere.demo.simulator import GROUPS, KNOWN_CLASSES, Scenario

FAMILY = "digits"
DIGITS = [str(n) for n in range(10)]
POLICY = "digits demo"
ORACLE_USERNAME = "oracle"
# The initial model: the same kind of model a training job produces, with fixed settings.
INITIAL_SETTING = {"n_components": 16, "k": 3, "weights": "uniform"}
MAX_REFERENCES = 1000
# Periodic tasks the loop waits on, and how often the demo runs them (seconds).
FAST_SCHEDULES = {
    "registry.check_policies": 5,
    "registry.tick_rollouts": 3,
    "labeling.enqueue_quarantined": 5,
    "drift.triage_incidents": 10,
}


def ensure_family() -> ModelFamily:
    class_set, _ = ClassSet.objects.get_or_create(name=FAMILY, defaults={"classes": DIGITS})
    return ModelFamily.objects.get_or_create(name=FAMILY, defaults={"class_set": class_set})[0]


# --- the initial model ------------------------------------------------------------------------


def train_initial_model(family: ModelFamily, known=KNOWN_CLASSES) -> training.Fitted:
    classes = list(family.class_set.classes)
    digits = load_digits_sample()
    train = np.setdiff1d(np.arange(len(digits.labels)), digits.test_index)
    train = train[np.isin(digits.labels[train], list(known))]
    features = training.extract_features(digits.images[train].astype(np.float64))
    labels = np.array([classes.index(str(label)) for label in digits.labels[train]], dtype=np.int64)
    return training.fit_candidate(features, labels, INITIAL_SETTING, MAX_REFERENCES, len(classes), seed=0)


def register_initial_model(family: ModelFamily, known=KNOWN_CLASSES) -> ModelVersion:
    """Train, register and make champion a model of the ``known`` classes only."""
    fitted = train_initial_model(family, known)
    names = [str(label) for label in known]
    with transaction.atomic():
        ModelFamily.objects.select_for_update().get(pk=family.pk)
        number = versions.next_number(family)
        built = build_bundle(
            label=f"{family.name}@{number}",
            classes=list(family.class_set.classes),
            transform=fitted.transform,
            knn=fitted.knn,
            feature_dim=fitted.transform.input_dim,
            extra={"demo": f"trained on the shipped digits {', '.join(names)} only"},
        )
        version = versions.register_version(
            family,
            built,
            number=number,
            feature_dim=fitted.transform.input_dim,
            params={"origin": "demo", "classes": names, **INITIAL_SETTING, "references": fitted.references},
            source="demo",
        )
        versions.move_alias(
            family, CHAMPION, version, reason=f"demo: the fleet's first model (digits {names[0]}–{names[-1]})"
        )
    return version


def roll_out_to_everyone(version: ModelVersion, *, by=None) -> Rollout:
    """The fleet's first model, to every device at once: nothing to canary against yet."""
    return rollouts.start_rollout(
        version,
        phases=[1.0],
        gates={"min_observation_minutes": 0},
        name=f"demo: {version.label} to the fleet",
        by=by,
    )


def holdout_accuracy(version: ModelVersion, scenario: Scenario, group: str) -> dict:
    """``version`` (as the server loads it) on ``group``'s held-out images: none of them ever
    reached a device, so none can be in a training set."""
    images, labels = scenario.holdout(group)
    predicted, _, _ = versions.load_model(version).predict(training.extract_features(images))
    correct = np.array(predicted) == np.array([str(label) for label in labels])
    return {"accuracy": round(float(correct.mean()), 4), "samples": len(labels)}


# --- policy, groups, tokens, schedules, users -------------------------------------------------


def configure_policy(family: ModelFamily, *, min_new_labels: int) -> RetrainingPolicy:
    """The demo's policy, and only it, watches the family: one drift, one job."""
    RetrainingPolicy.objects.filter(family=family, enabled=True).exclude(name=POLICY).update(enabled=False)
    policy, _ = RetrainingPolicy.objects.update_or_create(
        name=POLICY,
        defaults={
            "family": family,
            "enabled": True,
            "on_confirmed_drift": True,
            "min_new_labels": min_new_labels,
            "cooldown_minutes": 60,
            "strategy": "replay",
            "replay_share": 0.5,
            "promotion_margin": 0.01,
            "consecutive_failures": 0,
            "breaker_open_until": None,
            "last_job_at": None,
            "created": timezone.now(),  # labels count from now on
        },
    )
    return policy


def create_groups(heartbeat_s: int, groups=GROUPS) -> dict[str, DeviceGroup]:
    made = {}
    for name in groups:
        made[name], _ = DeviceGroup.objects.update_or_create(
            name=name,
            defaults={
                "heartbeat_period_s": heartbeat_s,
                "grace_s": max(10, 3 * heartbeat_s),
                "description": f"Demo fleet: the {name} devices.",
            },
        )
    return made


def create_tokens(groups: dict[str, DeviceGroup], counts: dict[str, int], *, by=None) -> dict[str, str]:
    """One enrollment token per group with devices, good for a day: its devices join that group."""
    expires = timezone.now() + timedelta(days=1)
    tokens = {}
    for name, count in counts.items():
        if count:
            _, plaintext = create_enrollment_token(
                name=f"demo {name}", expires_at=expires, max_uses=count, group=groups[name], by=by
            )
            tokens[name] = plaintext
    return tokens


def speed_up_schedules(intervals: dict[str, int] = FAST_SCHEDULES) -> None:
    """Saved one by one: the beat's database scheduler notices a saved task, not a bulk update."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    for task, seconds in intervals.items():
        every, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
        rows = list(PeriodicTask.objects.filter(task=task))
        if not rows:
            rows = [PeriodicTask(name=f"demo: {task}", task=task)]
        for row in rows:
            row.interval, row.enabled = every, True
            row.save()


def oracle_user():
    """The unattended run's operator and labeler: a superuser nobody can sign in as."""
    user, created = get_user_model().objects.get_or_create(
        username=ORACLE_USERNAME, defaults={"is_staff": True, "is_superuser": True}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user
