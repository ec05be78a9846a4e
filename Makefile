# The two commands of the README: `make run` and `make test`. Everything they need is
# installed on first use (a virtualenv in .venv, and for the tests the Debian packages of
# the real protocol peers), so both work on a fresh machine.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/intake run

lint: $(STAMP)
	$(VENV)/bin/ruff check intake parsers notifiers storage tests bench
	$(VENV)/bin/mypy --strict intake parsers notifiers storage

test: $(STAMP)
	scripts/test-services
	$(MAKE) --no-print-directory lint
	$(VENV)/bin/pytest

bench: $(STAMP)
	scripts/test-services
	for b in bench/*.py; do $(VENV)/bin/python $$b || exit 1; done
