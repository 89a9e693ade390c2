# Developer shortcuts. The README's two commands need nothing but Python 3.11.
PY ?= .venv/bin/python

.PHONY: venv test lint types bench bench-smoke docs demo clean

venv:
	python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]'

test:
	$(PY) -m pytest

lint:
	$(PY) -m ruff check syncengine tests bench examples
	$(PY) -m ruff format --check syncengine

types:
	$(PY) -m mypy

bench:
	$(PY) bench/run_all.py

bench-smoke:
	$(PY) bench/run_all.py --smoke

docs:
	$(PY) -m mkdocs build --strict --site-dir site

demo:
	.venv/bin/syncengine demo

clean:
	rm -rf .venv build dist site .pytest_cache .mypy_cache .ruff_cache .hypothesis
