# Domus: `make run` starts the console on this machine; `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup run test check lint types unit guest clean

setup:
	@bash scripts/bootstrap.sh

run: setup
	@$(PY) -m console.launcher

guest:
	@bash tests/guest/build.sh

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types:
	$(VENV)/bin/mypy .

# The quick tier for the inner loop: lint, types and the tests that need no guest or browser
# (nor the API fuzzing, tests/console/test_api_fuzz.py: `make check PYTEST_ARGS=-mfuzz` runs it alone).
# Its tests run in parallel (pytest-xdist; tests/parallel.py keeps the workers apart in Redis).
check: setup lint types
	$(PY) -m console.embedded_redis exec $(PY) -m pytest -q -p tests.parallel -n auto --maxprocesses=4 \
		-m "not libvirt and not e2e and not browser and not fuzz" $(PYTEST_ARGS)

# Everything: real libvirt guests, the whole stack and a real browser.
# DOMUS_TEST_STRICT=1: a test skipped for want of libvirt, the guest or Chromium fails the run.
test: setup guest lint types
	DOMUS_TEST_STRICT=1 $(PY) -m console.embedded_redis exec $(PY) -m pytest -q -rs $(PYTEST_ARGS)

clean:
	rm -rf var .cache tests/artifacts
