"""Drift pages for operators. Views are doors: reads come from ``drift.pages.queries``, changes
go through the services that hold the rules (``drift.verdicts``, ``drift.alerts.services``)."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from drift import verdicts
from drift.alerts import services as alert_services
from drift.models import Alert, AlertStatus, DriftEvent, DriftReport, DriftStatus, Incident, IncidentKind
from drift.pages import display, queries
from sphere.pages import staff_page

VIEW_EVENTS = "drift.view_driftevent"
STATUS_FILTERS = [*DriftStatus.choices, ("all", "All")]
ALERT_FILTERS = {
    "open": ("Open", queries.OPEN_ALERT_STATUSES),
    **{value: (label, (value,)) for value, label in AlertStatus.choices},
    "all": ("All", tuple(AlertStatus.values)),
}
ALERT_ACTIONS = {"acknowledge": alert_services.acknowledge, "resolve": alert_services.resolve}


operator_page = staff_page


def _if_allowed(user, permission: str, read):
    return read() if user.has_perm(permission) else None


@operator_page(VIEW_EVENTS)
def overview(request):
    user = request.user
    status = request.GET.get("status", DriftStatus.PENDING)
    if status not in dict(STATUS_FILTERS):
        status = DriftStatus.PENDING
    page = _measured(queries.event_page(None if status == "all" else status, request.GET.get("page")))
    context = {
        "status": status,
        "statuses": STATUS_FILTERS,
        "page": page,
        "pending_count": display.shown_count(_pending_count(status, page), queries.COUNT_CAP),
        "incident_counts": _if_allowed(user, "drift.view_incident", _incident_counts),
        "incidents": _if_allowed(user, "drift.view_incident", queries.latest_open_incidents),
        "firing_count": _if_allowed(user, "drift.view_alert", _firing_count),
        "alerts": _if_allowed(user, "drift.view_alert", queries.firing_alerts),
        "reports": _if_allowed(user, "drift.view_driftreport", queries.latest_reports),
    }
    return render(request, "drift/overview.html", context)


def _measured(page):
    for event in page:
        event.measures = display.measures(event.payload)
    return page


def _pending_count(status: str, page) -> int:
    # Listing the pending events already counted them.
    return page.paginator.count if status == DriftStatus.PENDING else queries.pending_event_count()


def _incident_counts() -> list[tuple[str, str, int]]:
    counts = queries.open_incident_counts()
    return [(kind, label, counts[kind]) for kind, label in IncidentKind.choices]


def _firing_count() -> str:
    return display.shown_count(queries.firing_alert_count(), queries.COUNT_CAP)


# --- One event and its verdict ------------------------------------------------------------------


class VerdictForm(forms.Form):
    status = forms.ChoiceField(choices=[(status, status) for status in verdicts.ALLOWED])
    note = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))


@operator_page(VIEW_EVENTS)
def event_detail(request, pk: int):
    try:
        event = queries.event(pk)
    except DriftEvent.DoesNotExist:
        raise Http404("No such drift event.") from None
    samples, sample_count = queries.samples_of(event)
    context = {
        "event": event,
        "samples": samples,
        "sample_count": sample_count,
        "measures": display.measures(event.payload),
        "payload": display.pretty_json(event.payload),
        "verdict_buttons": _verdicts_from(event.status),
        "history": event.verdicts.select_related("decided_by"),
        "form": VerdictForm(),
    }
    return render(request, "drift/event.html", context)


def _verdicts_from(status: str) -> list[tuple[str, str]]:
    # The verdicts drift.verdicts allows from this status, as buttons.
    return [(to, display.VERDICT_BUTTONS[to]) for to, sources in verdicts.ALLOWED.items() if status in sources]


@require_POST
@operator_page(VIEW_EVENTS, "drift.change_driftevent")
def decide_event(request, pk: int):
    event = get_object_or_404(DriftEvent.objects.only("status"), pk=pk)
    form = VerdictForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Not changed: {_form_errors(form)}")
        return redirect("drift:event", pk=pk)
    status, note = form.cleaned_data["status"], form.cleaned_data["note"]
    if verdicts.decide(DriftEvent.objects.filter(pk=pk), status, by=request.user, note=note):
        messages.success(request, f"Drift event {pk} is now {status}. The device hears of it on its next sync.")
    else:
        event.refresh_from_db(fields=["status"])
        sources = " or ".join(sorted(verdicts.ALLOWED[status]))
        messages.error(request, f"Not changed: this event is {event.status}; only {sources} events can be {status}.")
    return redirect("drift:event", pk=pk)


def _form_errors(form) -> str:
    return "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())


# --- Incidents and reports ----------------------------------------------------------------------


@operator_page(VIEW_EVENTS, "drift.view_incident")
def incident_detail(request, pk: int):
    incident = get_object_or_404(Incident, pk=pk)
    page = _measured(queries.incident_event_page(incident, request.GET.get("page")))
    context = {
        "incident": incident,
        "page": page,
        "slices": display.evidence_slices(incident.evidence),
        "evidence": display.pretty_json(incident.evidence),
    }
    return render(request, "drift/incident.html", context)


@operator_page(VIEW_EVENTS, "drift.view_driftreport")
def report_detail(request, pk: int):
    report = get_object_or_404(DriftReport.objects.select_related("policy", "created_by"), pk=pk)
    return render(request, "drift/report.html", {"report": report, "features": display.feature_rows(report)})


# --- Alerts -------------------------------------------------------------------------------------


@operator_page(VIEW_EVENTS, "drift.view_alert")
def alerts(request):
    status = request.GET.get("status", "open")
    if status not in ALERT_FILTERS:
        status = "open"
    context = {
        "status": status,
        "statuses": [(value, label) for value, (label, _) in ALERT_FILTERS.items()],
        "page": queries.alert_page(ALERT_FILTERS[status][1], request.GET.get("page")),
    }
    return render(request, "drift/alerts.html", context)


@require_POST
@operator_page(VIEW_EVENTS, "drift.view_alert", "drift.change_alert")
def change_alert(request, pk: int):
    alert = get_object_or_404(Alert.objects.only("status"), pk=pk)
    action = request.POST.get("action", "")
    if action not in ALERT_ACTIONS:
        messages.error(request, f"Not changed: {action!r} is not one of {', '.join(ALERT_ACTIONS)}.")
    elif ALERT_ACTIONS[action](Alert.objects.filter(pk=pk), by=request.user):
        alert.refresh_from_db(fields=["status"])
        messages.success(request, f"Alert {pk} is now {alert.status}.")
    else:
        alert.refresh_from_db(fields=["status"])
        messages.error(request, f"Not changed: alert {pk} is {alert.status}, it cannot be {action}d.")
    return redirect(_back(request, reverse("drift:alerts")))


def _back(request, default: str) -> str:
    target = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return default
