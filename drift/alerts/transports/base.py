"""What every transport raises when a notification could not be delivered."""


class TransportError(Exception):
    """Delivery failed. ``transient`` failures (timeouts, 5xx, a refused connection) are retried
    by drift.send_notification; permanent ones (a 4xx, a bad address) stop at once."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient
