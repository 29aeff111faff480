"""ColumnSketch: sketch mode decides a column's kind and test as exact mode does, in bounded memory."""

import numpy as np
import pytest

from drift.stats import compare_column
from drift.stats._columns import UNIQUE_COUNT_CAP
from drift.stats.sketch import ColumnSketch, NumericSketch, compare_sketches

TOLERANCE = 1e-9


def rng(seed=0):
    return np.random.default_rng(seed)


def chunked(values, n_chunks=7):
    return lambda: iter(np.array_split(values, n_chunks))


def sketches(reference, current, n_chunks=7):
    reference_sketch = ColumnSketch.of_reference(chunked(reference, n_chunks))
    current_sketch = reference_sketch.empty_copy()
    for chunk in chunked(current, n_chunks)():
        current_sketch.update(chunk)
    return reference_sketch, current_sketch


def sketch_and_exact(reference, current, n_chunks=7):
    return compare_sketches(*sketches(reference, current, n_chunks)), compare_column(reference, current)


# The benchmark's column shapes (benchmarks/drift_report.py) and the edges of the rules around them.
COLUMNS = {
    "ints-with-8-values": (rng(1).integers(0, 8, 20_000), rng(2).integers(0, 8, 15_000)),
    "ints-with-4-values": (rng(3).integers(0, 4, 20_000), rng(4).integers(0, 4, 15_000)),
    "ints-with-10-values-in-current": (rng(5).integers(0, 10, 20_000), rng(6).integers(0, 10, 15_000)),
    "ints-with-11-values-in-current": (rng(7).integers(0, 11, 20_000), rng(8).integers(0, 11, 15_000)),
    "ints-with-30-values": (rng(9).integers(0, 30, 20_000), rng(10).integers(0, 30, 15_000)),
    "binary-ints": (rng(11).integers(0, 2, 20_000), rng(12).integers(0, 2, 15_000)),
    "floats-with-4-values": (rng(13).integers(0, 4, 20_000) / 2, rng(14).integers(0, 4, 15_000) / 2),
    "floats-with-8-values": (rng(15).integers(0, 8, 20_000) / 2, rng(16).integers(0, 8, 15_000) / 2),
    "continuous": (rng(17).normal(size=20_000), rng(18).normal(0.3, size=15_000)),
    "strings": (rng(19).choice(["a", "b", "c", "d"], 20_000), rng(20).choice(["a", "b", "c", "d", "e"], 15_000)),
    "binary-strings": (rng(21).choice(["no", "yes"], 20_000), rng(22).choice(["no", "yes"], 15_000)),
    "small-reference-ints-with-8-values": (rng(23).integers(0, 8, 800), rng(24).integers(0, 8, 600)),
    "small-reference-binary-ints": (rng(25).integers(0, 2, 800), rng(26).integers(0, 2, 600)),
    "small-reference-continuous": (rng(27).normal(size=800), rng(28).normal(size=600)),
}


@pytest.mark.parametrize("name", list(COLUMNS))
def test_sketch_mode_chooses_the_kind_and_test_exact_mode_chooses(name):
    from_sketch, exact = sketch_and_exact(*COLUMNS[name])
    assert (from_sketch.kind, from_sketch.test, from_sketch.n_unique) == (exact.kind, exact.test, exact.n_unique)


def test_small_int_columns_are_categorical_in_sketch_mode_as_in_exact_mode():
    from_sketch, exact = sketch_and_exact(*COLUMNS["ints-with-8-values"])
    assert (from_sketch.kind, from_sketch.test) == (exact.kind, exact.test) == ("categorical", "jensenshannon")


@pytest.mark.parametrize(
    "name",
    [
        "ints-with-8-values",
        "ints-with-4-values",
        "binary-ints",
        "floats-with-4-values",
        "strings",
        "small-reference-ints-with-8-values",
        "small-reference-binary-ints",
    ],
)
def test_count_based_tests_from_a_column_sketch_equal_exact_mode(name):
    from_sketch, exact = sketch_and_exact(*COLUMNS[name])
    assert exact.test in ("chisquare", "z", "jensenshannon")
    assert (from_sketch.statistic, from_sketch.p_value) == pytest.approx(
        (exact.statistic, exact.p_value), abs=TOLERANCE
    )
    assert from_sketch.drift_detected == exact.drift_detected


def test_a_many_valued_column_keeps_no_counts_and_a_fixed_size_histogram():
    reference, current = rng(30).normal(size=1_000_000), rng(31).normal(size=1_000_000)
    reference_sketch, current_sketch = sketches(reference, current, n_chunks=50)
    for sketch in (reference_sketch, current_sketch):
        assert sketch.counts is None
        assert sketch.histogram.counts.size == reference_sketch.edges.size + 1 <= 1002


def test_counts_never_grow_past_the_cap_while_folding():
    current_sketch = ColumnSketch.of_reference(chunked(np.arange(100)), bins=50).empty_copy()
    for chunk in np.array_split(rng(32).integers(0, 1_000, 50_000), 100):
        current_sketch.update(chunk)
        assert current_sketch.counts is None or len(current_sketch.counts) <= UNIQUE_COUNT_CAP
    assert current_sketch.counts is None


def test_the_histogram_taken_over_from_the_counts_equals_one_built_from_all_values():
    # 15 values in the first chunks, 40 later: counting stops part way through the window.
    reference = rng(33).normal(size=5_000)
    current = np.concatenate([rng(34).integers(0, 15, 3_000), rng(35).integers(0, 40, 3_000)]).astype(float)
    current_sketch = ColumnSketch.of_reference(chunked(reference)).empty_copy()
    for chunk in np.array_split(current, 12):
        current_sketch.update(chunk)
    one_pass = NumericSketch(edges=current_sketch.edges)
    one_pass.update(current)
    np.testing.assert_array_equal(current_sketch.histogram.counts, one_pass.counts)
    assert (current_sketch.histogram.count, current_sketch.histogram.maximum) == (6_000, 39.0)
    assert current_sketch.histogram.total_of_squares == pytest.approx(one_pass.total_of_squares, rel=1e-12)


def test_the_reference_is_read_a_second_time_only_when_it_has_many_values():
    reads = []

    def read(values):
        def chunks():
            reads.append(1)
            return iter(np.array_split(values, 4))

        return chunks

    ColumnSketch.of_reference(read(rng(36).integers(0, 8, 4_000)))
    assert len(reads) == 1
    ColumnSketch.of_reference(read(rng(37).normal(size=4_000)))
    assert len(reads) == 3


def test_merging_column_sketches_equals_folding_both_parts():
    reference_sketch = ColumnSketch.of_reference(chunked(rng(38).integers(0, 8, 4_000)))
    few, many = rng(39).integers(0, 8, 3_000), rng(40).normal(3, 2, 3_000)
    for first, second in ((few, few[::-1]), (few, many)):
        merged, other, whole = (reference_sketch.empty_copy() for _ in range(3))
        merged.update(first)
        other.update(second)
        merged.merge(other)
        whole.update(np.concatenate([first, second]))
        assert merged.counts == whole.counts
        np.testing.assert_array_equal(merged.numeric_sketch().counts, whole.numeric_sketch().counts)
        assert (merged.count, merged.integer) == (whole.count, whole.integer)


def test_a_string_column_keeps_every_category_beyond_the_cap():
    categories = np.array([f"c{i:02d}" for i in range(40)])
    reference, current = categories[rng(41).integers(0, 40, 5_000)], categories[rng(42).integers(0, 40, 4_000)]
    from_sketch, exact = sketch_and_exact(reference, current)
    assert (from_sketch.kind, from_sketch.test, from_sketch.n_unique) == ("categorical", "jensenshannon", None)
    assert from_sketch.statistic == pytest.approx(exact.statistic, abs=TOLERANCE)


def test_missing_values_are_dropped_before_counting():
    reference = np.where(rng(43).random(5_000) < 0.1, np.nan, rng(44).integers(0, 4, 5_000))
    current = np.concatenate([rng(45).integers(0, 4, 3_000).astype(float), [np.inf, np.nan]])
    from_sketch, exact = sketch_and_exact(reference, current)
    assert (from_sketch.test, from_sketch.n_unique, from_sketch.reference_size) == (
        exact.test,
        exact.n_unique,
        exact.reference_size,
    )
    assert from_sketch.statistic == pytest.approx(exact.statistic, abs=TOLERANCE)


def test_an_int_column_whose_reference_had_too_many_values_is_compared_as_numerical():
    # The documented exception: exact mode counts per value (categorical by the current window),
    # but the reference's 50 values were not kept.
    reference, current = rng(46).integers(0, 50, 5_000), rng(47).integers(0, 8, 4_000)
    from_sketch, exact = sketch_and_exact(reference, current)
    assert (exact.kind, exact.test) == ("categorical", "jensenshannon")
    assert (from_sketch.kind, from_sketch.test) == ("numerical", "wasserstein")


def test_a_column_sketch_and_another_kind_of_sketch_do_not_compare():
    column = ColumnSketch.of_reference(chunked(np.arange(10.0)))
    with pytest.raises(ValueError, match="same type"):
        compare_sketches(column, NumericSketch.for_reference(np.arange(10.0)))


def test_numeric_tests_need_numbers():
    reference_sketch, current_sketch = sketches(*COLUMNS["strings"])
    with pytest.raises(ValueError, match="bins"):
        compare_sketches(reference_sketch, current_sketch, test="wasserstein")
