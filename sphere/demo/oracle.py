"""The people of an unattended demo, answering from the simulator's ground truth.

They act through the services the pages and admin actions call, as the ``oracle`` user, so
everything they do is recorded and published live like a person's work:

- **operator** (``judge_drift``): a pending drift event raised on a changed stream by a model
  that predates the change (``stale``: the fleet's model at the onset) is confirmed; any other
  is a false alarm and rejected — an unchanged stream, or a retrained model whose monitors fired
  on the very data it was trained for. Events the simulator did not raise are left to people.
- **labeler** (``label``): takes tasks from the queue in its order (``labeling.services.next_task``)
  and labels each with the true class of its sample — also the uncertain predictions, which
  devices send without an image: a quarantined sample with the same features is folded into
  such a task and waits for its label (docs/demo.md), so an unlabeled one holds back images
  training needs. Tasks of samples the simulator did not make are skipped.
- **release manager** (``release``): once a training job makes a challenger, rolls it out in
  canary phases with the demo's gates; once that rollout completed, resolves the drift events
  it answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Q

from drift import verdicts
from drift.models import DriftEvent, DriftSample, DriftStatus
from labeling import services as labeling
from labeling.models import LabelTask
from registry import rollouts, versions
from registry.models import CHALLENGER, CHAMPION, LIVE_ROLLOUT_STATUSES, ModelFamily, Rollout, RolloutStatus
from sphere.demo.simulator import Ledger, Truth


@dataclass
class Oracle:
    ledger: Ledger
    user: object
    family: ModelFamily
    phases: list[float]
    gates: dict
    stale: set[str] = field(default_factory=set)  # model versions that never saw the change
    confirmed: int = 0
    rejected: int = 0
    labeled: int = 0
    skipped: list[int] = field(default_factory=list)
    _unknown_events: set[int] = field(default_factory=set)

    # --- operator -------------------------------------------------------------------------------

    def judge_drift(self, limit: int = 200) -> tuple[int, int]:
        """Confirm or reject the pending events the simulator knows; returns (confirmed, rejected)."""
        pending = (
            DriftEvent.objects.filter(status=DriftStatus.PENDING)
            .exclude(pk__in=self._unknown_events)
            .order_by("created")
            .values_list("pk", "client_id", "model_version")[:limit]
        )
        confirm, reject = [], []
        for pk, client_id, model_version in pending:
            truth = self.ledger.truth(client_id)
            if truth is None:
                self._unknown_events.add(pk)
            else:
                (confirm if truth.drifted and model_version in self.stale else reject).append(pk)
        confirmed = self._decide(confirm, DriftStatus.CONFIRMED, "oracle: this device's stream had changed")
        rejected = self._decide(reject, DriftStatus.REJECTED, "oracle: false alarm, nothing changed for this model")
        self.confirmed += confirmed
        self.rejected += rejected
        return confirmed, rejected

    def _decide(self, pks: list[int], status: str, note: str) -> int:
        return verdicts.decide(DriftEvent.objects.filter(pk__in=pks), status, by=self.user, note=note) if pks else 0

    # --- labeler --------------------------------------------------------------------------------

    def label(self, budget: int) -> int:
        """Label up to ``budget`` tasks (skipped ones count too, so a step stays short)."""
        labeled = 0
        for _ in range(budget):
            task = labeling.next_task(self.user, self.family.class_set, skipped=self.skipped)
            if task is None:
                break
            truth = self.truth_of(task)
            if truth is None:
                labeling.skip(self.user, task.pk)
                self.skipped.append(task.pk)
                continue
            labeling.record_label(self.user, task.pk, str(truth.label))
            labeled += 1
        self.labeled += labeled
        return labeled

    def truth_of(self, task: LabelTask) -> Truth | None:
        if task.drift_sample_id is not None:
            client_id = DriftSample.objects.filter(pk=task.drift_sample_id).values_list("client_id", flat=True).first()
            return self.ledger.truth(client_id) if client_id else None
        if task.prediction_id is not None:
            return self.ledger.truth(task.prediction_id)
        return None

    # --- release manager ------------------------------------------------------------------------

    def release(self) -> Rollout | None:
        """Roll a new challenger out (canary first); returns the rollout it started, if any."""
        challenger = versions.alias_version(self.family, CHALLENGER)
        champion = versions.alias_version(self.family, CHAMPION)
        if challenger is None or challenger == champion or Rollout.objects.filter(version=challenger).exists():
            return None
        if Rollout.objects.filter(family=self.family, status__in=LIVE_ROLLOUT_STATUSES).exists():
            return None
        return rollouts.start_rollout(
            challenger,
            phases=self.phases,
            gates=self.gates,
            name=f"demo: {challenger.label} canary",
            by=self.user,
        )

    def resolve_answered_drift(self) -> int:
        """Once a rollout it started completed: resolve the confirmed events of the models it
        replaced (the drift they saw is answered). Safe to call again: only confirmed events move."""
        done = Rollout.objects.filter(family=self.family, status=RolloutStatus.COMPLETED, created_by=self.user)
        resolved = 0
        for rollout in done.select_related("version__family"):
            answered = DriftEvent.objects.filter(status=DriftStatus.CONFIRMED, created__lte=rollout.finished_at).filter(
                ~Q(model_version=rollout.version.label)
            )
            note = f"oracle: {rollout.version.label} rolled out to the fleet"
            resolved += verdicts.decide(answered, DriftStatus.RESOLVED, by=self.user, note=note)
        return resolved
