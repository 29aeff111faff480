"""Mergeable per-column summaries, so a large current window is folded in chunks with bounded memory.

* NumericSketch: fixed bins over the reference range (learned once from the reference), plus one
  bucket below and one above that range, count/sum/sum of squares and min/max. Memory O(bins).
* CategorySketch: a count per distinct value. Memory O(categories).

Both fold chunks with `update` and combine with `merge`; folding in any chunking gives the same
counts as one pass (integer counts; the float sums may differ in the last bits).

What the tests computed from sketches mean:

* Category sketches give chisquare, z, jensenshannon and psi exactly as the array versions do on a
  categorical column (the same counts go into the same formulas).
* Numeric sketches are approximations of the array versions:
  - ks: D is the exact ECDF gap at the bin edges, a lower bound of the true D (equal when every
    jump of both ECDFs sits on an edge); the p-value is Smirnov's asymptotic one (kstwo), what
    scipy's ks_2samp(method="asymp") gives for that D.
  - wasserstein: the area between the CDFs, exact at the bin edges and linear in between
    (error at most one bin width times the CDF gap change), normed by the reference std
    computed from the sums.
  - jensenshannon / psi: Evidently's Sturges bins over both windows (ceil(log2(n_ref + n_cur)) + 1
    equal bins from the lowest to the highest value seen), filled by spreading each fine bucket's
    count evenly inside it; close to the array versions when the fine bins are many (default 1000).
    Evidently counts per value when the reference has <= 20 distinct values; sketch such columns
    with a CategorySketch to get that.
"""

import dataclasses

import numpy as np

from . import chisquare, jensenshannon, ks, psi, wasserstein, ztest
from ._columns import clean, present_mask
from .results import ColumnResult

DEFAULT_BINS = 1000
NUMERIC_TESTS = (ks.NAME, wasserstein.NAME, jensenshannon.NAME, psi.NAME)
CATEGORY_TESTS = (chisquare.NAME, ztest.NAME, jensenshannon.NAME, psi.NAME)
_MODULES = {module.NAME: module for module in (ks, chisquare, ztest, wasserstein, jensenshannon, psi)}


@dataclasses.dataclass
class NumericSketch:
    edges: np.ndarray
    counts: np.ndarray = None
    count: int = 0
    total: float = 0.0
    total_of_squares: float = 0.0
    minimum: float = np.inf
    maximum: float = -np.inf

    def __post_init__(self):
        if self.counts is None:
            # Bucket 0 holds x <= edges[0], bucket i holds edges[i-1] < x <= edges[i], the last x > edges[-1].
            self.counts = np.zeros(self.edges.size + 1, dtype=np.int64)

    @classmethod
    def for_reference(cls, reference, bins: int = DEFAULT_BINS) -> "NumericSketch":
        """A sketch of the reference, with edges spread evenly over its range."""
        values = clean(reference, "reference")
        sketch = cls(edges=np.unique(np.linspace(values.min(), values.max(), bins + 1)))
        sketch.update(values)
        return sketch

    def empty_copy(self) -> "NumericSketch":
        """A sketch on the same edges, ready to fold a current window into."""
        return NumericSketch(edges=self.edges)

    def update(self, values) -> None:
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        self.counts += np.bincount(np.searchsorted(self.edges, values, side="left"), minlength=self.counts.size)
        self.count += int(values.size)
        self.total += float(values.sum())
        self.total_of_squares += float(np.dot(values, values))
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))

    def merge(self, other: "NumericSketch") -> None:
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("numeric sketches merge only when built on the same edges")
        self.counts += other.counts
        self.count += other.count
        self.total += other.total
        self.total_of_squares += other.total_of_squares
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)

    @property
    def std(self) -> float:
        """Population std (ddof=0, like np.std) from the running sums."""
        mean = self.total / self.count
        return float(np.sqrt(max(self.total_of_squares / self.count - mean**2, 0.0)))

    def cdf_at_edges(self) -> np.ndarray:
        return np.cumsum(self.counts)[:-1] / self.count


@dataclasses.dataclass
class CategorySketch:
    counts: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, values) -> "CategorySketch":
        sketch = cls()
        sketch.update(values)
        return sketch

    def update(self, values) -> None:
        array = _present(np.asarray(values))
        if array.size == 0:
            return
        keys, counts = np.unique(array, return_counts=True)
        for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
            self.counts[key] = self.counts.get(key, 0) + count

    def merge(self, other: "CategorySketch") -> None:
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count

    @property
    def count(self) -> int:
        return sum(self.counts.values())


def _present(array: np.ndarray) -> np.ndarray:
    # Unlike clean(), an all-missing chunk is fine here: the window may still fill up later.
    if array.dtype.kind in "fc":
        return array[np.isfinite(array)]
    return array[present_mask(array)] if array.dtype.kind == "O" else array


def aligned_counts(reference: CategorySketch, current: CategorySketch) -> tuple[np.ndarray, np.ndarray]:
    """Counts of both sketches over the sorted union of categories (the order np.unique gives)."""
    keys = sorted(set(reference.counts) | set(current.counts))
    return (
        np.array([reference.counts.get(key, 0) for key in keys]),
        np.array([current.counts.get(key, 0) for key in keys]),
    )


def compare_sketches(reference, current, test: str | None = None, threshold: float | None = None) -> ColumnResult:
    """compare_column for two sketches of the same type; the default test follows Evidently's sizes."""
    _check_non_empty(reference, current)
    if isinstance(reference, NumericSketch):
        return _result(reference, current, test or _default_numeric_test(reference), threshold, "numerical")
    return _result(reference, current, test or _default_category_test(reference, current), threshold, None)


def _check_non_empty(reference, current) -> None:
    if type(reference) is not type(current):
        raise ValueError("reference and current sketches must be of the same type")
    for side, sketch in (("reference", reference), ("current", current)):
        if sketch.count == 0:
            raise ValueError(f"the {side} sketch has no values")


def _default_numeric_test(reference: NumericSketch) -> str:
    # Numeric sketches stand for many-valued columns; few-valued ones belong in a CategorySketch.
    return ks.NAME if reference.count <= 1000 else wasserstein.NAME


def _default_category_test(reference: CategorySketch, current: CategorySketch) -> str:
    if reference.count > 1000:
        return jensenshannon.NAME
    return ztest.NAME if len(set(reference.counts) | set(current.counts)) <= 2 else chisquare.NAME


def _result(reference, current, test: str, threshold: float | None, kind: str | None) -> ColumnResult:
    module = _MODULES[test]
    statistic, p_value = _statistic(reference, current, test)
    threshold = module.DEFAULT_THRESHOLD if threshold is None else threshold
    # A numeric sketch does not keep distinct values, so their number is unknown (None).
    n_unique = len(set(reference.counts) | set(current.counts)) if kind is None else None
    return ColumnResult(
        kind=kind or ("binary" if n_unique <= 2 else "categorical"),
        test=test,
        score_kind=module.KIND,
        statistic=statistic,
        p_value=p_value,
        threshold=threshold,
        drift_detected=module.detects_drift(p_value if module.KIND == "p_value" else statistic, threshold),
        reference_size=reference.count,
        current_size=current.count,
        n_unique=n_unique,
    )


def _statistic(reference, current, test: str) -> tuple[float, float | None]:
    if isinstance(reference, NumericSketch):
        if test not in NUMERIC_TESTS:
            raise ValueError(f"{test!r} needs category counts; use a CategorySketch")
        return _NUMERIC[test](reference, current)
    if test not in CATEGORY_TESTS:
        raise ValueError(f"{test!r} needs numerical values; use a NumericSketch")
    return _CATEGORY[test](*aligned_counts(reference, current))


def _ks(reference: NumericSketch, current: NumericSketch) -> tuple[float, float]:
    d = float(np.max(np.abs(reference.cdf_at_edges() - current.cdf_at_edges())))
    return d, ks.asymptotic_p_value(d, reference.count, current.count)


def _wasserstein(reference: NumericSketch, current: NumericSketch) -> tuple[float, None]:
    low, high = min(reference.minimum, current.minimum), max(reference.maximum, current.maximum)
    points = np.concatenate([[low], reference.edges, [high]])
    gap = np.concatenate([[0.0], reference.cdf_at_edges() - current.cdf_at_edges(), [0.0]])
    # Trapezoids of |gap| between known points: the CDFs are taken as linear inside a bin.
    area = np.sum(np.diff(points) * (np.abs(gap[:-1]) + np.abs(gap[1:])) / 2.0)
    return float(area) / max(reference.std, wasserstein.MIN_NORM), None


def _sturges_shares(reference: NumericSketch, current: NumericSketch) -> tuple[np.ndarray, np.ndarray]:
    low, high = min(reference.minimum, current.minimum), max(reference.maximum, current.maximum)
    n_bins = int(np.ceil(np.log2(reference.count + current.count) + 1)) if high > low else 1
    coarse = np.linspace(low, high, n_bins + 1)
    return _shares_on(reference, coarse, low, high), _shares_on(current, coarse, low, high)


def _shares_on(sketch: NumericSketch, coarse: np.ndarray, low: float, high: float) -> np.ndarray:
    # Cumulative count is known at the fine edges; interpolate it at the coarse edges.
    points = np.concatenate([[low], sketch.edges, [high]])
    cumulative = np.concatenate([[0.0], np.cumsum(sketch.counts)[:-1], [sketch.count]])
    keep = np.concatenate([[True], np.diff(points) > 0])  # np.interp needs increasing points
    return np.diff(np.interp(coarse, points[keep], cumulative[keep])) / sketch.count


_NUMERIC = {
    ks.NAME: _ks,
    wasserstein.NAME: _wasserstein,
    jensenshannon.NAME: lambda r, c: (jensenshannon.from_shares(*_sturges_shares(r, c)), None),
    psi.NAME: lambda r, c: (psi.from_shares(*_sturges_shares(r, c)), None),
}
_CATEGORY = {
    chisquare.NAME: chisquare.from_counts,
    ztest.NAME: ztest.from_counts,
    jensenshannon.NAME: lambda r, c: (jensenshannon.from_shares(r / r.sum(), c / c.sum()), None),
    psi.NAME: lambda r, c: (psi.from_shares(r / r.sum(), c / c.sum()), None),
}
