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

.PHONY: demo demo-check demo-train demo-bench test build build-emu test-cuda-emu emu-asan emu-tsan \
        barrier-ablation lint format clean fuzz-long

$(VENV)/.deps: pyproject.toml
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS) $(DEV_DEPS)
	touch $@

# The editable install puts fastcnn (and the `fastcnn` command) on .venv's path once, building nothing;
# --no-build-isolation: against the torch in .venv, not a fresh download.
$(VENV)/.editable: $(VENV)/.deps setup.py pyproject.toml
	FASTCNN_NO_EXTENSIONS=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# Incremental: ninja (in build/) recompiles what changed and shows its progress; nothing changed, nothing runs.
build: $(VENV)/.editable
	$(PY) setup.py -q build_ext --inplace

# The emulation extension fastcnn._C_emu: the csrc/cuda/ sources on fastcnn's SIMT emulator (csrc/emu/).
build-emu: $(VENV)/.editable
	FASTCNN_CUDA_EMU=1 $(PY) setup.py -q build_ext --inplace

# The whole test suite with every op on CPU tensors served by the CUDA kernels under emulation.
EMU_TESTS ?= tests/
test-cuda-emu: build-emu
	FASTCNN_BACKEND=cuda-emu $(PY) -m pytest -q -n 2 $(EMU_TESTS)

# The emulated op tests under AddressSanitizer + UBSan, and under ThreadSanitizer (every fiber a TSan
# fiber, barriers and __syncwarp as its synchronisation): separate builds, fastcnn/_C_emu_{asan,tsan}.
# TSan leaves out the 70,000-channel depthwise case: over 10 minutes under TSan's shadow tracking.
EMU_SANITIZE_TESTS ?= tests/test_emulator.py tests/test_conv2d.py tests/test_linear.py tests/test_activation.py \
                      tests/test_max_pool2d.py tests/test_avg_pool2d.py tests/test_adaptive_avg_pool2d.py \
                      tests/test_augment.py tests/test_batch_norm.py tests/test_layer_norm.py
ASAN_FLAGS := -fsanitize=address,undefined -fno-sanitize=vptr -fno-sanitize-recover=undefined
emu-asan: $(VENV)/.editable
	FASTCNN_CUDA_EMU=1 FASTCNN_EMU_SUFFIX=_asan FASTCNN_EMU_FLAGS="$(ASAN_FLAGS)" $(PY) setup.py -q build_ext --inplace
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0 \
	  PYTHONMALLOC=malloc FASTCNN_EMU_STACK_KB=2048 FASTCNN_BACKEND=cuda-emu FASTCNN_EMU_EXTENSION=_C_emu_asan \
	  $(PY) -m pytest -q -p no:xdist -p no:cacheprovider $(EMU_SANITIZE_TESTS)
emu-tsan: $(VENV)/.editable
	FASTCNN_CUDA_EMU=1 FASTCNN_EMU_SUFFIX=_tsan FASTCNN_EMU_FLAGS="-fsanitize=thread" $(PY) setup.py -q build_ext --inplace
	LD_PRELOAD=$$(gcc -print-file-name=libtsan.so) TSAN_OPTIONS="halt_on_error=1 report_signal_unsafe=0" \
	  OMP_NUM_THREADS=1 FASTCNN_BACKEND=cuda-emu FASTCNN_EMU_EXTENSION=_C_emu_tsan \
	  $(PY) -m pytest -q -p no:xdist -p no:cacheprovider $(EMU_SANITIZE_TESTS) -k "not more_than_65535_groups"

# Removes one __syncthreads/__syncwarp/wait_group site at a time and reports which removals the tests notice.
barrier-ablation: build-emu
	mkdir -p $(DEMO_OUT)
	$(PY) scripts/barrier_ablation.py --json $(DEMO_OUT)/barrier_ablation.json

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

# The op tests that run a second time against the emulated CUDA kernels in `make test` (every op, dtype,
# layout, epilogue, forward and backward); `make test-cuda-emu` runs all of tests/ that way.
EMU_CI_TESTS := tests/test_emulator.py tests/test_emu_counters.py tests/test_conv2d.py tests/test_linear.py tests/test_activation.py \
                tests/test_max_pool2d.py tests/test_avg_pool2d.py tests/test_adaptive_avg_pool2d.py \
                tests/test_augment.py tests/test_batch_norm.py tests/test_layer_norm.py tests/test_determinism.py \
                tests/test_fuse.py tests/test_compile.py tests/test_convert_cuda.py

test: build build-emu lint
	$(PY) -m pytest -q -n 2 tests/
	FASTCNN_BACKEND=cuda-emu $(PY) -m pytest -q -n 2 $(EMU_CI_TESTS)

# The property-based tests with the "long" hypothesis profile: >= 10,000 fresh random examples.
fuzz-long: build
	FASTCNN_FUZZ_PROFILE=long $(PY) -m pytest -q -n 2 -p no:cacheprovider --hypothesis-show-statistics tests/test_fuzz.py

format: $(VENV)/.deps
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

clean:
	rm -rf build fastcnn/_C*.so *.egg-info $(VENV)/.editable
