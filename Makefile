# Two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The 30 slowest tests are listed at the end of every run: the suite must stay under 30 minutes.
PYTEST_ARGS ?= --durations=30
PEERS_ARGS ?=
SOAK_ARGS ?=

# Every Python process the targets start (pytest, each `kolk` CLI call, every SC and SPU a test
# starts) caches kolk's bytecode in __pycache__ (git-ignored). Docker images of Python often set
# PYTHONDONTWRITEBYTECODE=1, and then each of those thousands of processes compiled all of kolk
# again: about 0.55 CPU-s per process, a third of the CLI tests' time.
export PYTHONDONTWRITEBYTECODE :=

.PHONY: setup demo test node-setup test-long bench bench-peers soak jepsen jepsen-proxy jepsen-groups clean

# Set-up is quiet: no command echo, pip -q, and setuptools' informational "Editable installation"
# notice (printed for every editable install, whatever the layout) filtered out.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Kolk needs Python >= 3.11, found " + sys.version' 
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	@PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	@$(VENV)/bin/kolk demo

# Every test but those marked `long` (fault runs and deep model checks that would take the suite
# past 30 minutes on 2 cores); `make test-long` runs those.
test: $(STAMP) node-setup
	$(PY) -m pytest -m "not long" $(PYTEST_ARGS)

# Node.js packages (issue 23): `npm ci` in each dir with a package-lock.json, once per change of
# that lock file (a stamp in node_modules). `make demo` does not need Node.
NODE_DIRS := clients/node smartmodule/sdk/assemblyscript
NODE_STAMPS := $(foreach d,$(NODE_DIRS),$(if $(wildcard $(d)/package-lock.json),$(d)/node_modules/.kolk-stamp))

%/node_modules/.kolk-stamp: %/package-lock.json
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { echo "make: node and npm are needed for $*: install Node.js >= 18 (Debian: apt-get install nodejs npm)" >&2; exit 1; }
	@cd $* && npm ci --silent --no-audit --no-fund >/dev/null
	@touch $@

node-setup: $(NODE_STAMPS)

test-long: $(STAMP)
	$(PY) -m pytest -m long $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/storage_bench.py
	$(PY) bench/sc_bench.py
	$(PY) bench/replication_bench.py
	$(PY) bench/smartmodule_bench.py
	$(PY) bench/isolation_bench.py
	$(PY) bench/security_bench.py
	$(PY) bench/retention_bench.py
	$(PY) bench/cleaner_bench.py
	$(PY) bench/lifecycle_bench.py
	$(PY) bench/group_bench.py
	$(PY) bench/metrics_bench.py
	$(PY) bench/rebalance_bench.py
	$(PY) bench/node_client_bench.py
	$(VENV)/bin/kolk bench

# Kolk beside NATS JetStream and Redis Streams (issue 9); not part of `make test`. Installs
# Debian's nats-server and redis-server if missing (apt-get: run as root) and the peers'
# Python clients into the venv (the optional extra "peers").
bench-peers: $(STAMP)
	bash bench/peers/install.sh
	@$(PY) -m pip install --quiet -e '.[dev,peers]'
	$(PY) bench/peers_bench.py $(PEERS_ARGS)

# A local cluster under connection churn, abandoned streams and failing SmartModules for 30
# minutes (SOAK_ARGS='--minutes 1' for a quick check); fails if the SC or the SPU grows by more
# than 10 MiB of RSS after warm-up, or an acknowledged record is lost. Not part of `make test`.
soak: $(STAMP)
	$(PY) bench/soak.py $(SOAK_ARGS)

# The fault harness (docs/reliability.md) for 10 minutes with every fault kind, each node a host
# of its own (network namespaces: needs root); jepsen-proxy is the older mode, links through proxies.
jepsen: $(STAMP)
	$(PY) -m jepsen run --net netns --nemesis kill,pause,partition-one,partition-half,partition-oneway,bridge,slow,lossy,torn-tail,power-loss,clock-jump,disk-wipe,disk-fail,restart-all,partition-pair,netem,rolling-restart --time 600 --seed 7

jepsen-proxy: $(STAMP)
	$(PY) -m jepsen run --net proxy --nemesis kill,pause,partition-one,partition-half,partition-oneway,bridge,slow,lossy,torn-tail,power-loss,clock-jump,disk-wipe,disk-fail,restart-all --time 600 --seed 7

# The consumer-group workload (docs/reliability.md, "Consumer groups"): members killed and frozen,
# the coordinator's SPU killed, paused and cut off, nodes killed, paused and partitioned.
jepsen-groups: $(STAMP)
	$(PY) -m jepsen run --workload group --nemesis member-kill,member-pause,kill-coordinator,pause-coordinator,partition-coordinator,kill,pause,partition-one --time 300 --seed 7

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
