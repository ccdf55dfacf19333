# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.diffsr-installed

.PHONY: install test demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned to the CPU build that lies on this machine's disk
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test,mri,satellite,faces,extra]"
	touch $(STAMP)

test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/python -m pytest -q tests

demo: install
	$(BIN)/diffsr demo

bench: install
	$(BIN)/diffsr bench

lint: install
	$(BIN)/python -m pip install --quiet ruff mypy
	$(BIN)/ruff check toolkit domains pipelines tests

clean:
	rm -rf $(VENV) runs .pytest_cache
