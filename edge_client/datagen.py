"""Seeded, reproducible drifting streams with known ground truth, for tests, benchmarks and the demo.

Every generator yields ``(x, y, meta)``; ``meta`` says what the stream is doing at that step:
``t``, ``drift``, ``onset`` (first step that may differ from the stationary stream), ``end``
(first step fully in the new concept, None if it never settles), ``weight``
(0 = old concept, 1 = new concept), ``mix`` (what was applied: 0/1 when the concept is drawn per
sample, the weight itself for incremental drift) and ``phase`` (``before``, ``transition``,
``drifted``, ``recovered`` or ``stationary``).

A drifting stream and the stationary stream with the same seed are identical before the onset:
the randomness of the data and of the concept draws come from separate seeded generators.

Drift schedules (`DriftSchedule`):

- ``abrupt``: the new concept from ``onset`` on.
- ``gradual``: over the ``width`` steps from ``onset`` (the last one, ``end``, fully new) each
  sample comes from the new concept with a probability rising to 1 (old and new interleave).
- ``incremental``: the concept itself moves from old to new over the same steps (parameters are
  interpolated).
- ``recurring``: the new concept holds for ``duration`` steps every ``period`` steps from
  ``onset``, then the old one returns (each edge is a ``width``-long transition).

Transitions are ``linear`` or ``sigmoid`` (an S-curve rescaled to be exactly 0 at the start and 1
at the end, so nothing changes before the stated onset).

>>> stream = list(vector_stream(6, DriftSchedule("abrupt", onset=3), n_classes=2, seed=1))
>>> [meta["phase"] for _, _, meta in stream]
['before', 'before', 'before', 'drifted', 'drifted', 'drifted']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

DRIFTS = ("none", "abrupt", "gradual", "incremental", "recurring")
SHAPES = ("linear", "sigmoid")
SAMPLE_PATH = Path(__file__).resolve().parent / "models" / "digits_sample.npz"
PIXEL_MAX = 16.0  # digits pixels are 0..16
_SIGMOID_STEEPNESS = 10.0


@dataclass(frozen=True)
class DriftSchedule:
    """When and how fast a stream moves from its old concept (weight 0) to its new one (weight 1)."""

    drift: str = "none"
    onset: int = 0
    width: int = 0
    shape: str = "linear"
    period: int = 0  # recurring only
    duration: int = 0  # recurring only

    def __post_init__(self):
        if self.drift not in DRIFTS or self.shape not in SHAPES:
            raise ValueError(f"drift must be one of {DRIFTS} and shape one of {SHAPES}")
        if self.onset < 0 or self.width < 0:
            raise ValueError("onset and width must be >= 0")
        if self.drift in ("gradual", "incremental") and self.width == 0:
            raise ValueError(f"{self.drift} drift needs width > 0 (width 0 is abrupt drift)")
        if self.drift == "recurring" and not (0 < self.duration and self.duration + 2 * self.width <= self.period):
            raise ValueError("recurring drift needs 0 < duration and duration + 2 * width <= period")

    @property
    def interpolates(self) -> bool:
        """True when the concept is blended (incremental); otherwise each sample draws a concept."""
        return self.drift == "incremental"

    @property
    def end(self) -> int | None:
        """First step fully in the new concept (None for stationary and recurring streams)."""
        return None if self.drift in ("none", "recurring") else self.onset + max(self.width - 1, 0)

    def weight(self, t: int) -> float:
        if self.drift == "none" or t < self.onset:
            return 0.0
        if self.drift == "recurring":
            local = (t - self.onset) % self.period
            fall = self.duration + max(self.width, 1) - 1  # `duration` steps at weight 1 in between
            return self._ramp(local, 0) - self._ramp(local, fall)
        return self._ramp(t, self.onset)

    def _ramp(self, t: int, start: int) -> float:
        # The `width` steps from `start` on carry weights up to 1 (the first is already above 0),
        # so `start` itself is the first step that differs from the old concept.
        if t < start:
            return 0.0
        if t >= start + max(self.width, 1) - 1:
            return 1.0
        return ramp((t - start + 1) / self.width, self.shape)

    def phase(self, t: int, weight: float) -> str:
        if self.drift == "none":
            return "stationary"
        if t < self.onset:
            return "before"
        return "drifted" if weight == 1.0 else "transition" if weight > 0.0 else "recovered"

    def step(self, t: int, draw: float) -> dict:
        """Ground truth at step t; `draw` is a uniform [0, 1) number deciding sampled concepts."""
        weight = self.weight(t)
        mix = weight if self.interpolates else float(draw < weight)
        phase = self.phase(t, weight)
        return {
            "t": t,
            "drift": self.drift,
            "onset": self.onset,
            "end": self.end,
            "weight": weight,
            "mix": mix,
            "phase": phase,
        }


STATIONARY = DriftSchedule()


def ramp(u: float, shape: str = "linear") -> float:
    """Transition progress for u in [0, 1]: linear, or a sigmoid rescaled to hit 0 and 1 exactly."""
    if shape == "linear":
        return u

    def s(v):
        return 1.0 / (1.0 + math.exp(-_SIGMOID_STEEPNESS * (v - 0.5)))

    return (s(u) - s(0.0)) / (s(1.0) - s(0.0))


def _generators(seed: int, count: int = 2) -> list[np.random.Generator]:
    """(data, concept, ...) generators: separate streams, so a schedule never shifts the data's randomness."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(count)]


def vector_stream(
    n, schedule=STATIONARY, *, dim=None, n_classes=3, separation=4.0, noise=1.0, shift=3.0, kind="feature", seed=0
):
    """Gaussian class clusters; scalars when dim is None, else (dim,) vectors.

    kind="feature": the clusters move by `shift` along a fixed random direction (covariate drift,
    labels unchanged). kind="concept": x keeps its distribution but the labels rotate to the next
    class (P(y|x) changes); an incremental schedule then relabels with probability = weight.
    """
    if kind not in ("feature", "concept"):
        raise ValueError(f"kind must be 'feature' or 'concept', got {kind!r}")
    rng, concept_rng = _generators(seed)
    width = 1 if dim is None else dim
    centres = rng.normal(scale=separation, size=(n_classes, width))
    direction = rng.normal(size=width)
    direction *= shift / np.linalg.norm(direction)
    for t in range(n):
        draw = concept_rng.random()
        meta = schedule.step(t, draw)
        y = int(rng.integers(n_classes))
        x = centres[y] + rng.normal(scale=noise, size=width)
        if kind == "feature":
            x = x + meta["mix"] * direction
        elif draw < meta["weight"]:  # the same draw that set meta["mix"] for sampled schedules
            y = (y + 1) % n_classes
            meta["mix"] = 1.0
        yield (float(x[0]) if dim is None else x), y, {**meta, "kind": kind}


def stationary_stream(n, **kwargs):
    """The control: vector_stream with no drift (same keyword arguments)."""
    return vector_stream(n, STATIONARY, **kwargs)


class DigitsSample(NamedTuple):
    images: np.ndarray  # (n, 8, 8) uint8, pixel values 0..16
    labels: np.ndarray  # (n,)
    test_index: np.ndarray  # indices of the model's held-out split


def load_digits_sample(path=None) -> DigitsSample:
    """The digits shipped with the model (written by tools/build_models.py), no pickle allowed."""
    with np.load(path or SAMPLE_PATH, allow_pickle=False) as archive:
        return DigitsSample(
            archive["images"], archive["labels"].astype(np.int64), archive["test_index"].astype(np.int64)
        )


def adjust_brightness(image, delta):
    """Add `delta` to every pixel (raw units), clipped to the valid range."""
    return np.clip(np.asarray(image, dtype=np.float64) + delta, 0.0, PIXEL_MAX)


def adjust_contrast(image, factor):
    """Scale deviations from the image mean by `factor` (< 1 flattens, > 1 sharpens), clipped."""
    image = np.asarray(image, dtype=np.float64)
    mean = image.mean()
    return np.clip((image - mean) * factor + mean, 0.0, PIXEL_MAX)


def add_noise(image, sigma, rng):
    """Gaussian pixel noise of std `sigma` (raw units), clipped."""
    image = np.asarray(image, dtype=np.float64)
    return np.clip(image + rng.normal(scale=sigma, size=image.shape), 0.0, PIXEL_MAX)


def rotate(image, degrees):
    """Rotate counter-clockwise (as displayed, like np.rot90) about the image centre, by bilinear
    index mapping; pixels that come from outside the image are 0 (background).

    >>> square = np.arange(16.0).reshape(4, 4)
    >>> bool(np.allclose(rotate(square, 90), np.rot90(square)))
    True
    """
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape
    theta = -math.radians(degrees)  # rows grow downwards, so counter-clockwise on screen is negative
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    # Inverse mapping: for each output pixel, where in the input does it come from?
    src_r = cy + (rows - cy) * math.cos(theta) - (cols - cx) * math.sin(theta)
    src_c = cx + (rows - cy) * math.sin(theta) + (cols - cx) * math.cos(theta)
    return _bilinear(image, src_r, src_c)


def _bilinear(image, r, c):
    padded = np.pad(image, 1)  # zero border: samples from outside the image read background
    r, c = np.clip(r + 1, 0, image.shape[0] + 1), np.clip(c + 1, 0, image.shape[1] + 1)
    r0 = np.minimum(np.floor(r).astype(int), image.shape[0])
    c0 = np.minimum(np.floor(c).astype(int), image.shape[1])
    fr, fc = r - r0, c - c0
    top = padded[r0, c0] * (1 - fc) + padded[r0, c0 + 1] * fc
    bottom = padded[r0 + 1, c0] * (1 - fc) + padded[r0 + 1, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def gaussian_blur(image, sigma):
    """Separable Gaussian blur with edge padding; sigma 0 returns the image unchanged."""
    image = np.asarray(image, dtype=np.float64)
    if sigma <= 0:
        return image.copy()
    radius = max(1, math.ceil(2 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        padded = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        n = image.shape[axis]
        image = sum(tap * np.take(padded, np.arange(i, i + n), axis=axis) for i, tap in enumerate(taps))
    return image


# name -> (function(image, amount, rng), amount meaning "no shift")
SHIFTS = {
    "brightness": (lambda img, a, rng: adjust_brightness(img, a), 0.0),
    "contrast": (lambda img, a, rng: adjust_contrast(img, a), 1.0),
    "rotation": (lambda img, a, rng: rotate(img, a), 0.0),
    "noise": (lambda img, a, rng: add_noise(img, a, rng), 0.0),
    "blur": (lambda img, a, rng: gaussian_blur(img, a), 0.0),
}


def apply_shift(image, shift: str, amount: float, rng=None):
    """Apply one named image shift (see SHIFTS) with its amount in natural units."""
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; expected one of {sorted(SHIFTS)}")
    return SHIFTS[shift][0](image, amount, rng if rng is not None else np.random.default_rng(0))


def image_stream(n, shift=None, amount=0.0, schedule=STATIONARY, *, split="test", classes=None, seed=0, digits=None):
    """Digits images (float (8, 8), raw 0..16) drawn with replacement, shifted as the schedule says.

    `split` picks the pool: "test" (the model's held-out images), "train" or "all"; `classes`
    restricts the labels. With no `shift` (or a stationary schedule) this is the control stream.
    """
    digits = digits or load_digits_sample()
    pool = _pool(digits, split, classes)
    identity = SHIFTS[shift][1] if shift else 0.0
    rng, concept_rng, noise_rng = _generators(seed, 3)
    for t in range(n):
        meta = schedule.step(t, concept_rng.random())
        index = int(pool[rng.integers(len(pool))])
        image = digits.images[index].astype(np.float64)
        applied = identity + meta["mix"] * (amount - identity) if shift else identity
        if shift and applied != identity:
            image = apply_shift(image, shift, applied, noise_rng)
        yield image, int(digits.labels[index]), {**meta, "shift": shift, "amount": applied, "index": index}


def _pool(digits: DigitsSample, split: str, classes) -> np.ndarray:
    test = np.zeros(len(digits.labels), dtype=bool)
    test[digits.test_index] = True
    masks = {"test": test, "train": ~test, "all": np.ones_like(test)}
    if split not in masks:
        raise ValueError(f"split must be one of {sorted(masks)}, got {split!r}")
    mask = masks[split] & (np.isin(digits.labels, list(classes)) if classes is not None else True)
    if not mask.any():
        raise ValueError(f"no images in split {split!r} for classes {classes}")
    return np.flatnonzero(mask)


def synthetic_glyphs(n, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Shapes that are not digits (box, cross, bar, checker), labelled 10..13: classes the model never saw."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(len(_GLYPHS), size=n)
    images = np.stack([_GLYPHS[k](rng) for k in kinds])
    return np.clip(images + rng.normal(scale=1.0, size=images.shape), 0.0, PIXEL_MAX), kinds + 10


def _box(rng):
    image, a, b = np.zeros((8, 8)), int(rng.integers(0, 2)), int(rng.integers(6, 8))
    image[a:b, a:b] = PIXEL_MAX
    image[a + 1 : b - 1, a + 1 : b - 1] = 0.0
    return image


def _cross(rng):
    image = np.eye(8) * PIXEL_MAX
    return np.maximum(image, image[::-1]) if rng.random() < 0.5 else np.maximum(image, np.roll(image, 1, axis=1))


def _bar(rng):
    image, row = np.zeros((8, 8)), int(rng.integers(2, 6))
    image[row - 1 : row + 1, :] = PIXEL_MAX
    return image if rng.random() < 0.5 else image.T.copy()


def _checker(rng):
    return (np.indices((8, 8)).sum(axis=0) % 2 == int(rng.integers(2))) * PIXEL_MAX


_GLYPHS = (_box, _cross, _bar, _checker)


def novel_class_stream(
    n, schedule, *, known=range(7), novel=(7, 8, 9), source="holdout", split="test", seed=0, digits=None
):
    """Known classes, then (as the schedule says) classes absent from the reference set.

    source="holdout": the `novel` digits, held out of whatever reference set the caller built from
    `known` (the KNN never saw them). source="synthetic": non-digit glyphs labelled 10..13, which
    the shipped CNN itself never saw. meta["novel"] marks each novel sample.
    """
    if source not in ("holdout", "synthetic"):
        raise ValueError(f"source must be 'holdout' or 'synthetic', got {source!r}")
    digits = digits or load_digits_sample()
    known_pool = _pool(digits, split, known)
    novel_pool = _pool(digits, split, novel) if source == "holdout" else None
    glyphs = synthetic_glyphs(256, seed) if source == "synthetic" else None
    rng, concept_rng = _generators(seed)
    for t in range(n):
        draw = concept_rng.random()
        meta = schedule.step(t, draw)
        is_novel = bool(draw < meta["weight"])  # incremental too: the share of novel samples rises
        pick = int(rng.integers(1 << 30))  # one draw either way keeps the stream aligned with its control
        image, y = _novel_sample(digits, novel_pool, glyphs, pick) if is_novel else _digit(digits, known_pool, pick)
        yield image, y, {**meta, "mix": float(is_novel), "novel": is_novel}


def _digit(digits, pool, pick):
    index = int(pool[pick % len(pool)])
    return digits.images[index].astype(np.float64), int(digits.labels[index])


def _novel_sample(digits, pool, glyphs, pick):
    if pool is not None:
        return _digit(digits, pool, pick)
    images, labels = glyphs
    return images[pick % len(images)].copy(), int(labels[pick % len(labels)])


def collect(stream) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Materialise a stream: (stacked x, labels, metas)."""
    xs, ys, metas = [], [], []
    for x, y, meta in stream:
        xs.append(x)
        ys.append(y)
        metas.append(meta)
    return np.array(xs), np.array(ys), metas
