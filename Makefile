# Two commands do everything: `make demo` and `make test`. Each creates the virtualenv on first use.
# TORCH_SPEC picks the PyTorch build: the default is the CPU build 2.13.0; e.g. `make test TORCH_SPEC=torch`
# installs the newest release (with its CUDA packages).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo demo-vdp demo-digits test test-slow lint bench clean

# Fit an SIR model to the bundled 1978 boarding-school influenza outbreak, with intervals and a 7-day forecast.
demo: $(VENV)/.installed
	$(BIN)/dxdt fit boarding_school_influenza_1978 --model sir --time day --observe I=in_bed --population 763 \
		--forecast 7 --plot influenza_fit.png

# 64 Van der Pol oscillators, each with its own adaptive steps.
demo-vdp: $(VENV)/.installed
	$(BIN)/python examples/van_der_pol_batch.py --out van_der_pol.png

# A small CNN with a neural-ODE block on scikit-learn's 8x8 digits (about 98% test accuracy in under a minute).
demo-digits: $(VENV)/.installed
	$(BIN)/python examples/nn_digits.py --out nn_digits.png

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 -m slow

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks examples && $(BIN)/ruff format --check src tests benchmarks examples

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run.py

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev,plot,bench,examples]"
	touch $@

clean:
	rm -rf $(VENV) build dist src/*.egg-info
