"""Extension points for apps to the right of ``drift`` (labeling).

When an operator confirms a drift event, its quarantined samples are worth labeling. ``drift``
does not know the labeling queue; the labeling app registers a receiver, called after commit as
``receiver(event_id=<DriftEvent pk>, sample_ids=[<DriftSample pk>, ...])``.
"""

from __future__ import annotations

from collections.abc import Callable

ConfirmedSamplesReceiver = Callable[..., None]

_confirmed_samples_receivers: list[ConfirmedSamplesReceiver] = []


def register_confirmed_samples_receiver(receiver: ConfirmedSamplesReceiver) -> ConfirmedSamplesReceiver:
    if receiver not in _confirmed_samples_receivers:
        _confirmed_samples_receivers.append(receiver)
    return receiver


def unregister_confirmed_samples_receiver(receiver: ConfirmedSamplesReceiver) -> None:
    if receiver in _confirmed_samples_receivers:
        _confirmed_samples_receivers.remove(receiver)


def confirmed_samples_receivers() -> tuple[ConfirmedSamplesReceiver, ...]:
    return tuple(_confirmed_samples_receivers)
