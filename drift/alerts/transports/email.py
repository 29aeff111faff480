"""E-mail through Django's mail backend (EMAIL_* settings; the console backend on embedded)."""

from __future__ import annotations

import json
import smtplib

from django.conf import settings
from django.core.mail import send_mail

from drift.alerts.transports.base import TransportError

KIND = "email"


def send(channel, alert, payload: dict) -> None:
    subject = f"[Sphere] {payload['status']}: {payload['rule']} — {payload['subject']}"
    body = f"{payload['message']}\n\n{json.dumps(payload, indent=2, default=str)}\n"
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, channel.addresses, fail_silently=False)
    except smtplib.SMTPRecipientsRefused as exc:
        raise TransportError(f"Recipients refused: {exc}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise TransportError(f"Mail server error: {exc}", transient=True) from exc
