"""Standard scaler and PCA applied in numpy, from parameters fitted on the server.

Parameters travel as JSON-friendly dicts of lists (`to_params()` / `from_params()`), named after
scikit-learn's fitted attributes (`mean_`, `scale_`, `components_`, `explained_variance_`) so the
server can fill them straight from its fitted estimators.

>>> scaler = StandardScaler.from_params({"mean": [1.0, 2.0], "scale": [2.0, 4.0]})
>>> pca = PCA.from_params({"mean": [0.0, 0.0], "components": [[1.0, 0.0]]})
>>> FeatureTransform([scaler, pca]).transform([3.0, 6.0]).tolist()
[1.0]
"""

from __future__ import annotations

import numpy as np


def _vector(params: dict, key: str, owner: str) -> np.ndarray:
    if key not in params:
        raise ValueError(f"{owner} params need {key!r}; got keys {sorted(params)}")
    value = np.asarray(params[key], dtype=np.float64)
    if value.ndim != 1 or len(value) == 0:
        raise ValueError(f"{owner} {key!r} must be a non-empty list of numbers, got shape {value.shape}")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{owner} {key!r} contains NaN or infinite values")
    return value


def _matrix(params: dict, key: str, owner: str) -> np.ndarray:
    if key not in params:
        raise ValueError(f"{owner} params need {key!r}; got keys {sorted(params)}")
    value = np.asarray(params[key], dtype=np.float64)
    if value.ndim != 2 or 0 in value.shape:
        raise ValueError(f"{owner} {key!r} must be a non-empty list of equal-length rows, got shape {value.shape}")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{owner} {key!r} contains NaN or infinite values")
    return value


def _as_rows(x, dim: int, owner: str) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] != dim:
        raise ValueError(f"{owner} expects features of dimension {dim} as (d,) or (n, d), got shape {array.shape}")
    return array


class AffineStep:
    """A step computing x @ weight + bias; both transforms are affine, so chains fuse into one."""

    weight: np.ndarray  # (input_dim, output_dim)
    bias: np.ndarray  # (output_dim,)

    @property
    def input_dim(self) -> int:
        return self.weight.shape[0]

    @property
    def output_dim(self) -> int:
        return self.weight.shape[1]

    def transform(self, x) -> np.ndarray:
        """(d,) -> (k,) for one sample, (n, d) -> (n, k) for a batch."""
        return _as_rows(x, self.input_dim, type(self).__name__) @ self.weight + self.bias


class StandardScaler(AffineStep):
    """(x - mean) / scale, like sklearn.preprocessing.StandardScaler.transform."""

    kind = "standard_scaler"

    def __init__(self, mean, scale):
        self.mean = _vector({"mean": mean}, "mean", "StandardScaler")
        self.scale = _vector({"scale": scale}, "scale", "StandardScaler")
        if self.mean.shape != self.scale.shape:
            raise ValueError(f"StandardScaler mean has {len(self.mean)} values but scale has {len(self.scale)}")
        if np.any(self.scale <= 0):
            raise ValueError("StandardScaler scale must be > 0 (sklearn stores 1.0 for constant features)")
        self.weight = np.diag(1.0 / self.scale)
        self.bias = -self.mean / self.scale

    def transform(self, x) -> np.ndarray:
        # Elementwise on its own (exactly sklearn's arithmetic); the diagonal weight is for fusing.
        return (_as_rows(x, self.input_dim, "StandardScaler") - self.mean) / self.scale

    @classmethod
    def from_params(cls, params: dict) -> StandardScaler:
        return cls(_vector(params, "mean", "StandardScaler"), _vector(params, "scale", "StandardScaler"))

    def to_params(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def fit(cls, x) -> StandardScaler:
        """Fit on the device (bootstrap/demo without a server); constant features get scale 1."""
        x = np.asarray(x, dtype=np.float64)
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 0, std, 1.0))


class PCA(AffineStep):
    """(x - mean) @ components.T, divided by sqrt(explained_variance) when whitening, like sklearn's PCA."""

    kind = "pca"

    def __init__(self, mean, components, explained_variance=None, whiten: bool = False):
        self.mean = _vector({"mean": mean}, "mean", "PCA")
        self.components = _matrix({"components": components}, "components", "PCA")
        self.whiten = bool(whiten)
        self.explained_variance = self._check_variance(explained_variance)
        self._check_shapes()
        self.weight = self.components.T.copy()
        if self.whiten:
            self.weight /= np.sqrt(self.explained_variance)
        self.bias = -self.mean @ self.weight

    def _check_variance(self, explained_variance):
        if explained_variance is None:
            if self.whiten:
                raise ValueError("PCA with whiten=True needs explained_variance")
            return None
        variance = _vector({"explained_variance": explained_variance}, "explained_variance", "PCA")
        if self.whiten and np.any(variance <= 0):
            raise ValueError("PCA explained_variance must be > 0 to whiten")
        return variance

    def _check_shapes(self):
        k, d = self.components.shape
        if d != len(self.mean):
            raise ValueError(f"PCA components have {d} columns but mean has {len(self.mean)} values")
        if k > d:
            raise ValueError(f"PCA has {k} components for {d} input dimensions; at most {d}")
        if self.explained_variance is not None and len(self.explained_variance) != k:
            raise ValueError(f"PCA explained_variance has {len(self.explained_variance)} values for {k} components")

    @classmethod
    def from_params(cls, params: dict) -> PCA:
        mean, components = _vector(params, "mean", "PCA"), _matrix(params, "components", "PCA")
        return cls(mean, components, params.get("explained_variance"), params.get("whiten", False))

    def to_params(self) -> dict:
        params = {"mean": self.mean.tolist(), "components": self.components.tolist(), "whiten": self.whiten}
        if self.explained_variance is not None:
            params["explained_variance"] = self.explained_variance.tolist()
        return params

    @classmethod
    def fit(cls, x, n_components: int, whiten: bool = False) -> PCA:
        """Fit by SVD on the device, with scikit-learn's sign convention (so both give the same output)."""
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0)
        _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
        # sklearn's svd_flip: the largest-magnitude entry of each component is positive.
        signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
        variance = singular**2 / max(len(x) - 1, 1)
        return cls(mean, (vt * signs[:, None])[:n_components], variance[:n_components], whiten)


STEP_TYPES = {step.kind: step for step in (StandardScaler, PCA)}


class FeatureTransform:
    """A chain of steps (e.g. scaler then PCA) applied as ONE fused affine map.

    Each numpy call costs microseconds of overhead on a slow core, so the chain is folded into a
    single matrix product at construction; the steps are kept for `to_params()`.
    """

    def __init__(self, steps):
        self.steps = list(steps)
        if not self.steps:
            raise ValueError("FeatureTransform needs at least one step")
        for i, (a, b) in enumerate(zip(self.steps, self.steps[1:], strict=False)):
            if a.output_dim != b.input_dim:
                raise ValueError(f"step {i} outputs {a.output_dim} values but step {i + 1} expects {b.input_dim}")
        self.weight, self.bias = self.steps[0].weight, self.steps[0].bias
        for step in self.steps[1:]:
            self.weight, self.bias = self.weight @ step.weight, self.bias @ step.weight + step.bias

    @property
    def input_dim(self) -> int:
        return self.steps[0].input_dim

    @property
    def output_dim(self) -> int:
        return self.steps[-1].output_dim

    def transform(self, x) -> np.ndarray:
        return _as_rows(x, self.input_dim, "FeatureTransform") @ self.weight + self.bias

    def to_params(self) -> dict:
        return {"steps": [{"type": step.kind, "params": step.to_params()} for step in self.steps]}

    @classmethod
    def from_params(cls, params: dict) -> FeatureTransform:
        steps = params.get("steps") if isinstance(params, dict) else None
        if not isinstance(steps, list):
            raise ValueError("FeatureTransform params need a 'steps' list of {'type': ..., 'params': {...}}")
        return cls(_step_from_params(i, step) for i, step in enumerate(steps))


def _step_from_params(index: int, step) -> AffineStep:
    kind = step.get("type") if isinstance(step, dict) else None
    if kind not in STEP_TYPES:
        raise ValueError(f"step {index}: unknown type {kind!r}; expected one of {sorted(STEP_TYPES)}")
    if not isinstance(step.get("params"), dict):
        raise ValueError(f"step {index} ({kind}): 'params' must be a dict")
    return STEP_TYPES[kind].from_params(step["params"])
