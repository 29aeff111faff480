# Sphere: `make run` serves the whole embedded system, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install install-dev lint migrations-check reset-password constraints clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.server-installed: requirements/server.txt requirements/constraints.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements/server.txt -c requirements/constraints.txt
	touch $@

$(VENV)/.dev-installed: requirements/dev.txt $(VENV)/.server-installed
	$(PY) -m pip install --quiet -r requirements/dev.txt -c requirements/constraints.txt
	touch $@

install: $(VENV)/.server-installed
install-dev: $(VENV)/.dev-installed

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py ensure_operator
	$(PY) manage.py runsphere --host $(HOST) --port $(PORT)

# Embedded topology (SQLite, in-process channel layer) first. When SPHERE_TEST_DATABASE_URL and
# SPHERE_TEST_REDIS_URL are set (CI sets both), the suite runs again on PostgreSQL + Redis, where
# tests that need those services must pass: a missing service fails the run instead of skipping.
# That pass leaves out the tests marked `embedded`: they serve their own runsphere on SQLite
# whatever the run's database, so they would only run a second time the same way.
test: install-dev
	@if [ -n "$$SPHERE_TEST_DATABASE_URL" ]; then \
	  echo "== tests on the embedded topology (SQLite) =="; \
	  env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest -m "not postgres and not redis" $(PYTEST_ARGS) || exit $$?; \
	  echo "== tests on PostgreSQL + Redis =="; \
	  DATABASE_URL="$$SPHERE_TEST_DATABASE_URL" REDIS_URL="$$SPHERE_TEST_REDIS_URL" SPHERE_REQUIRE_SERVICES=1 \
	    $(PY) -m pytest -m "not embedded" $(PYTEST_ARGS); \
	else \
	  env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest $(PYTEST_ARGS); \
	fi

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check . || true

migrations-check: install-dev
	env -u DATABASE_URL -u REDIS_URL DATA_DIR=$$(mktemp -d) $(PY) manage.py makemigrations --check --dry-run

reset-password: install
	$(PY) manage.py ensure_operator --reset

constraints: install-dev
	$(PY) -m pip freeze --exclude-editable > requirements/constraints.txt

clean:
	rm -rf $(VENV) staticfiles

# The closed loop on a simulated fleet, live at http://$(HOST):$(PORT) (docs/demo.md), on a fresh
# embedded system in $(DEMO_DIR), recreated on each run. `make demo DEMO_ARGS=` leaves the drift
# verdicts, the labels and the rollout to you.
DEMO_DIR ?= data/demo
DEMO_ARGS ?= --oracle
.PHONY: demo
demo: install
	rm -rf $(DEMO_DIR)
	DATA_DIR=$(DEMO_DIR) $(PY) manage.py migrate --noinput -v 0
	DATA_DIR=$(DEMO_DIR) $(PY) manage.py ensure_operator
	DATA_DIR=$(DEMO_DIR) $(PY) manage.py demo --host $(HOST) --port $(PORT) $(DEMO_ARGS)
