#!/usr/bin/env bash
# Run Django's deployment checks (`manage.py check --deploy`) on the documented production
# configuration, docker/production.env.example, and fail on any warning.
#
#   bash docker/check-deploy.sh          (from the repository root; CI runs it from .ci/run)
#
# The example's values are used as they are, except for what only a real deployment has:
#   SECRET_KEY    a fresh random 50-character key (the example leaves it empty on purpose)
#   DATABASE_URL  postgres://postgres@127.0.0.1:5432/test
#   REDIS_URL     redis://127.0.0.1:6379/15
#   DATA_DIR      a temporary directory, removed afterwards
#   PROMETHEUS_MULTIPROC_DIR  a directory inside it (the example's path exists only in the image)
# Nothing from the calling shell leaks in: the check runs in an environment holding only PATH,
# HOME, LANG and these variables. No service is contacted (`check` opens no connection).
set -euo pipefail
cd "$(dirname "$0")/.."

ENV_FILE=docker/production.env.example
PYTHON=${PYTHON:-.venv/bin/python}

if [[ ! -x $PYTHON ]]; then
  echo "check-deploy: $PYTHON not found; run 'make install' first" >&2
  exit 2
fi

declare -A values=()
order=()
while IFS= read -r line || [[ -n $line ]]; do
  line=${line%$'\r'}
  [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
  if [[ ! $line =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
    echo "check-deploy: $ENV_FILE: not a KEY=value line: $line" >&2
    exit 2
  fi
  key=${BASH_REMATCH[1]}
  [[ -v "values[$key]" ]] || order+=("$key")
  values[$key]=${BASH_REMATCH[2]}
done <"$ENV_FILE"

data_dir=$(mktemp -d)
trap 'rm -rf "$data_dir"' EXIT

values[SECRET_KEY]=$("$PYTHON" -c 'from django.core.management.utils import get_random_secret_key as k; print(k())')
values[DATABASE_URL]=postgres://postgres@127.0.0.1:5432/test
values[REDIS_URL]=redis://127.0.0.1:6379/15
values[DATA_DIR]=$data_dir
if [[ -n ${values[PROMETHEUS_MULTIPROC_DIR]:-} ]]; then
  values[PROMETHEUS_MULTIPROC_DIR]=$data_dir/metrics
  mkdir -p "$data_dir/metrics"
fi
for key in SECRET_KEY DATABASE_URL REDIS_URL DATA_DIR; do
  [[ " ${order[*]} " == *" $key "* ]] || order+=("$key")
done

if [[ ${#values[SECRET_KEY]} -ne 50 ]]; then
  echo "check-deploy: generated SECRET_KEY is not 50 characters" >&2
  exit 2
fi

environment=(PATH="$PATH" HOME="${HOME:-/tmp}" LANG="${LANG:-C.UTF-8}")
for key in "${order[@]}"; do
  environment+=("$key=${values[$key]}")
done

echo "check-deploy: manage.py check --deploy --fail-level WARNING with $ENV_FILE" \
  "(${#order[@]} variables; SECRET_KEY, DATABASE_URL, REDIS_URL, DATA_DIR replaced)"
# --fail-level WARNING: any warning, not only errors, makes the command exit non-zero.
env -i "${environment[@]}" "$PYTHON" manage.py check --deploy --fail-level WARNING
