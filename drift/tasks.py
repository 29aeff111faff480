"""Periodic drift work. Thin: each task calls one service and is safe to run twice."""

from celery import shared_task

from drift import incidents, reports
from drift.alerts import services as alerts
from drift.alerts.transports import TransportError


@shared_task(name="drift.triage_incidents", ignore_result=True)
def triage_incidents() -> int:
    return len(incidents.triage_recent())


@shared_task(name="drift.run_report", ignore_result=True)
def run_report(report_pk: int) -> str:
    return reports.run_report(report_pk)


@shared_task(name="drift.run_due_reports", ignore_result=True)
def run_due_reports() -> int:
    return reports.run_due_policies()


@shared_task(name="drift.evaluate_alerts", ignore_result=True)
def evaluate_alerts() -> int:
    return alerts.evaluate_rules()


@shared_task(bind=True, name="drift.send_notification", ignore_result=True, max_retries=3)
def send_notification(self, alert_pk: int, channel_pk: int) -> str:
    try:
        return alerts.send_notification(alert_pk, channel_pk)
    except TransportError as exc:  # only transient ones reach here; each attempt is in the audit trail
        raise self.retry(exc=exc, countdown=30 * 2**self.request.retries) from exc
