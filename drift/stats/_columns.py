"""Cleaning and counting helpers shared by the per-test modules."""

import numpy as np

# Evidently's rules compare distinct counts with 2, 5 and 20 at most.
UNIQUE_COUNT_CAP = 20
PROBE_SIZE = 4096


def clean(values, side: str = "reference") -> np.ndarray:
    """Drop NaN, None and +/-inf, as Evidently does per column before any test; refuse an empty result."""
    array = np.asarray(values)
    if array.dtype.kind in "fc":
        array = array[np.isfinite(array)]
    elif array.dtype.kind == "O":
        array = array[present_mask(array)]
    if array.size == 0:
        raise ValueError(f"the {side} column has no values left after dropping NaN/inf")
    return array


def present_mask(array: np.ndarray) -> np.ndarray:
    # Object columns mix strings with None/float NaN; `v == v` is False only for NaN.
    return np.fromiter((v is not None and v == v and v not in (np.inf, -np.inf) for v in array), bool, array.size)


def is_numeric(array: np.ndarray) -> bool:
    return array.dtype.kind in "iuf"


def require_numeric(array: np.ndarray, test_name: str) -> None:
    if not is_numeric(array):
        raise ValueError(f"the {test_name} test needs numerical values, got dtype {array.dtype}")


def category_counts(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted union of categories with the reference and current count of each (zeros where absent)."""
    keys, inverse = np.unique(np.concatenate([reference, current]), return_inverse=True)
    reference_counts = np.bincount(inverse[: reference.size], minlength=keys.size)
    current_counts = np.bincount(inverse[reference.size :], minlength=keys.size)
    return keys, reference_counts, current_counts


def n_unique(reference: np.ndarray, current: np.ndarray, cap: int = UNIQUE_COUNT_CAP) -> int | None:
    """Distinct values over both windows, or None when there are more than `cap`.

    The rules never look past 20 distinct values, and an exact count of a million floats costs a
    full sort; a strided probe settles the many-valued case at once, a cheap membership check the
    few-valued one.
    """
    values = np.concatenate([reference, current])
    probe = np.unique(values[:: max(1, values.size // PROBE_SIZE)])
    if probe.size > cap:
        return None
    if np.isin(values, probe).all():
        return int(probe.size)
    count = np.unique(values).size
    return int(count) if count <= cap else None
