"""E-mail through Django's mail backend (EMAIL_* settings; the console backend on embedded).

Every attempt at one notification carries the same Message-ID, derived from its delivery id,
so a mail system or reader that saw it already can drop a repeat.
"""

from __future__ import annotations

import json
import smtplib

from django.conf import settings
from django.core.mail import EmailMessage

from drift.alerts.transports.base import TransportError

KIND = "email"
DELIVERY_HEADER = "X-Sphere-Delivery"


def message_id(delivery_id: str) -> str:
    # The sender's domain, not this host's name: a retry from another worker keeps the same id.
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2].strip("> ") or "sphere.invalid"
    return f"<{delivery_id}@{domain}>"


def send(channel, payload: dict, delivery_id: str) -> None:
    subject = f"[Sphere] {payload['status']}: {payload['rule']} — {payload['subject']}"
    body = f"{payload['message']}\n\n{json.dumps(payload, indent=2, default=str)}\n"
    headers = {"Message-ID": message_id(delivery_id), DELIVERY_HEADER: delivery_id}
    message = EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, channel.addresses, headers=headers)
    try:
        message.send(fail_silently=False)
    except smtplib.SMTPRecipientsRefused as exc:
        raise TransportError(f"Recipients refused: {exc}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise TransportError(f"Mail server error: {exc}", transient=True) from exc
