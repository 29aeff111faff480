"""The device fleet (``fleet``) and what devices send besides heartbeats (``ingest``)."""

from devices.models.fleet import (  # noqa: F401
    METRIC_FIELDS,
    Device,
    DeviceCredential,
    DeviceGroup,
    DeviceStatus,
    DeviceTag,
    EnrollmentToken,
    Telemetry,
)
from devices.models.health import TelemetryBaseline  # noqa: F401
from devices.models.ingest import (  # noqa: F401
    ConfidenceBand,
    OperationalLog,
    Package,
    PackageKind,
    PackageStatus,
    PredictionImage,
    PredictionLog,
    StateSnapshot,
)
