#!/bin/sh
# Entry point of the Sphere image. The first argument picks the role; anything else is run as is,
# so `docker compose run --rm web python manage.py createsuperuser` works.
#
#   web          uvicorn on :8000 with $WEB_WORKERS processes (the default command)
#   worker       celery worker for $WORKER_QUEUES with $WORKER_CONCURRENCY processes
#   beat         celery beat with the django-celery-beat database scheduler (run exactly one)
#   migrate      refuse placeholder values and deploy-check errors, then apply migrations
#   healthcheck  GET a path (default /healthz) on the local web server; exit 0 only on HTTP 200
#
# Extra arguments after the role are passed on to uvicorn/celery.
set -eu

role="${1:-web}"
if [ "$#" -gt 0 ]; then shift; fi

if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ] && [ "$role" != healthcheck ]; then
  # prometheus_client writes its per-process files here, so it must exist before Python starts.
  # It belongs to this container and is emptied at start: files left by a previous run would be
  # merged into the counters of this one.
  mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
  find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
fi

case "$role" in
  web)
    exec uvicorn sphere.asgi:application \
      --host 0.0.0.0 --port 8000 \
      --workers "${WEB_WORKERS:-2}" \
      --lifespan off \
      "$@"
    ;;
  worker)
    exec celery -A sphere worker \
      -Q "${WORKER_QUEUES:-ingest,training,default}" \
      --concurrency "${WORKER_CONCURRENCY:-2}" \
      --loglevel "${LOG_LEVEL:-INFO}" \
      "$@"
    ;;
  beat)
    exec celery -A sphere beat \
      --scheduler django_celery_beat.schedulers:DatabaseScheduler \
      --loglevel "${LOG_LEVEL:-INFO}" \
      "$@"
    ;;
  migrate)
    # Placeholders left from docker/production.env.example, a missing SECRET_KEY (sphere.E001) or
    # DEBUG on a public host (sphere.E005) stop the stack here, before any service starts.
    placeholders=$(env | grep -i 'change-me' | cut -d= -f1 | tr '\n' ' ' || true)
    if [ -n "$placeholders" ]; then
      echo "docker/.env still has change-me placeholder values: $placeholders" >&2
      exit 1
    fi
    python manage.py check --deploy --fail-level ERROR
    exec python manage.py migrate --noinput "$@"
    ;;
  healthcheck)
    # Django validates the Host header before any view runs, so the probe presents a host the
    # configuration allows (the first ALLOWED_HOSTS entry) instead of 127.0.0.1.
    exec python - "${1:-/healthz}" <<'PY'
import os
import sys
import urllib.error
import urllib.request

raw = os.environ.get("ALLOWED_HOSTS", "")
if os.environ.get("ALLOWED_HOSTS_FILE"):
    try:
        raw = open(os.environ["ALLOWED_HOSTS_FILE"]).read()
    except OSError:
        raw = ""
hosts = [h.strip().lstrip(".") for h in raw.split(",") if h.strip() and h.strip() != "*"]
host = hosts[0] if hosts else "localhost"
request = urllib.request.Request(f"http://127.0.0.1:8000{sys.argv[1]}", headers={"Host": host})
try:
    with urllib.request.urlopen(request, timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except (urllib.error.URLError, OSError) as exc:
    print(f"healthcheck {sys.argv[1]}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
