# bnkit: set-up, tests, demo and benchmarks.  Everything lives in ./.venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: setup setup-dev demo docs test test-fast bench clean

$(VENV)/.base: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $@

$(VENV)/.experiments: $(VENV)/.base
	$(PIP) -e '.[experiments]'
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e '.[dev]'
	# tf-keras depends on the CUDA `tensorflow` wheel; it only needs tensorflow-cpu.
	$(PIP) --no-deps tf-keras==2.21.0
	touch $@

# The site needs only mkdocs (pinned in constraints.txt), not torch.
$(VENV)/.docs: constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) mkdocs mkdocs-material
	touch $@

setup: $(VENV)/.base

setup-dev: $(VENV)/.dev

## The main job: train a narrow VGG16 on the digits without BN, with BN before and after the activation.
demo: $(VENV)/.experiments
	$(VENV)/bin/bnkit demo

## Build the documentation site (docs/ -> build/site, offline) and serve it on http://127.0.0.1:8000.
docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

## Run the whole test suite, oracle tests against tf_keras 2.21 / Keras 3.15.1 included.
test: setup-dev
	$(PY) -m pytest -q

## Tests without the TensorFlow oracle (a few seconds).
test-fast: setup-dev
	$(PY) -m pytest -q -m "not oracle"

bench: setup-dev
	$(PY) benchmarks/bench_batchnorm.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
