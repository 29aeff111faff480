"""Device API (bearer token, own data only) and operator API (staff sessions, model perms)."""

import django_filters
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from devices import services
from devices.api import serializers
from devices.models import Device, DeviceGroup, EnrollmentToken, Telemetry
from sphere.auth import DeviceTokenAuthentication
from sphere.middleware import declared_length
from sphere.permissions import IsDevice, IsOperator, OperatorModelPermissions


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"


class DeviceAPIView(APIView):
    """Base for device endpoints: bearer token only, and a per-endpoint body limit."""

    authentication_classes = [DeviceTokenAuthentication]
    permission_classes = [IsDevice]
    max_body_bytes = 64 * 1024

    def initial(self, request, *args, **kwargs):
        if declared_length(request) > self.max_body_bytes:
            raise PayloadTooLarge(f"Request body exceeds this endpoint's limit of {self.max_body_bytes} bytes.")
        super().initial(request, *args, **kwargs)

    def validated(self, serializer_class):
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


class EnrollView(DeviceAPIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "enroll"
    max_body_bytes = 16 * 1024

    @extend_schema(
        request=serializers.EnrollSerializer,
        responses={201: serializers.EnrollResponseSerializer, 401: None, 403: None, 409: None},
    )
    def post(self, request):
        data = dict(self.validated(serializers.EnrollSerializer))
        token, request_id = data.pop("enrollment_token"), data.pop("request_id")
        try:
            result = services.enroll_device(enrollment_token=token, request_id=request_id, profile=data)
        except services.EnrollmentError as exc:
            return Response({"detail": str(exc)}, status=exc.status)
        body = {
            "device_id": result.device.pk,
            "token": result.token,
            "heartbeat_period_s": result.device.heartbeat_period_s,
        }
        return Response(body, status=status.HTTP_201_CREATED)


class HeartbeatView(DeviceAPIView):
    @extend_schema(request=serializers.HeartbeatSerializer, responses=serializers.DesiredStateSerializer)
    def post(self, request):
        serializer = serializers.HeartbeatSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        state = services.record_heartbeat(request.auth, serializer.validated_data)
        if serializer.ignored_fields:
            state["ignored_fields"] = serializer.ignored_fields
        return Response(state)


class DesiredStateView(DeviceAPIView):
    @extend_schema(responses=serializers.DesiredStateSerializer)
    def get(self, request):
        return Response(services.desired_state(request.auth))


# --- Operator API -----------------------------------------------------------------------------


class OperatorViewSetMixin:
    permission_classes = [IsOperator, OperatorModelPermissions]


class DeviceFilter(django_filters.FilterSet):
    group = django_filters.CharFilter(field_name="group__name")
    tag = django_filters.CharFilter(field_name="tags__name")
    q = django_filters.CharFilter(field_name="name", lookup_expr="icontains", label="Name contains")

    class Meta:
        model = Device
        fields = ["status", "group", "tag", "q"]


class DeviceViewSet(OperatorViewSetMixin, viewsets.ModelViewSet):
    serializer_class = serializers.DeviceSerializer
    filterset_class = DeviceFilter
    http_method_names = ["get", "patch", "delete", "post", "head", "options"]
    ordering = "-created_at"

    def get_queryset(self):
        return Device.objects.select_related("group").prefetch_related("tags")

    def create(self, request, *args, **kwargs):
        return Response(
            {"detail": "Devices are created by enrolling: create an enrollment token instead."},
            status=status.HTTP_405_METHOD_NOT_ALLOWED,
        )

    @extend_schema(request=None, responses={200: OpenApiResponse(description="The new token, shown once.")})
    @action(detail=True, methods=["post"], url_path="rotate-token")
    def rotate_token(self, request, pk=None):
        self._require("devices.change_device")
        device = self.get_object()
        return Response({"device_id": device.pk, "token": services.issue_credential(device, by=request.user)})

    @extend_schema(request=None, responses={200: OpenApiResponse(description="Number of tokens revoked.")})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        self._require("devices.change_device")
        return Response({"revoked": services.revoke_credentials(self.get_object())})

    def _require(self, perm):
        if not self.request.user.has_perm(perm):
            self.permission_denied(self.request, message=f"Requires the {perm} permission.")


class DeviceGroupViewSet(OperatorViewSetMixin, viewsets.ModelViewSet):
    serializer_class = serializers.DeviceGroupSerializer
    queryset = DeviceGroup.objects.all()
    filterset_fields = ["name"]
    ordering = "name"


class TelemetryFilter(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="received_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="received_at", lookup_expr="lt")

    class Meta:
        model = Telemetry
        fields = ["device", "since", "until"]


class TelemetryViewSet(OperatorViewSetMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = serializers.TelemetrySerializer
    queryset = Telemetry.objects.all()
    filterset_class = TelemetryFilter
    ordering = "-received_at"


class EnrollmentTokenViewSet(
    OperatorViewSetMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = serializers.EnrollmentTokenSerializer
    queryset = EnrollmentToken.objects.select_related("group")
    ordering = "-created_at"

    def perform_create(self, serializer):
        data = serializer.validated_data
        enrollment, token = services.create_enrollment_token(
            name=data["name"],
            expires_at=data["expires_at"],
            max_uses=data.get("max_uses", 1),
            group=data.get("group"),
            by=self.request.user,
        )
        enrollment.token = token
        serializer.instance = enrollment

    @extend_schema(request=None, responses=serializers.EnrollmentTokenSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        if not request.user.has_perm("devices.change_enrollmenttoken"):
            self.permission_denied(request, message="Requires the devices.change_enrollmenttoken permission.")
        enrollment = services.revoke_enrollment_token(self.get_object())
        return Response(self.get_serializer(enrollment).data)
