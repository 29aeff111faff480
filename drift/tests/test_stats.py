"""drift.stats against scipy on fixed seeded data, and Evidently's rules for choosing and deciding."""

import json

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from drift.stats import (
    benjamini_hochberg,
    chisquare,
    compare_column,
    compare_frames,
    histograms,
    jensenshannon,
    ks,
    psi,
    wasserstein,
    ztest,
)
from drift.stats._columns import category_counts, few_value_counts
from drift.stats.sketch import CategorySketch, NumericSketch, compare_sketches

TOLERANCE = 1e-9
LONG_NAMES = np.array([f"category number {i:02d}" for i in range(12)])


def rng(seed=0):
    return np.random.default_rng(seed)


def evidently_shares(reference, current):
    """Evidently's get_binned_data for a numerical column with > 20 distinct reference values."""
    edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
    return np.histogram(reference, edges)[0] / reference.size, np.histogram(current, edges)[0] / current.size


def evidently_psi_loop(reference_shares, current_shares):
    """Evidently's psi.py written out term by term, epsilon for empty bins included."""

    def fill(shares):
        smallest = min(shares[shares != 0])
        shares = shares.copy()
        np.place(shares, shares == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001)
        return shares

    r, c = fill(reference_shares), fill(current_shares)
    return sum((r[i] - c[i]) * np.log(r[i] / c[i]) for i in range(r.size))


# --- each test equals its scipy counterpart -------------------------------------------------


@pytest.mark.parametrize(
    ("n_reference", "n_current"),
    [(300, 300), (500, 400), (997, 31), (12000, 800)],
    ids=["equal-sizes", "unequal-sizes", "coprime-sizes", "asymptotic-above-10000"],
)
def test_ks_equals_scipy_ks_2samp_auto(n_reference, n_current):
    reference, current = rng(1).normal(size=n_reference), rng(2).normal(0.1, 1.2, size=n_current)
    expected = stats.ks_2samp(reference, current, method="auto")
    assert ks.statistic(reference, current) == pytest.approx((expected.statistic, expected.pvalue), abs=TOLERANCE)


def test_ks_equals_scipy_with_many_ties():
    reference, current = rng(3).integers(0, 12, 600).astype(float), rng(4).integers(1, 13, 450).astype(float)
    expected = stats.ks_2samp(reference, current)
    assert ks.statistic(reference, current) == pytest.approx((expected.statistic, expected.pvalue), abs=TOLERANCE)


def test_ks_asymptotic_p_value_equals_scipy_asymp_method():
    reference, current = rng(5).normal(size=700), rng(6).normal(0.2, size=500)
    expected = stats.ks_2samp(reference, current, method="asymp")
    assert ks.asymptotic_p_value(expected.statistic, 700, 500) == pytest.approx(expected.pvalue, abs=TOLERANCE)


def test_chisquare_equals_scipy_with_reference_proportions_as_expected_counts():
    reference, current = rng(7).choice(list("abcd"), 800, p=[0.4, 0.3, 0.2, 0.1]), rng(8).choice(list("abcd"), 500)
    keys = np.unique(np.concatenate([reference, current]))
    f_obs = np.array([(current == key).sum() for key in keys])
    f_exp = np.array([(reference == key).sum() for key in keys]) * current.size / reference.size
    expected = stats.chisquare(f_obs, f_exp)
    assert chisquare.statistic(reference, current) == pytest.approx(
        (expected.statistic, expected.pvalue), abs=TOLERANCE
    )


def test_chisquare_reports_a_category_unseen_in_the_reference_as_certain_drift():
    statistic, p_value = chisquare.statistic(np.array(["a", "b"] * 50), np.array(["a", "b", "c"] * 30))
    assert statistic == np.inf
    assert p_value == 0.0


def test_ztest_equals_evidentlys_pooled_proportions_formula():
    reference, current = rng(9).binomial(1, 0.3, 900), rng(10).binomial(1, 0.38, 700)
    p1, p2 = reference.mean(), current.mean()  # sorted first key (0) counts as 0, so these are shares of 1
    pooled = (p1 * 900 + p2 * 700) / 1600
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / 900 + 1 / 700))
    assert ztest.statistic(reference, current) == pytest.approx((z, 2 * (1 - stats.norm.cdf(abs(z)))), abs=TOLERANCE)


def test_ztest_gives_p_one_when_both_windows_hold_the_same_single_value():
    assert ztest.statistic(np.array(["on"] * 10), np.array(["on"] * 7)) == (0.0, 1.0)


def test_wasserstein_equals_scipy_divided_by_reference_std():
    reference, current = rng(11).gamma(2.0, size=3000), rng(12).gamma(2.3, size=2500)
    expected = stats.wasserstein_distance(reference, current) / np.std(reference)
    statistic, p_value = wasserstein.statistic(reference, current)
    assert statistic == pytest.approx(expected, abs=TOLERANCE)
    assert p_value is None


def test_wasserstein_equals_scipy_when_values_tie_within_and_across_windows():
    reference, current = rng(42).integers(0, 30, 5000).astype(float), rng(43).integers(3, 35, 4000).astype(float)
    expected = stats.wasserstein_distance(reference, current) / np.std(reference)
    assert wasserstein.statistic(reference, current)[0] == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize(
    ("reference", "current"),
    [
        (rng(44).normal(size=4000), rng(45).normal(0.2, 1.5, size=4000)),
        (rng(46).integers(0, 9, 3000), rng(47).integers(2, 12, 3000)),
    ],
    ids=["floats", "integers-with-ties"],
)
def test_wasserstein_equals_scipy_on_windows_of_equal_size(reference, current):
    # Equal sizes take the order-statistics shortcut instead of the merged walk.
    expected = stats.wasserstein_distance(reference, current) / np.std(reference)
    assert wasserstein.statistic(reference, current)[0] == pytest.approx(expected, abs=TOLERANCE)


def test_wasserstein_norms_a_constant_reference_by_one_thousandth():
    statistic, _ = wasserstein.statistic(np.full(50, 2.0), np.array([2.0, 3.0]))
    assert statistic == pytest.approx(stats.wasserstein_distance(np.full(50, 2.0), [2.0, 3.0]) / 0.001)


def test_jensenshannon_equals_scipy_base_2_on_sturges_bins_for_numerical_columns():
    reference, current = rng(13).normal(size=4000), rng(14).normal(0.3, size=3000)
    expected = distance.jensenshannon(*evidently_shares(reference, current))
    assert jensenshannon.statistic(reference, current)[0] == pytest.approx(expected, abs=TOLERANCE)


def test_jensenshannon_equals_scipy_base_2_on_category_shares():
    reference, current = rng(15).choice(list("xyz"), 2000), rng(16).choice(list("xyzw"), 1500)
    keys = np.unique(np.concatenate([reference, current]))
    p = np.array([(reference == k).mean() for k in keys])
    q = np.array([(current == k).mean() for k in keys])
    assert jensenshannon.statistic(reference, current)[0] == pytest.approx(distance.jensenshannon(p, q), abs=TOLERANCE)


def test_psi_equals_evidentlys_formula_including_the_empty_bin_epsilon():
    reference, current = rng(17).normal(size=3000), rng(18).normal(1.5, size=2000)
    shares = evidently_shares(reference, current)
    assert (shares[0] == 0).any() or (shares[1] == 0).any(), "fixture should exercise empty bins"
    assert psi.statistic(reference, current)[0] == pytest.approx(evidently_psi_loop(*shares), abs=TOLERANCE)


def test_numerical_columns_with_few_distinct_values_are_binned_per_value_for_psi_and_js():
    reference, current = rng(19).integers(0, 10, 3000), rng(20).integers(0, 12, 2000)
    keys = np.unique(np.concatenate([reference, current]))
    p = np.array([(reference == k).mean() for k in keys])
    q = np.array([(current == k).mean() for k in keys])
    assert psi.statistic(reference, current)[0] == pytest.approx(evidently_psi_loop(p, q), abs=TOLERANCE)
    assert jensenshannon.statistic(reference, current)[0] == pytest.approx(distance.jensenshannon(p, q), abs=TOLERANCE)


# --- Evidently's automatic choice ---------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "current", "kind", "test"),
    [
        (rng(21).normal(size=1000), rng(22).normal(size=300), "numerical", "ks"),
        (rng(21).normal(size=1001), rng(22).normal(size=300), "numerical", "wasserstein"),
        (rng(23).integers(0, 4, 800) / 2, rng(24).integers(0, 4, 300) / 2, "numerical", "chisquare"),
        (rng(23).integers(0, 4, 5000) / 2, rng(24).integers(0, 4, 300) / 2, "numerical", "jensenshannon"),
        (rng(23).integers(0, 8, 800), rng(24).integers(0, 8, 300), "categorical", "chisquare"),
        (rng(23).integers(0, 8, 5000), rng(24).integers(0, 8, 300), "categorical", "jensenshannon"),
        (rng(23).integers(0, 50, 5000), rng(24).integers(0, 50, 300), "numerical", "wasserstein"),
        (rng(25).integers(0, 2, 800), rng(26).integers(0, 2, 300), "binary", "z"),
        (rng(25).integers(0, 2, 5000), rng(26).integers(0, 2, 300), "binary", "jensenshannon"),
        (rng(27).choice(["cat", "dog", "owl"], 800), rng(28).choice(["cat", "dog"], 300), "categorical", "chisquare"),
        (
            rng(27).choice(["cat", "dog", "owl"], 5000),
            rng(28).choice(["cat", "dog"], 99),
            "categorical",
            "jensenshannon",
        ),
        (rng(29).choice(["yes", "no"], 800), rng(30).choice(["yes", "no"], 300), "binary", "z"),
    ],
    ids=[
        "numerical-reference-of-1000-uses-ks",
        "numerical-reference-over-1000-uses-wasserstein",
        "numerical-with-4-values-small-uses-chisquare",
        "numerical-with-4-values-large-uses-jensenshannon",
        "integers-with-at-most-10-values-are-categorical-small",
        "integers-with-at-most-10-values-are-categorical-large",
        "integers-with-more-than-10-values-are-numerical",
        "binary-numbers-small-use-z",
        "binary-numbers-large-use-jensenshannon",
        "strings-small-use-chisquare",
        "strings-large-use-jensenshannon",
        "binary-strings-small-use-z",
    ],
)
def test_it_chooses_evidentlys_default_test(reference, current, kind, test):
    result = compare_column(reference, current)
    assert (result.kind, result.test) == (kind, test)


def test_it_reports_distinct_counts_up_to_20_and_none_above():
    assert compare_column(np.arange(400) % 20, np.arange(300) % 20).n_unique == 20
    assert compare_column(np.arange(400) % 21, np.arange(300) % 21).n_unique is None


def test_a_rare_extra_value_missed_by_the_probe_still_counts():
    reference = np.zeros(100_000)
    reference[[5, 77_777]] = [1.0, 2.0]  # off the probe's stride
    assert compare_column(reference, np.ones(10)).n_unique == 3


@pytest.mark.parametrize(
    ("reference", "current"),
    [
        (rng(110).integers(-3, 5, 3000), rng(111).integers(0, 9, 2000)),
        (rng(112).integers(0, 2, 3000).astype(bool), rng(113).integers(0, 2, 2000).astype(bool)),
        (rng(114).integers(0, 6, 3000) * 10**12, rng(115).integers(0, 6, 2000) * 10**12),
        (rng(116).integers(0, 4, 3000) / 4, rng(117).integers(0, 5, 2000) / 4),
        (rng(118).integers(0, 4, 3000), rng(119).integers(0, 4, 2000) / 2),
        (rng(120).choice(["x", "yy", "zzz"], 3000), rng(121).choice(["x", "yy"], 2000)),
        (rng(130).choice(["", "a", "ab", "abc"], 3000), rng(131).choice(["", "a", "ab", "abc"], 2000)),
        (rng(132).choice(["a", "b", "c"], (3000, 2))[:, 1], rng(133).choice(["a", "b"], (2000, 2))[:, 0]),
        (LONG_NAMES[rng(134).integers(0, 12, 3000)], LONG_NAMES[rng(135).integers(0, 12, 2000)]),
        (rng(122).choice(["x", "y"], 3000).astype(object), rng(123).choice(["x", "y", "w"], 2000).astype(object)),
    ],
    ids=[
        "small-range-ints",
        "bools",
        "sparse-ints",
        "floats",
        "ints-and-floats",
        "strings-of-different-widths",
        "short-strings-with-prefixes",
        "strided-strings",
        "long-strings",
        "object-strings",
    ],
)
def test_few_value_counts_equal_np_unique_counts(reference, current):
    expected = category_counts(reference, current)
    counts = few_value_counts(reference, current)
    assert counts[0].dtype == expected[0].dtype
    for got, want in zip(counts, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_few_value_counts_give_none_above_the_cap():
    assert few_value_counts(np.arange(15), np.arange(10, 21)) is None
    assert few_value_counts(np.arange(15) / 2, np.arange(10, 21) / 2) is None
    assert few_value_counts(np.arange(20) * 10**12, np.arange(21) * 10**12) is None
    assert few_value_counts(np.arange(15), np.arange(10, 21), cap=21)[0].size == 21


def test_a_value_the_probe_misses_among_strings_still_counts():
    reference = np.array(["a"] * 50_000 + ["rare"] + ["b"] * 50_000)
    assert compare_column(reference, np.array(["a", "b"] * 10)).n_unique == 3


def test_an_integer_column_with_few_current_values_is_categorical_however_many_the_reference_has():
    result = compare_column(rng(124).integers(0, 50, 3000), rng(125).integers(0, 7, 2000))
    assert (result.kind, result.n_unique, result.test) == ("categorical", None, "jensenshannon")


@pytest.mark.parametrize("test", ["chisquare", "z", "jensenshannon", "psi"])
@pytest.mark.parametrize(
    ("reference", "current"),
    [
        (rng(126).integers(0, 4, 3000) / 2, rng(127).integers(0, 4, 2000) / 2),
        (rng(128).choice(list("pqrs"), 3000), rng(129).choice(list("pqrst"), 2000)),
    ],
    ids=["numbers", "strings"],
)
def test_count_based_tests_give_the_module_results_on_few_valued_columns(test, reference, current):
    # compare_column reuses the counts it made while choosing; the modules count again by themselves.
    result = compare_column(reference, current, test=test)
    module = {"chisquare": chisquare, "z": ztest, "jensenshannon": jensenshannon, "psi": psi}[test]
    assert (result.statistic, result.p_value) == module.statistic(reference, current)


def test_it_counts_distinct_values_over_both_windows_when_choosing():
    # 5 values in the reference, a 6th in current: Evidently counts the union, so KS, not chi-square.
    result = compare_column((np.arange(500) % 5) / 2, (np.arange(300) % 6) / 2)
    assert result.test == "ks"


def test_it_uses_the_test_and_threshold_given_instead_of_the_defaults():
    result = compare_column(rng(31).normal(size=400), rng(32).normal(size=400), test="psi", threshold=0.5)
    assert (result.test, result.score_kind, result.threshold) == ("psi", "distance", 0.5)


def test_an_explicit_kind_changes_the_choice():
    assert compare_column(rng(33).integers(0, 50, 400), rng(34).integers(0, 50, 400), kind="categorical").test == (
        "chisquare"
    )


def test_drift_conventions_follow_evidently_at_the_threshold():
    assert ks.detects_drift(0.05, 0.05) is True
    assert chisquare.detects_drift(0.05, 0.05) is False
    assert ztest.detects_drift(0.05, 0.05) is False
    assert wasserstein.detects_drift(0.1, 0.1) is True
    assert jensenshannon.detects_drift(0.1, 0.1) is True
    assert psi.detects_drift(0.1, 0.1) is True


def test_a_shifted_numerical_column_is_drifted_and_an_unshifted_one_is_not():
    assert compare_column(rng(35).normal(size=500), rng(36).normal(1.0, size=500)).drift_detected is True
    assert compare_column(rng(35).normal(size=5000), rng(37).normal(size=5000)).drift_detected is False


# --- missing, empty and constant columns --------------------------------------------------


def test_it_drops_nan_and_inf_before_testing():
    reference, current = rng(38).normal(size=400), rng(39).normal(0.2, size=300)
    dirty_reference = np.concatenate([reference, [np.nan, np.inf, -np.inf]])
    dirty_current = np.concatenate([[np.nan], current])
    dirty, clean = compare_column(dirty_reference, dirty_current), compare_column(reference, current)
    assert (dirty.statistic, dirty.p_value, dirty.reference_size) == (clean.statistic, clean.p_value, 400)


def test_it_drops_none_and_nan_from_object_columns():
    result = compare_column(np.array(["a", None, "b", np.nan, "c"] * 40, dtype=object), np.array(["a", "b", "c"] * 30))
    assert (result.reference_size, result.n_unique, result.test) == (120, 3, "chisquare")


@pytest.mark.parametrize("side", ["reference", "current"])
def test_an_empty_or_all_nan_column_is_a_value_error(side):
    windows = {"reference": np.array([1.0, 2.0]), "current": np.array([1.0, 2.0])}
    windows[side] = np.array([np.nan, np.nan])
    with pytest.raises(ValueError, match=side):
        compare_column(windows["reference"], windows["current"])


def test_identical_constant_columns_are_not_drifted():
    result = compare_column(np.full(100, 3.0), np.full(80, 3.0))
    assert (result.kind, result.test, result.p_value, result.drift_detected) == ("binary", "z", 1.0, False)


def test_ks_on_identical_constant_columns_gives_no_difference():
    result = compare_column(np.full(100, 3.0), np.full(80, 3.0), test="ks")
    assert (result.statistic, result.p_value) == (0.0, 1.0)


def test_numerical_tests_refuse_strings():
    with pytest.raises(ValueError, match="numerical"):
        compare_column(np.array(["a", "b", "c"]), np.array(["a", "b"]), test="wasserstein")


def test_unknown_test_or_kind_is_a_value_error():
    with pytest.raises(ValueError, match="unknown drift test"):
        compare_column([1.0, 2.0], [1.0, 2.0], test="t-test")
    with pytest.raises(ValueError, match="unknown column kind"):
        compare_column([1.0, 2.0], [1.0, 2.0], kind="text")


# --- Benjamini-Hochberg and dataset drift -------------------------------------------------


def test_benjamini_hochberg_equals_a_hand_computed_example():
    # Sorted p: .005 .01 .03 .04 .5 -> p*m/rank: .025 .025 .05 .05 .5 -> already monotone.
    adjusted = benjamini_hochberg([0.01, 0.04, 0.03, 0.005, 0.5])
    np.testing.assert_allclose(adjusted, [0.025, 0.05, 0.05, 0.025, 0.5], atol=1e-15)


def test_benjamini_hochberg_takes_the_minimum_over_larger_ranks_and_caps_at_one():
    # .02*2/1 = .04 but the rank-2 value .021*2/2 = .021 is smaller, so both become .021.
    np.testing.assert_allclose(benjamini_hochberg([0.02, 0.021]), [0.021, 0.021], atol=1e-15)
    np.testing.assert_allclose(benjamini_hochberg([0.9, 0.8]), [0.9, 0.9], atol=1e-15)


def test_benjamini_hochberg_keeps_nan_out_of_the_count():
    np.testing.assert_allclose(benjamini_hochberg([0.01, np.nan, 0.02]), [0.02, np.nan, 0.02], atol=1e-15)


def test_fdr_adjustment_withdraws_a_marginal_p_value_among_many_null_features():
    reference = {f"f{i}": rng(100 + i).normal(size=300) for i in range(20)}
    current = {f"f{i}": rng(200 + i).normal(size=300) for i in range(20)}
    current["f0"] = rng(300).normal(0.2, size=300)  # mild shift: raw p just under 0.05
    raw = compare_frames(reference, current)
    adjusted = compare_frames(reference, current, fdr=0.05)
    assert raw.columns["f0"].p_value < 0.05
    assert raw.columns["f0"].drift_detected is True
    assert adjusted.columns["f0"].adjusted_p_value == pytest.approx(
        benjamini_hochberg([raw.columns[f"f{i}"].p_value for i in range(20)])[0]
    )
    assert adjusted.columns["f0"].drift_detected is False


def test_fdr_leaves_distance_tests_alone():
    result = compare_frames({"big": rng(40).normal(size=2000)}, {"big": rng(41).normal(size=2000)}, fdr=0.05)
    assert result.columns["big"].adjusted_p_value is None


def test_dataset_drift_is_a_share_of_drifted_columns_reaching_drift_share():
    reference = {name: rng(50 + i).normal(size=400) for i, name in enumerate("abcd")}
    current = {name: rng(60 + i).normal(size=400) for i, name in enumerate("abcd")}
    current["a"], current["b"] = current["a"] + 2, current["b"] + 2
    half = compare_frames(reference, current, drift_share=0.5)
    assert (half.number_of_drifted_columns, half.share_of_drifted_columns, half.dataset_drift) == (2, 0.5, True)
    assert compare_frames(reference, current, drift_share=0.75).dataset_drift is False


def test_overrides_apply_per_column():
    reference = {"a": rng(70).normal(size=400), "b": rng(71).normal(size=400)}
    current = {"a": rng(72).normal(size=400), "b": rng(73).normal(size=400)}
    result = compare_frames(reference, current, overrides={"b": {"test": "psi", "threshold": 0.2}})
    assert (result.columns["a"].test, result.columns["b"].test, result.columns["b"].threshold) == ("ks", "psi", 0.2)


def test_a_column_missing_from_the_current_window_is_a_value_error():
    with pytest.raises(ValueError, match="missing"):
        compare_frames({"a": [1.0, 2.0], "b": [1.0, 2.0]}, {"a": [1.0, 2.0]})


def test_results_serialise_to_strict_json():
    result = compare_frames(
        {"num": rng(80).normal(size=300), "cat": np.array(["a", "b"] * 100)},
        {"num": rng(81).normal(size=300), "cat": np.array(["a", "b", "c"] * 50)},
        overrides={"cat": {"test": "chisquare"}},
        fdr=0.05,
    )
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["columns"]["cat"]["statistic"] == "inf"
    assert set(data) >= {"columns", "share_of_drifted_columns", "dataset_drift"}


# --- chart histograms ---------------------------------------------------------------------


def test_numerical_histograms_share_edges_and_count_every_value():
    reference, current = rng(90).normal(size=500), rng(91).normal(3, size=200)
    histogram = histograms(reference, current, bins=10)
    assert len(histogram.edges) == 11
    assert (sum(histogram.reference_counts), sum(histogram.current_counts)) == (500, 200)
    assert histogram.edges[0] == reference.min() or histogram.edges[0] == current.min()


def test_categorical_histograms_count_each_category_in_both_windows():
    histogram = histograms(np.array(["b", "a", "a"]), np.array(["c", "a"]))
    assert histogram.to_dict() == {
        "categories": ["a", "b", "c"],
        "reference_counts": [2, 1, 0],
        "current_counts": [1, 0, 1],
        "edges": None,
    }


# --- streaming sketches -------------------------------------------------------------------


def folded(reference_sketch, values, n_chunks):
    sketch = reference_sketch.empty_copy()
    for chunk in np.array_split(values, n_chunks):
        sketch.update(chunk)
    return sketch


def test_folding_a_numeric_window_in_chunks_equals_one_pass():
    reference_sketch = NumericSketch.for_reference(rng(400).normal(size=5000), bins=200)
    current = np.concatenate([rng(401).normal(0.5, 2.0, size=30000), [np.nan, np.inf]])
    one_pass, chunked = folded(reference_sketch, current, 1), folded(reference_sketch, current, 13)
    np.testing.assert_array_equal(one_pass.counts, chunked.counts)
    assert (one_pass.count, one_pass.minimum, one_pass.maximum) == (chunked.count, chunked.minimum, chunked.maximum)
    assert chunked.total == pytest.approx(one_pass.total, rel=1e-12)
    assert compare_sketches(reference_sketch, chunked, "wasserstein").statistic == pytest.approx(
        compare_sketches(reference_sketch, one_pass, "wasserstein").statistic, rel=1e-12
    )


def test_merging_numeric_sketches_equals_folding_both_parts():
    reference_sketch = NumericSketch.for_reference(rng(402).normal(size=2000), bins=50)
    first, second = rng(403).normal(size=700), rng(404).normal(1.0, size=900)
    merged = folded(reference_sketch, first, 1)
    merged.merge(folded(reference_sketch, second, 1))
    np.testing.assert_array_equal(merged.counts, folded(reference_sketch, np.concatenate([first, second]), 1).counts)


def test_values_outside_the_reference_range_land_in_the_edge_buckets():
    reference_sketch = NumericSketch.for_reference(np.linspace(0.0, 1.0, 101), bins=10)
    current = folded(reference_sketch, np.array([-5.0, 0.5, 7.0, 8.0]), 1)
    assert (current.counts[0], current.counts[-1], current.count) == (1, 2, 4)


def test_numeric_sketches_on_different_edges_do_not_merge():
    a = NumericSketch.for_reference([0.0, 1.0], bins=4)
    with pytest.raises(ValueError, match="same edges"):
        a.merge(NumericSketch.for_reference([0.0, 2.0], bins=4))


def test_chunked_category_counts_equal_one_pass_and_drop_missing_values():
    values = np.array(["a", "b", None, "c", np.nan, "a"] * 500, dtype=object)
    chunked = CategorySketch()
    for chunk in np.array_split(values, 7):
        chunked.update(chunk)
    assert chunked.counts == CategorySketch.of(values).counts == {"a": 1000, "b": 500, "c": 500}


@pytest.mark.parametrize("test", ["chisquare", "z", "jensenshannon", "psi"])
def test_category_sketches_give_the_array_results_exactly(test):
    reference, current = rng(405).choice(list("pqrs"), 3000), rng(406).choice(list("pqrst"), 2000)
    from_sketch = compare_sketches(CategorySketch.of(reference), CategorySketch.of(current), test)
    from_arrays = compare_column(reference, current, test=test)
    assert (from_sketch.statistic, from_sketch.p_value) == pytest.approx(
        (from_arrays.statistic, from_arrays.p_value), abs=TOLERANCE
    )


def numeric_pair():
    reference, current = rng(407).normal(size=20000), rng(408).normal(0.1, 1.1, size=100000)
    reference_sketch = NumericSketch.for_reference(reference)
    return reference, current, reference_sketch, folded(reference_sketch, current, 9)


def test_ks_from_a_numeric_sketch_is_the_edge_gap_with_an_asymptotic_p_value():
    reference, current, reference_sketch, current_sketch = numeric_pair()
    exact_d = stats.ks_2samp(reference, current).statistic
    approximate = compare_sketches(reference_sketch, current_sketch, "ks")
    assert approximate.statistic <= exact_d + TOLERANCE
    assert approximate.statistic == pytest.approx(exact_d, abs=0.002)
    assert approximate.p_value == pytest.approx(
        ks.asymptotic_p_value(approximate.statistic, 20000, 100000), abs=TOLERANCE
    )


def test_wasserstein_from_a_numeric_sketch_is_close_to_the_exact_distance():
    reference, current, reference_sketch, current_sketch = numeric_pair()
    approximate = compare_sketches(reference_sketch, current_sketch, "wasserstein").statistic
    assert approximate == pytest.approx(wasserstein.statistic(reference, current)[0], rel=0.01)


@pytest.mark.parametrize("test", ["jensenshannon", "psi"])
def test_binned_distances_from_a_numeric_sketch_are_close_to_evidentlys_sturges_bins(test):
    reference, current, reference_sketch, current_sketch = numeric_pair()
    approximate = compare_sketches(reference_sketch, current_sketch, test).statistic
    assert approximate == pytest.approx(compare_column(reference, current, test=test).statistic, abs=0.005)


def test_sketches_pick_evidentlys_default_by_reference_size_and_categories():
    _, _, reference_sketch, current_sketch = numeric_pair()
    assert compare_sketches(reference_sketch, current_sketch).test == "wasserstein"
    small = compare_sketches(CategorySketch.of(["on", "off"] * 100), CategorySketch.of(["on"] * 50))
    assert (small.kind, small.test) == ("binary", "z")


def test_sketches_refuse_tests_that_need_the_other_kind_of_summary():
    with pytest.raises(ValueError, match="CategorySketch"):
        compare_sketches(NumericSketch.for_reference([0.0, 1.0]), NumericSketch.for_reference([0.0, 1.0]), "chisquare")
    with pytest.raises(ValueError, match="NumericSketch"):
        compare_sketches(CategorySketch.of(["a"]), CategorySketch.of(["a"]), "ks")


def test_a_chunk_with_only_missing_values_adds_nothing():
    sketch = CategorySketch.of(["a"])
    sketch.update(np.array([None, np.nan], dtype=object))
    numeric = NumericSketch.for_reference([0.0, 1.0])
    numeric.update([np.nan])
    assert (sketch.counts, numeric.count) == ({"a": 1}, 2)


def test_an_empty_current_sketch_is_a_value_error():
    reference_sketch = NumericSketch.for_reference([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="current"):
        compare_sketches(reference_sketch, reference_sketch.empty_copy())
