# poppins: the build, documented as targets.
#   make demo    bootstrap the example, train a model on it (a few minutes), ask it a question
#   make test    install what is needed, build the extensions, run the test suite
#   make bench   speed against the named peers (pytest-benchmark; ratios in one run)
#   make build   (re)build the compiled extensions in place (incremental)
#   make clean   remove build outputs
#   make fuzz    hostile-input fuzzing: FUZZ_CASES (default 100000) mutated model files,
#                checkpoints, tokenizer.json, train.xml, memory DBs and eval probes files
#                (each must work or give a PoppinsError naming the file) and CLI command
#                lines (exit 0 or 2, no traceback), within 10 s each (scripts/fuzz.py)
#   make wheels  sdist + manylinux wheels (x86_64; aarch64/armv7l cross-built) into dist/
#   make test-wheels  each wheel on its architecture (ARM under qemu-user)
# Knobs: PYTHON=python3.x, POPPINS_NO_OPENMP=1 (build without OpenMP),
#        POPPINS_NO_EXT=1 (run on the pure-Python/NumPy references).

PYTHON ?= python3
PIP = $(PYTHON) -m pip
STAMP = build/.deps-installed
DEMO_DIR ?= demo

.PHONY: install build test bench demo clean test-arm info fuzz wheels test-wheels wheels-reproducible

$(STAMP): pyproject.toml setup.py
	$(PIP) install -q --disable-pip-version-check "setuptools>=77" wheel "Cython>=3" "numpy>=1.24"
	$(PIP) install -q --disable-pip-version-check --no-build-isolation -e ".[test]"
	@mkdir -p build && touch $(STAMP)

install: $(STAMP)

build: $(STAMP)
	$(PYTHON) setup.py -q build_ext --inplace

test: build
	$(PYTHON) -m pytest -q -rs tests

bench: build
	$(PYTHON) -m pytest -q bench --benchmark-only --benchmark-columns=min,median,mean,rounds

demo: build
	$(PYTHON) -m poppins bootstrap -o $(DEMO_DIR) --force
	$(PYTHON) -m poppins train -i $(DEMO_DIR)/train.xml -o $(DEMO_DIR)/.poppins
	$(PYTHON) -m poppins infer -m $(DEMO_DIR)/.poppins -p "What is poppins?" --temp 0

info: build
	$(PYTHON) -m poppins info

FUZZ_CASES ?= 100000
FUZZ_SEED ?= 1
fuzz: build
	nice $(PYTHON) scripts/fuzz.py --cases $(FUZZ_CASES) --seed $(FUZZ_SEED) \
		--kinds model checkpoint tokenizer trainxml memory cli probes

test-arm:
	bash scripts/test_arm.sh

# Wheels (issue 17): the sdist and manylinux wheels for x86_64 (host CPython) and, cross-compiled
# with Debian's toolchains, aarch64 and armv7l for Raspberry Pi OS (cp311 bookworm, cp313 trixie).
# WHEEL_TARGETS narrows them (scripts/build_wheels.py --help); the outputs land in dist/.
# Reproducibility: the sdist and the REPRO_TARGETS wheel are built twice and their sha256
# compared (make wheels-reproducible: every wheel twice).
WHEEL_TARGETS ?= x86_64,bookworm-arm64,bookworm-armhf,trixie-arm64,trixie-armhf
REPRO_TARGETS ?= bookworm-armhf
wheels:
	bash scripts/cross_tools.sh
	$(PYTHON) scripts/build_wheels.py --targets $(WHEEL_TARGETS) --check-reproducible $(REPRO_TARGETS)

# build everything twice (SOURCE_DATE_EPOCH) and compare the sha256 of every file
wheels-reproducible:
	bash scripts/cross_tools.sh
	$(PYTHON) scripts/build_wheels.py --targets $(WHEEL_TARGETS) --check-reproducible

# each wheel of dist/ in a clean environment of its architecture (qemu-user for ARM);
# TEST_WHEELS_ARGS=--quick: the tests on one emulated CPU per architecture (CI)
test-wheels:
	bash scripts/cross_tools.sh
	$(PYTHON) scripts/test_wheels.py $(TEST_WHEELS_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .benchmarks $(DEMO_DIR)
	find poppins -name '*.so' -delete
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
