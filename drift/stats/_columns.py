"""Cleaning and counting helpers shared by the per-test modules."""

import numpy as np

# Evidently's rules compare distinct counts with 2, 5, 10 and 20 at most.
UNIQUE_COUNT_CAP = 20
PROBE_SIZE = 4096
# Short strings are compared code point by code point while (string width x keys) stays this small.
MAX_LANE_COMPARISONS = 64


def clean(values, side: str = "reference") -> np.ndarray:
    """Drop NaN, None and +/-inf, as Evidently does per column before any test; refuse an empty result."""
    array = np.asarray(values)
    if array.dtype.kind in "fc":
        finite = np.isfinite(array)
        array = array if finite.all() else array[finite]
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
    """Distinct values over both windows, or None when there are more than `cap`."""
    counts = few_value_counts(reference, current, cap)
    return None if counts is None else int(counts[0].size)


def few_value_counts(reference: np.ndarray, current: np.ndarray, cap: int = UNIQUE_COUNT_CAP):
    """category_counts(reference, current) when the windows hold at most `cap` distinct values together, else None.

    The rules never look past 20 distinct values, and np.unique costs a full sort of both windows:
    small-range integers are counted with bincount instead; other columns are probed on a strided
    sample, which settles the many-valued case at once, and the few probed values are then counted
    without sorting. Only a value the probe missed costs the full np.unique.
    """
    counts = _small_range_counts(reference, current)
    if counts is None:
        probe = np.unique(np.concatenate([_sample(reference), _sample(current)]))
        if probe.size > cap:
            return None
        counts = _counts_of(probe, reference, current) or category_counts(reference, current)
    return counts if counts[0].size <= cap else None


def _sample(array: np.ndarray) -> np.ndarray:
    return array[:: max(1, array.size // PROBE_SIZE)]


def _small_range_counts(reference: np.ndarray, current: np.ndarray):
    """Counts of integer (or bool) windows by bincount, when their range is no longer than the data."""
    filled = [window for window in (reference, current) if window.size]  # n_unique passes an empty current
    if not (filled and _fits_int64(reference) and _fits_int64(current)):
        return None
    low = min(int(window.min()) for window in filled)
    span = max(int(window.max()) for window in filled) - low + 1
    if span > reference.size + current.size:
        return None  # a sparse range: bincount's array would outgrow the data
    reference_counts, current_counts = (
        np.bincount(window.astype(np.int64, copy=False) - low, minlength=span) for window in (reference, current)
    )
    present = np.flatnonzero(reference_counts + current_counts)
    keys = (present + low).astype(np.result_type(reference, current))
    return keys, reference_counts[present], current_counts[present]


def _fits_int64(array: np.ndarray) -> bool:
    return array.dtype.kind in "biu" and np.can_cast(array.dtype, np.int64)


def _counts_of(keys: np.ndarray, reference: np.ndarray, current: np.ndarray):
    """Counts of each of the sorted `keys` in both windows, or None if a window holds another value."""
    reference_counts, current_counts = _key_counts(keys, reference), _key_counts(keys, current)
    if reference_counts is None or current_counts is None:
        return None
    if reference_counts.sum() != reference.size or current_counts.sum() != current.size:
        return None
    return keys, reference_counts, current_counts


def _key_counts(keys: np.ndarray, window: np.ndarray) -> np.ndarray | None:
    if is_numeric(window) and is_numeric(keys):
        # A few vectorised comparisons beat a sort; keys are distinct, so the counts sum to the
        # window size exactly when every value is one of them.
        return np.array([np.count_nonzero(window == key) for key in keys], dtype=np.int64)
    if _short_strings(keys, window):
        return _code_point_counts(keys, window)
    if window.dtype.kind != keys.dtype.kind:
        return None  # mixed types: leave the promotion rules to np.unique over both windows
    codes = np.searchsorted(keys, window)
    np.minimum(codes, keys.size - 1, out=codes)  # a value above every key must not index past the end
    if not np.array_equal(keys[codes], window):
        return None
    return np.bincount(codes, minlength=keys.size)


def _short_strings(keys: np.ndarray, window: np.ndarray) -> bool:
    same_type = window.dtype.kind == "U" and keys.dtype == window.dtype
    return same_type and 0 < _width(window) * keys.size <= MAX_LANE_COMPARISONS


def _width(array: np.ndarray) -> int:
    return array.dtype.itemsize // 4  # code points per fixed-width unicode string


def _code_point_counts(keys: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Counts of each key, comparing short strings as columns of code points (a string compare or a
    binary search per value costs several times more); like the numeric counts, they sum to the
    window size exactly when every value is a key."""
    code_points = np.ascontiguousarray(window).view(np.uint32).reshape(window.size, _width(window))
    columns = np.ascontiguousarray(code_points.T)
    counts = []
    for key in keys.view(np.uint32).reshape(keys.size, _width(keys)):
        matches = columns[0] == key[0]
        for column, code_point in zip(columns[1:], key[1:], strict=True):
            matches &= column == code_point
        counts.append(np.count_nonzero(matches))
    return np.array(counts, dtype=np.int64)
