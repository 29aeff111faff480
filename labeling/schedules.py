"""The labeling app's periodic tasks, created after migrations like the fleet's (devices.schedules)."""

from devices import schedules


def default_schedules() -> dict[str, tuple[str, int]]:
    return {
        "labeling: return expired leases to the queue": ("labeling.release_expired_leases", 60),
        "labeling: queue recently quarantined samples": ("labeling.enqueue_quarantined", 300),
        "labeling: queue the random audit share": ("labeling.sample_audit", 3600),
        "labeling: requeue lost snapshot builds and stuck exports": ("labeling.recover_snapshot_work", 600),
    }


def install_default_schedules(**kwargs) -> None:
    schedules.install(default_schedules())
