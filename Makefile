# `make demo` and `make test` set everything up themselves: nothing is assumed to be installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint venv clean system-deps slurm-deps test-slurm

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU path: this exact pin takes the CPU wheel; a plain `torch` would download CUDA builds.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,caption,server,cloud,runpod,dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# SkyPilot pins click<8.2 and uvicorn<0.36, older than loraflow's own tree: it gets a venv of its own, with
# loraflow's core, where its classes judge the task loraflow builds (tests/remote/test_skypilot.py).
SKY_VENV := .venv-sky
SKY_STAMP := $(SKY_VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(SKY_STAMP): pyproject.toml
	test -x $(SKY_VENV)/bin/python || $(PYTHON) -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/python -m pip install -q -e ".[skypilot]" "pytest>=8" "pytest-timeout>=2.3"
	rm -f $(SKY_VENV)/.installed-*
	touch $(SKY_STAMP)

demo: $(STAMP)
	LORAFLOW_HOME=$${LORAFLOW_HOME:-$(CURDIR)/.loraflow-demo} $(VENV)/bin/loraflow demo

test: $(STAMP) $(SKY_STAMP) system-deps
	# Layers only point down and no module imports in a circle (the contracts in pyproject.toml).
	$(VENV)/bin/lint-imports --no-cache
	# Most tests wait on real processes (trainers, sshd, a browser): two at a time use both cores.
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist worksteal
	# The SkyPilot task, judged by SkyPilot itself, offline (skipped in .venv, which has no SkyPilot).
	$(SKY_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/remote/test_skypilot.py

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

# Opt-in, never part of `make test`: a whole job through a real SkyPilot on a one-node Slurm cluster on this
# machine (tests/remote/test_skypilot_slurm.py; root; minutes: SkyPilot installs its runtime from PyPI). Its
# daemons come from Debian's slurm and munge packages; .venv-sky gets what orchestrating a tiny-flux job needs
# (the CPU torch, the cloud extra) and PyPI's uv, which SkyPilot places in the allocation.
SLURM_PACKAGES := slurmctld slurmd slurm-client munge rsync
slurm-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SLURM_PACKAGES) >/dev/null 2>&1 || \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SLURM_PACKAGES) >/dev/null 2>&1)) \
	    || echo "note: $(SLURM_PACKAGES) could not be installed; the Slurm test will be skipped"; \
	fi

test-slurm: $(STAMP) $(SKY_STAMP) slurm-deps
	$(SKY_VENV)/bin/python -m pip install -q torch==2.13.0 -e ".[train,cloud,skypilot]" uv
	LORAFLOW_SLURM_E2E=1 $(SKY_VENV)/bin/python -m pytest -q -p no:cacheprovider -rs -s tests/remote/test_skypilot_slurm.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples notebooks
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) $(SKY_VENV) build *.egg-info src/*.egg-info
