# Set-up and the two entry points: `make demo` runs the pipeline on the embedded demo data, `make test` the tests.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test test-all lint install clean ui-browser slurm

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first, so the project's torch range is already met (no multi-GB CUDA download).
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	# Packages pinned in pyproject's [tool.idtprior] no-deps: files we need, dependencies we do not (e.g. TensorFlow).
	$(PY) -m pip install --quiet --no-deps $$($(PY) -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["idtprior"]["no-deps"]))')
	touch $(STAMP)

install: $(STAMP) ui-browser

# Headless Chromium (Debian's package) for the UI screenshot test (tests/server/test_retry_drill.py), best effort:
# about a minute once; where apt-get is missing or we are not root the install goes on and that test skips, saying why.
ui-browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "chromium not installed (needs apt-get as root): the UI screenshot test will skip"

demo: $(STAMP)
	$(VENV)/bin/idtprior demo --workspace demo-workspace --data demo-data

# The architecture as code (docs/architecture.md): the import contracts, ruff on everything, mypy on the cores.
lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check idtprior tests benchmarks infra
	$(VENV)/bin/mypy

test: lint ui-browser
	$(PY) -m pytest -q

# Debian's SLURM and munge for the SLURM drills (infra/slurm/local-slurm.sh; tests/infra/test_slurm_drills.py), best
# effort as above: where it cannot be installed the drills skip, saying why.
slurm:
	@command -v slurmctld >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >/dev/null 2>&1; } || \
	  echo "slurm-wlm not installed (needs apt-get as root): the SLURM drills will skip"

test-all: lint ui-browser slurm
	$(PY) -m pytest -q -m ""

clean:
	rm -rf demo-workspace demo-data
