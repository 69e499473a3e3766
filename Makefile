# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := requirements/torch-cpu.txt
LMMS_NO_DEPS := requirements/lmms-eval-no-deps.txt
EXTRAS := train,serve,eval,dev
# the optional integrations the test suite covers too: DeepSpeed, bitsandbytes (QLoRA); lmms-eval comes without its
# dependencies from $(LMMS_NO_DEPS)
OPTIONAL_EXTRAS := deepspeed,qlora
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
EXTRAS_STAMP := $(VENV)/.installed-extras-$(shell cat pyproject.toml $(TORCH_PIN) $(LMMS_NO_DEPS) | sha1sum | cut -c1-12)

.PHONY: demo test lint install install-extras clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(TORCH_PIN)
	$(PY) -m pip install -q -c $(TORCH_PIN) -e ".[$(EXTRAS)]"
	touch $(STAMP)

$(EXTRAS_STAMP): $(STAMP) $(TORCH_PIN) $(LMMS_NO_DEPS)
	bash scripts/install-compiler.sh
	$(PY) -m pip install -q -c $(TORCH_PIN) -e ".[$(EXTRAS),$(OPTIONAL_EXTRAS)]"
	$(PY) -m pip install -q --no-deps -c $(TORCH_PIN) -r $(LMMS_NO_DEPS)
	$(PY) -c "import torch, sys; sys.exit(f'torch {torch.__version__} is not the CPU build' if torch.version.cuda else 0)"
	touch $(EXTRAS_STAMP)

install: $(STAMP)

install-extras: $(EXTRAS_STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/aligngpt demo --out runs/demo

test: $(EXTRAS_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
