# fastcnn: `make demo` runs the main job, `make test` the tests. Both set up .venv themselves.
PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEV_DEPS   := pytest pytest-xdist pytest-benchmark hypothesis ruff clang-format ninja numpy rich tqdm scikit-learn \
              matplotlib
CXX_SOURCES = $(shell git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh' 'csrc/*.inc')
# Build the CUDA kernels whenever the toolkit is there (setup.py decides; FASTCNN_CUDA=0/1 forces it).
export CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export MAX_JOBS  ?= $(shell nproc)

.PHONY: demo demo-check demo-train demo-bench test build lint format clean fuzz-long

$(VENV)/.deps: pyproject.toml
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS) $(DEV_DEPS)
	touch $@

# --no-build-isolation: compile against the torch in .venv, not a fresh download.
build: $(VENV)/.deps
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

# The main job: one step per target, run in order (add a step by adding a target to DEMO_STEPS).
DEMO_OUT   ?= out
DEMO_STEPS := demo-check demo-train demo-bench
demo: $(DEMO_STEPS)

demo-check: build
	$(PY) -m fastcnn check --quick

demo-bench: build demo-check
	mkdir -p $(DEMO_OUT)
	$(PY) -m fastcnn bench --preset quick --plot $(DEMO_OUT)/bench.png --json $(DEMO_OUT)/bench.json

demo-train: build demo-check
	$(PY) -m fastcnn demo --out $(DEMO_OUT)

lint: $(VENV)/.deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run -Werror $(CXX_SOURCES)

test: build lint
	$(PY) -m pytest -q -n 2 tests/

# The property-based tests with the "long" hypothesis profile: >= 10,000 fresh random examples.
fuzz-long: build
	FASTCNN_FUZZ_PROFILE=long $(PY) -m pytest -q -n 2 -p no:cacheprovider --hypothesis-show-statistics tests/test_fuzz.py

format: $(VENV)/.deps
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

clean:
	rm -rf build fastcnn/_C*.so *.egg-info
