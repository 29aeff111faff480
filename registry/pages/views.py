"""Registry pages for operators. Views are doors: reads come from ``registry.pages.queries``,
changes go through the services that hold the rules (``registry.policies.run_policy`` and the
operators' actions of ``registry.rollouts``), whose refusals become the page's messages. Each
action is a POST that redirects (post/redirect/get), so a reload never acts twice."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from registry import policies, rollouts, versions
from registry.models import (
    ACTIVE_JOB_STATUSES,
    LIVE_ROLLOUT_STATUSES,
    JobStatus,
    ModelVersion,
    RetrainingPolicy,
    Rollout,
    RolloutStatus,
    TrainingJob,
)
from registry.pages import charts, display, queries
from registry.policies import PolicyBusy
from registry.rollouts import RolloutError
from sphere.files import AREA_PERMISSIONS, permissions_for
from sphere.pages import staff_page

VIEW = "registry.view_modelversion"  # also what the live "registry" topic asks (sphere.consumers)
VIEW_ALIASES = "registry.view_aliasevent"
VIEW_JOBS = "registry.view_trainingjob"
VIEW_POLICIES = "registry.view_retrainingpolicy"
VIEW_ROLLOUTS = "registry.view_rollout"
RUN_POLICY = "registry.change_retrainingpolicy"
STEER_ROLLOUT = "registry.change_rollout"
NOTE_MAX = 2000
JOB_FILTERS = {
    "all": ("All", ()),
    "active": ("Queued or running", ACTIVE_JOB_STATUSES),
    **{value: (label, (value,)) for value, label in JobStatus.choices if value not in ACTIVE_JOB_STATUSES},
}
ROLLOUT_FILTERS = {
    "all": ("All", ()),
    "live": ("Live", LIVE_ROLLOUT_STATUSES),
    **{value: (label, (value,)) for value, label in RolloutStatus.choices if value not in LIVE_ROLLOUT_STATUSES},
}
# The buttons a rollout page offers in each status: the statuses registry.rollouts accepts for
# each action (it checks again under the row lock, and its refusal is shown).
ROLLOUT_ACTIONS = {
    "approve": ("Approve", (RolloutStatus.AWAITING_APPROVAL,)),
    "pause": ("Pause", (RolloutStatus.RUNNING,)),
    "resume": ("Resume", (RolloutStatus.PAUSED,)),
    "advance": ("Advance", (RolloutStatus.RUNNING,)),
    "rollback": ("Roll back", (RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.COMPLETED)),
    "cancel": ("Cancel", LIVE_ROLLOUT_STATUSES),
}


operator_page = staff_page


def _if_allowed(user, permission: str, read):
    return read() if user.has_perm(permission) else None


def _cursor(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _other_params(request, *dropped: str) -> str:
    """The page's other query parameters, for pager links (ends with '&' when not empty)."""
    params = request.GET.copy()
    for name in dropped:
        params.pop(name, None)
    encoded = params.urlencode()
    return f"{encoded}&" if encoded else ""


def _filter(request, filters: dict) -> str:
    status = request.GET.get("status", "all")
    return status if status in filters else "all"


# --- Families and versions ------------------------------------------------------------------------


@require_GET
@operator_page(VIEW)
def index(request):
    name = request.GET.get("family", "")
    family = queries.family_named(name) if name else None
    if name and family is None:
        raise Http404(f"No model family {name!r}.")
    page = queries.version_page(
        family, after=_cursor(request.GET.get("after")), before=_cursor(request.GET.get("before"))
    )
    for version in page:
        version.headline = display.headline_metrics(version.metrics)
    context = {
        "families": queries.families(),
        "family": family,
        "page": page,
        "keep": _other_params(request, "after", "before"),
    }
    return render(request, "registry/index.html", context)


@require_GET
@operator_page(VIEW)
def version_detail(request, pk: int):
    try:
        version = queries.version(pk)
    except ModelVersion.DoesNotExist:
        raise Http404("No such model version.") from None
    user, metrics = request.user, display.metric_rows(version.metrics)
    context = {
        "version": version,
        "aliases": [alias.name for alias in version.aliases.order_by("name")],
        "download_url": _download_url(user, version),
        "device_url": versions.bundle_url(version),
        "manifest": display.manifest_summary(version.manifest),
        "metrics": metrics,
        "chart": charts.comparison_svg(metrics),
        "samples": display.param_rows((version.metrics or {}).get("samples")),
        "params": display.param_rows(version.params),
        "lineage": queries.version_lineage(version),
        "alias_moves": _if_allowed(user, VIEW_ALIASES, lambda: queries.alias_moves_of(version)),
        "rollouts": _if_allowed(user, VIEW_ROLLOUTS, lambda: queries.rollouts_of(version)),
    }
    return render(request, "registry/version.html", context)


def _download_url(user, version: ModelVersion) -> str:
    # The /files/ view decides who may fetch a bundle from the artifacts area; offer the link
    # only to those it lets through.
    default = AREA_PERMISSIONS.get(versions.ARTIFACTS, ())
    if any(user.has_perm(p) for p in permissions_for(versions.ARTIFACTS, version.bundle_key, default)):
        return reverse("stored-file", args=[versions.ARTIFACTS, version.bundle_key])
    return ""


# --- Aliases --------------------------------------------------------------------------------------


class AliasAtForm(forms.Form):
    alias = forms.ChoiceField(required=False)
    at = forms.DateTimeField(
        required=False,
        label="At (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S"),
    )

    def __init__(self, *args, names: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["alias"].choices = [("", "every alias"), *((name, name) for name in names)]


@require_GET
@operator_page(VIEW, VIEW_ALIASES)
def alias_history(request, name: str):
    family = queries.family_named(name)
    if family is None:
        raise Http404(f"No model family {name!r}.")
    form = AliasAtForm(request.GET or None, names=queries.alias_names(family))
    alias, answer = "", None
    if form.is_bound and form.is_valid():
        alias, when = form.cleaned_data["alias"], form.cleaned_data["at"]
        answer = _aliases_at(family, alias, when) if when is not None else None
    context = {
        "family": family,
        "aliases": family.aliases.select_related("version__family").order_by("name"),
        "form": form,
        "answer": answer,
        "alias": alias,
        "page": queries.alias_event_page(family, alias, request.GET.get("page")),
        "keep": _other_params(request, "page"),
    }
    return render(request, "registry/aliases.html", context)


def _aliases_at(family, alias: str, when) -> dict:
    """Where ``alias`` (or every alias) pointed at ``when``, as registry.versions answers it."""
    if alias:
        return {"when": when, "rows": [(alias, versions.alias_at(family, alias, when))]}
    numbers = {name: versions.parse_label(label)[1] for name, label in versions.aliases_at(family, when).items()}
    found = queries.versions_numbered(family, numbers.values())
    return {"when": when, "rows": [(name, found.get(number)) for name, number in numbers.items()]}


# --- Training jobs and policies -------------------------------------------------------------------


@require_GET
@operator_page(VIEW, VIEW_JOBS)
def jobs(request):
    status = _filter(request, JOB_FILTERS)
    rules = _if_allowed(request.user, VIEW_POLICIES, queries.policies)
    now = timezone.now()
    for policy in rules or ():
        policy.state = display.policy_state(policy, now)
    context = {
        "status": status,
        "statuses": [(value, label) for value, (label, _) in JOB_FILTERS.items()],
        "page": queries.job_page(JOB_FILTERS[status][1], request.GET.get("page")),
        "policies": rules,
        "keep": _other_params(request, "page"),
    }
    return render(request, "registry/jobs.html", context)


@require_GET
@operator_page(VIEW, VIEW_JOBS)
def job_detail(request, pk: int):
    try:
        job = queries.job(pk)
    except TrainingJob.DoesNotExist:
        raise Http404("No such training job.") from None
    metrics = display.metric_rows(job.result)
    context = {
        "job": job,
        "produced": getattr(job, "produced_version", None),
        "metrics": metrics,
        "chart": charts.comparison_svg(metrics),
        "samples": display.param_rows((job.result or {}).get("samples")),
        "params": display.param_rows(job.params),
        "evidence": display.pretty_json(job.evidence),
        "incidents": list(job.incidents.order_by("pk")),
    }
    return render(request, "registry/job.html", context)


@require_POST
@operator_page(VIEW, RUN_POLICY)
def run_policy(request, pk: int):
    policy = get_object_or_404(RetrainingPolicy.objects.select_related("family"), pk=pk)
    reason = request.POST.get("reason", "").strip()[:NOTE_MAX]
    try:
        job = policies.run_policy(policy, by=request.user, reason=reason or f"run now by {request.user.get_username()}")
    except PolicyBusy as exc:
        messages.error(request, f"Not started: {exc}")
    else:
        messages.success(request, f"Job {job.pk} of {policy.name} is queued.")
    return redirect(_back(request, reverse("registry:jobs")))


def _back(request, default: str) -> str:
    target = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return default


# --- Rollouts -------------------------------------------------------------------------------------


@require_GET
@operator_page(VIEW, VIEW_ROLLOUTS)
def rollouts_list(request):
    status = _filter(request, ROLLOUT_FILTERS)
    page = queries.rollout_page(ROLLOUT_FILTERS[status][1], request.GET.get("page"))
    for rollout in page:
        rollout.bar = charts.state_bar_svg(rollout.counts)
        rollout.states = display.state_cells(rollout.counts)
    context = {
        "status": status,
        "statuses": [(value, label) for value, (label, _) in ROLLOUT_FILTERS.items()],
        "page": page,
        "keep": _other_params(request, "page"),
    }
    return render(request, "registry/rollouts.html", context)


@require_GET
@operator_page(VIEW, VIEW_ROLLOUTS)
def rollout_detail(request, pk: int):
    try:
        rollout = queries.rollout(pk)
    except Rollout.DoesNotExist:
        raise Http404("No such rollout.") from None
    summary = rollouts.rollout_summary(rollout)
    judged = queries.latest_gate_decision(rollout)
    context = {
        "rollout": rollout,
        "summary": summary,
        "phases": display.phase_rows(rollout, summary),
        "totals": display.state_cells(summary["totals"]),
        "total_devices": sum(summary["totals"].values()),
        "total_bar": charts.state_bar_svg(summary["totals"]),
        "target": rollouts.describe_target(rollout),
        "judged": judged,
        "gate_rows": _gate_rows(judged, summary["gates"]),
        "page": _with_evidence(queries.decision_page(rollout, request.GET.get("page")), summary["gates"]),
        "actions": [(verb, label) for verb, (label, statuses) in ROLLOUT_ACTIONS.items() if rollout.status in statuses],
        "keep": _other_params(request, "page"),
    }
    return render(request, "registry/rollout.html", context)


def _gate_rows(decision, gates: dict) -> list[dict]:
    evidence = display.gate_evidence(decision.evidence) if decision is not None else None
    return display.gate_rows(evidence, gates) if evidence is not None else []


def _with_evidence(page, gates: dict):
    for decision in page:
        decision.gate_rows = _gate_rows(decision, gates)
        decision.evidence_text = display.pretty_json(decision.evidence) if decision.evidence else ""
    return page


class RolloutActionForm(forms.Form):
    action = forms.ChoiceField(choices=[(verb, label) for verb, (label, _) in ROLLOUT_ACTIONS.items()])
    reason = forms.CharField(required=False, max_length=NOTE_MAX)
    force = forms.BooleanField(required=False)


@require_POST
@operator_page(VIEW, VIEW_ROLLOUTS, STEER_ROLLOUT)
def act_on_rollout(request, pk: int):
    rollout = get_object_or_404(Rollout.objects.select_related("family", "version__family", "baseline__family"), pk=pk)
    form = RolloutActionForm(request.POST)
    if not form.is_valid():
        errors = "; ".join(f"{field}: {' '.join(problems)}" for field, problems in form.errors.items())
        messages.error(request, f"Nothing done: {errors}")
        return redirect("registry:rollout", pk=pk)
    verb, reason, force = form.cleaned_data["action"], form.cleaned_data["reason"].strip(), form.cleaned_data["force"]
    try:
        _steer(verb, rollout, by=request.user, reason=reason, force=force)
    except RolloutError as exc:
        messages.error(request, f"Nothing done: {exc}")
    else:
        done = ROLLOUT_ACTIONS[verb][0].lower()
        messages.success(request, f"{rollout}: {done} done; it is now {rollout.get_status_display().lower()}.")
    return redirect("registry:rollout", pk=pk)


def _steer(verb: str, rollout: Rollout, *, by, reason: str, force: bool) -> Rollout:
    calls = {
        "approve": lambda: rollouts.approve(rollout, by=by),
        "pause": lambda: rollouts.pause(rollout, by=by, reason=reason),
        "resume": lambda: rollouts.resume(rollout, by=by),
        "advance": lambda: rollouts.advance(rollout, by=by, force=force),
        "rollback": lambda: rollouts.rollback(rollout, by=by, reason=reason),
        "cancel": lambda: rollouts.cancel(rollout, by=by, reason=reason),
    }
    return calls[verb]()
