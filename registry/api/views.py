"""Operator API of the registry, and server-side prediction.

Operator endpoints (``/api/v1/registry/…``) take staff sessions only (devices get 403) with
Django model permissions: reading needs ``view_<model>``; moving an alias needs
``registry.change_modelversion``; running, pausing and resuming a policy
``registry.change_retrainingpolicy``; cancelling a job ``registry.change_trainingjob``; starting a
rollout ``registry.add_rollout`` and acting on one ``registry.change_rollout``. A refusal by a
rule (a busy policy, a rollout in the wrong state, an archived version) is a 409 with the reason.

``POST /api/v1/models/<family>/predict`` serves thin clients: enrolled devices with their bearer
token, and applications signed in as a user holding ``registry.view_modelversion``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import django_filters
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Max, OuterRef, Prefetch, Subquery
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.api.ingest import json_response
from devices.api.views import PayloadTooLarge
from registry import jobs, serving, versions
from registry.api import serializers as s
from registry.models import (
    ACTIVE_JOB_STATUSES,
    Alias,
    AliasEvent,
    ModelFamily,
    ModelVersion,
    RetrainingPolicy,
    Rollout,
    TrainingJob,
)
from registry.policies import PolicyBusy, run_policy, set_enabled
from sphere.auth import DeviceTokenAuthentication
from sphere.middleware import declared_length
from sphere.pagination import DefaultCursorPagination
from sphere.permissions import IsOperator, OperatorModelPermissions, is_device

PREDICT_PERMISSION = "registry.view_modelversion"
MOVE_ALIAS_PERMISSION = "registry.change_modelversion"


class RegistryPermissions(OperatorModelPermissions):
    """Model permissions, where a POST action that changes a row through a service asks for the
    permission in the view's ``action_permissions`` (a ``change``), not the ``add`` of a POST."""

    def has_permission(self, request, view):
        needed = getattr(view, "action_permissions", {}).get(getattr(view, "action", None))
        if needed and request.method not in permissions.SAFE_METHODS:
            return request.user.has_perm(needed)
        return super().has_permission(request, view)


class ViewOrderedCursorPagination(DefaultCursorPagination):
    """Cursor pagination in the order the view picks for the request (``cursor_ordering``): the
    one an index serves for that filter, so page 100 costs what page 1 does."""

    def get_ordering(self, request, queryset, view):
        return tuple(view.cursor_ordering(request))


class RegistryViewSet(viewsets.GenericViewSet):
    permission_classes = [IsOperator, RegistryPermissions]
    pagination_class = ViewOrderedCursorPagination
    action_permissions: dict[str, str] = {}

    def cursor_ordering(self, request) -> tuple[str, ...]:
        return ("-pk",)

    def refused(self, exc: Exception) -> Response:
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)

    def body(self, serializer_class, **context):
        serializer = serializer_class(data=self.request.data, context={"request": self.request, **context})
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


# --- families and aliases ---------------------------------------------------------------------


def alias_row(alias: Alias) -> dict:
    return {
        "alias": alias.name,
        "version": alias.version.label,
        "version_id": alias.version_id,
        "updated": alias.updated,
    }


def parse_when(text: str) -> datetime:
    """An ISO 8601 time; without an offset it is UTC. A bad one is a 400 naming ``at``."""
    when = parse_datetime(text.strip().replace(" ", "+")) if text else None  # a '+' arrives as ' ' unescaped
    if when is None:
        raise ValidationError({"at": f"Not an ISO 8601 date and time: {text!r}."})
    return when if timezone.is_aware(when) else timezone.make_aware(when, UTC)


class FamilyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, RegistryViewSet):
    """Model families by name, with their aliases; ``aliases/`` moves one, ``alias-history/``
    lists the moves and answers "which version was it at <time>"."""

    serializer_class = s.FamilySerializer
    lookup_field = "name"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"
    action_permissions = {"aliases": MOVE_ALIAS_PERMISSION}

    def get_queryset(self):
        aliases = Alias.objects.select_related("version").order_by("name")
        return (
            ModelFamily.objects.select_related("class_set")
            .prefetch_related(Prefetch("aliases", queryset=aliases))
            .annotate(latest_number=Max("versions__number"))
        )

    def cursor_ordering(self, request):
        return ("-at", "-id") if self.action == "alias_history" else ("name",)

    def get_family(self) -> ModelFamily:
        family = ModelFamily.objects.filter(name=self.kwargs["name"]).first()
        if family is None:
            raise NotFound(f"No model family {self.kwargs['name']!r}.")
        return family

    @extend_schema(
        request=s.AliasMoveSerializer,
        responses={200: OpenApiResponse(description='{"family", "aliases": [{"alias", "version", ...}]}'), 409: None},
    )
    @action(detail=True, methods=["get", "post"])
    def aliases(self, request, name=None):
        """GET: where each alias points. POST {"alias", "version", "reason"?}: move one (null removes it)."""
        family = self.get_family()
        answer = {"family": family.name}
        if request.method == "POST":
            data = self.body(s.AliasMoveSerializer, family=family)
            try:
                event = versions.move_alias(
                    family, data["alias"], data["version"], by=request.user, reason=data["reason"] or "via the API"
                )
            except ValueError as exc:
                return self.refused(exc)
            answer["moved"] = event is not None
            answer["event"] = s.AliasEventSerializer(event).data if event else None
        current = Alias.objects.filter(family=family).select_related("version__family").order_by("name")
        return Response({**answer, "aliases": [alias_row(alias) for alias in current]})

    @extend_schema(
        parameters=[
            OpenApiParameter("alias", str, description="Only this alias."),
            OpenApiParameter("at", str, description="ISO 8601: answer where the alias(es) pointed then."),
        ],
        responses={200: s.AliasEventSerializer(many=True)},
    )
    @action(detail=True, methods=["get"], url_path="alias-history")
    def alias_history(self, request, name=None):
        """The moves, newest first; with ``at``, where the alias (or every alias) pointed then."""
        family = self.get_family()
        alias = request.query_params.get("alias", "").strip()
        if "at" in request.query_params:
            when = parse_when(request.query_params["at"])
            if alias:
                version = versions.alias_at(family, alias, when)
                return Response(
                    {
                        "family": family.name,
                        "alias": alias,
                        "at": when,
                        "version": s.label_of(version),
                        "version_id": version.pk if version else None,
                    }
                )
            return Response({"family": family.name, "at": when, "aliases": versions.aliases_at(family, when)})
        events = AliasEvent.objects.filter(family=family).select_related("version__family", "previous__family", "by")
        if alias:
            events = events.filter(alias=alias)
        page = self.paginate_queryset(events)
        return self.get_paginated_response(s.AliasEventSerializer(page, many=True).data)


# --- versions ---------------------------------------------------------------------------------


class VersionFilter(django_filters.FilterSet):
    family = django_filters.CharFilter(field_name="family__name")

    class Meta:
        model = ModelVersion
        fields = ["family", "status", "source"]


class VersionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, RegistryViewSet):
    """Versions, newest first, by id or label (``/versions/digits@4/``). Filtered by family the
    cursor walks the (family, -number) index; otherwise the primary key."""

    filterset_class = VersionFilter
    lookup_value_regex = r"[^/]+"

    def get_queryset(self):
        aliases = Prefetch("aliases", queryset=Alias.objects.only("id", "name", "version_id"))
        queryset = ModelVersion.objects.select_related("family").prefetch_related(aliases)
        if self.action == "retrieve":
            queryset = queryset.select_related(
                "parent__family", "snapshot__class_set", "training_job", "policy", "created_by"
            ).prefetch_related("incidents")
        return queryset

    def get_serializer_class(self):
        return s.VersionDetailSerializer if self.action == "retrieve" else s.VersionSerializer

    def cursor_ordering(self, request):
        return ("-number",) if request.query_params.get("family") else ("-pk",)

    def get_object(self):
        ref = self.kwargs["pk"]
        parsed = versions.parse_label(ref)
        if parsed is not None:
            found = self.get_queryset().filter(family__name=parsed[0], number=parsed[1]).first()
        else:
            found = self.get_queryset().filter(pk=int(ref)).first() if ref.isdigit() else None
        if found is None:
            raise NotFound(f"No version {ref!r}: give its id or its label (family@number).")
        self.check_object_permissions(self.request, found)
        return found


# --- policies and jobs ------------------------------------------------------------------------


class PolicyFilter(django_filters.FilterSet):
    family = django_filters.CharFilter(field_name="family__name")

    class Meta:
        model = RetrainingPolicy
        fields = ["family", "enabled"]


class PolicyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, RegistryViewSet):
    """Policies are configured in the admin; here they are read, run by hand, paused and resumed.
    A policy is found by id or by name."""

    filterset_class = PolicyFilter
    lookup_value_regex = r"[^/]+"
    action_permissions = dict.fromkeys(("run", "pause", "resume"), "registry.change_retrainingpolicy")

    def get_queryset(self):
        active = TrainingJob.objects.filter(policy=OuterRef("pk"), status__in=ACTIVE_JOB_STATUSES).values("pk")[:1]
        return RetrainingPolicy.objects.select_related("family").annotate(active_job=Subquery(active))

    def get_serializer_class(self):
        return s.PolicyDetailSerializer if self.action == "retrieve" else s.PolicySerializer

    def get_object(self):
        ref = self.kwargs["pk"]
        queryset = self.get_queryset()
        found = queryset.filter(pk=int(ref)).first() if ref.isdigit() else queryset.filter(name=ref).first()
        if found is None:
            raise NotFound(f"No retraining policy {ref!r}.")
        self.check_object_permissions(self.request, found)
        return found

    @extend_schema(request=s.ReasonSerializer, responses={202: s.JobSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def run(self, request, pk=None):
        """Start a job now (202 with the job); 409 with the reason when the policy is busy, in
        cooldown or its breaker is open."""
        data = self.body(s.ReasonSerializer)
        policy = self.get_object()
        try:
            job = run_policy(policy, by=request.user, reason=data["reason"])
        except PolicyBusy as exc:
            return self.refused(exc)
        return Response(s.JobSerializer(job_queryset().get(pk=job.pk)).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={200: s.PolicySerializer})
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        set_enabled(self.get_object(), False)
        return Response(s.PolicySerializer(self.get_object()).data)

    @extend_schema(request=None, responses={200: s.PolicySerializer})
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Enable the policy again; an open circuit breaker is closed too."""
        set_enabled(self.get_object(), True)
        return Response(s.PolicySerializer(self.get_object()).data)


def job_queryset():
    return TrainingJob.objects.select_related(
        "family", "policy", "base_version__family", "produced_version__family", "requested_by"
    )


class JobFilter(django_filters.FilterSet):
    family = django_filters.CharFilter(field_name="family__name")

    class Meta:
        model = TrainingJob
        fields = ["family", "status", "policy", "trigger"]


class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, RegistryViewSet):
    serializer_class = s.JobSerializer
    filterset_class = JobFilter
    action_permissions = {"cancel": "registry.change_trainingjob"}

    def get_queryset(self):
        return job_queryset()

    @extend_schema(request=None, responses={200: s.JobSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel a queued job; a running one finishes or fails on its own (409)."""
        job = self.get_object()
        if not jobs.cancel(job):
            return self.refused(f"Job {job.pk} is {job.status}: only a queued job can be cancelled.")
        return Response(self.get_serializer(self.get_object()).data)


# --- rollouts ---------------------------------------------------------------------------------


def _rollout_call(verb: str, rollout: Rollout, *, by, reason: str, force: bool) -> Rollout:
    from registry import rollouts

    calls = {
        "pause": lambda: rollouts.pause(rollout, by=by, reason=reason),
        "resume": lambda: rollouts.resume(rollout, by=by),
        "approve": lambda: rollouts.approve(rollout, by=by),
        "advance": lambda: rollouts.advance(rollout, by=by, force=force),
        "rollback": lambda: rollouts.rollback(rollout, by=by, reason=reason),
        "cancel": lambda: rollouts.cancel(rollout, by=by, reason=reason),
    }
    return calls[verb]()


ROLLOUT_VERBS = ("pause", "resume", "approve", "advance", "rollback", "cancel")


class RolloutFilter(django_filters.FilterSet):
    family = django_filters.CharFilter(field_name="family__name")

    class Meta:
        model = Rollout
        fields = ["family", "status"]


class RolloutViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, RegistryViewSet):
    """Rollouts, newest first. POST starts one (registry.rollouts.start_rollout); POST
    ``<id>/pause|resume|approve|advance|rollback|cancel/`` acts on it (409 when its state does
    not allow it)."""

    filterset_class = RolloutFilter
    action_permissions = dict.fromkeys(ROLLOUT_VERBS, "registry.change_rollout")

    def get_queryset(self):
        return Rollout.objects.select_related("family", "version__family", "baseline__family", "created_by")

    def get_serializer_class(self):
        return s.RolloutSerializer if self.action == "list" else s.RolloutDetailSerializer

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        context = {**self.get_serializer_context(), "assignment_counts": s.assignment_counts(r.pk for r in page)}
        return self.get_paginated_response(s.RolloutSerializer(page, many=True, context=context).data)

    @extend_schema(request=s.RolloutCreateSerializer, responses={201: s.RolloutDetailSerializer, 409: None})
    def create(self, request, *args, **kwargs):
        from registry.rollouts import RolloutError, start_rollout

        data = dict(self.body(s.RolloutCreateSerializer))
        version = data.pop("version")
        try:
            rollout = start_rollout(version, by=request.user, **data)
        except DjangoValidationError as exc:
            raise ValidationError(s.rollout_errors(exc))
        except RolloutError as exc:
            return self.refused(exc)
        return Response(self._detail(rollout), status=status.HTTP_201_CREATED)

    def _detail(self, rollout: Rollout) -> dict:
        return s.RolloutDetailSerializer(self.get_queryset().get(pk=rollout.pk)).data

    def _act(self, request, verb: str) -> Response:
        from registry.rollouts import RolloutError

        data = self.body(s.RolloutActionSerializer)
        rollout = self.get_object()
        try:
            _rollout_call(verb, rollout, by=request.user, reason=data["reason"], force=data["force"])
        except RolloutError as exc:
            return self.refused(exc)
        return Response(self._detail(rollout))

    @extend_schema(request=s.RolloutActionSerializer, responses={200: s.RolloutDetailSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._act(request, "pause")

    @extend_schema(request=None, responses={200: s.RolloutDetailSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._act(request, "resume")

    @extend_schema(request=None, responses={200: s.RolloutDetailSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        return self._act(request, "approve")

    @extend_schema(request=s.RolloutActionSerializer, responses={200: s.RolloutDetailSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def advance(self, request, pk=None):
        """Next phase now; the gates must pass unless {"force": true}."""
        return self._act(request, "advance")

    @extend_schema(request=s.RolloutActionSerializer, responses={200: s.RolloutDetailSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def rollback(self, request, pk=None):
        return self._act(request, "rollback")

    @extend_schema(request=s.RolloutActionSerializer, responses={200: s.RolloutDetailSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._act(request, "cancel")


# --- prediction -------------------------------------------------------------------------------

class CanPredict(permissions.BasePermission):
    message = "Predictions need a device token, or a user with the registry.view_modelversion permission."

    def has_permission(self, request, view):
        user = request.user
        return is_device(request) or bool(user and user.is_authenticated and user.has_perm(PREDICT_PERMISSION))


class PredictView(APIView):
    """``POST /api/v1/models/<family>/predict``: a batch of 1..1,000 feature vectors (or images)
    through a version of the family, by alias, number or label (default: the champion).

    Body: ``{"version": "champion", "instances": [[float × feature_dim], …]}`` or ``{"images":
    [base64 PNG, …]}`` (images go through the shipped extractor, as on a device). Answer:
    ``{"version": "digits@4", "predictions": [{"label", "confidence", "probabilities": top 3}]}``.
    The bundle is loaded once per process; with PREDICT_CACHE_SECONDS > 0 answers are cached by
    (bundle sha256, sha256 of the inputs)."""

    authentication_classes = [DeviceTokenAuthentication, SessionAuthentication]
    permission_classes = [CanPredict]
    parser_classes = []  # read here with orjson: DRF's parser would cost more than the model

    def initial(self, request, *args, **kwargs):
        limit = settings.API_MAX_BODY_BYTES
        if declared_length(request) > limit:
            raise PayloadTooLarge(f"Request body exceeds the API's limit of {limit} bytes.")
        super().initial(request, *args, **kwargs)

    @extend_schema(
        request={"application/json": {"type": "object"}},
        responses={
            200: OpenApiResponse(description='{"version", "predictions": [{"label", "confidence", "probabilities"}]}'),
            400: OpenApiResponse(description="Malformed body, wrong feature dimension, non-finite values."),
            404: OpenApiResponse(description="Unknown family or version."),
            413: OpenApiResponse(description="Body over API_MAX_BODY_BYTES."),
            415: OpenApiResponse(description="Not application/json."),
        },
    )
    def post(self, request, family):
        if request.content_type.split(";")[0].strip() != "application/json":
            return json_response({"detail": "Content-Type must be application/json."}, status=415)
        try:
            body = serving.parse_body(request.body)
            version = versions.resolve(family, body["version"])
            kind, inputs = serving.read_inputs(body, version)
        except versions.VersionNotFound as exc:
            return json_response({"detail": str(exc)}, status=404)
        except serving.PredictError as exc:
            return json_response({"detail": str(exc)}, status=400)
        predictions, cache_state = serving.predict_cached(version, kind, inputs)
        response = json_response({"version": version.label, "predictions": predictions})
        response["X-Predict-Cache"] = cache_state
        return response
