"""A JSON POST signed like Stripe's webhooks, the only outbound HTTP of alerts (tests replace ``post``).

``X-Sphere-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by the channel's
secret>``: the receiver recomputes it over the raw body, compares in constant time and rejects a
timestamp too old (a replayed request).

``X-Sphere-Delivery: <uuid>`` (also the body's ``delivery``, which the signature covers) is the
same on every attempt at one notification: a receiver that saw it already drops the repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request

from django.core.serializers.json import DjangoJSONEncoder

from drift.alerts.transports.base import TransportError

KIND = "webhook"
TIMEOUT_S = 10
SIGNATURE_HEADER = "X-Sphere-Signature"
DELIVERY_HEADER = "X-Sphere-Delivery"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    signed = f"{timestamp}.".encode() + body
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


def send(channel, payload: dict, delivery_id: str) -> None:
    body = json.dumps(payload, cls=DjangoJSONEncoder, sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Sphere-Alerts/1",
        SIGNATURE_HEADER: signature(channel.secret, int(time.time()), body),
        DELIVERY_HEADER: delivery_id,
    }
    status = post(channel.target.strip(), body, headers)
    if not 200 <= status < 300:
        # A 5xx or 429 may pass; another 4xx will not.
        raise TransportError(f"HTTP {status} from the webhook.", transient=status >= 500 or status == 429)


def post(url: str, body: bytes, headers: dict) -> int:
    """POST and return the status code; TransportError when no response came."""
    if not url.startswith(("http://", "https://")):
        raise TransportError(f"Not an http(s) URL: {url!r}.")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 (checked above)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 (checked above)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise TransportError(f"Webhook unreachable: {exc}", transient=True) from exc
