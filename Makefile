# Set-up and the two entry points: `make demo` runs the pipeline on the embedded demo data, `make test` the tests.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test test-all test-extras lint install clean ui-browser slurm

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

# The optional extras the default install leaves out, in a venv of their own: faiss (cluster.backend: faiss) and
# torchvision (detect.backend: maskrcnn), which imports only beside torch 2.14.1 here (a CUDA build, about 5.5 GB;
# pip takes it from this machine's disk). Their tests run with every skip for them turned into a failure.
EXTRAS_VENV := .venv-extras
EXTRAS_STAMP := $(EXTRAS_VENV)/.installed
EXTRAS_TESTS := tests/encoding/test_encoding_kmeans.py tests/video/test_detect.py

$(EXTRAS_STAMP): pyproject.toml
	test -x $(EXTRAS_VENV)/bin/python || $(PYTHON) -m venv $(EXTRAS_VENV)
	$(EXTRAS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(EXTRAS_VENV)/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(EXTRAS_VENV)/bin/python -m pip install --quiet -e ".[test,faiss,maskrcnn]"
	$(EXTRAS_VENV)/bin/python -m pip install --quiet --no-deps $$($(EXTRAS_VENV)/bin/python -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["idtprior"]["no-deps"]))')
	touch $(EXTRAS_STAMP)

test-extras: $(EXTRAS_STAMP)
	IDTPRIOR_TEST_EXTRAS=1 $(EXTRAS_VENV)/bin/python -m pytest -q -m "not gpu" $(EXTRAS_TESTS)

clean:
	rm -rf demo-workspace demo-data
