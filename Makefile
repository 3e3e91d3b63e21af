# Two commands: `make run` installs and starts the site, `make test` installs and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test install install-dev serve bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt

run: install
	$(BIN)/flask --app app run --host $(HOST) --port $(PORT)

serve: install
	$(BIN)/gunicorn -c gunicorn.conf.py "app:create_app()"

# Two pytest runs, one command, failing if either fails: every test but the timed load
# and the cluster ones on TEST_WORKERS processes (pytest-xdist; a module's tests share a
# worker, tests/conftest.py), then those (marked "alone") by themselves, so that nothing
# else competes with their timings and processes. PYTEST_ARGS goes to both; a run that
# PYTEST_ARGS leaves without tests (pytest's exit status 5) is not a failure unless
# both are.
TEST_WORKERS ?= 2

test: install-dev
	@parallel=0; alone=0; \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope \
	  -m "not alone" $(PYTEST_ARGS) || parallel=$$?; \
	$(BIN)/python -m pytest -m alone $(PYTEST_ARGS) || alone=$$?; \
	if [ $$parallel -eq 5 ] && [ $$alone -eq 5 ]; then exit 5; fi; \
	for status in $$parallel $$alone; do \
	  if [ $$status -ne 0 ] && [ $$status -ne 5 ]; then exit $$status; fi; \
	done

bench: install
	$(BIN)/python bench/inference.py

clean:
	rm -rf $(VENV) .pytest_cache
