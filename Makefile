# The two commands: `make run` (embedded: SQLite, in-process tasks) and `make test` (PostgreSQL + Redis).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
export PYTHONUNBUFFERED := 1

.PHONY: install run test lint worker beat services browser bench

$(BIN)/.installed: requirements.txt requirements-production.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

install: $(BIN)/.installed

# Embedded default: DEBUG on (a development secret), SQLite, Celery eager — unless the environment says otherwise.
run: install
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py migrate --noinput
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py bootstrap_embedded
	@# Beat's periodic work (sweeper, hold expiry) runs beside the server and stops with it.
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py embedded_beat & BEAT=$$!; \
	trap 'kill $$BEAT 2>/dev/null' EXIT INT TERM; \
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

services:
	bash scripts/ensure_services.sh

# Browser tests drive Debian's Chromium (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian chromium for the browser tests..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || { echo "ERROR: chromium is missing and could not be installed" >&2; exit 1; }; }

test: install services browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

worker: install
	$(BIN)/celery -A config worker --loglevel=INFO --concurrency=$${WORKER_CONCURRENCY:-2}

beat: install
	$(BIN)/celery -A config beat --loglevel=INFO --schedule=$${CELERY_BEAT_SCHEDULE_FILE:-/tmp/rewards-celerybeat-schedule}

# Performance: pgbench baseline, ledger, HTTP, end to end, rule scaling (scratch databases; see README).
bench: install services
	$(BIN)/python -m bench.run
