# `make demo` and `make test` set everything up themselves: nothing is assumed to be installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint venv clean system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU path: this exact pin takes the CPU wheel; a plain `torch` would download CUDA builds.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,caption,server,cloud,runpod,dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	LORAFLOW_HOME=$${LORAFLOW_HOME:-$(CURDIR)/.loraflow-demo} $(VENV)/bin/loraflow demo

test: $(STAMP) system-deps
	# Layers only point down and no module imports in a circle (the contracts in pyproject.toml).
	$(VENV)/bin/lint-imports --no-cache
	# Most tests wait on real processes (trainers, sshd, a browser): two at a time use both cores.
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist worksteal

# Real servers and browsers the tests start themselves (PostgreSQL, OpenSSH's sshd, Chromium for Playwright),
# from Debian's packages when this machine can install them; their tests are skipped with a reason where not.
# Playwright drives /usr/bin/chromium: it never downloads a browser of its own.
SYSTEM_PACKAGES := $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql) \
                   $(if $(wildcard /usr/sbin/sshd),,openssh-server) \
                   $(if $(wildcard /usr/bin/chromium),,chromium)
system-deps:
	@if [ -n "$(strip $(SYSTEM_PACKAGES))" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(strip $(SYSTEM_PACKAGES)) for the tests"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null 2>&1)) \
	    || echo "note: $(strip $(SYSTEM_PACKAGES)) could not be installed; their tests will be skipped"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples notebooks
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
