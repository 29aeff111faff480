"""Statistical core of Sphere's drift reports: pure numpy/scipy, no Django.

Compare a reference window with a current window per feature, then decide dataset drift.

Automatic test choice (Evidently's `_get_default_stattest`, src/evidently/calculations/stattests/
registry.py in 0.4.x, read from the evidentlyai/evidently sources; the v0.1.50 release notes state
the same rules and link docs.evidentlyai.com/reports/data-drift#how-it-works). `n_unique` counts
distinct values of reference and current together; `reference size` is the number of reference
values left after dropping NaN/inf:

================================  =======================  =====================
column                            reference size <= 1000   reference size > 1000
================================  =======================  =====================
numerical, n_unique > 5           ks (p <= 0.05)           wasserstein (>= 0.1)
numerical, 3 <= n_unique <= 5     chisquare (p < 0.05)     jensenshannon (>= 0.1)
categorical, n_unique > 2         chisquare (p < 0.05)     jensenshannon (>= 0.1)
binary (n_unique <= 2, any type)  z (p < 0.05)             jensenshannon (>= 0.1)
================================  =======================  =====================

PSI (>= 0.1) is available as an override. Drift conventions follow Evidently's modules: KS is
drifted when p <= threshold, chi-square and z when p < threshold, distances when >= threshold.

`ColumnResult.n_unique` is exact up to 20 and None above (the rules never need more).

Kind detection: a column with at most 2 distinct values is "binary"; other numeric dtypes
(int/uint/float, not bool) are "numerical", except integer columns with at most 10 distinct
values in the current window, which Evidently 0.7 infers as categorical; everything else is
"categorical".

Missing values: NaN, None and +/-inf are dropped per column before anything else (Evidently's
`get_one_column_drift`). A column empty after that raises ValueError. Constant columns are
defined: KS gives D=0, p=1; z gives p=1; Wasserstein norms by max(std, 0.001).

Dataset drift (Evidently's `get_dataset_drift`): share of drifted columns >= drift_share (0.5).
With `fdr`, p-value tests decide on Benjamini-Hochberg adjusted p-values against `fdr` instead of
their own thresholds; distance tests are unaffected (they have no p-value to adjust).
"""

import dataclasses

import numpy as np

from . import chisquare, jensenshannon, ks, psi, wasserstein, ztest
from ._columns import clean, few_value_counts, is_numeric, n_unique
from .fdr import benjamini_hochberg
from .histograms import histograms
from .results import ColumnResult, DatasetResult, Histogram

TESTS = {module.NAME: module for module in (ks, chisquare, ztest, wasserstein, jensenshannon, psi)}
COUNT_TESTS = (chisquare, ztest, jensenshannon, psi)
KINDS = ("numerical", "categorical", "binary")
SMALL_REFERENCE_MAX = 1000
FEW_UNIQUE_MAX = 5
BINARY_UNIQUE_MAX = 2
INTEGER_CARDINALITY_LIMIT = 10

__all__ = [
    "TESTS",
    "ColumnResult",
    "DatasetResult",
    "Histogram",
    "benjamini_hochberg",
    "choose_test",
    "column_kind",
    "compare_column",
    "compare_frames",
    "detect_kind",
    "histograms",
]


def detect_kind(reference: np.ndarray, current: np.ndarray, unique_count: int | None) -> str:
    """ "binary", "numerical" or "categorical"; `unique_count` as n_unique gives it (None: more than 20)."""
    numeric = is_numeric(reference) and is_numeric(current)
    integer = current.dtype.kind in "iu"
    current_count = n_unique(current, current[:0], cap=INTEGER_CARDINALITY_LIMIT) if numeric and integer else None
    return column_kind(numeric, integer, unique_count, current_count)


def column_kind(numeric: bool, integer: bool, unique_count: int | None, current_unique_count: int | None) -> str:
    """The kind rule on summaries alone, so exact mode and sketches (sketch.py) decide alike.

    `integer`: the current window has an integer dtype; `current_unique_count`: its distinct values,
    None when more than INTEGER_CARDINALITY_LIMIT. Integer columns with at most that many distinct
    values in the current window are categorical, as Evidently 0.7 infers them
    (evidently/core/datasets.py); found by benchmarks/drift_report.py, where they otherwise got
    Wasserstein instead of Jensen-Shannon.
    """
    if unique_count is not None and unique_count <= BINARY_UNIQUE_MAX:
        return "binary"
    if not numeric:
        return "categorical"
    if integer and current_unique_count is not None and current_unique_count <= INTEGER_CARDINALITY_LIMIT:
        return "categorical"
    return "numerical"


def choose_test(kind: str, reference_size: int, unique_count: int | None) -> str:
    """Evidently's default test for a column (see the table in the module docstring).

    `unique_count` None means "more than 20 distinct values".
    """
    small = reference_size <= SMALL_REFERENCE_MAX
    many_values = unique_count is None or unique_count > FEW_UNIQUE_MAX
    if kind == "numerical" and many_values:
        return ks.NAME if small else wasserstein.NAME
    if not small:
        return jensenshannon.NAME
    return chisquare.NAME if many_values or unique_count > BINARY_UNIQUE_MAX else ztest.NAME


def compare_column(reference, current, kind=None, test=None, threshold=None, column=None) -> ColumnResult:
    reference, current = clean(reference, "reference"), clean(current, "current")
    counts = few_value_counts(reference, current)
    unique_count = None if counts is None else int(counts[0].size)
    kind = kind or detect_kind(reference, current, unique_count)
    _check_choice(kind, test)
    module = TESTS[test or choose_test(kind, reference.size, unique_count)]
    threshold = module.DEFAULT_THRESHOLD if threshold is None else threshold
    statistic, p_value = _run(module, reference, current, kind, counts)
    return ColumnResult(
        kind=kind,
        test=module.NAME,
        score_kind=module.KIND,
        statistic=statistic,
        p_value=p_value,
        threshold=threshold,
        drift_detected=module.detects_drift(p_value if module.KIND == "p_value" else statistic, threshold),
        reference_size=int(reference.size),
        current_size=int(current.size),
        n_unique=unique_count,
        column=column,
    )


def _check_choice(kind: str, test: str | None) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown column kind {kind!r}; expected one of {KINDS}")
    if test is not None and test not in TESTS:
        raise ValueError(f"unknown drift test {test!r}; expected one of {sorted(TESTS)}")


def _run(module, reference: np.ndarray, current: np.ndarray, kind: str, counts) -> tuple[float, float | None]:
    if counts is not None and module in COUNT_TESTS:
        # At most 20 distinct values: every kind is counted per value (Evidently's binning included),
        # and those counts are already known.
        return module.from_counts(counts[1], counts[2])
    if module in (jensenshannon, psi):
        # Only numerical columns are cut into Sturges bins; binary/categorical are counted per value.
        return module.statistic(reference, current, numerical=kind == "numerical")
    return module.statistic(reference, current)


def compare_frames(reference: dict, current: dict, overrides=None, drift_share=0.5, fdr=None) -> DatasetResult:
    """Compare every reference column with the same column of the current window.

    `overrides` maps a column name to keyword arguments of compare_column ("kind", "test", "threshold").
    """
    if not reference:
        raise ValueError("the reference window has no columns")
    missing = sorted(set(reference) - set(current))
    if missing:
        raise ValueError(f"columns missing from the current window: {missing}")
    overrides = overrides or {}
    results = {
        name: compare_column(reference[name], current[name], column=name, **overrides.get(name, {}))
        for name in reference
    }
    if fdr is not None:
        results = _apply_fdr(results, fdr)
    return DatasetResult(columns=results, drift_share=drift_share, fdr=fdr)


def _apply_fdr(results: dict[str, ColumnResult], fdr: float) -> dict[str, ColumnResult]:
    tested = [name for name, result in results.items() if result.score_kind == "p_value"]
    adjusted = benjamini_hochberg([results[name].p_value for name in tested])
    updated = dict(results)
    for name, adjusted_p in zip(tested, adjusted, strict=True):
        decide = TESTS[results[name].test].detects_drift
        updated[name] = dataclasses.replace(
            results[name], adjusted_p_value=float(adjusted_p), threshold=fdr, drift_detected=decide(adjusted_p, fdr)
        )
    return updated
