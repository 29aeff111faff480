"""Training a candidate model from a dataset snapshot, and judging it against the champion.

``train(snapshot, champion=..., settings=...)`` runs four stages, each reported to ``progress``:

1. **features** — every snapshot item's image is read from its storage area, turned back into
   the input the device gave its extractor (``decode_image``), and run through the shipped TFLite
   extractor in batches. The items' own ``features`` are no use here: devices send them after
   their scaler and PCA, in the space of the model they ran. Items without a readable image are
   skipped and counted. The shipped digits (``edge_client/models/digits_sample.npz``) are the
   older data: their training split can be replayed, their test split joins the held-out set —
   only for the classes the champion knows or the snapshot labels, so a champion trained on
   some classes is never taught the others by the shipped data without a label (nor judged on
   them).
2. **search** — a stratified share of the snapshot items is held out; the strategy picks the
   training set from the rest (``full``: all of it; ``window``: items labeled within
   ``window_days`` of the snapshot; ``replay``: those plus a ``replay_share``-sized sample of the
   older items and the shipped training split). A small grid of scaler + PCA + KNN settings is
   scored by stratified cross-validation with scikit-learn.
3. **fit** — the best setting is fitted on the whole training set and converted to the edge
   client's own ``FeatureTransform`` and ``KNN`` (a balanced reference set of at most
   ``max_references`` samples), which is what the bundle ships.
4. **evaluate** — the edge-client objects (not scikit-learn's) and the champion predict the same
   held-out set, and the same drift set (held-out items from drift or quarantine tasks). The
   candidate is promoted when it gains at least ``promotion_margin`` on the held-out set and
   does no worse on the drift set; the reason names the numbers either way.

How device images reach storage, and how ``decode_image`` undoes it: the edge client sends a
quarantined sample's input image as ``image.npy`` (float32, raw pixel values 0..16 for the
digits model); ``drift.services.render_png`` stores it as an 8-bit grayscale PNG, min-max
stretched so operators see it well, with the range it stretched in a ``sphere:raw_range`` text
chunk ("low high"). Read back through that range it is the device's input up to 8-bit
rounding — a brightness or contrast shift the device saw included. A PNG without the chunk
(an older one, or a prediction image) is read with the model's raw range (0..255 → 0..16); a
stored ``.npy`` is read back exactly.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache

import numpy as np
from django.conf import settings as django_settings
from django.core.files.storage import storages
from django.db.models import OuterRef, Subquery
from django.db.models.functions import Coalesce

from edge_client.datagen import load_digits_sample
from edge_client.extractors import TFLiteExtractor, load_metadata, shipped_model_paths
from edge_client.knn import KNN, balanced_subset
from edge_client.transforms import PCA, FeatureTransform, StandardScaler
from labeling.models import Label, LabelTask, TaskSource
from registry.models import Strategy

logger = logging.getLogger(__name__)

DEFAULT_SEARCH = {"n_components": [16, 32], "k": [3, 5], "weights": ["uniform"]}
WEIGHTS = ("uniform", "distance")
# The device's reference set: KNN.predict is one pass over it per sample, so it bounds both
# the device's memory and its latency. search={"max_references": N} overrides it.
MAX_REFERENCES = 1000
# Without a champion, a candidate must at least be this good to become challenger.
MIN_ACCURACY = 0.5
DRIFT_SOURCES = (TaskSource.DRIFT, TaskSource.QUARANTINE)
RANGE_TEXT_KEY = "sphere:raw_range"
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
READ_CHUNK = 500  # items read, decoded and extracted at a time: bounds memory at any size
READ_THREADS = 8  # image reads in flight: on S3 each is a round trip
PREDICT_CHUNK = 1000  # queries per KNN distance matrix (1000 x max_references floats)
CV_FOLDS = 3
LOGGED_FAILURES = 5


class TrainingError(Exception):
    """A dataset that cannot be trained on; the message says why."""


@dataclass(frozen=True)
class TrainingSettings:
    strategy: str = Strategy.REPLAY.value
    window_days: int = 30
    replay_share: float = 0.5
    promotion_margin: float = 0.01
    search: dict = field(default_factory=dict)
    seed: int = 0
    holdout_share: float = 0.2
    min_accuracy: float = MIN_ACCURACY

    @classmethod
    def from_policy(cls, policy) -> TrainingSettings:
        if policy is None:
            return cls()
        return cls(
            strategy=policy.strategy,
            window_days=policy.window_days,
            replay_share=policy.replay_share,
            promotion_margin=policy.promotion_margin,
            search=dict(policy.search or {}),
        )


@dataclass
class TrainingResult:
    transform: FeatureTransform
    knn: KNN
    classes: list[str]
    feature_dim: int
    params: dict
    metrics: dict
    promote: bool
    reason: str


def train(
    snapshot,
    *,
    champion=None,
    settings: TrainingSettings,
    progress: Callable[[float, str], None] = lambda f, s: None,
) -> TrainingResult:
    """Train a candidate on ``snapshot`` and judge it against ``champion`` (any object with
    ``transform``, ``knn`` and optionally ``classes``, e.g. registry.versions.LoadedModel; None
    when there is none). Raises TrainingError for a dataset that cannot be trained on."""
    grid, max_references = search_grid(settings.search)
    _check_settings(settings)
    progress(0.0, "features")
    known = known_classes(champion, list(snapshot.class_set.classes))
    data = build_dataset(snapshot, known=known, progress=lambda done: progress(0.6 * done, "features"))
    _check_usable(data)
    split = split_dataset(data, settings)
    x_train, y_train = split.training(data)
    _check_trainable(y_train, data.classes)
    progress(0.6, "search")
    chosen, scores = run_search(x_train, y_train, grid, max_references, settings.seed)
    progress(0.8, "fit")
    fitted = fit_candidate(x_train, y_train, chosen, max_references, len(data.classes), settings.seed)
    progress(0.9, "evaluate")
    heldout = split.heldout(data)
    if not len(heldout.labels):
        raise TrainingError("Nothing to evaluate on: no class of the snapshot has two samples to hold one out.")
    candidate = evaluate(fitted, heldout, data.classes)
    champion_metrics = evaluate(champion, heldout, data.classes) if champion is not None else None
    promote, reason = decide(candidate, champion_metrics, settings)
    return TrainingResult(
        transform=fitted.transform,
        knn=fitted.knn,
        classes=list(data.classes),
        feature_dim=fitted.transform.input_dim,
        params=_params(settings, chosen, max_references, fitted, split),
        metrics={
            "candidate": candidate,
            "champion": champion_metrics,
            "samples": _sample_counts(data, split, heldout, len(y_train)),
            "search": scores,
        },
        promote=promote,
        reason=reason,
    )


def _check_settings(settings: TrainingSettings) -> None:
    if settings.strategy not in Strategy.values:
        raise TrainingError(f"Unknown strategy {settings.strategy!r}; expected one of {', '.join(Strategy.values)}.")
    if not 0.0 < settings.holdout_share < 1.0:
        raise TrainingError(f"holdout_share must be between 0 and 1, not {settings.holdout_share}.")
    if settings.window_days < 1 or not 0.0 <= settings.replay_share:
        raise TrainingError("window_days must be at least 1 and replay_share at least 0.")


def _check_usable(data: Dataset) -> None:
    if not len(data.labels):
        raise TrainingError(
            f"None of the snapshot's {data.item_count} items can be used: {data.skipped_no_image} have no readable "
            f"image, {data.skipped_unknown_label} a label outside the class set."
        )


def _check_trainable(y_train: np.ndarray, classes: list[str]) -> None:
    present = np.unique(y_train)
    if len(present) < 2:
        raise TrainingError(
            f"The training set has {len(y_train)} samples of only one class ({classes[present[0]]!r}); "
            "at least 2 classes are needed."
        )


# --- Features ---------------------------------------------------------------------------------

_extract_lock = threading.Lock()


@lru_cache(maxsize=1)
def shipped_extractor() -> TFLiteExtractor:
    """The extractor devices ship, created once per process (loading it checks its sha256)."""
    return TFLiteExtractor(*shipped_model_paths())


def extract_features(images: np.ndarray) -> np.ndarray:
    """Extractor features (n, feature_dim) of raw-valued images (n, H, W)."""
    # One interpreter per process: TFLite interpreters are not safe to share between threads.
    with _extract_lock:
        return shipped_extractor().extract_batch(images)[1]


@lru_cache(maxsize=1)
def _model_input() -> tuple[tuple[int, int], float, float]:
    """((height, width), raw low, raw high) of the shipped model's input."""
    metadata = load_metadata(shipped_model_paths()[1])
    low, high = (float(v) for v in metadata["input"]["raw_range"])
    height, width = (int(n) for n in metadata["input"]["shape"][:2])
    return (height, width), low, high


def decode_image(data: bytes, key: str) -> np.ndarray:
    """The extractor input (raw pixel values, (H, W)) a device had for a stored image."""
    if key.lower().endswith(".npy"):
        return _decode_array(data)
    from PIL import Image

    (height, width), low, high = _model_input()
    with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
        if image.width * image.height > django_settings.PACKAGE_MAX_IMAGE_PIXELS:
            raise ValueError(f"{image.width}x{image.height} pixels is over the image pixel limit")
        low, high = _raw_range(image, low, high)
        gray = image.convert("L")
        if gray.size != (width, height):
            gray = gray.resize((width, height), Image.Resampling.BOX)
        pixels = np.asarray(gray, dtype=np.float64)
    return low + pixels * ((high - low) / 255.0)


def _raw_range(image, low: float, high: float) -> tuple[float, float]:
    """The range the PNG was scaled from when it says so, else the model's raw range (what a
    min-max rendering of a full-range image maps 0..255 back to)."""
    text = image.info.get(RANGE_TEXT_KEY)
    if not isinstance(text, str):
        return low, high
    values = [float(v) for v in text.split()]
    if len(values) != 2 or not all(np.isfinite(values)):
        raise ValueError(f"bad {RANGE_TEXT_KEY} text {text!r}")
    return values[0], values[1]


def _decode_array(data: bytes) -> np.ndarray:
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    shape, _, _ = _model_input()
    if array.shape != shape or array.dtype.kind not in "iuf":
        raise ValueError(f"array of {array.dtype} {array.shape} is not a {shape} image")
    return array.astype(np.float64)


def read_input(area: str, key: str) -> np.ndarray | None:
    """The decoded image of one item, or None when it cannot be read (logged)."""
    try:
        with storages[area].open(key, "rb") as handle:
            return decode_image(handle.read(), key)
    except Exception as exc:  # storages raise their own errors (S3, missing area); one item never fails a job
        logger.debug("Training skips image %s/%s: %s: %s", area, key, type(exc).__name__, exc)
        return None


@dataclass
class Dataset:
    """The snapshot's usable samples (task order) and the shipped digits, as extractor features."""

    classes: list[str]
    features: np.ndarray  # (n, d) float32
    labels: np.ndarray  # (n,) index into classes
    task_ids: np.ndarray  # (n,)
    labeled_at: np.ndarray  # (n,) epoch seconds
    drift: np.ndarray  # (n,) bool: from a drift or quarantine task
    snapshot_time: float
    shipped: ShippedData | None
    skipped_no_image: int = 0
    skipped_unknown_label: int = 0
    item_count: int = 0


@dataclass(frozen=True)
class ShippedData:
    train_features: np.ndarray
    train_labels: np.ndarray
    test_features: np.ndarray
    test_labels: np.ndarray


def known_classes(model, classes: list[str]) -> set[str] | None:
    """The class names ``model``'s reference set holds (None without a model: all of them)."""
    if model is None:
        return None
    names = list(getattr(model, "classes", None) or classes)
    _, labels = model.knn.reference
    return {names[label] for label in np.unique(labels) if 0 <= label < len(names)}


def build_dataset(
    snapshot, *, known: set[str] | None = None, progress: Callable[[float], None] = lambda done: None
) -> Dataset:
    """``known``: the classes the shipped digits may bring in besides the labeled ones (None: all)."""
    classes = list(snapshot.class_set.classes)
    index = {name: i for i, name in enumerate(classes)}
    rows = _item_rows(snapshot)
    collected = _Collector(index)
    total = max(snapshot.item_count, 1)
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="training-read") as pool:
        for chunk in _chunks(rows, READ_CHUNK):
            collected.add(chunk, pool)
            progress(min(collected.seen / total, 1.0))
    if collected.unreadable:
        logger.warning(
            "Snapshot %s: %d images could not be read, e.g. %s",
            snapshot.pk,
            collected.unreadable,
            ", ".join(collected.failures),
        )
    keep = None if known is None else known | {classes[label] for label in set(collected.labels)}
    return collected.dataset(classes, snapshot, shipped_data(classes, keep))


def _item_rows(snapshot):
    """(task id, label, image area, image key, task source, label time) per item, in task order.
    The label time is the latest label with the item's value given before the snapshot, on the
    task or (a folded near-duplicate) on its representative; else the task's creation.

    Read a page at a time by task id, each page a whole query: a cursor left open across the
    job's progress writes fails them on SQLite ("database is locked": a connection whose read
    is still open may not write once another connection wrote meanwhile)."""
    task = LabelTask.objects.filter(pk=OuterRef("task_id"))
    before = {"value": OuterRef("label"), "created__lte": snapshot.created}
    own = Label.objects.filter(task=OuterRef("task_id"), **before).order_by("-created")
    representative = Label.objects.filter(task__duplicates=OuterRef("task_id"), **before).order_by("-created")
    labeled_at = Coalesce(
        Subquery(own.values("created")[:1]),
        Subquery(representative.values("created")[:1]),
        Subquery(task.values("created")[:1]),
    )
    items = snapshot.items.order_by("task_id").annotate(source=Subquery(task.values("source")[:1]), at=labeled_at)
    rows = items.values_list("task_id", "label", "image_area", "image_key", "source", "at")
    page = list(rows[:READ_CHUNK])
    while page:
        yield from page
        page = list(rows.filter(task_id__gt=page[-1][0])[:READ_CHUNK]) if len(page) == READ_CHUNK else []


def _chunks(rows, size: int):
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Collector:
    """Accumulates features and item facts chunk by chunk; only the features stay in memory."""

    def __init__(self, index: dict[str, int]):
        self.index = index
        self.parts, self.labels, self.task_ids, self.times, self.drift = [], [], [], [], []
        self.seen = self.no_image = self.unreadable = self.unknown_label = 0
        self.failures: list[str] = []

    def add(self, chunk: list[tuple], pool: ThreadPoolExecutor) -> None:
        self.seen += len(chunk)
        known = [row for row in chunk if row[1] in self.index]
        self.unknown_label += len(chunk) - len(known)
        with_key = [row for row in known if row[3]]
        self.no_image += len(known) - len(with_key)
        images = list(pool.map(lambda row: read_input(row[2], row[3]), with_key))
        usable = [(row, image) for row, image in zip(with_key, images, strict=True) if image is not None]
        self._note_failures([row for row, image in zip(with_key, images, strict=True) if image is None])
        if usable:
            self.parts.append(extract_features(np.stack([image for _, image in usable])).astype(np.float32))
        for (task_id, label, _, _, source, at), _ in usable:
            self.labels.append(self.index[label])
            self.task_ids.append(task_id)
            self.times.append(at.timestamp() if at is not None else np.nan)
            self.drift.append(source in DRIFT_SOURCES)

    def _note_failures(self, rows: list[tuple]) -> None:
        self.unreadable += len(rows)
        room = LOGGED_FAILURES - len(self.failures)
        self.failures.extend(f"{row[2]}/{row[3]}" for row in rows[:room])

    def dataset(self, classes: list[str], snapshot, shipped: ShippedData | None) -> Dataset:
        dim = shipped_extractor().feature_dim
        created = snapshot.created.timestamp()
        times = np.asarray(self.times, dtype=np.float64)
        return Dataset(
            classes=classes,
            features=np.concatenate(self.parts) if self.parts else np.zeros((0, dim), np.float32),
            labels=np.asarray(self.labels, dtype=np.int64),
            task_ids=np.asarray(self.task_ids, dtype=np.int64),
            # An item whose task is gone has no label time left: count it as of the snapshot.
            labeled_at=np.where(np.isnan(times), created, times),
            drift=np.asarray(self.drift, dtype=bool),
            snapshot_time=created,
            shipped=shipped,
            skipped_no_image=self.no_image + self.unreadable,
            skipped_unknown_label=self.unknown_label,
            item_count=self.seen,
        )


def shipped_data(classes: list[str], keep: set[str] | None = None) -> ShippedData | None:
    """The shipped digits in terms of ``classes``, only those of the ``keep`` classes (None: all);
    None when they are not this model's classes."""
    names = load_metadata(shipped_model_paths()[1])["class_names"]
    if not set(names) <= set(classes):
        return None
    features, labels, test_index = _shipped_features()
    mapped = np.array([classes.index(names[label]) for label in labels], dtype=np.int64)
    test = np.zeros(len(labels), dtype=bool)
    test[test_index] = True
    kept = np.isin(labels, [i for i, name in enumerate(names) if keep is None or name in keep])
    train, held = ~test & kept, test & kept
    return ShippedData(features[train], mapped[train], features[held], mapped[held])


@lru_cache(maxsize=1)
def _shipped_features() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits_sample()
    return extract_features(digits.images.astype(np.float64)).astype(np.float32), digits.labels, digits.test_index


# --- Held-out split and strategies ------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    holdout: np.ndarray  # indices into the dataset's items
    train: np.ndarray  # indices into the dataset's items, as the strategy chose them
    replayed: np.ndarray  # indices into the shipped training split
    counts: dict

    def training(self, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
        x, y = [data.features[self.train]], [data.labels[self.train]]
        if data.shipped is not None and len(self.replayed):
            x.append(data.shipped.train_features[self.replayed])
            y.append(data.shipped.train_labels[self.replayed])
        return np.concatenate(x).astype(np.float64), np.concatenate(y)

    def heldout(self, data: Dataset) -> HeldOut:
        x, y = [data.features[self.holdout]], [data.labels[self.holdout]]
        drift = [data.drift[self.holdout]]
        if data.shipped is not None:
            x.append(data.shipped.test_features)
            y.append(data.shipped.test_labels)
            drift.append(np.zeros(len(data.shipped.test_labels), dtype=bool))
        snapshot = np.zeros(sum(len(part) for part in y), dtype=bool)
        snapshot[: len(self.holdout)] = True
        return HeldOut(np.concatenate(x).astype(np.float64), np.concatenate(y), np.concatenate(drift), snapshot)


@dataclass(frozen=True)
class HeldOut:
    features: np.ndarray
    labels: np.ndarray
    drift: np.ndarray  # rows from drift or quarantine tasks
    snapshot: np.ndarray  # rows from the snapshot (the rest: the shipped test split)


def split_dataset(data: Dataset, settings: TrainingSettings) -> Split:
    holdout_rng, replay_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(settings.seed).spawn(2))
    holdout = stratified_holdout(data.labels, settings.holdout_share, holdout_rng)
    rest = np.setdiff1d(np.arange(len(data.labels)), holdout)
    cutoff = data.snapshot_time - timedelta(days=settings.window_days).total_seconds()
    recent, older = rest[data.labeled_at[rest] >= cutoff], rest[data.labeled_at[rest] < cutoff]
    if settings.strategy == Strategy.FULL:
        return Split(holdout, rest, np.zeros(0, np.int64), {"recent": len(recent), "older": len(older), "shipped": 0})
    if not len(recent):
        raise TrainingError(
            f"No item of the snapshot (beyond the held-out share) was labeled in the {settings.window_days} days "
            f"before it: the {settings.strategy} strategy has nothing recent to train on."
        )
    if settings.strategy == Strategy.SLIDING_WINDOW:
        return Split(holdout, recent, np.zeros(0, np.int64), {"recent": len(recent), "older": 0, "shipped": 0})
    return _replay(data, holdout, recent, older, settings.replay_share, replay_rng)


def _replay(data: Dataset, holdout, recent, older, share: float, rng) -> Split:
    """Recent items plus share x as many picked at random from the older items and the shipped
    training split together, so old classes and looks keep a voice in the reference set."""
    shipped = len(data.shipped.train_labels) if data.shipped is not None else 0
    pool = len(older) + shipped
    picked = np.sort(rng.choice(pool, size=min(pool, round(share * len(recent))), replace=False))
    old_items, replayed = older[picked[picked < len(older)]], picked[picked >= len(older)] - len(older)
    counts = {"recent": len(recent), "older": len(old_items), "shipped": len(replayed)}
    return Split(holdout, np.sort(np.concatenate([recent, old_items])), replayed, counts)


def stratified_holdout(labels: np.ndarray, share: float, rng) -> np.ndarray:
    """Indices of about ``share`` of each class, at least one of every class with two or more
    samples (so every class is measured) and never all of a class (so every class is learned)."""
    chosen = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) >= 2:
            chosen.append(members[: min(max(1, round(share * len(members))), len(members) - 1)])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


# --- Search and fit ---------------------------------------------------------------------------


def search_grid(search: dict) -> tuple[list[dict], int]:
    """(settings to try, smallest first; the reference-set bound) from a policy's search dict."""
    if not isinstance(search, dict):
        raise TrainingError(f"search must be a JSON object, not {type(search).__name__}.")
    grid = {name: _grid_values(search, name, default) for name, default in DEFAULT_SEARCH.items()}
    if not all(isinstance(n, int) and n >= 1 for n in grid["n_components"] + grid["k"]):
        raise TrainingError(f"search n_components and k must be positive integers, got {search}.")
    if not set(grid["weights"]) <= set(WEIGHTS):
        raise TrainingError(f"search weights must be among {WEIGHTS}, got {grid['weights']}.")
    max_references = search.get("max_references", MAX_REFERENCES)
    if not isinstance(max_references, int) or isinstance(max_references, bool) or max_references < 2:
        raise TrainingError(f"search max_references must be an integer of at least 2, got {max_references!r}.")
    combos = [
        {"n_components": n, "k": k, "weights": w}
        for n in sorted(set(grid["n_components"]))
        for k in sorted(set(grid["k"]))
        for w in grid["weights"]
    ]
    return combos, max_references


def _grid_values(search: dict, name: str, default: list) -> list:
    value = search.get(name, default)
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not values or any(isinstance(v, bool) for v in values):
        raise TrainingError(f"search {name} must be a non-empty list, got {value!r}.")
    return values


def run_search(x, y, grid: list[dict], max_references: int, seed: int) -> tuple[dict, list[dict]]:
    """The best grid setting by mean accuracy over stratified folds, and every setting's score.
    Each fold's reference set is bounded as the device's will be, so the score is the device's."""
    if len(grid) == 1 or np.bincount(y).max() < CV_FOLDS:  # no class fills the folds
        first = _feasible(grid[0], x, y, max_references)
        return first, [{**first, "score": None}]
    from sklearn.model_selection import StratifiedKFold

    scores = dict.fromkeys(range(len(grid)), 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class with fewer members than folds still works
        folds = list(StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed).split(x, y))
    for fit_rows, score_rows in folds:
        for i, accuracy in _fold_scores(x, y, fit_rows, score_rows, grid, max_references, seed).items():
            scores[i] += accuracy / len(folds)
    # Ties go to the earlier, smaller setting: cheaper on the device.
    best = max(range(len(grid)), key=lambda i: (round(scores[i], 9), -i))
    table = [{**_feasible(combo, x, y, max_references), "score": round(scores[i], 6)} for i, combo in enumerate(grid)]
    chosen = {name: value for name, value in table[best].items() if name != "score"}
    return chosen, table


def _fold_scores(x, y, fit_rows, score_rows, grid, max_references, seed) -> dict[int, float]:
    from sklearn.neighbors import KNeighborsClassifier

    scores = {}
    for n_components in sorted({combo["n_components"] for combo in grid}):
        scaler, pca = _fit_projection(x[fit_rows], n_components, seed)
        fit_z, score_z = pca.transform(scaler.transform(x[fit_rows])), pca.transform(scaler.transform(x[score_rows]))
        refs = balanced_subset(y[fit_rows], max_references, seed)
        for i, combo in enumerate(grid):
            if combo["n_components"] != n_components:
                continue
            knn = KNeighborsClassifier(n_neighbors=min(combo["k"], len(refs)), weights=combo["weights"])
            knn.fit(fit_z[refs], y[fit_rows][refs])
            scores[i] = float((knn.predict(score_z) == y[score_rows]).mean())
    return scores


def _fit_projection(x, n_components: int, seed: int):
    from sklearn.decomposition import PCA as SkPCA
    from sklearn.preprocessing import StandardScaler as SkScaler

    scaler = SkScaler().fit(x)
    components = min(n_components, x.shape[1], len(x))
    return scaler, SkPCA(n_components=components, random_state=seed).fit(scaler.transform(x))


def _feasible(combo: dict, x, y, max_references: int) -> dict:
    """The setting as it can be fitted on this data (fewer components or neighbours than asked
    when there are fewer samples)."""
    references = min(max_references, len(y))
    return {
        "n_components": min(combo["n_components"], x.shape[1], len(x)),
        "k": min(combo["k"], references),
        "weights": combo["weights"],
    }


@dataclass(frozen=True)
class Fitted:
    """One setting fitted twice over: scikit-learn's objects, and the edge client's copies of
    them that the bundle ships and the evaluation uses."""

    sklearn: object  # sklearn Pipeline(scaler, pca, knn)
    transform: FeatureTransform
    knn: KNN
    references: int


def fit_candidate(x, y, chosen: dict, max_references: int, n_classes: int, seed: int) -> Fitted:
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline

    scaler, pca = _fit_projection(x, chosen["n_components"], seed)
    transform = FeatureTransform(
        [
            StandardScaler(scaler.mean_, scaler.scale_),
            PCA(pca.mean_, pca.components_, pca.explained_variance_, whiten=False),
        ]
    )
    refs = balanced_subset(y, max_references, seed)
    k = min(chosen["k"], len(refs))
    knn = KNN(k=k, max_size=max_references, weighted=chosen["weights"] == "distance", n_classes=n_classes, seed=seed)
    knn.fit(transform.transform(x[refs]), y[refs])
    sk_knn = KNeighborsClassifier(n_neighbors=k, weights=chosen["weights"])
    sk_knn.fit(pca.transform(scaler.transform(x[refs])), y[refs])
    pipeline = Pipeline([("scaler", scaler), ("pca", pca), ("knn", sk_knn)])
    return Fitted(pipeline, transform, knn, len(refs))


# --- Evaluation and decision ------------------------------------------------------------------


def predict_labels(model, features: np.ndarray, classes: list[str]) -> np.ndarray:
    """Class names ``model`` (transform + edge KNN) predicts for extractor features."""
    x = np.asarray(features, dtype=np.float64)
    expected = model.transform.input_dim if model.transform is not None else model.knn.dim
    if expected != x.shape[1]:
        raise TrainingError(f"The model expects {expected} features; the shipped extractor gives {x.shape[1]}.")
    if model.transform is not None:
        x = model.transform.transform(x)
    predicted = np.concatenate(
        [model.knn.predict_batch(x[i : i + PREDICT_CHUNK]).labels for i in range(0, len(x), PREDICT_CHUNK)]
    )
    names = list(getattr(model, "classes", None) or classes)
    lookup = np.array([*names, ""], dtype=object)
    return lookup[np.where((predicted >= 0) & (predicted < len(names)), predicted, len(names))]


def evaluate(model, heldout: HeldOut, classes: list[str]) -> dict:
    truth = np.array(classes, dtype=object)[heldout.labels]
    correct = predict_labels(model, heldout.features, classes) == truth
    return {
        "holdout_accuracy": _accuracy(correct),
        "holdout_samples": int(len(correct)),
        "drift_accuracy": _accuracy(correct[heldout.drift]),
        "drift_samples": int(heldout.drift.sum()),
        "snapshot_accuracy": _accuracy(correct[heldout.snapshot]),
        "shipped_test_accuracy": _accuracy(correct[~heldout.snapshot]),
        "per_class": {
            classes[label]: _accuracy(correct[heldout.labels == label]) for label in np.unique(heldout.labels)
        },
    }


def _accuracy(correct: np.ndarray) -> float | None:
    return round(float(correct.mean()), 6) if len(correct) else None


def decide(candidate: dict, champion: dict | None, settings: TrainingSettings) -> tuple[bool, str]:
    """(promote, reason): a gain of at least the margin on the held-out set, and no loss on the
    drift set when there is one."""
    score, n = candidate["holdout_accuracy"], candidate["holdout_samples"]
    if champion is None:
        verdict = ">=" if score >= settings.min_accuracy else "<"
        reason = (
            f"no champion: candidate {score:.3f} on {n} held-out samples {verdict} minimum {settings.min_accuracy:.3f}"
        )
        return verdict == ">=", reason
    gain, margin = score - champion["holdout_accuracy"], settings.promotion_margin
    # Accuracies are multiples of 1/n: absorb the float error of subtracting them.
    gained = gain >= margin - 1e-9
    reason = (
        f"candidate {score:.3f} vs champion {champion['holdout_accuracy']:.3f} on {n} held-out samples: "
        f"gain {gain:.3f} {'>=' if gained else '<'} margin {margin:.3f}"
    )
    drift, champion_drift = candidate["drift_accuracy"], champion["drift_accuracy"]
    if drift is None:
        return gained, reason + "; no drift samples held out"
    held = drift >= champion_drift - 1e-9
    reason += (
        f"; drift set candidate {drift:.3f} {'>=' if held else '<'} champion {champion_drift:.3f} "
        f"on {candidate['drift_samples']} samples"
    )
    return gained and held, reason


def _params(settings: TrainingSettings, chosen: dict, max_references: int, fitted: Fitted, split: Split) -> dict:
    return {
        "strategy": settings.strategy,
        "window_days": settings.window_days,
        "replay_share": settings.replay_share,
        "promotion_margin": settings.promotion_margin,
        "holdout_share": settings.holdout_share,
        "seed": settings.seed,
        **chosen,
        "max_references": max_references,
        "references": fitted.references,
        "train_counts": dict(split.counts),
    }


def _sample_counts(data: Dataset, split: Split, heldout: HeldOut, train: int) -> dict:
    return {
        "items": data.item_count,
        "train": train,
        "holdout": int(len(heldout.labels)),
        "holdout_snapshot": int(len(split.holdout)),
        "drift": int(heldout.drift.sum()),
        "skipped_no_image": data.skipped_no_image,
        "skipped_unknown_label": data.skipped_unknown_label,
    }
