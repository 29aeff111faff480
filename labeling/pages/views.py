"""Labeling pages. Views are doors: every change goes through ``labeling.services`` (leases, labels,
skip, undo, review), reads come from ``labeling.pages.queries``, the lead's numbers from
``labeling.quality``. Each answer is a POST that redirects to the next page (post/redirect/get),
so a reload never answers twice."""

from __future__ import annotations

import time
from datetime import timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core import signing
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from labeling import quality, services
from labeling.pages import queries
from labeling.services import LabelingError
from sphere.pages import staff_page

LABEL, REVIEW, LEAD = "labeling.label_tasks", "labeling.review_labels", "labeling.lead_labeling"
SESSION_LABELS, SESSION_SKIPPED = "labeling:session_labels", "labeling:skipped"
SKIPPED_KEPT = 200  # the session stays small; a task skipped long ago may come back, which is fine
SERVED_SALT = "labeling.served"
SHORTCUT_KEYS = 10  # digits 0–9 answer the first ten classes
LEAD_DAYS, LEAD_MAX_DAYS = 7, 90
NOTE_MAX = 2000


labeling_page = staff_page


# --- The next task ------------------------------------------------------------------------------


@require_GET
@labeling_page(LABEL)
def next_task(request):
    class_set = _chosen_class_set(request.GET.get("class_set", ""))
    task = services.next_task(request.user, class_set, skipped=request.session.get(SESSION_SKIPPED, []))
    context = {
        "class_set": class_set,
        "class_sets": queries.class_sets(),
        "counts": queries.counts(request.user, class_set),
        "session_labels": request.session.get(SESSION_LABELS, 0),
        "skipped": len(request.session.get(SESSION_SKIPPED, [])),
    }
    if task is None:
        return render(request, "labeling/empty.html", context)
    return render(request, "labeling/next.html", {**context, **_task_context(task)})


def _chosen_class_set(name: str):
    if not name:
        return None
    class_set = queries.class_set_named(name)
    if class_set is None:
        raise Http404(f"No class set named {name!r}.")
    return class_set


def _task_context(task) -> dict:
    queries.attach_images([task])
    classes = task.class_set.classes
    return {
        "task": task,
        "buttons": [(str(index) if index < SHORTCUT_KEYS else "", value) for index, value in enumerate(classes)],
        # Signed, so the time a label took (Label.seconds) is the server's, and tabs don't mix.
        "served": signing.dumps([task.pk, time.time()], salt=SERVED_SALT),
        "lease_seconds": settings.LABELING_LEASE_SECONDS,
    }


@require_POST
@labeling_page(LABEL)
def label(request, pk: int):
    value = request.POST.get("value", "")
    try:
        services.record_label(request.user, pk, value, seconds=_seconds_since_served(request, pk))
    except LabelingError as error:
        messages.error(request, f"Not stored: {error}")
    else:
        _add_to_session_labels(request, 1)
        messages.success(request, f"Task {pk} labeled {value!r}. Press u to undo.")
    return _back_to_queue(request)


def _seconds_since_served(request, pk: int) -> float | None:
    try:
        task_id, served_at = signing.loads(request.POST.get("served", ""), salt=SERVED_SALT)
    except (signing.BadSignature, TypeError, ValueError):
        return None
    seconds = time.time() - served_at
    return round(seconds, 3) if task_id == pk and seconds >= 0 else None


@require_POST
@labeling_page(LABEL)
def skip(request, pk: int):
    services.skip(request.user, pk)
    skipped = [pk, *(task_id for task_id in request.session.get(SESSION_SKIPPED, []) if task_id != pk)]
    request.session[SESSION_SKIPPED] = skipped[:SKIPPED_KEPT]
    return _back_to_queue(request)


@require_POST
@labeling_page(LABEL)
def unskip(request):
    request.session[SESSION_SKIPPED] = []
    return _back_to_queue(request)


@require_POST
@labeling_page(LABEL)
def undo(request):
    try:
        task = services.undo(request.user)
    except LabelingError as error:
        messages.error(request, f"Not undone: {error}")
        return _back_to_queue(request)
    if task is None:
        minutes = int(services.UNDO_WINDOW.total_seconds() // 60)
        messages.info(request, f"Nothing to undo: you have no label from the last {minutes} minutes.")
        return _back_to_queue(request)
    _add_to_session_labels(request, -1)
    _release_task_on_screen(request, task)
    messages.info(request, f"Your label on task {task.pk} is undone; label it again.")
    return _back_to_queue(request)


def _release_task_on_screen(request, undone) -> None:
    # next_task serves the lease that expires first: the task on screen would come back before
    # the undone one. Giving it back to the queue shows the undone task next, as the labeler expects.
    on_screen = request.POST.get("task", "")
    if not undone.is_gold and on_screen.isdigit() and int(on_screen) != undone.pk:
        services.skip(request.user, int(on_screen))


@require_POST
@labeling_page(LABEL)
def touch(request, pk: int):
    return JsonResponse({"leased": services.touch_lease(request.user, pk)})


@require_GET
@labeling_page(LABEL)
def counts(request):
    class_set = _chosen_class_set(request.GET.get("class_set", ""))
    return JsonResponse(queries.counts(request.user, class_set))


def _add_to_session_labels(request, change: int) -> None:
    request.session[SESSION_LABELS] = max(0, request.session.get(SESSION_LABELS, 0) + change)


def _back_to_queue(request):
    name = request.POST.get("class_set", "")
    url = reverse("labeling:next")
    return redirect(f"{url}?{urlencode({'class_set': name})}" if name else url)


# --- Review -------------------------------------------------------------------------------------


@require_GET
@labeling_page(REVIEW)
def review_queue(request):
    context = {
        "labels": queries.review_queue(),
        "awaiting_review": queries.awaiting_review_count(),
        "note_max": NOTE_MAX,
    }
    return render(request, "labeling/review.html", context)


@require_POST
@labeling_page(REVIEW)
def review(request, pk: int):
    decision = request.POST.get("decision", "")
    if decision not in ("accept", "reject"):
        messages.error(request, f"Not reviewed: {decision!r} is neither accept nor reject.")
        return redirect("labeling:review")
    note = request.POST.get("note", "").strip()[:NOTE_MAX]
    try:
        stored = services.review(request.user, pk, accept=decision == "accept", note=note)
    except LabelingError as error:
        messages.error(request, f"Not reviewed: {error}")
    else:
        messages.success(request, f"Label {stored.value!r} on task {stored.task_id}: {stored.get_review_display()}.")
    return redirect("labeling:review")


# --- Lead ---------------------------------------------------------------------------------------


@require_GET
@labeling_page(LEAD)
def lead(request):
    days = _days(request.GET.get("days", ""))
    until = timezone.now()
    context = {
        "days": days,
        "day_choices": (1, 7, 30, LEAD_MAX_DAYS),
        "since": until - timedelta(days=days),
        "labelers": quality.labeler_quality(until - timedelta(days=days), until),
    }
    return render(request, "labeling/lead.html", context)


def _days(raw: str) -> int:
    return min(int(raw), LEAD_MAX_DAYS) if raw.isdigit() and int(raw) > 0 else LEAD_DAYS
