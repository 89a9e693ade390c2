# Developer shortcuts. The README's two commands need nothing but Python 3.11.
PY ?= .venv/bin/python

.PHONY: venv test lint types mutation bench bench-smoke docs demo clean

venv:
	python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]'

test:
	$(PY) -m pytest

lint:
	$(PY) -m ruff check syncengine tests bench examples
	$(PY) -m ruff format --check syncengine

types:
	$(PY) -m mypy

# Mutation testing (mutmut, the dev extra): core/, store/outbox.py and transport/rest.py
# against their fast unit tests ([tool.mutmut] in pyproject.toml). About 10 minutes on two
# cores; never part of `make test`. Score and survivors: docs/reliability.md.
mutation:
	$(PY) -m mutmut run --max-children 2
	$(PY) -m mutmut results

bench:
	$(PY) bench/run_all.py

bench-smoke:
	$(PY) bench/run_all.py --smoke

docs:
	$(PY) -m mkdocs build --strict --site-dir site

demo:
	.venv/bin/syncengine demo

clean:
	rm -rf .venv build dist site .pytest_cache .mypy_cache .ruff_cache .hypothesis mutants
