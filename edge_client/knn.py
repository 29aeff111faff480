"""Lightweight KNN over a bounded reference set, vectorised numpy.

One distance pass per query: with the reference norms kept up to date on every change,
||x - r||^2 = ||r||^2 - 2 r.x + ||x||^2 is one matrix-vector product over the whole reference set
(the original TinyLCM looped over references in Python: 66 ms per inference on a Pi Zero 2W).

Memory is bounded: at most `max_size` references, preallocated. When the set is full, `add()`
replaces a reference according to `policy`:

- ``"balanced_fifo"`` (default): evict the oldest reference of the class holding the most
  references. Rare classes keep their examples, a new class can still get in, and each class
  tracks its most recent examples (what adaptation wants).
- ``"reservoir"``: reservoir sampling (Algorithm R): the set stays a uniform sample of everything
  ever offered. Stable, but slow to follow drift.

>>> import numpy as np
>>> knn = KNN(k=3, max_size=10).fit(np.array([[0.0], [1.0], [2.0], [10.0], [11.0]]), [0, 0, 0, 1, 1])
>>> p = knn.predict(np.array([10.4]))
>>> p.label, round(p.confidence, 3), p.probabilities.round(3).tolist()
(1, 0.667, [0.333, 0.667])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLICIES = ("balanced_fifo", "reservoir")
STATE_FORMAT = 1
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Prediction:
    label: int
    confidence: float  # probability of the predicted label
    probabilities: np.ndarray  # (n_classes,), index = label
    distances: np.ndarray  # (k,) Euclidean, nearest first
    indices: np.ndarray  # (k,) positions in the reference set


@dataclass(frozen=True)
class BatchPrediction:
    labels: np.ndarray  # (n,)
    confidences: np.ndarray  # (n,)
    probabilities: np.ndarray  # (n, n_classes)
    distances: np.ndarray  # (n, k)
    indices: np.ndarray  # (n, k)


def _splitmix64(value: int) -> int:
    """A stateless, seeded hash: the reservoir's randomness is a function of (seed, count), so the
    state saved to npz is two integers instead of a pickled random generator."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


class KNN:
    """k-nearest-neighbours classifier on integer labels 0..n_classes-1 (Euclidean distance).

    `weighted=True` weighs votes by 1/distance like scikit-learn's ``weights="distance"`` (a query
    at distance 0 from some references takes its vote from those only). `n_classes` fixes the
    length of the probability vector; it grows if a larger label is added.
    """

    def __init__(self, k=5, max_size=200, weighted=False, policy="balanced_fifo", n_classes=None, seed=0):
        if int(k) < 1 or int(max_size) < 1:
            raise ValueError(f"k and max_size must be >= 1, got k={k}, max_size={max_size}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.k = int(k)
        self.max_size = int(max_size)
        self.weighted = bool(weighted)
        self.policy = policy
        self.n_classes = None if n_classes is None else int(n_classes)
        self.seed = int(seed)
        self._reset()

    def _reset(self):
        self._x = None  # (max_size, dim), allocated when the dimension is known
        self._y = np.zeros(self.max_size, dtype=np.int64)
        self._norms = np.zeros(self.max_size)
        self._stamps = np.zeros(self.max_size, dtype=np.int64)  # insertion order, for FIFO
        self._size = 0
        self._clock = 0  # samples ever inserted
        self._seen = 0  # samples ever offered to add(), for the reservoir

    @property
    def size(self) -> int:
        return self._size

    @property
    def dim(self) -> int | None:
        return None if self._x is None else self._x.shape[1]

    @property
    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the current references and labels."""
        return self._x[: self._size].copy(), self._y[: self._size].copy()

    def fit(self, x, y) -> KNN:
        """Replace the reference set with (x, y); more than max_size samples is an error."""
        x, y = self._check_xy(np.asarray(x, dtype=np.float64), y, dim=None)
        if len(x) > self.max_size:
            raise ValueError(f"{len(x)} references exceed max_size={self.max_size}; pick a subset (balanced_subset)")
        self._reset()
        self._allocate(x.shape[1])
        n = len(x)
        self._x[:n], self._y[:n], self._norms[:n] = x, y, np.einsum("ij,ij->i", x, x)
        self._stamps[:n] = np.arange(n)
        self._size = self._clock = self._seen = n
        self._grow_classes(y)
        return self

    def add(self, x, y) -> int | None:
        """Offer one labelled sample; returns the slot it went to, or None if the reservoir skipped it."""
        x, y = self._check_xy(np.asarray(x, dtype=np.float64)[np.newaxis], [y], dim=self.dim)
        if self._x is None:
            self._allocate(x.shape[1])
        self._seen += 1
        slot = self._slot_for(int(y[0]))
        if slot is not None:
            self._write(slot, x[0], int(y[0]))
        return slot

    def predict(self, x) -> Prediction:
        """Label, confidence, class probabilities and neighbour distances for one sample (d,)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"predict takes one sample of shape (d,), got {x.shape}; use predict_batch")
        # A 1-D path of its own: half the numpy calls of the batched one, which matters per sample.
        self._check_query(x[np.newaxis])
        n, k = self._size, min(self.k, self._size)
        squared = self._norms[:n] - 2.0 * (self._x[:n] @ x) + x @ x
        np.maximum(squared, 0.0, out=squared)
        indices = np.argpartition(squared, k - 1)[:k] if k < n else np.arange(n)
        indices = indices[np.argsort(squared[indices], kind="stable")]
        distances = np.sqrt(squared[indices])
        votes = np.bincount(self._y[indices], self._weights_one(distances), minlength=self.n_classes)
        probabilities = votes / votes.sum()
        label = int(probabilities.argmax())
        return Prediction(label, float(probabilities[label]), probabilities, distances, indices)

    def predict_batch(self, x) -> BatchPrediction:
        """predict() for n samples (n, d) at once."""
        indices, distances = self.kneighbors(x)
        probabilities = self._vote(indices, distances)
        labels = probabilities.argmax(axis=1)  # ties go to the lowest label, as in scikit-learn
        confidences = probabilities[np.arange(len(labels)), labels]
        return BatchPrediction(labels, confidences, probabilities, distances, indices)

    def kneighbors(self, x) -> tuple[np.ndarray, np.ndarray]:
        """(indices, distances) of the k nearest references to each row of x, nearest first."""
        x = self._check_query(np.asarray(x, dtype=np.float64))
        n, k = self._size, min(self.k, self._size)
        squared = self._norms[:n] - 2.0 * (x @ self._x[:n].T) + np.einsum("ij,ij->i", x, x)[:, None]
        np.maximum(squared, 0.0, out=squared)  # rounding can dip just below zero for near-duplicates
        part = np.argpartition(squared, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), (len(x), n))
        part_sq = np.take_along_axis(squared, part, axis=1)
        order = np.argsort(part_sq, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1), np.sqrt(np.take_along_axis(part_sq, order, axis=1))

    def _vote(self, indices, distances) -> np.ndarray:
        weights = self._weights(distances)
        rows = np.arange(len(indices))[:, None] * self.n_classes
        flat = np.bincount((rows + self._y[indices]).ravel(), weights.ravel(), minlength=len(indices) * self.n_classes)
        votes = flat.reshape(len(indices), self.n_classes)
        return votes / votes.sum(axis=1, keepdims=True)

    def _weights(self, distances) -> np.ndarray:
        """Vote weights for (n, k) distances sorted nearest first."""
        if not self.weighted:
            return np.ones_like(distances)
        exact = distances == 0.0
        weights = np.divide(1.0, distances, out=np.zeros_like(distances), where=~exact)
        rows = exact[:, 0]  # sorted rows: any exact match is in column 0
        weights[rows] = exact[rows]  # exact matches decide alone, as in scikit-learn
        return weights

    def _weights_one(self, distances) -> np.ndarray:
        if not self.weighted:
            return np.ones_like(distances)
        return (distances == 0.0).astype(np.float64) if distances[0] == 0.0 else 1.0 / distances

    def _slot_for(self, label: int) -> int | None:
        if self._size < self.max_size:
            self._size += 1
            return self._size - 1
        if self.policy == "reservoir":
            draw = _splitmix64((self.seed << 32) ^ self._seen) % self._seen
            return int(draw) if draw < self.max_size else None
        return self._oldest_of_largest_class(label)

    def _oldest_of_largest_class(self, label: int) -> int:
        counts = np.bincount(self._y[: self._size], minlength=max(self.n_classes, label + 1))
        largest = np.flatnonzero(counts == counts.max())
        # Among equally large classes, replace within the incoming sample's own class if it is one.
        victim = label if label in largest else int(largest[0])
        members = np.flatnonzero(self._y[: self._size] == victim)
        return int(members[self._stamps[members].argmin()])

    def _write(self, slot: int, x: np.ndarray, label: int):
        self._x[slot], self._y[slot], self._norms[slot] = x, label, x @ x
        self._stamps[slot] = self._clock
        self._clock += 1
        self._grow_classes([label])

    def _allocate(self, dim: int):
        self._x = np.zeros((self.max_size, dim))

    def _grow_classes(self, labels):
        top = int(np.max(labels)) + 1
        self.n_classes = top if self.n_classes is None else max(self.n_classes, top)

    @staticmethod
    def _check_xy(x, y, dim) -> tuple[np.ndarray, np.ndarray]:
        y = np.asarray(y)
        if x.ndim != 2 or 0 in x.shape or (dim is not None and x.shape[1] != dim):
            raise ValueError(f"references must be (n, {dim or 'd'}) with n, d >= 1, got {x.shape}")
        if y.shape != (len(x),) or y.dtype.kind not in "iu" or np.any(y < 0):
            raise ValueError(f"labels must be {len(x)} non-negative integers, got {y.dtype} array of shape {y.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("references contain NaN or infinite values")
        return x, y.astype(np.int64)

    def _check_query(self, x) -> np.ndarray:
        if self._size == 0:
            raise RuntimeError("the KNN has no references yet: call fit() or add() first")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"queries must be (n, {self.dim}), got {x.shape}")
        return x

    def to_state(self) -> dict:
        """Plain numpy arrays (np.savez-able, loadable with allow_pickle=False)."""
        n = self._size
        return {
            "format": np.array(STATE_FORMAT),
            "config": np.array([self.k, self.max_size, int(self.weighted), self.seed, self.n_classes or 0]),
            "policy": np.array(self.policy),
            "counters": np.array([self._clock, self._seen]),
            "x": (self._x[:n] if self._x is not None else np.zeros((0, 0))).copy(),
            "y": self._y[:n].copy(),
            "stamps": self._stamps[:n].copy(),
        }

    @classmethod
    def from_state(cls, state) -> KNN:
        """Rebuild from to_state() output (or the np.load of its npz)."""
        if int(state["format"]) != STATE_FORMAT:
            raise ValueError(f"unsupported KNN state format {int(state['format'])}; expected {STATE_FORMAT}")
        k, max_size, weighted, seed, n_classes = (int(v) for v in state["config"])
        knn = cls(k, max_size, bool(weighted), str(state["policy"]), n_classes or None, seed)
        x, y, n = np.asarray(state["x"], dtype=np.float64), np.asarray(state["y"]), len(state["y"])
        if n > max_size or x.shape[0] != n or len(state["stamps"]) != n:
            raise ValueError(f"inconsistent KNN state: {x.shape[0]} references, {n} labels, max_size {max_size}")
        if n:
            knn.fit(x, y)
            knn._stamps[:n] = state["stamps"]
        knn._clock, knn._seen = (int(v) for v in state["counters"])
        return knn


def balanced_subset(labels, size: int, seed: int = 0) -> np.ndarray:
    """Indices of up to `size` samples, spread as evenly over the labels as they allow (seeded)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    ranks = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        ranks[members] = np.arange(len(members))
    # Round robin: every class's first pick, then every class's second, ...
    return np.sort(np.lexsort((labels, ranks))[:size])
