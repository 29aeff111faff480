"""The registry's periodic tasks, created after migrations like the fleet's (devices.schedules)."""

from devices import schedules

# Timeouts, joiners and gates are judged this often; the sync path never waits for it.
ROLLOUT_TICK_S = 30
# Policies are cheap to check (a few counts); a job's own run is what takes time.
POLICY_CHECK_S = 300
STALE_JOB_CHECK_S = 300


def default_schedules() -> dict[str, tuple[str, int]]:
    return {
        "registry: tick rollouts (timeouts, joiners, gates)": ("registry.tick_rollouts", ROLLOUT_TICK_S),
        "registry: check retraining policies": ("registry.check_policies", POLICY_CHECK_S),
        "registry: fail lost training jobs, requeue lost messages": ("registry.fail_stale_jobs", STALE_JOB_CHECK_S),
    }


def install_default_schedules(**kwargs) -> None:
    schedules.install(default_schedules())
