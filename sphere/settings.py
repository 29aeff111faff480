"""Sphere settings: one module, every value from the environment (see docs/configuration.md).

With no variables set, Sphere runs the embedded topology: SQLite in WAL mode, media files in the
data directory, an in-process channel layer and an in-process Celery worker + beat fed by a
filesystem broker in the data directory. Setting DATABASE_URL, REDIS_URL, S3_BUCKET and
MLFLOW_TRACKING_URI switches to the production topology without code changes.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from sphere.env import env_bool, env_choice, env_float, env_int, env_list, env_str
from sphere.storage import storage_settings

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "data"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _embedded_secret_key() -> str:
    """A random key kept in the data directory, so sessions survive restarts of `make run`."""
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY") or _embedded_secret_key()
SECRET_KEY_FROM_ENV = bool(env_str("SECRET_KEY"))
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "channels",
    "sphere",
    "devices",
    "drift",
    "labeling",
    "registry",
]

MIDDLEWARE = [
    "sphere.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Sync-only and last on purpose: under ASGI Django then runs the whole chain (and the sync
    # views) in the request's thread instead of hopping between the event loop and a thread
    # for every middleware. Measured with benchmarks/fleet_heartbeats.py: 6.7 → 5.6 ms of
    # server CPU per heartbeat. The ASGI BodySizeLimit wrapper already guards body size first.
    "sphere.middleware.ApiBodyLimitMiddleware",
]

ROOT_URLCONF = "sphere.urls"
ASGI_APPLICATION = "sphere.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'sphere.sqlite3'}")
try:
    _db = dj_database_url.parse(DATABASE_URL)
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a supported database URL: {exc}") from exc
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run while the in-process worker writes; IMMEDIATE transactions take the
    # write lock up front so concurrent writers wait (busy timeout) instead of failing mid-way.
    _db["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
elif _db["ENGINE"] == "django.db.backends.postgresql":
    # Under ASGI every request may run on a different thread, so per-thread persistent
    # connections pile up; a process-wide psycopg pool bounds them instead.
    _db["CONN_MAX_AGE"] = 0
    _db["OPTIONS"] = {
        "pool": {
            "min_size": env_int("DB_POOL_MIN_SIZE", 1, minimum=0),
            "max_size": env_int("DB_POOL_MAX_SIZE", 8, minimum=1),
            "timeout": env_int("DB_POOL_TIMEOUT_S", 10, minimum=1),
        }
    }
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USES_SQLITE = _db["ENGINE"] == "django.db.backends.sqlite3"

# --- Redis, Celery, Channels, cache -----------------------------------------------------------

REDIS_URL = env_str("REDIS_URL")
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
EMBEDDED_BROKER = CELERY_BROKER_URL is None
if EMBEDDED_BROKER:
    # No Redis: a broker in the data directory that any local process (web, manage.py) can
    # enqueue into and the in-process worker of `manage.py runsphere` consumes from.
    _broker_dir = DATA_DIR / "broker"
    (_broker_dir / "queue").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT = "sphere.broker:Transport"  # messages appear whole (sphere/broker.py)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "store_processed": False,
        "control_folder": str(_broker_dir / "control"),
        "polling_interval": 0.2,
    }
    CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
else:
    # An unacknowledged task (its worker died) is delivered again after this many seconds; it
    # must exceed the hard time limit, or a slow task would run twice.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT_S", 3600, minimum=1)}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 300, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 360, minimum=1)
CELERY_TASK_DEFAULT_QUEUE = "default"
# Tasks go to `default` unless routed; package processing (ingest) and training (training)
# add their routes here as they arrive, so slow training never delays ingestion.
CELERY_TASK_ROUTES: dict[str, dict] = {
    "devices.process_package": {"queue": "ingest"},
    "labeling.queue_uncertain_predictions": {"queue": "ingest"},
    "registry.run_training_job": {"queue": "training"},
}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # No client-side read timeout: redis-py 8's default (5 s) is as long as channels-redis's
            # blocking receive (BZPOPMIN, 5 s, bounded by Redis itself), so a page that heard
            # nothing for 5 s lost the race, its consumer died on "Timeout reading" and the live
            # feed stopped. (A longer finite timeout made consumers hang when cancelled.)
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "prefix": env_str("CHANNELS_PREFIX", "sphere"),
            },
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "sphere.channel_layers.InProcessChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Storage ----------------------------------------------------------------------------------

S3_BUCKET = env_str("S3_BUCKET")
MEDIA_ROOT = DATA_DIR / "media"
MEDIA_URL = "/media/"  # never served publicly: files go out through authenticated views
STATIC_ROOT = BASE_DIR / "staticfiles"
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Each kind of object has its own area: a folder under MEDIA_ROOT, or in production its own S3
# bucket (S3_BUCKET_<AREA>) or, by default, its own prefix in S3_BUCKET (sphere/storage.py).
# Nothing is public: operators get files through the authenticated /files/ view (sphere/files.py),
# which streams local files and redirects to short-lived signed URLs on S3.
STORAGE_AREAS = ("packages", "drift_images", "prediction_images", "oplogs", "artifacts")
STORAGES = {
    "default": storage_settings(None, MEDIA_ROOT),
    **{area: storage_settings(area, MEDIA_ROOT) for area in STORAGE_AREAS},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if env_bool("STATIC_MANIFEST", False)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not env_bool("STATIC_MANIFEST", False)

MLFLOW_TRACKING_URI = env_str("MLFLOW_TRACKING_URI", f"sqlite:///{DATA_DIR / 'mlflow.sqlite3'}")

# --- Security ---------------------------------------------------------------------------------

HTTPS = env_bool("HTTPS", False)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", HTTPS)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if env_bool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/admin/login/"
LOGIN_REDIRECT_URL = "/"
METRICS_TOKEN = env_str("METRICS_TOKEN")

# --- Alerts -----------------------------------------------------------------------------------

# Alert e-mails (drift.alerts.transports.email) go through Django's mail backend: SMTP once
# EMAIL_HOST is set, else the console backend (printed to the log, as on embedded).
EMAIL_HOST = env_str("EMAIL_HOST", "")
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "sphere@localhost")
# Interval of the drift.evaluate_alerts periodic task.
ALERTS_EVALUATE_S = env_int("ALERTS_EVALUATE_S", 60, minimum=5)

# --- API --------------------------------------------------------------------------------------

# Largest request body accepted on /api/ (bytes); endpoints may set a smaller limit of their own.
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 2 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
# --- Ingestion --------------------------------------------------------------------------------

# Predictions with UNCERTAIN_BAND_LOW <= confidence <= UNCERTAIN_BAND_HIGH go to labeling;
# ConfidenceBand rows override it per model.
UNCERTAIN_BAND = (
    env_float("UNCERTAIN_BAND_LOW", 0.4, minimum=0, maximum=1),
    env_float("UNCERTAIN_BAND_HIGH", 0.7, minimum=0, maximum=1),
)
PREDICTIONS_MAX_BODY_BYTES = env_int("PREDICTIONS_MAX_BODY_BYTES", API_MAX_BODY_BYTES, minimum=1024)
# Package archives: the upload limit (compressed, enforced while the body streams in) and what
# the worker accepts inside one.
PACKAGE_MAX_BYTES = env_int("PACKAGE_MAX_BYTES", 16 * 1024 * 1024, minimum=1024)
PACKAGE_MAX_MEMBERS = env_int("PACKAGE_MAX_MEMBERS", 2000, minimum=2)
PACKAGE_MAX_MEMBER_BYTES = env_int("PACKAGE_MAX_MEMBER_BYTES", 8 * 1024 * 1024, minimum=1024)
PACKAGE_MAX_TOTAL_BYTES = env_int("PACKAGE_MAX_TOTAL_BYTES", 64 * 1024 * 1024, minimum=1024)
# Body limits by path prefix (the longest matching prefix wins), enforced while bodies stream
# in (sphere.asgi_limits) and again from Content-Length (sphere.middleware).
API_BODY_LIMITS = [("/api/", API_MAX_BODY_BYTES), ("/api/v1/device/packages", PACKAGE_MAX_BYTES)]
PACKAGE_MAX_IMAGE_PIXELS = env_int("PACKAGE_MAX_IMAGE_PIXELS", 16_000_000, minimum=1)
# A package held by a worker longer than this is given to another (the holder died). Longer
# than the hard task time limit, so a live worker is never overtaken.
PACKAGE_CLAIM_TIMEOUT_S = env_int("PACKAGE_CLAIM_TIMEOUT_S", 600, minimum=1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "sphere.auth.DeviceTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["sphere.permissions.IsOperator"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "sphere.pagination.DefaultCursorPagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_THROTTLE_RATES": {"enroll": env_str("ENROLL_RATE", "30/min")},
    "EXCEPTION_HANDLER": "sphere.api.exception_handler",
    "PAGE_SIZE": 100,
    "UNAUTHENTICATED_USER": None,
    # Throttles key on REMOTE_ADDR; the ASGI server resolves the client address from trusted
    # proxies (FORWARDED_ALLOW_IPS), so a forged X-Forwarded-For cannot dodge the enroll limit.
    "NUM_PROXIES": 0,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Sphere API",
    "DESCRIPTION": "Device API (per-device bearer tokens) and operator API (sessions) of Sphere.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": r"/api/v1",
}

# --- Fleet ------------------------------------------------------------------------------------

DEVICE_HEARTBEAT_PERIOD_S = env_int("DEVICE_HEARTBEAT_PERIOD_S", 60, minimum=1)
DEVICE_HEARTBEAT_GRACE_S = env_int("DEVICE_HEARTBEAT_GRACE_S", 120, minimum=0)
DEVICE_STATUS_SWEEP_S = env_int("DEVICE_STATUS_SWEEP_S", 15, minimum=1)
ENROLLMENT_MAX_USES = env_int("ENROLLMENT_MAX_USES", 100_000, minimum=1)
TELEMETRY_RETENTION_DAYS = env_int("TELEMETRY_RETENTION_DAYS", 30, minimum=1)
TELEMETRY_PRUNE_BATCH = env_int("TELEMETRY_PRUNE_BATCH", 5000, minimum=1)
TELEMETRY_PRUNE_MAX_BATCHES = env_int("TELEMETRY_PRUNE_MAX_BATCHES", 200, minimum=1)
# Drift triage (drift.incidents): events within DRIFT_INCIDENT_WINDOW_MIN of each other form an
# incident; those of the last DRIFT_TRIAGE_LOOKBACK_H are re-triaged every DRIFT_TRIAGE_S.
DRIFT_INCIDENT_WINDOW_MIN = env_int("DRIFT_INCIDENT_WINDOW_MIN", 60, minimum=1)
DRIFT_TRIAGE_LOOKBACK_H = env_int("DRIFT_TRIAGE_LOOKBACK_H", 24, minimum=1)
DRIFT_TRIAGE_S = env_int("DRIFT_TRIAGE_S", 60, minimum=5)
DRIFT_POPULATION_SHARE = env_float("DRIFT_POPULATION_SHARE", 0.5, minimum=0, maximum=1)
DRIFT_COHORT_SHARE = env_float("DRIFT_COHORT_SHARE", 0.6, minimum=0, maximum=1)
DRIFT_MIN_COHORT_DEVICES = env_int("DRIFT_MIN_COHORT_DEVICES", 2, minimum=1)
# Most prediction logs a drift report reads per window (the newest): bounds its memory.
DRIFT_REPORT_MAX_ROWS = env_int("DRIFT_REPORT_MAX_ROWS", 200_000, minimum=100)
# Device health (devices.health): baselines from each device's own recent telemetry.
TELEMETRY_BASELINE_DAYS = env_int("TELEMETRY_BASELINE_DAYS", 7, minimum=1)
TELEMETRY_BASELINE_MIN_SAMPLES = env_int("TELEMETRY_BASELINE_MIN_SAMPLES", 30, minimum=3)
TELEMETRY_BASELINE_MAX_SAMPLES = env_int("TELEMETRY_BASELINE_MAX_SAMPLES", 5000, minimum=10)
TELEMETRY_ANOMALY_Z = env_float("TELEMETRY_ANOMALY_Z", 3.5, minimum=0.5)
PREDICTION_RETENTION_DAYS = env_int("PREDICTION_RETENTION_DAYS", 90, minimum=1)
PREDICTION_PRUNE_BATCH = env_int("PREDICTION_PRUNE_BATCH", 10000, minimum=1)
PREDICTION_PRUNE_MAX_BATCHES = env_int("PREDICTION_PRUNE_MAX_BATCHES", 100, minimum=1)
# Labeling (labeling.services): how uncertainty is scored, what an open drift incident adds to
# a task's priority, the lease a labeler holds on a task, and near-duplicate folding (L2 distance
# between feature vectors; 0 turns folding off).
LABELING_UNCERTAINTY = env_choice("LABELING_UNCERTAINTY", "least_confidence", ("least_confidence", "margin", "entropy"))
LABELING_INCIDENT_BOOST = env_float("LABELING_INCIDENT_BOOST", 1.0, minimum=0)
LABELING_LEASE_SECONDS = env_int("LABELING_LEASE_SECONDS", 300, minimum=10)
LABELING_FOLD_DISTANCE = env_float("LABELING_FOLD_DISTANCE", 0.5, minimum=0)

# --- Misc -------------------------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- registry: training jobs ---
# A running job that has not reported progress for this long lost its worker and is failed;
# a queued job this old lost its message and is enqueued again.
TRAINING_STALE_MINUTES = env_int("TRAINING_STALE_MINUTES", 30)

# --- registry: predict ---
# POST /api/v1/models/<family>/predict caches each answer this many seconds in the default cache,
# keyed by the bundle's sha256 and the inputs' sha256 (0: no caching).
PREDICT_CACHE_SECONDS = env_int("PREDICT_CACHE_SECONDS", 0, minimum=0)

# --- registry: tracking (registry/tracking.py) --------------------------------------------------
# MLFLOW_TRACKING_URI is set under Storage above. A database store (SQLite by default) keeps the
# runs' artifacts under MLFLOW_ARTIFACT_ROOT (a folder, or a URI such as s3://bucket/prefix); a
# tracking server ignores it and stores them itself. MLFLOW_ENABLED=0 turns the mirror off.
MLFLOW_ARTIFACT_ROOT = env_str("MLFLOW_ARTIFACT_ROOT", str(DATA_DIR / "mlartifacts"))
MLFLOW_ENABLED = env_bool("MLFLOW_ENABLED", True)
# --- end registry: tracking ---------------------------------------------------------------------
# The API schema names the registry's state enums after their models: several are called "status".
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = {
    **SPECTACULAR_SETTINGS.get("ENUM_NAME_OVERRIDES", {}),
    "VersionStatusEnum": "registry.models.VersionStatus",
    "JobStatusEnum": "registry.models.JobStatus",
    "RolloutStatusEnum": "registry.models.RolloutStatus",
}
