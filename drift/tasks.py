"""Periodic drift work. Thin: each task calls one service and is safe to run twice."""

from celery import shared_task

from drift import incidents, reports


@shared_task(name="drift.triage_incidents", ignore_result=True)
def triage_incidents() -> int:
    return len(incidents.triage_recent())


@shared_task(name="drift.run_report", ignore_result=True)
def run_report(report_pk: int) -> str:
    return reports.run_report(report_pk)


@shared_task(name="drift.run_due_reports", ignore_result=True)
def run_due_reports() -> int:
    return reports.run_due_policies()
