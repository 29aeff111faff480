"""Mergeable per-column summaries, so a large current window is folded in chunks with bounded memory.

* NumericSketch: fixed bins over the reference range (learned once from the reference), plus one
  bucket below and one above that range, count/sum/sum of squares and min/max. Memory O(bins).
* CategorySketch: a count per distinct value. Memory O(categories).
* ColumnSketch: a column whose type is not known yet. It counts distinct values while a numeric
  column has at most 20 of them, and notes whether every chunk was numeric and whether all were
  integers; past 20 values a numeric column continues in a NumericSketch on the reference's bins,
  started from the counts kept so far. compare_sketches then decides the column's kind and test
  with exact mode's rule (`drift.stats.column_kind`, `choose_test`) from the same facts exact mode
  uses: distinct values over both windows (exact up to 20), the current window's distinct values
  and dtype, the reference size. Memory O(20 + bins) per numeric column, O(categories) per other.
  The reference takes two passes when it is numeric with more than 20 values (the first finds the
  range the bins span); `ColumnSketch.of_reference` reads it through a callable for that.

All fold chunks with `update` and combine with `merge`; folding in any chunking gives the same
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
    Evidently counts per value when the reference has <= 20 distinct values; a ColumnSketch does
    that by itself (a CategorySketch too).
* A ColumnSketch chooses the kind and test exact mode chooses, and gives count-based tests exactly,
  with one exception: an integer column whose current window has <= 10 distinct values is
  categorical (per-value counts over both windows), but when the reference had more than 20
  distinct values their counts were not kept, so the sketch compares it as numerical.
"""

import dataclasses

import numpy as np

from . import chisquare, choose_test, column_kind, jensenshannon, ks, psi, wasserstein, ztest
from ._columns import UNIQUE_COUNT_CAP, clean, few_value_counts, is_numeric, present_mask
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
        self.total_of_squares += float(np.einsum("i,i->", values, values))  # not BLAS: see wasserstein.py
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))

    def update_counts(self, keys, counts) -> None:
        """Fold values given as distinct `keys` with how often each occurs (a ColumnSketch's counts)."""
        keys, counts = np.asarray(keys, dtype=float), np.asarray(counts, dtype=np.int64)
        buckets = np.searchsorted(self.edges, keys, side="left")
        self.counts += np.bincount(buckets, weights=counts, minlength=self.counts.size).astype(np.int64)
        self.count += int(counts.sum())
        self.total += float(np.dot(keys, counts))
        self.total_of_squares += float(np.dot(keys * keys, counts))
        present = keys[counts > 0]
        if present.size:
            self.minimum, self.maximum = min(self.minimum, present.min()), max(self.maximum, present.max())

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


@dataclasses.dataclass
class ColumnSketch:
    """A column sketched without knowing its type; compare_sketches decides it as exact mode would.

    `counts` maps each distinct value to its count; it becomes None once a numeric column has more
    than `cap` values, and the column continues in `histogram`, a NumericSketch on `edges` (the
    reference's bins). Chunks of one column share a dtype.
    """

    edges: np.ndarray | None = None
    cap: int = UNIQUE_COUNT_CAP
    counts: dict | None = dataclasses.field(default_factory=dict)
    histogram: NumericSketch | None = None
    numeric: bool = True
    integer: bool = True
    count: int = 0
    minimum: float = np.inf
    maximum: float = -np.inf

    @classmethod
    def of_reference(cls, read_chunks, bins: int = DEFAULT_BINS) -> "ColumnSketch":
        """Sketch a reference window; `read_chunks()` returns a fresh iterator over its chunks.

        A numeric column with more than `cap` values is read twice: its bins span the range the
        first pass found. Otherwise one pass does, and the bins come from the range alone.
        """
        sketch = cls()
        for chunk in read_chunks():
            sketch.update(chunk)
        if sketch.numeric and sketch.count:
            sketch.edges = np.unique(np.linspace(sketch.minimum, sketch.maximum, bins + 1))
            if sketch.counts is None:
                sketch.histogram = NumericSketch(edges=sketch.edges)
                for chunk in read_chunks():
                    sketch.histogram.update(chunk)
        return sketch

    def empty_copy(self) -> "ColumnSketch":
        """A sketch on the same bins, ready to fold a current window into."""
        return ColumnSketch(edges=self.edges, cap=self.cap)

    def update(self, values) -> None:
        values = _present(np.asarray(values))
        if values.size == 0:
            return
        self._note_type_and_range(values)
        if self.counts is not None and self._count(values):
            return
        if self.histogram is not None:
            self.histogram.update(values)

    def merge(self, other: "ColumnSketch") -> None:
        if self.numeric and not np.array_equal(self.edges, other.edges):
            raise ValueError("column sketches merge only when built on the same edges")
        self._note_facts(other.numeric, other.integer, other.count, other.minimum, other.maximum)
        if self.counts is not None and other.counts is not None and self._add_counts(other.counts):
            return
        self._stop_counting()
        self.numeric_sketch().merge(other.numeric_sketch())

    @property
    def distinct_count(self) -> int | None:
        """Distinct values seen, or None when more than `cap` numbers (not counted any more)."""
        return None if self.counts is None else len(self.counts)

    def numeric_sketch(self) -> NumericSketch:
        """The NumericSketch of the values folded so far (built from the counts while they are kept)."""
        if self.histogram is not None:
            return self.histogram
        if self.edges is None or self.counts is None:
            raise ValueError("a column sketch needs the reference's bins for numeric tests")
        sketch = NumericSketch(edges=self.edges)
        sketch.update_counts(list(self.counts), list(self.counts.values()))
        return sketch

    def _note_type_and_range(self, values: np.ndarray) -> None:
        numeric = is_numeric(values)
        low, high = (float(values.min()), float(values.max())) if numeric else (np.inf, -np.inf)
        self._note_facts(numeric, values.dtype.kind in "iu", int(values.size), low, high)

    def _note_facts(self, numeric: bool, integer: bool, count: int, low: float, high: float) -> None:
        self.numeric, self.integer = self.numeric and numeric, self.integer and integer
        self.count += count
        self.minimum, self.maximum = min(self.minimum, low), max(self.maximum, high)

    def _count(self, values: np.ndarray) -> bool:
        """Add the chunk's counts; False, and no counts any more, once a numeric column has too many values."""
        counted = few_value_counts(values, values[:0], self.cap)
        if counted is None and self.numeric:
            self._stop_counting()
            return False
        keys, counts = counted[:2] if counted is not None else np.unique(values, return_counts=True)
        return self._add_counts(dict(zip(keys.tolist(), counts.tolist(), strict=True)))

    def _add_counts(self, counts: dict) -> bool:
        if self.numeric and len(self.counts.keys() | counts.keys()) > self.cap:
            self._stop_counting()
            return False
        for key, count in counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
        return True

    def _stop_counting(self) -> None:
        # The counts kept so far are exact, so the histogram starts from them; without bins yet
        # (the reference's first pass) of_reference makes a second pass instead.
        if self.counts is not None and self.edges is not None:
            self.histogram = self.numeric_sketch()
        self.counts = None


def aligned_counts(reference, current) -> tuple[np.ndarray, np.ndarray]:
    """Counts of both sketches (Category- or ColumnSketch) over the sorted union of values (np.unique's order)."""
    keys = sorted(set(reference.counts) | set(current.counts))
    return (
        np.array([reference.counts.get(key, 0) for key in keys]),
        np.array([current.counts.get(key, 0) for key in keys]),
    )


def compare_sketches(reference, current, test: str | None = None, threshold: float | None = None) -> ColumnResult:
    """compare_column for two sketches of the same type.

    ColumnSketches get exact mode's kind and test; NumericSketch and CategorySketch pairs stand for
    many-valued numeric and for categorical columns, with the default test by Evidently's sizes.
    """
    _check_non_empty(reference, current)
    if isinstance(reference, ColumnSketch):
        return _compare_columns(reference, current, test, threshold)
    if isinstance(reference, NumericSketch):
        test = test or _default_numeric_test(reference)
        return _result(test, _statistic(reference, current, test), threshold, "numerical", None, reference, current)
    test = test or _default_category_test(reference, current)
    n_unique = len(set(reference.counts) | set(current.counts))
    kind = "binary" if n_unique <= 2 else "categorical"
    return _result(test, _statistic(reference, current, test), threshold, kind, n_unique, reference, current)


def _check_non_empty(reference, current) -> None:
    if type(reference) is not type(current):
        raise ValueError("reference and current sketches must be of the same type")
    for side, sketch in (("reference", reference), ("current", current)):
        if sketch.count == 0:
            raise ValueError(f"the {side} sketch has no values")


def _compare_columns(reference: ColumnSketch, current: ColumnSketch, test: str | None, threshold) -> ColumnResult:
    counts = None if reference.counts is None or current.counts is None else aligned_counts(reference, current)
    unique_count = None if counts is None or counts[0].size > UNIQUE_COUNT_CAP else int(counts[0].size)
    kind = _column_kind(reference, current, unique_count, counts)
    test = test or choose_test(kind, reference.count, unique_count)
    if counts is not None and test in CATEGORY_TESTS:
        # Per-value counts are what exact mode bins these tests on (at most 20 reference values).
        scores = _MODULES[test].from_counts(counts[0], counts[1])
    else:
        scores = _statistic(reference.numeric_sketch(), current.numeric_sketch(), test)
    return _result(test, scores, threshold, kind, unique_count, reference, current)


def _column_kind(reference: ColumnSketch, current: ColumnSketch, unique_count: int | None, counts) -> str:
    numeric = reference.numeric and current.numeric
    kind = column_kind(numeric, current.integer, unique_count, current.distinct_count)
    # An integer column categorical by its current window needs the reference's per-value counts,
    # gone when the reference had more than `cap` values: the one case where exact mode differs.
    return "numerical" if kind == "categorical" and counts is None else kind


def _default_numeric_test(reference: NumericSketch) -> str:
    # Numeric sketches stand for many-valued columns; few-valued ones belong in a CategorySketch.
    return ks.NAME if reference.count <= 1000 else wasserstein.NAME


def _default_category_test(reference: CategorySketch, current: CategorySketch) -> str:
    if reference.count > 1000:
        return jensenshannon.NAME
    return ztest.NAME if len(set(reference.counts) | set(current.counts)) <= 2 else chisquare.NAME


def _result(test: str, scores, threshold: float | None, kind: str, n_unique: int | None, reference, current):
    module = _MODULES[test]
    statistic, p_value = scores
    threshold = module.DEFAULT_THRESHOLD if threshold is None else threshold
    return ColumnResult(
        kind=kind,
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
_CATEGORY = {name: _MODULES[name].from_counts for name in CATEGORY_TESTS}
