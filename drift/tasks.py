"""Periodic drift work. Thin: each task calls one service and is safe to run twice."""

from celery import shared_task

from drift import incidents, reports
from drift.alerts import delivery
from drift.alerts import services as alerts


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
    delivery.requeue_stalled()  # the same beat picks up notifications whose task was lost
    return alerts.evaluate_rules()


# The time limits stay under delivery.SENDING_TIMEOUT, after which another run may claim the row.
@shared_task(
    bind=True,
    name="drift.send_notification",
    ignore_result=True,
    max_retries=delivery.MAX_ATTEMPTS,  # a backstop: the row's attempts bound the retries
    soft_time_limit=60,
    time_limit=90,
)
def send_notification(self, notification_pk: int, legacy_channel_pk: int | None = None) -> str:
    try:
        if legacy_channel_pk is not None:  # queued before the upgrade: (alert, channel)
            return delivery.deliver_legacy(notification_pk, legacy_channel_pk)
        return delivery.deliver(notification_pk)
    except delivery.RetryLater as exc:  # the attempt and its error are on the row already
        raise self.retry(exc=exc, countdown=exc.countdown) from exc
