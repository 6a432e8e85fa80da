# One command for the main job (make demo) and one for the tests (make test).
# Each sets up its own virtual environment; a second run with nothing changed
# reinstalls nothing (the stamp file depends on the requirement files).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip here warns once per package about an unused local index: keep its real output only.
QUIET := 2>&1 | { grep -v "is ignored" || true; }
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
THREADS ?= 2
export OMP_NUM_THREADS ?= $(THREADS)
export MKL_NUM_THREADS ?= $(THREADS)

.PHONY: install lint test test-fast demo demo-image demo-dino fashion-mnist clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-fairseq.txt requirements-dev.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt $(QUIET)
	$(PY) -m pip install -q --no-deps -r requirements-fairseq.txt $(QUIET)
	$(PY) -m pip install -q --no-deps -e . $(QUIET)
	$(PY) -c "import fairseq, timm, sentencepiece, sacrebleu, torchao.quantization, resmlp_mt"
	touch $@

# Debian's Fashion-MNIST, for the image tests and demo; skipped quietly where apt is not ours.
fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "note: could not install dataset-fashion-mnist; the Fashion-MNIST tests will say so"; \
	fi

# Multi30k: the shared copy beside the checkout when there is one, else a download.
MULTI30K_DIR ?= $(firstword $(wildcard ../shared/data/multi30k))
export MULTI30K_DIR
PAIR ?= en-de
MINUTES ?= 18

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" PAIR=$(PAIR) MINUTES=$(MINUTES) bash examples/translation/demo.sh

# The image demo: a small ResMLP on Fashion-MNIST, test top-1, token-mixing pictures.
demo-image: $(STAMP) fashion-mnist
	PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/image/demo_fashion_mnist.sh

# DINO without labels on Fashion-MNIST: kNN and linear-probe accuracy against random init, and the
# token-mixing matrices beside a supervised model's (about 20 minutes).
demo-dino: $(STAMP) fashion-mnist
	PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/image/demo_dino.sh

# ruff.toml: pyflakes, pycodestyle (lines up to 120 characters) and import order.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Two pytest workers (pytest-xdist), one thread each: most tests start single-threaded
# fairseq processes, so one worker alone leaves a core idle. --durations lists the slowest.
test: $(STAMP) fashion-mnist lint
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -rs -n $(THREADS) --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) build *.egg-info
