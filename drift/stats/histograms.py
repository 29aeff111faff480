"""Reference/current histograms for report charts, on shared bins so the bars line up."""

import numpy as np

from ._columns import category_counts, clean, is_numeric
from .results import Histogram

DEFAULT_BINS = "sturges"


def histograms(reference, current, kind: str | None = None, bins: int | str = DEFAULT_BINS) -> Histogram:
    """Numerical columns: shared edges over both windows; others: counts per category (sorted)."""
    reference, current = clean(reference, "reference"), clean(current, "current")
    numerical = is_numeric(reference) and is_numeric(current) if kind is None else kind == "numerical"
    if numerical:
        return _numeric_histogram(reference, current, bins)
    return _category_histogram(reference, current)


def _numeric_histogram(reference: np.ndarray, current: np.ndarray, bins: int | str) -> Histogram:
    edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins=bins)
    return Histogram(
        reference_counts=np.histogram(reference, edges)[0].tolist(),
        current_counts=np.histogram(current, edges)[0].tolist(),
        edges=edges.tolist(),
    )


def _category_histogram(reference: np.ndarray, current: np.ndarray) -> Histogram:
    keys, reference_counts, current_counts = category_counts(reference, current)
    return Histogram(
        reference_counts=reference_counts.tolist(),
        current_counts=current_counts.tolist(),
        categories=keys.tolist(),
    )
