"""Result records of a drift comparison; plain dataclasses that turn into JSON-ready dicts."""

import dataclasses
import math
from typing import Any


def _json_float(value: float | None) -> float | str | None:
    # inf/NaN are not JSON; keep them readable instead of crashing strict encoders.
    if value is None or math.isfinite(value):
        return value
    return str(value)


@dataclasses.dataclass(frozen=True)
class ColumnResult:
    kind: str
    test: str
    score_kind: str
    statistic: float
    p_value: float | None
    threshold: float
    drift_detected: bool
    reference_size: int
    current_size: int
    n_unique: int | None  # exact up to 20; None above 20 or for a numeric sketch (values not kept)
    column: str | None = None
    adjusted_p_value: float | None = None

    @property
    def drift_score(self) -> float:
        """Evidently's drift_score: the p-value for tests, the distance for distances."""
        return self.p_value if self.score_kind == "p_value" else self.statistic

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("statistic", "p_value", "adjusted_p_value"):
            data[name] = _json_float(data[name])
        data["drift_score"] = _json_float(self.drift_score)
        return data


@dataclasses.dataclass(frozen=True)
class DatasetResult:
    columns: dict[str, ColumnResult]
    drift_share: float
    fdr: float | None = None

    @property
    def number_of_columns(self) -> int:
        return len(self.columns)

    @property
    def number_of_drifted_columns(self) -> int:
        return sum(result.drift_detected for result in self.columns.values())

    @property
    def share_of_drifted_columns(self) -> float:
        return self.number_of_drifted_columns / self.number_of_columns

    @property
    def dataset_drift(self) -> bool:
        # Evidently's get_dataset_drift: share_drifted_columns >= drift_share.
        return self.share_of_drifted_columns >= self.drift_share

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": {name: result.to_dict() for name, result in self.columns.items()},
            "number_of_columns": self.number_of_columns,
            "number_of_drifted_columns": self.number_of_drifted_columns,
            "share_of_drifted_columns": self.share_of_drifted_columns,
            "drift_share": self.drift_share,
            "fdr": self.fdr,
            "dataset_drift": self.dataset_drift,
        }


@dataclasses.dataclass(frozen=True)
class Histogram:
    """Reference and current counts over shared bins (numerical: `edges`) or categories (`categories`)."""

    reference_counts: list[int]
    current_counts: list[int]
    edges: list[float] | None = None
    categories: list[Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
