# sslcore: `make run` runs the default pipeline on Fashion-MNIST, `make test` runs the tests.
# Both install what they need first (a venv in .venv, the Debian dataset package) and are
# idempotent: a second call checks two stamp files and starts in seconds.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sslcore-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# torch/torchvision are pinned here (the index's CUDA build, which also runs on CPU)
TORCH_PINS := torch==2.14.1 torchvision==0.29.2
RUN_DIR ?= runs/make-run

.PHONY: install data run test test-fast bench compile clean help

help:
	@echo "make run      install, then run the ssl_pretrain_eval pipeline on Fashion-MNIST and print results"
	@echo "make test     install, then run the test suite"
	@echo "make compile  recompile the pipelines' YAML"

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

run: install data
	$(BIN)/sslcore pipelines run ssl_pretrain_eval --run-dir $(RUN_DIR)

test: install data
	$(BIN)/python -m pytest -q

test-fast: install data
	$(BIN)/python -m pytest -q -m "not slow"

compile: install
	$(BIN)/sslcore pipelines compile

clean:
	rm -rf runs .pytest_cache
