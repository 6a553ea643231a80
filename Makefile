# `make run` serves the provider on a laptop, `make serve` in production, `make test` checks everything.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
CHROMIUM ?= /usr/bin/chromium
# The suite runs on SQLite, then again on this PostgreSQL (database `test`, trust auth): all of it
# but the tests marked `once`, whose outcome cannot depend on the database backend.
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/test

.PHONY: run serve test lint typecheck pytest pytest-postgres postgres bench soak install install-dev chromium deploy-tools migrate clean proto

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

migrate: install
	$(PY) manage.py migrate --no-input -v 0

run: migrate
	$(PY) manage.py runserver $(HOST):$(PORT)

# Production: uvicorn, WORKERS processes on one port (more than one needs REDIS_URL), DEBUG off,
# migrations first; refuses to start without SECRET_KEY, AUTHORITY_PRIVATE_KEY (a relay may set
# UPSTREAM_PUBLIC_KEY instead) or ALLOWED_HOSTS.
serve: install
	DEBUG=false $(PY) manage.py serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

# The browser tests need Debian's Chromium (Playwright's own download cannot work here).
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)); \
	  fi; \
	fi
	@test -x $(CHROMIUM) || { echo "ERROR: $(CHROMIUM) is missing: run 'apt-get install -y chromium' as root, or set CHROMIUM=/path/to/chromium" >&2; exit 1; }
	@command -v redis-server >/dev/null || { echo "ERROR: redis-server is missing: apt-get install -y redis-server" >&2; exit 1; }

# tests/test_deploy.py runs Debian's nginx in front of real workers, and checks
# deploy/tokenprovider.service with systemd-analyze (systemd need not be running).
deploy-tools:
	@missing=""; \
	  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	  command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	  if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's$$missing for the deployment tests"; \
	    (apt-get install -y -qq $$missing >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $$missing >/dev/null)); \
	  fi
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "ERROR: nginx is missing: run 'apt-get install -y nginx' as root" >&2; exit 1; }
	@command -v systemd-analyze >/dev/null || { echo "ERROR: systemd-analyze is missing: run 'apt-get install -y systemd' as root" >&2; exit 1; }

# @textile/crypto, @textile/hub and ws for the Node tests (tests/test_textile_identity.py, tests/test_hub_client.py,
# tests/test_tutorial.py); Node 20 and npm from the machine.
node-deps: tests/node/node_modules/.installed
tests/node/node_modules/.installed: tests/node/package-lock.json
	@command -v npm >/dev/null || { echo "ERROR: npm is missing: apt-get install -y nodejs npm" >&2; exit 1; }
	npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
	touch $@

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install-dev
	$(VENV)/bin/mypy challenges tokensite bench

# The short benchmark (tests/test_bench.py, marked bench) runs once, in the PostgreSQL pass,
# where its servers and its audit-rate figure use PostgreSQL and SQLite both.
pytest: install-dev chromium node-deps deploy-tools
	CHROMIUM=$(CHROMIUM) $(PY) -m pytest -m "not bench" $(PYTEST_ARGS)

postgres: install-dev
	@$(PY) -c "import psycopg; psycopg.connect('$(POSTGRES_URL)', connect_timeout=5).close()" 2>/dev/null || { \
	  echo "ERROR: PostgreSQL is not reachable at $(POSTGRES_URL): start it (pg_ctlcluster ... start) or set POSTGRES_URL" >&2; exit 1; }

pytest-postgres: install-dev chromium node-deps deploy-tools postgres
	DATABASE_URL=$(POSTGRES_URL) TEST_DATABASE_NAME=test_tokenprovider_$$$$ CHROMIUM=$(CHROMIUM) \
	  $(PY) -m pytest -m "not once" $(PYTEST_ARGS)

test: lint typecheck pytest pytest-postgres

# Regenerate the committed gRPC stubs from challenges/rpc/threads.proto. Run from
# the repository root so the generated import reads `from challenges.rpc import threads_pb2`.
# tests/test_rpc_stubs.py runs the same command into a temporary folder and fails when stale.
PROTOC_ARGS = -I . --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
	--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=$(PROTO_OUT) \
	--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=$(PROTO_OUT) \
	challenges/rpc/threads.proto
PROTO_OUT ?= .
proto: install-dev
	$(PY) -m grpc_tools.protoc $(PROTOC_ARGS)

# The load benchmark (about 11 minutes; writes bench/REPORT.md and its charts; its audit figure
# uses the PostgreSQL at POSTGRES_URL), and the idle-socket soak.
bench: install-dev postgres
	$(PY) -m bench --postgres $(POSTGRES_URL) $(BENCH_ARGS)

SOAK_MINUTES ?= 10
soak: install-dev
	$(PY) -m bench soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache test-artifacts
