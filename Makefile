# sslcore: `make run` runs the default pipeline on Fashion-MNIST, `make test` runs the tests.
# Both install what they need first (a venv in .venv, the Debian dataset package) and are
# idempotent: a second call checks two stamp files and starts in seconds.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sslcore-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
LABELME := /usr/share/doc/labelme-examples/examples/bbox_detection/data_dataset_voc/Annotations/2011_000003.xml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# torch/torchvision are pinned here (the index's CUDA build, which also runs on CPU)
TORCH_PINS := torch==2.14.1 torchvision==0.29.2
RUN_DIR ?= runs/make-run
# make run on a CPU: the scenes benchmarks (SVM, low-shot, detection) on 1,000 + 1,000 scenes and
# 100 detection iterations; the pipeline's defaults (5,000 + 5,000, 300) are for a GPU or patience.
# `make run RUN_PARAMS=` runs the defaults.
RUN_PARAMS ?= --param scenes_limit_train=1000 --param scenes_limit_test=1000 --param detection_iterations=100

IMAGE ?= ghcr.io/sslcore/sslcore
IMAGE_TAG ?= 0.1.0

.PHONY: install data run test test-fast compile images push-images clean help

help:
	@echo "make run      install, then run the ssl_pretrain_eval pipeline on Fashion-MNIST and print results"
	@echo "make test     install, then run the test suite"
	@echo "make compile  recompile the pipelines' YAML"
	@echo "make images   build the runtime images (needs a Docker engine); make push-images pushes them"

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

data: $(FMNIST) $(LABELME)

# one file of each package is the guard; minimal images that drop /usr/share/doc (a dpkg
# path-exclude) must keep /usr/share/doc/labelme-examples/*
$(FMNIST) $(LABELME):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist labelme-examples
	@test -f $@ || { echo "$@ missing after apt-get install: is /usr/share/doc excluded by dpkg (path-exclude in /etc/dpkg/dpkg.cfg.d)?"; exit 1; }

run: install data
	$(BIN)/sslcore pipelines run ssl_pretrain_eval --run-dir $(RUN_DIR) $(RUN_PARAMS)

test: install data
	$(BIN)/python -m pytest -q

test-fast: install data
	$(BIN)/python -m pytest -q -m "not slow"

compile: install
	$(BIN)/sslcore pipelines compile

images:
	docker build -f images/Dockerfile -t $(IMAGE):$(IMAGE_TAG) .
	docker build -f images/Dockerfile.cpu -t $(IMAGE):$(IMAGE_TAG)-cpu .

push-images: images
	docker push $(IMAGE):$(IMAGE_TAG)
	docker push $(IMAGE):$(IMAGE_TAG)-cpu

clean:
	rm -rf runs .pytest_cache
