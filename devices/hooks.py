"""Extension points for apps to the right of ``devices`` (drift, labeling, registry).

The heartbeat answer is the device's desired state. ``devices`` knows only the group config;
later apps add their part (assigned model version, drift verdicts) by registering a provider,
so the dependency graph stays a ladder.
"""

from __future__ import annotations

from collections.abc import Callable

DesiredStateProvider = Callable[["Device"], dict]  # noqa: F821 - documented type only

_desired_state_providers: list[DesiredStateProvider] = []


def register_desired_state_provider(provider: DesiredStateProvider) -> DesiredStateProvider:
    """Add ``provider(device) -> dict``; its keys are merged into every desired-state answer."""
    if provider not in _desired_state_providers:
        _desired_state_providers.append(provider)
    return provider


def desired_state_providers() -> tuple[DesiredStateProvider, ...]:
    return tuple(_desired_state_providers)


# Called after commit as ``receiver(device_id=..., client_ids=[...])`` with the client ids
# of newly stored predictions whose confidence lies in their model's uncertain band. The
# labeling app registers the receiver that queues them for labeling.
UncertainPredictionReceiver = Callable[..., None]

_uncertain_prediction_receivers: list[UncertainPredictionReceiver] = []


def register_uncertain_prediction_receiver(receiver: UncertainPredictionReceiver) -> UncertainPredictionReceiver:
    if receiver not in _uncertain_prediction_receivers:
        _uncertain_prediction_receivers.append(receiver)
    return receiver


def unregister_uncertain_prediction_receiver(receiver: UncertainPredictionReceiver) -> None:
    if receiver in _uncertain_prediction_receivers:
        _uncertain_prediction_receivers.remove(receiver)


def uncertain_prediction_receivers() -> tuple[UncertainPredictionReceiver, ...]:
    return tuple(_uncertain_prediction_receivers)


# Called inside the heartbeat's transaction as ``receiver(device, heartbeat)`` once a new
# (not replayed) heartbeat is applied: the registry moves rollout assignments on what the
# device reports (serving version, bundle outcome).
HeartbeatReceiver = Callable[..., None]

_heartbeat_receivers: list[HeartbeatReceiver] = []


def register_heartbeat_receiver(receiver: HeartbeatReceiver) -> HeartbeatReceiver:
    if receiver not in _heartbeat_receivers:
        _heartbeat_receivers.append(receiver)
    return receiver


def heartbeat_receivers() -> tuple[HeartbeatReceiver, ...]:
    return tuple(_heartbeat_receivers)
