# medclr: the two commands of the README, plus helpers.
#   make quickstart   pretrain -> fine-tune -> evaluate on the embedded phantom
#   make test         the test suite (what CI runs)
# Both create .venv and install medclr into it on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORK ?= workdirs/quickstart

.PHONY: install quickstart test clean-quickstart

# .pyc files must exist, since PYTHONDONTWRITEBYTECODE=1 machines never
# write them at import and every process would compile its imports again.
# pip's own compile (serial) and compileall of the whole venv (31 s on 2
# cores: five sixths of its files are never imported) cost more than
# importing what runs and what tests use, one process per core, with
# bytecode written (about 15 s). The test run writes the rest on first use
# (tests/conftest.py).
IMPORTED_BY_RUNS := medclr.train.pretrain medclr.train.finetune \
    medclr.evaluate.evaluate medclr.study.runner medclr.study.plots \
    medclr.data.prepare
IMPORTED_BY_TESTS := torch monai hypothesis pytest xdist nbclient nbformat \
    ipykernel.kernelapp pydicom nibabel
WRITE_BYTECODE := PYTHONDONTWRITEBYTECODE= $(PY) -c \
    'import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]'

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[test,bench,tensorboard]'
	$(WRITE_BYTECODE) $(IMPORTED_BY_TESTS) & tests=$$!; \
	  $(WRITE_BYTECODE) $(IMPORTED_BY_RUNS) && wait $$tests
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
