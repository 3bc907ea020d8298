# ambinb: `make report` runs the built-in default end to end; `make test` runs the tests.
# Both create .venv and install the pinned dependencies on first use (only Python needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
TEST_WORKERS ?= auto
SWEEP  ?= params/sweeps/toy.yaml
KERNEL := ambinb

.DEFAULT_GOAL := help
.PHONY: help install test report lab book standin clean-runs lint

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python ($(KERNEL))"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv, install ambinb with its pinned dependencies and register its Jupyter kernel

test: $(STAMP)  ## run the unit tests and the notebook tests (nbval), on every core (TEST_WORKERS=0: in one process)
	$(BIN)/python -m pytest tests notebooks --nbval-lax -n $(TEST_WORKERS) --maxprocesses 4 $(PYTEST_ARGS)

report: $(STAMP)  ## run the default job (toy corpus, tiny model; SWEEP=... for another) and build the book
	$(BIN)/python -m ambinb.report --sweep $(SWEEP)

book: $(STAMP)  ## build the book from what the runs already hold (no training)
	$(BIN)/jupyter-book build book

lab: $(STAMP)  ## open JupyterLab on the notebooks with the project's kernel (progress bars show as widgets)
	$(BIN)/jupyter lab --MappingKernelManager.default_kernel_name=$(KERNEL) notebooks

standin: $(STAMP)  ## rebuild the tiny stand-in that models/tiny ships (about 8-13 min, +5 the first time for its recordings; bit-identical on the same CPU and torch)
	$(BIN)/python -m ambinb.standin

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check ambinb tests bench

clean-runs:  ## delete run folders and the built book (the toy corpus and tiny model stay)
	rm -rf runs book/_build book/generated
