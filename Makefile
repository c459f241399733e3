# fedshrink: two commands on a fresh machine with Python 3.11 and make.
#   make demo   create .venv, install, run the default simulation end to end (a mixed device fleet)
#   make test   create or update .venv, run the whole test suite
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch. It is pinned in the same install as fedshrink, so that
# fedshrink's open `torch>=2.2` requirement resolves to it and pip never pulls a CUDA build of several GB.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev
SIM    := $(VENV)/.installed-simulation
# Installs go through uv (installed into the venv by pip, one wheel): it resolves, unpacks and byte-compiles
# on every core: 55 s here from a cold cache (the venv and uv itself included), where pip took 78 s to
# install and compileall 41 s more (docs/results.md). Byte-compiled at install: where PYTHONDONTWRITEBYTECODE is set, a venv without .pyc
# files would recompile torch, flwr and scikit-learn in every new process (about 25 s each). The local
# wheel directory pip is configured with (PIP_FIND_LINKS) is passed on; uv's cache is a copy, not links,
# so the venv does not depend on it.
UV_PIN := uv>=0.5,<1
UV     := $(PY) -m uv pip install --quiet --python $(PY) --compile-bytecode --link-mode copy \
	$(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))

export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
# fedshrink's own modules (an editable install) are byte-compiled on first import
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo demo-flower deploy-local test test-fast lint install proto clean results results-sweeps results-measure

# runtime install (what `make demo` needs) ...
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(UV_PIN)"
	$(UV) "$(TORCH)" -e .
	touch $(STAMP)

# ... plus Flower's simulation engine, Ray (what `make demo-flower` and `make results` need)
$(SIM): $(STAMP)
	$(UV) "$(TORCH)" -e ".[simulation]"
	touch $(SIM)

# ... plus Ray and the test and lint tools (what `make test` needs)
$(DEV): $(STAMP)
	$(UV) "$(TORCH)" -e ".[dev]"
	touch $(DEV)

install: $(DEV)

# the default job (a mixed fleet of simulated devices training fragments, then distillation): the real
# ServerApp, ClientApp and Strategy driven in this process, no Ray. Plain FedAvg: add --run-config "profile-mix=''"
demo: $(STAMP)
	$(VENV)/bin/fedshrink run --engine inprocess --num-clients 20

# the same job on Flower's simulation engine (Ray) through `flwr run`
demo-flower: $(SIM)
	$(VENV)/bin/fedshrink run --engine flower --num-clients 20

# the same app on Flower's deployment engine: a SuperLink and 3 SuperNodes (profiles iot, phone,
# laptop) as processes on 127.0.0.1, TLS and node authentication with fresh certificates under
# deploy-local/; runs DEPLOY_CONFIG, then stops every process it started, by PID
DEPLOY_CONFIG ?= num-server-rounds=3 local-epochs=1 distill=false profile-mix='laptop:1.0'
deploy-local: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/fedshrink deploy local --nodes 3 --workdir deploy-local \
		--run-config "$(DEPLOY_CONFIG)"

# every published figure (simulations/results/ and the README's table), in two parts; docs/sweeps.md gives
# the time of each step (hours on a 2-core machine). SWEEP_WORKERS runs at once (default: one per core).
SWEEP_WORKERS ?= 0
SWEEP  := $(VENV)/bin/fedshrink sweep
BENCH  := $(PY) simulations/benchmarks
results: results-sweeps results-measure

# the sweeps: each sweep file simulations/sweeps/NAME.toml is run into runs/sweeps/NAME (finished runs are
# skipped, so an interrupted `make results` resumes) and its analysis simulations/benchmarks/bench_NAME.py
# writes simulations/results/NAME.md, in byte order of the names (fragments_glyphs after fragments: its
# analysis rewrites fragments.md with both); then the three reruns under simulations/sweeps/reruns/
results-sweeps: $(SIM)
	@set -e; for f in $(sort $(wildcard simulations/sweeps/*.toml)); do \
		name=$$(basename $$f .toml); \
		$(SWEEP) $$f --out runs/sweeps/$$name --workers $(SWEEP_WORKERS); \
		$(BENCH)/bench_$$name.py --sweep-dir runs/sweeps/$$name; \
	done
	$(SWEEP) simulations/sweeps/reruns/fragments_seed1.toml --out runs/sweeps/fragments-seed1 --workers $(SWEEP_WORKERS)
	$(BENCH)/bench_fragments.py --sweep-dir runs/sweeps/fragments-seed1 --out simulations/results/fragments_seed1.md
	@set -e; for name in robust_rules_bucket robust_rules_glyphs; do \
		$(SWEEP) simulations/sweeps/reruns/$$name.toml --out runs/sweeps/$$name --workers $(SWEEP_WORKERS); \
		$(BENCH)/bench_robust_rules.py --sweep-dir runs/sweeps/$$name \
			--sweep-file simulations/sweeps/reruns/$$name.toml --out simulations/results/$$name.md; \
	done

# the one-off measurements of the host (speed, memory, wall time: run them with nothing else on the machine),
# each with the command its results file names; security attacks the commit the security review examined
# (473a17d, checked out into a temporary git worktree) and this checkout
results-measure: $(SIM)
	OMP_NUM_THREADS=1 $(BENCH)/bench_codecs.py --repeats 15 --baseline simulations/results/codecs_before.json
	$(BENCH)/bench_data.py generate
	$(BENCH)/bench_data.py fleet --writers 100000 --clients 100
	PATH="$(abspath $(VENV))/bin:$$PATH" $(BENCH)/bench_deploy.py
	$(BENCH)/bench_distill.py
	$(BENCH)/bench_distill.py --dataset glyphs --rounds 20
	$(BENCH)/bench_student_agreement.py
	$(BENCH)/bench_student_spread.py --sweep-dir runs/sweeps/demo_settings
	$(BENCH)/bench_fusion.py --out simulations/results/fusion.md
	$(BENCH)/bench_overhead.py --repeats 40
	$(BENCH)/bench_scale.py
	$(BENCH)/bench_security.py --code-at 473a17d --code . --fuzz 100000 --out simulations/results/security.md
	$(BENCH)/bench_data.py centralised --epochs 5

# two workers (pytest-xdist); a test file goes to one worker, so its module fixtures are built once, and the
# end-to-end files (tests/*_e2e.py) go to one worker together (tests/conftest.py); files are handed out in the
# order tests/conftest.py puts them (end-to-end first); one BLAS/OpenMP thread per process, since two workers
# and their subprocesses already fill two cores
test: $(DEV)
	PATH="$(abspath $(VENV))/bin:$$PATH" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# the fast tier: no Flower engines, no processes of their own (markers e2e and slow), on two workers as above
test-fast: $(DEV)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -m "not e2e and not slow"

lint: $(DEV)
	$(VENV)/bin/ruff check fedshrink tests simulations scripts
	$(VENV)/bin/mypy fedshrink

proto: $(DEV)
	$(PY) scripts/gen_proto.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
