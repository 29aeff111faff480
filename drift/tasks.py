"""Periodic drift work. Thin: each task calls one service and is safe to run twice."""

from celery import shared_task

from drift import incidents


@shared_task(name="drift.triage_incidents", ignore_result=True)
def triage_incidents() -> int:
    return len(incidents.triage_recent())
