# medclr: the two commands of the README, plus helpers.
#   make quickstart   pretrain -> fine-tune -> evaluate on the embedded phantom
#   make test         the test suite (what CI runs)
# Both create .venv and install medclr into it on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORK ?= workdirs/quickstart

.PHONY: install quickstart test clean-quickstart

# Byte-compiled on both cores after pip (whose own compile is serial): the
# .pyc files must exist, since PYTHONDONTWRITEBYTECODE=1 machines never
# write them at import. A few files written for newer Pythons do not
# compile (pip skips those silently), hence the `|| true`.
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[test,bench,tensorboard]'
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(PY) -m launch.prepare --dataset=phantom --data_dir=$(WORK)/data
	$(PY) -m launch.pretrain --config=configs/pretrain_simclr.py:demo \
	    --workdir=$(WORK)/pretrain --config.data.data_dir=$(WORK)/data
	$(PY) -m launch.finetune --config=configs/finetune_unet.py:demo \
	    --workdir=$(WORK)/finetune --config.data.data_dir=$(WORK)/data \
	    --config.init.pretrain_dir=$(WORK)/pretrain
	$(PY) -m launch.evaluate --workdir=$(WORK)/finetune

# One pytest worker per core (whole files per worker): most tests are
# XLA compiles and small steps, which run on one thread. Files go out in
# collection order, longest first (tests/conftest.py LONGEST_FIRST), not
# xdist's default of most tests first, so no long file starts last.
test: install
	$(PY) -m pytest -n auto --dist loadfile --no-loadscope-reorder --durations=25

clean-quickstart:
	rm -rf $(WORK)
